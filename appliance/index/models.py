"""The index schema: patients, studies, series, instances, and the change log.

Each resource has an integer key (for cheap joins) and its Orthanc public ID (unique index).
The main DICOM tags of a level are kept as JSON (what the REST API shows); the tags used for
lookups and matching also have indexed columns of their own.
"""

from __future__ import annotations

import json
from typing import Any

from peewee import (
    SQL,
    AutoField,
    BigIntegerField,
    BooleanField,
    CharField,
    DatabaseProxy,
    FloatField,
    ForeignKeyField,
    Model,
    TextField,
)

database = DatabaseProxy()
EMPTY = SQL("DEFAULT ''")  # defaults live in the schema too: the ingest path writes plain SQL


class JSONField(TextField):
    def db_value(self, value: Any) -> str:
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False)

    def python_value(self, value: str | None) -> Any:
        return json.loads(value) if value is not None else None


class BaseModel(Model):
    class Meta:
        database = database
        legacy_table_names = False


class Patient(BaseModel):
    id = AutoField()
    public_id = CharField(unique=True)
    patient_id = CharField(index=True)
    patient_name = CharField(default="", index=True, constraints=[EMPTY])
    tags = JSONField()
    protected = BooleanField(default=False, constraints=[SQL("DEFAULT 0")])
    protected_until = FloatField(null=True)  # a pin's expiry (None: until unprotected)
    created = FloatField()
    last_update = FloatField(index=True)


class Study(BaseModel):
    id = AutoField()
    public_id = CharField(unique=True)
    patient = ForeignKeyField(Patient, backref="studies", on_delete="CASCADE")
    study_uid = CharField(index=True)
    study_date = CharField(default="", index=True, constraints=[EMPTY])
    accession_number = CharField(default="", index=True, constraints=[EMPTY])
    tags = JSONField()
    protected = BooleanField(default=False, constraints=[SQL("DEFAULT 0")])
    protected_until = FloatField(null=True)
    created = FloatField()
    last_update = FloatField(index=True)


class Series(BaseModel):
    id = AutoField()
    public_id = CharField(unique=True)
    study = ForeignKeyField(Study, backref="series", on_delete="CASCADE")
    series_uid = CharField(index=True)
    modality = CharField(default="", index=True, constraints=[EMPTY])
    tags = JSONField()
    created = FloatField()
    last_update = FloatField()


class Instance(BaseModel):
    id = AutoField()
    public_id = CharField(unique=True)
    series = ForeignKeyField(Series, backref="instances", on_delete="CASCADE")
    sop_uid = CharField(index=True)
    sop_class_uid = CharField()
    transfer_syntax = CharField()
    tags = JSONField()
    file = CharField()
    size = BigIntegerField()
    md5 = CharField()
    received = FloatField()
    calling_aet = CharField(default="", constraints=[EMPTY])
    called_aet = CharField(default="", constraints=[EMPTY])
    remote_address = CharField(default="", constraints=[EMPTY])
    origin = CharField(default="DicomProtocol", constraints=[SQL("DEFAULT 'DicomProtocol'")])

    class Meta:
        # the last reception per calling AE title in a few index probes (health, start-up)
        indexes = ((("calling_aet", "received"), False),)


class Change(BaseModel):
    """Orthanc's change log (``/changes``): what happened to which resource, in order."""

    seq = AutoField()
    change_type = CharField()
    resource_type = CharField()
    public_id = CharField()
    date = FloatField()
    reason = CharField(default="", constraints=[EMPTY])


class Outbound(BaseModel):
    """The durable outbound queue: one row per (instance, destination) not yet delivered.

    Rows are created in the transaction that records the instance (``pending``, or ``held``
    until its series or study is stable), deleted once the destination answered success, and
    become ``failed`` (kept, retryable by hand) after too many attempts or too long.
    """

    id = AutoField()
    instance = ForeignKeyField(Instance, on_delete="CASCADE", index=True)
    destination = CharField()
    route = CharField(default="", constraints=[EMPTY])  # "" for a send asked by hand
    state = CharField(constraints=[SQL("DEFAULT 'pending'")])  # pending | held | failed
    trigger = CharField(default="instance", constraints=[SQL("DEFAULT 'instance'")])
    group_key = BigIntegerField(default=0, constraints=[SQL("DEFAULT 0")])  # series/study key
    attempts = BigIntegerField(default=0, constraints=[SQL("DEFAULT 0")])
    next_attempt = FloatField()
    created = FloatField()
    last_error = CharField(default="", constraints=[EMPTY])

    class Meta:
        indexes = ((("destination", "state", "next_attempt"), False),
                   (("state", "trigger", "group_key"), False))


class Export(BaseModel):
    """The export log: every send attempt's outcome, kept after the instance is gone."""

    seq = AutoField()
    date = FloatField(index=True)
    destination = CharField()
    remote_aet = CharField()
    instance_id = CharField()  # public IDs and UIDs copied: the log outlives deletions
    sop_uid = CharField()
    series_uid = CharField()
    study_uid = CharField()
    patient_id = CharField()
    route = CharField(default="", constraints=[EMPTY])
    status = BigIntegerField()  # the C-STORE status, or 0xA700 when nothing was sent
    outcome = CharField()  # success | warning | failure | failed (gave up) | cancelled
    error = CharField(default="", constraints=[EMPTY])


class Trash(BaseModel):
    """Files whose rows were deleted, until the files are gone too: a crash in between must
    not let reconciliation take them for unindexed files and bring them back."""

    file = CharField(primary_key=True)


class Unsynced(BaseModel):
    """Files of the rows of the last batch whose flush may not have completed: the writer
    commits a batch before the one device flush that makes its files and that commit durable,
    so after a power cut reconciliation checks these files (see ``db.Writer``)."""

    file = CharField(primary_key=True)

    class Meta:
        without_rowid = True  # one b-tree: one page more per commit, not two


class Totals(BaseModel):
    """The store's counts and size in one row, kept by triggers (``index.totals``)."""

    id = BigIntegerField(primary_key=True)
    instances = BigIntegerField(default=0)
    size = BigIntegerField(default=0)
    series = BigIntegerField(default=0)
    studies = BigIntegerField(default=0)
    patients = BigIntegerField(default=0)


class Heartbeat(BaseModel):
    """The health check's proof that the index takes writes: one row per writer of beats."""

    name = CharField(primary_key=True)
    beat = FloatField()


class Audit(BaseModel):
    """Who did what through the web page or the REST API: logins, configuration changes,
    sends, deletions, restores."""

    seq = AutoField()
    date = FloatField(index=True)
    user = CharField()
    address = CharField(default="", constraints=[EMPTY])
    action = CharField()
    detail = TextField(default="", constraints=[EMPTY])
    outcome = CharField(default="ok", constraints=[SQL("DEFAULT 'ok'")])


def tuples(query: Any) -> list[tuple[Any, ...]]:
    """A query's rows as tuples (peewee's typing calls them model instances)."""
    return list(query.tuples())


MODELS: list[type[BaseModel]] = [Patient, Study, Series, Instance, Change, Outbound, Export, Trash,
                                 Unsynced, Totals, Heartbeat, Audit]
