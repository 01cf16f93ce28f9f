"""What the admin page reads from the index: study search, a study's series and instances,
reception counts per hour and per source."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from peewee import JOIN, fn

from .ingest import Origin
from .models import Instance, Patient, Series, Study, tuples
from .resources import is_protected
from .tags import InstanceTags


@dataclass(frozen=True)
class StudyQuery:
    """The search form; empty fields do not restrict. Names match anywhere, case-blind."""

    name: str = ""
    patient_id: str = ""
    date_from: str = ""  # YYYYMMDD
    date_to: str = ""
    modality: str = ""
    accession: str = ""

    @property
    def empty(self) -> bool:
        return not any((self.name, self.patient_id, self.date_from, self.date_to,
                        self.modality, self.accession))


def search_studies(q: StudyQuery, limit: int = 200) -> list[dict[str, Any]]:
    """Studies matching ``q``, the most recently updated first."""
    return [study_summary(s) for s in _matching(q, limit)]


def _matching(q: StudyQuery, limit: int) -> Any:
    """The studies (joined to their patient) a search matches."""
    query = (Study.select(Study, Patient).join(Patient)
             .order_by(Study.last_update.desc()).limit(limit))
    if q.name:
        query = query.where(fn.instr(fn.lower(Patient.patient_name), q.name.lower()) > 0)
    if q.patient_id:
        query = query.where(Patient.patient_id == q.patient_id)
    if q.date_from:
        query = query.where(Study.study_date >= q.date_from)
    if q.date_to:
        query = query.where(Study.study_date <= q.date_to)
    if q.accession:
        query = query.where(Study.accession_number == q.accession)
    if q.modality:
        query = query.where(Study.id.in_(
            Series.select(Series.study).where(Series.modality == q.modality.upper())))
    return query


def search_patients(q: StudyQuery, limit: int = 200) -> list[dict[str, Any]]:
    """Patients with a study matching ``q``, the most recently updated first."""
    keys = {s.patient.id for s in _matching(q, limit * 10)}
    query = (Patient.select(Patient, fn.COUNT(Study.id).alias("studies")).join(Study)
             .where(Patient.id.in_(list(keys))).group_by(Patient.id)
             .order_by(Patient.last_update.desc()).limit(limit))
    return [{"id": p.public_id, "patient_id": p.patient_id, "name": p.patient_name,
             "birth_date": p.tags.get("PatientBirthDate", ""), "sex": p.tags.get("PatientSex", ""),
             "studies": getattr(p, "studies", 0), "protected": is_protected(p),
             "last_update": p.last_update} for p in query]


def study_summary(study: Any) -> dict[str, Any]:
    patient = study.patient
    modalities = sorted({m for (m,) in tuples(Series.select(Series.modality)
                                              .where(Series.study == study.id)) if m})
    count = (Instance.select().join(Series, on=Instance.series == Series.id)
             .where(Series.study == study.id).count())
    return {
        "id": study.public_id, "uid": study.study_uid, "date": study.study_date,
        "description": study.tags.get("StudyDescription", ""),
        "accession": study.accession_number, "modalities": modalities, "instances": count,
        "patient_name": patient.patient_name, "patient_id": patient.patient_id,
        "patient_public_id": patient.public_id, "protected": is_protected(study),
        "protected_until": study.protected_until if is_protected(study) else None,
        "last_update": study.last_update,
    }


def study(public_id: str) -> dict[str, Any] | None:
    row = Study.select(Study, Patient).join(Patient).where(Study.public_id == public_id).first()
    if row is None:
        return None
    series = (Series.select(Series, fn.COUNT(Instance.id).alias("count"))
              .join(Instance, JOIN.LEFT_OUTER).where(Series.study == row.id)
              .group_by(Series.id).order_by(Series.id))
    return {**study_summary(row), "tags": row.tags, "patient_tags": row.patient.tags,
            "series": [{"id": s.public_id, "modality": s.modality,
                        "number": s.tags.get("SeriesNumber", ""),
                        "description": s.tags.get("SeriesDescription", ""),
                        "instances": getattr(s, "count", 0)} for s in series]}


def series_instances(public_id: str) -> dict[str, Any] | None:
    row = Series.get_or_none(Series.public_id == public_id)
    if row is None:
        return None
    instances = Instance.select().where(Instance.series == row.id).order_by(Instance.id)
    return {"id": row.public_id, "modality": row.modality, "tags": row.tags,
            "study_id": Study.select(Study.public_id).where(Study.id == row.study).scalar(),
            "instances": [{"id": i.public_id, "number": i.tags.get("InstanceNumber", ""),
                           "sop_uid": i.sop_uid, "size": i.size, "received": i.received,
                           "calling_aet": i.calling_aet} for i in instances]}


def received_per_hour(now: float, hours: int = 24) -> list[int]:
    """Instances received in each of the last ``hours`` hours, oldest first (instances since
    deleted are not counted)."""
    start = now - hours * 3600
    bucket = ((Instance.received - start) / 3600).cast("INTEGER")
    counts = dict(tuples(Instance.select(bucket, fn.COUNT(Instance.id))
                         .where(Instance.received >= start).group_by(bucket)))
    return [int(counts.get(h, 0)) for h in range(hours)]


def last_reception_by_source() -> list[dict[str, Any]]:
    """Per calling AE title: the last reception, and how many instances it sent."""
    query = (Instance.select(Instance.calling_aet, Instance.origin, fn.MAX(Instance.received),
                             fn.COUNT(Instance.id))
             .group_by(Instance.calling_aet, Instance.origin)
             .order_by(fn.MAX(Instance.received).desc()))
    return [{"aet": aet or f"({origin})", "last": last, "count": count}
            for aet, origin, last, count in tuples(query)]


def recent_instances(limit: int) -> Iterator[tuple[str, InstanceTags, Origin, str]]:
    """The last ``limit`` received instances as the routing rules see them: (study public ID,
    tags, origin, storage name)."""
    query = (Instance.select(Instance, Series, Study, Patient).join(Series).join(Study)
             .join(Patient).order_by(Instance.id.desc()).limit(limit))
    for i in query:
        series = i.series
        tags = InstanceTags(series.study.patient.tags, series.study.tags, series.tags, i.tags,
                            i.sop_class_uid, i.transfer_syntax)
        yield (series.study.public_id, tags,
               Origin(i.calling_aet, i.called_aet, i.remote_address, i.origin), i.file)


def hours_ago_labels(now: float, hours: int = 24) -> list[str]:
    """The local hour each bucket of ``received_per_hour`` starts at."""
    start = now - hours * 3600
    return [time.strftime("%H:%M", time.localtime(start + h * 3600)) for h in range(hours)]
