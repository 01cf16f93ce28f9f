"""What the storage governor asks of the index: totals, what may be recycled, and pins."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from . import totals as running_totals
from .models import Instance, Outbound, Patient, Series, Study, tuples


@dataclass(frozen=True)
class Totals:
    bytes: int
    patients: int
    studies: int


def totals() -> Totals:
    now = running_totals.current()
    return Totals(now.size, now.patients, now.studies)


def _pinned(model: Any, now: float) -> Any:
    """A pin holds while ``protected`` and not past its expiry."""
    return model.protected & (model.protected_until.is_null() | (model.protected_until > now))


def _unsent_studies() -> Any:
    """Studies with an entry in the outbound queue (pending, held or failed)."""
    return (Series.select(Series.study).join(Instance)
            .join(Outbound, on=(Outbound.instance == Instance.id)))


def recyclable(granularity: str, now: float, exclude_study: str = "",
               exclude_patient: str = "", older_than: float | None = None,
               modalities: list[str] | None = None, limit: int = 1) -> list[tuple[str, int]]:
    """The oldest (by last reception) studies or patients that may be recycled, as
    (level, key): neither they nor their patient pinned, nothing of theirs in the queue,
    and not the resource an arriving instance belongs to."""
    query = (Study.select(Study.id, Study.last_update).join(Patient)
             .where(~_pinned(Study, now) & ~_pinned(Patient, now)
                    & Study.id.not_in(_unsent_studies())))
    if exclude_study:
        query = query.where(Study.public_id != exclude_study)
    if older_than is not None:
        query = query.where(Study.last_update < older_than)
    if modalities:
        query = query.where(Study.id.in_(Series.select(Series.study)
                                         .where(Series.modality.in_(modalities))))
    if granularity == "study":
        return [("studies", key) for key, _ in tuples(query.order_by(Study.last_update)
                                                       .limit(limit))]
    blocked = Study.select(Study.patient).where(
        _pinned(Study, now) | Study.id.in_(_unsent_studies()))
    patients = (Patient.select(Patient.id)
                .where(~_pinned(Patient, now) & Patient.id.not_in(blocked)
                       & Patient.id.in_(query.select(Study.patient))))
    if exclude_patient:
        patients = patients.where(Patient.public_id != exclude_patient)
    return [("patients", key) for (key,) in tuples(patients.order_by(Patient.last_update)
                                                   .limit(limit))]


def instances_of(level: str, key: int) -> list[int]:
    query = Instance.select(Instance.id).join(Series)
    if level == "studies":
        query = query.where(Series.study == key)
    else:
        query = query.join(Study).where(Study.patient == key)
    return [k for (k,) in tuples(query)]


def study_exists(public_id: str) -> bool:
    return bool(Study.select().where(Study.public_id == public_id).exists())


def patient_exists(public_id: str) -> bool:
    return bool(Patient.select().where(Patient.public_id == public_id).exists())


def pin_expiry(until: str) -> float:
    """The end of day ``until`` (YYYYMMDD, local time): when a pin given that date expires
    (``ValueError`` when malformed)."""
    return time.mktime(time.strptime(until, "%Y%m%d")) + 86400


def set_protected(level: str, public_id: str, protected: bool, until: float | None) -> bool:
    """Writer job: pin or unpin a patient or study; False if there is no such resource."""
    model = Patient if level == "patients" else Study
    changed = (model.update(protected=protected, protected_until=until if protected else None)
               .where(model.public_id == public_id).execute())
    return bool(changed)
