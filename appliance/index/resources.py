"""Read the index as Orthanc's resource model: the JSON shapes of ``/patients`` and friends."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from peewee import JOIN, fn

from . import totals
from .models import Change, Instance, Patient, Series, Study, tuples
from .search import InstanceRef


@dataclass(frozen=True)
class Level:
    name: str  # Orthanc's "Type"
    model: Any
    parent_field: Any  # foreign key to the parent level, or None
    children_key: str | None  # the key of the children list in the JSON
    parent_key: str | None


LEVELS = {
    "patients": Level("Patient", Patient, None, "Studies", None),
    "studies": Level("Study", Study, Study.patient, "Series", "ParentPatient"),
    "series": Level("Series", Series, Series.study, "Instances", "ParentStudy"),
    "instances": Level("Instance", Instance, Instance.series, None, "ParentSeries"),
}
CHILD = {"patients": "studies", "studies": "series", "series": "instances"}


def orthanc_time(ts: float) -> str:
    return time.strftime("%Y%m%dT%H%M%S", time.localtime(ts))


def list_ids(level: str, since: int = 0, limit: int | None = None) -> list[str]:
    model = LEVELS[level].model
    query = model.select(model.public_id).order_by(model.id).offset(since)
    if limit is not None:
        query = query.limit(limit)
    return [pid for (pid,) in query.tuples()]


def find(level: str, public_id: str) -> Any:
    model = LEVELS[level].model
    return model.get_or_none(model.public_id == public_id)


def _children(level: str, row: Any) -> list[str]:
    child = LEVELS[CHILD[level]]
    model = child.model
    query = model.select(model.public_id).where(child.parent_field == row.id).order_by(model.id)
    return [pid for (pid,) in query.tuples()]


def _parent_id(level: str, row: Any) -> str | None:
    spec = LEVELS[level]
    if spec.parent_field is None:
        return None
    parent_model = spec.parent_field.rel_model
    fk = getattr(row, spec.parent_field.name + "_id")
    return str(parent_model.select(parent_model.public_id).where(parent_model.id == fk).scalar())


def is_protected(row: Any) -> bool:
    """A pin holds until its expiry, if it has one."""
    return bool(row.protected) and (row.protected_until is None
                                    or row.protected_until > time.time())


def parent_of(level: str, public_id: str) -> tuple[str, str] | None:
    """(level, public ID) of a resource's parent."""
    row = find(level, public_id)
    if row is None or LEVELS[level].parent_field is None:
        return None
    parent_level = {"studies": "patients", "series": "studies", "instances": "series"}[level]
    return parent_level, str(_parent_id(level, row))


def to_json(level: str, row: Any, stable_age: float) -> dict[str, Any]:
    """One resource as Orthanc shows it."""
    spec = LEVELS[level]
    out: dict[str, Any] = {
        "ID": row.public_id,
        "Type": spec.name,
        "MainDicomTags": row.tags,
        "Labels": [],
    }
    if spec.parent_key:
        out[spec.parent_key] = _parent_id(level, row)
    if spec.children_key:
        out[spec.children_key] = _children(level, row)
    if level != "instances":
        out["LastUpdate"] = orthanc_time(row.last_update)
        out["IsStable"] = time.time() - row.last_update >= stable_age
    if level in ("patients", "studies"):
        out["IsProtected"] = is_protected(row)
        out["ProtectedUntil"] = (orthanc_time(row.protected_until)
                                 if out["IsProtected"] and row.protected_until else None)
    if level == "studies":
        out["PatientMainDicomTags"] = row.patient.tags
    if level == "series":
        out["ExpectedNumberOfInstances"] = None
        out["Status"] = "Unknown"
    if level == "instances":
        out.update(
            FileSize=row.size,
            FileUuid=row.file,
            IndexInSeries=_index_in_series(row),
            ReceptionDate=orthanc_time(row.received),
            RemoteAET=row.calling_aet,
            TransferSyntax=row.transfer_syntax,
            SOPClassUID=row.sop_class_uid,
        )
    return out


def _index_in_series(row: Any) -> int | None:
    number = row.tags.get("InstanceNumber", "")
    try:
        return int(number)
    except ValueError:
        return None


