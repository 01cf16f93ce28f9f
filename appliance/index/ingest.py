"""Record one received instance in the index: runs inside the writer's transaction."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Literal

from peewee import Model

from .ids import PublicIds, public_ids
from .models import Change, Instance, Patient, Series, Study
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


def _change(change_type: str, resource_type: str, public_id: str, now: float) -> None:
    Change.insert(
        change_type=change_type, resource_type=resource_type, public_id=public_id, date=now
    ).execute()


def _upsert(model: type[Model], public_id: str, now: float, resource: str, **fields: object) -> int:
    """The key of the resource ``public_id``, created if new; its ``last_update`` is refreshed."""
    row = model.select(model.id).where(model.public_id == public_id).tuples().first()
    if row is not None:
        model.update(last_update=now).where(model.id == row[0]).execute()
        return int(row[0])
    key = model.insert(public_id=public_id, created=now, last_update=now, **fields).execute()
    _change(f"New{resource}", resource, public_id, now)
    return int(key)


def record_instance(
    tags: InstanceTags, file: FileInfo, origin: Origin, overwrite: bool
) -> Recorded:
    ids = public_ids(tags.patient_id, tags.study_uid, tags.series_uid, tags.sop_uid)
    now = time.time()
    existing = (
        Instance.select(Instance.id, Instance.file)
        .where(Instance.public_id == ids.instance)
        .tuples()
        .first()
    )
    if existing is not None and not overwrite:
        return Recorded("kept-first", ids, unused_file=file.name)

    patient = _upsert(
        Patient, ids.patient, now, "Patient",
        patient_id=tags.patient_id, patient_name=tags.patient.get("PatientName", ""),
        tags=tags.patient,
    )  # fmt: skip
    study = _upsert(
        Study, ids.study, now, "Study",
        patient=patient, study_uid=tags.study_uid, study_date=tags.study.get("StudyDate", ""),
        accession_number=tags.study.get("AccessionNumber", ""), tags=tags.study,
    )  # fmt: skip
    series = _upsert(
        Series, ids.series, now, "Series",
        study=study, series_uid=tags.series_uid, modality=tags.series.get("Modality", ""),
        tags=tags.series,
    )  # fmt: skip
    values = dict(
        series=series,
        sop_uid=tags.sop_uid,
        sop_class_uid=tags.sop_class_uid,
        transfer_syntax=tags.transfer_syntax,
        tags=tags.instance,
        file=file.name,
        size=file.size,
        md5=file.md5,
        received=now,
        calling_aet=origin.calling_aet,
        called_aet=origin.called_aet,
        remote_address=origin.remote_address,
        origin=origin.kind,
    )
    if existing is not None:
        Instance.update(**values).where(Instance.id == existing[0]).execute()
        _change("UpdatedInstance", "Instance", ids.instance, now)
        return Recorded("overwritten", ids, replaced_file=existing[1])
    Instance.insert(public_id=ids.instance, **values).execute()
    _change("NewInstance", "Instance", ids.instance, now)
    return Recorded("stored", ids)
