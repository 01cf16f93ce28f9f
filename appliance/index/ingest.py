"""Record one received instance in the index: runs inside the writer's transaction."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from .ids import PublicIds, public_ids
from .models import database
from .tags import InstanceTags

Outcome = Literal["stored", "kept-first", "overwritten"]


@dataclass(frozen=True)
class Origin:
    """Where an instance came from, recorded with it."""

    calling_aet: str = ""
    called_aet: str = ""
    remote_address: str = ""
    kind: str = "DicomProtocol"


@dataclass(frozen=True)
class FileInfo:
    name: str
    size: int
    md5: str


@dataclass(frozen=True)
class Recorded:
    outcome: Outcome
    ids: PublicIds
    replaced_file: str | None = None  # the blob an overwrite made obsolete (delete after commit)
    unused_file: str | None = None  # the new blob a kept-first duplicate did not need


# The hot path uses plain SQL: peewee's query building cost more than SQLite itself here.
INSERT_CHANGE = "INSERT INTO change (change_type, resource_type, public_id, date, reason) " \
    "VALUES (?, ?, ?, ?, '')"
INSERT_INSTANCE = (
    "INSERT INTO instance (public_id, series_id, sop_uid, sop_class_uid, transfer_syntax, tags,"
    " file, size, md5, received, calling_aet, called_aet, remote_address, origin)"
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
UPDATE_INSTANCE = (
    "UPDATE instance SET series_id=?, sop_uid=?, sop_class_uid=?, transfer_syntax=?, tags=?,"
    " file=?, size=?, md5=?, received=?, calling_aet=?, called_aet=?, remote_address=?,"
    " origin=? WHERE id=?"
)
PARENT_COLUMNS = {
    "patient": ("patient_id", "patient_name"),
    "study": ("patient_id", "study_uid", "study_date", "accession_number"),
    "series": ("study_id", "series_uid", "modality"),
}

# Writer-thread cache of parent rows: public ID -> (key, last_update written). A series of 500
# instances then costs one parent lookup, not 500; ``last_update`` is rewritten at most once a
# second per resource (stability is measured in tens of seconds).
_parents: dict[str, tuple[int, float]] = {}
PARENT_CACHE_SIZE = 4096
TOUCH_EVERY = 1.0


def forget_parents() -> None:
    """Drop the cache: after a rollback or a deletion its keys may no longer exist."""
    _parents.clear()


def _sql(query: str, params: tuple[object, ...]) -> Any:
    return database.execute_sql(query, params)


def _upsert(table: str, public_id: str, now: float, values: tuple[object, ...],
            tags: dict[str, str]) -> int:
    """The key of the resource ``public_id``, created if new; its ``last_update`` is refreshed."""
    cached = _parents.get(public_id)
    if cached is not None:
        key, touched = cached
        if now - touched >= TOUCH_EVERY:
            _sql(f"UPDATE {table} SET last_update=? WHERE id=?", (now, key))
            _parents[public_id] = (key, now)
        return key
    row = _sql(f"SELECT id FROM {table} WHERE public_id=?", (public_id,)).fetchone()
    if row is not None:
        key = int(row[0])
        _sql(f"UPDATE {table} SET last_update=? WHERE id=?", (now, key))
    else:
        columns = ", ".join(PARENT_COLUMNS[table])
        marks = ", ".join("?" * len(values))
        key = int(_sql(
            f"INSERT INTO {table} (public_id, {columns}, tags, created, last_update)"
            f" VALUES (?, {marks}, ?, ?, ?)",
            (public_id, *values, _json(tags), now, now),
        ).lastrowid)
        resource = table.capitalize()
        _sql(INSERT_CHANGE, (f"New{resource}", resource, public_id, now))
    if len(_parents) >= PARENT_CACHE_SIZE:
        _parents.clear()
    _parents[public_id] = (key, now)
    return key


def _json(value: object) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


INSERT_OUTBOUND = (
    "INSERT INTO outbound (instance_id, destination, route, state, trigger, group_key,"
    " next_attempt, created) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
)

# (route, destination, trigger) of each queue entry an instance needs
Queued = tuple[str, str, str]


def _enqueue(instance: int, series: int, study: int, queued: Sequence[Queued],
             now: float) -> None:
    """Queue entries are made in the transaction that records the instance: no acknowledged
    instance is ever neither delivered nor queued. Stable triggers wait ``held``."""
    for route, destination, trigger in queued:
        state, group = {"instance": ("pending", 0), "series": ("held", series),
                        "study": ("held", study)}[trigger]
        _sql(INSERT_OUTBOUND, (instance, destination, route, state, trigger, group, now, now))


def record_instance(
    tags: InstanceTags, file: FileInfo, origin: Origin, overwrite: bool,
    queued: Sequence[Queued] = (),
) -> Recorded:
    ids = public_ids(tags.patient_id, tags.study_uid, tags.series_uid, tags.sop_uid)
    now = time.time()
    existing = _sql(
        "SELECT id, file FROM instance WHERE public_id=?", (ids.instance,)
    ).fetchone()
    if existing is not None and not overwrite:
        return Recorded("kept-first", ids, unused_file=file.name)

    patient = _upsert("patient", ids.patient, now,
                      (tags.patient_id, tags.patient.get("PatientName", "")), tags.patient)
    study = _upsert("study", ids.study, now,
                    (patient, tags.study_uid, tags.study.get("StudyDate", ""),
                     tags.study.get("AccessionNumber", "")), tags.study)
    series = _upsert("series", ids.series, now,
                     (study, tags.series_uid, tags.series.get("Modality", "")), tags.series)
    values = (
        series, tags.sop_uid, tags.sop_class_uid, tags.transfer_syntax, _json(tags.instance),
        file.name, file.size, file.md5, now, origin.calling_aet, origin.called_aet,
        origin.remote_address, origin.kind,
    )
    if existing is not None:
        _sql(UPDATE_INSTANCE, (*values, existing[0]))
        _sql(INSERT_CHANGE, ("UpdatedInstance", "Instance", ids.instance, now))
        _enqueue(existing[0], series, study, queued, now)
        return Recorded("overwritten", ids, replaced_file=existing[1])
    key = _sql(INSERT_INSTANCE, (ids.instance, *values)).lastrowid
    _sql(INSERT_CHANGE, ("NewInstance", "Instance", ids.instance, now))
    _enqueue(key, series, study, queued, now)
    return Recorded("stored", ids)
