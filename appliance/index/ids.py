"""Public identifiers exactly as Orthanc computes them (``DicomInstanceHasher``).

SHA-1 of ``PatientID``, ``PatientID|StudyInstanceUID``, ``...|SeriesInstanceUID``,
``...|SOPInstanceUID``; the hex digest written as five groups of 8 separated by ``-``.
"""

from __future__ import annotations

import hashlib
from typing import NamedTuple


def orthanc_hash(text: str) -> str:
    h = hashlib.sha1(text.encode("utf-8")).hexdigest()
    return "-".join(h[i : i + 8] for i in range(0, 40, 8))


class PublicIds(NamedTuple):
    patient: str
    study: str
    series: str
    instance: str


def public_ids(patient_id: str, study_uid: str, series_uid: str, sop_uid: str) -> PublicIds:
    study_key = f"{patient_id}|{study_uid}"
    series_key = f"{study_key}|{series_uid}"
    return PublicIds(
        orthanc_hash(patient_id),
        orthanc_hash(study_key),
        orthanc_hash(series_key),
        orthanc_hash(f"{series_key}|{sop_uid}"),
    )