def statistics() -> dict[str, Any]:
    now = totals.current()
    size = now.size
    return {
        "CountPatients": now.patients,
        "CountStudies": now.studies,
        "CountSeries": now.series,
        "CountInstances": now.instances,
        "TotalDiskSize": str(size),
        "TotalDiskSizeMB": size // (1024 * 1024),
        "TotalUncompressedSize": str(size),
        "TotalUncompressedSizeMB": size // (1024 * 1024),
    }


def resource_statistics(level: str, row: Any) -> dict[str, Any]:
    """Counts and sizes below one resource (``/{level}/{id}/statistics``)."""
    query = Instance.select(fn.COUNT(Instance.id), fn.COALESCE(fn.SUM(Instance.size), 0))
    query = query.join(Series, JOIN.INNER, on=Instance.series == Series.id)
    query = query.join(Study, JOIN.INNER, on=Series.study == Study.id)
    key = {"patients": Study.patient, "studies": Study.id, "series": Series.id,
           "instances": Instance.id}[level]
    count, size = query.where(key == row.id).tuples().first()
    return {"CountInstances": count, "DiskSize": str(size), "DiskSizeMB": size // (1024 * 1024)}


def instance_keys(level: str, public_id: str) -> list[int] | None:
    """The keys of every instance under a resource (None: no such resource)."""
    row = find(level, public_id)
    if row is None:
        return None
    query = Instance.select(Instance.id)
    if level == "instances":
        return [row.id]
    query = query.join(Series)
    if level == "series":
        query = query.where(Series.id == row.id)
    else:
        query = query.join(Study)
        query = query.where(Study.id == row.id if level == "studies" else Study.patient == row.id)
    return [key for (key,) in tuples(query.order_by(Instance.id))]


def changes(since: int, limit: int) -> dict[str, Any]:
    """Orthanc's ``/changes`` (with our ``Reason``: why a resource was deleted)."""
    rows = list(Change.select().where(Change.seq > since).order_by(Change.seq).limit(limit + 1))
    last = Change.select(fn.MAX(Change.seq)).scalar() or 0
    paths = {"Patient": "patients", "Study": "studies", "Series": "series",
             "Instance": "instances"}
    return {
        "Changes": [{
            "Seq": r.seq, "ChangeType": r.change_type, "ResourceType": r.resource_type,
            "ID": r.public_id, "Path": f"/{paths[r.resource_type]}/{r.public_id}",
            "Date": orthanc_time(r.date), "Reason": r.reason,
        } for r in rows[:limit]],
        "Done": len(rows) <= limit,
        "Last": int(last),
    }


def last_change() -> dict[str, Any]:
    """``/changes?last``: the latest change alone."""
    last = Change.select(fn.MAX(Change.seq)).scalar() or 0
    return changes(last - 1, 1) if last else changes(0, 0)


# --- related resources, lookups and archives (the REST API's parent/children routes) ---------

PARENT = {"studies": "patients", "series": "studies", "instances": "series"}
ORDER = ("patients", "studies", "series", "instances")


def related(level: str, row: Any, target: str) -> list[Any]:
    """The rows of ``target`` above or below ``row`` (itself when ``target`` is its level)."""
    rows = [row]
    while level != target:
        if ORDER.index(target) > ORDER.index(level):
            child = LEVELS[CHILD[level]]
            level = CHILD[level]
            keys = [r.id for r in rows]
            rows = list(child.model.select().where(child.parent_field.in_(keys))
                        .order_by(child.model.id))
        else:
            fk = getattr(rows[0], LEVELS[level].parent_field.name + "_id")
            level = PARENT[level]
            rows = [LEVELS[level].model.get_by_id(fk)]
    return rows


LOOKUP_COLUMNS = (
    ("patients", Patient.patient_id), ("studies", Study.study_uid),
    ("studies", Study.accession_number), ("series", Series.series_uid),
    ("instances", Instance.sop_uid),
)  # fmt: skip


def lookup(identifier: str) -> list[dict[str, str]]:
    """Orthanc's ``/tools/lookup``: the resources whose identifying tag is ``identifier``."""
    out = []
    for level, column in LOOKUP_COLUMNS:
        model = LEVELS[level].model
        for (public_id,) in model.select(model.public_id).where(column == identifier).tuples():
            out.append({"ID": public_id, "Path": f"/{level}/{public_id}",
                        "Type": LEVELS[level].name})
    return out


def resolve(identifier: str) -> list[tuple[str, str]]:
    """(level, public ID) of what ``identifier`` names: an Orthanc ID of any level, else the
    resources ``lookup`` finds (UIDs, PatientID, AccessionNumber)."""
    for level in LEVELS:
        if find(level, identifier) is not None:
            return [(level, identifier)]
    return [(found["Path"].split("/")[1], found["ID"]) for found in lookup(identifier)]


def archive_entries(level: str, row: Any) -> list[tuple[str, str]]:
    """(path in the archive, storage name) for every instance below ``row``, laid out as
    Orthanc lays out its archives: patient/study/series folders."""
    query = (Instance.select(Instance.file, Series.tags, Study.tags,
                             Patient.tags)
             .join(Series, on=Instance.series == Series.id)
             .join(Study, on=Series.study == Study.id)
             .join(Patient, on=Study.patient == Patient.id)
             .where(LEVELS[level].model.id == row.id)
             .order_by(Series.id, Instance.id))
    out: list[tuple[str, str]] = []
    counters: dict[str, int] = {}
    for file, series, study, patient in tuples(query):
        folder = "/".join((
            _name(patient, "PatientID", "PatientName"),
            _name(study, "StudyDate", "StudyDescription"),
            _name(series, "Modality", "SeriesNumber", "SeriesDescription"),
        ))
        counters[folder] = counters.get(folder, 0) + 1
        out.append((f"{folder}/{series.get('Modality', 'XX')[:2]}{counters[folder]:06d}.dcm",
                    file))
    return out


def _name(tags: dict[str, str], *keywords: str) -> str:
    """A folder name from tag values, safe in any file system."""
    text = " ".join(tags.get(k, "") for k in keywords).strip() or "unknown"
    return "".join(c if c.isalnum() or c in " ^-_." else "_" for c in text)[:64]


@dataclass(frozen=True)
class StoredInstance:
    """An instance found by its UIDs (DICOMweb addresses instances by UID)."""

    public_id: str
    study_uid: str
    series_uid: str
    sop_uid: str
    sop_class_uid: str
    transfer_syntax: str


def instance_uids(public_id: str) -> StoredInstance | None:
    """A stored instance's UIDs, by its public ID."""
    query = (Instance.select(Instance.public_id, Study.study_uid, Series.series_uid,
                             Instance.sop_uid, Instance.sop_class_uid, Instance.transfer_syntax)
             .join(Series, on=Instance.series == Series.id)
             .join(Study, on=Series.study == Study.id)
             .where(Instance.public_id == public_id))
    rows = tuples(query)
    return StoredInstance(*rows[0]) if rows else None


def instances_by_uid(study: str, series: str | None = None,
                     sop: str | None = None) -> list[StoredInstance]:
    """The instances of a study, of one of its series, or one instance, in storage order."""
    query = (Instance.select(Instance.public_id, Study.study_uid, Series.series_uid,
                             Instance.sop_uid, Instance.sop_class_uid, Instance.transfer_syntax)
             .join(Series, on=Instance.series == Series.id)
             .join(Study, on=Series.study == Study.id)
             .where(Study.study_uid == study))
    if series is not None:
        query = query.where(Series.series_uid == series)
    if sop is not None:
        query = query.where(Instance.sop_uid == sop)
    return [StoredInstance(*row) for row in tuples(query.order_by(Instance.id))]


def instances_of(identifier: str) -> list[InstanceRef]:
    """The stored instances below a resource named by its Orthanc public ID, or by a Study,
    Series or SOP Instance UID (``appliance send``), in the order they were stored."""
    select = Instance.select(
        Instance.sop_uid, Instance.sop_class_uid, Instance.transfer_syntax, Instance.file
    ).join(Series).join(Study).join(Patient)
    for condition in (Patient.public_id == identifier, Study.public_id == identifier,
                      Series.public_id == identifier, Instance.public_id == identifier,
                      Study.study_uid == identifier, Series.series_uid == identifier,
                      Instance.sop_uid == identifier):
        rows = tuples(select.where(condition).order_by(Instance.id))
        if rows:
            return [InstanceRef(*row) for row in rows]
    return []
