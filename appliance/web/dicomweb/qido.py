"""QIDO-RS (PS3.18 10.6): searches for studies, series and instances, answered in the DICOM
JSON model (PS3.18 F.2) with the matching rules of C-FIND."""

from __future__ import annotations

from itertools import islice
from typing import Any

import bottle

from ...config import Config
from ...dicom.query import INDEX_KEYS, Level, answer
from ...index.search import Match
from ...store import Store
from ..api.common import int_param
from ..api.tools import find
from .common import base_url, dicom_json

# PS3.18 Tables 10.6.3-3 to -5: the attributes every answer carries (RetrieveURL added).
DEFAULT_KEYS = {
    Level.STUDY: ["StudyDate", "StudyTime", "AccessionNumber", "InstanceAvailability",
                  "ModalitiesInStudy", "ReferringPhysicianName", "TimezoneOffsetFromUTC",
                  "PatientName", "PatientID", "PatientBirthDate", "PatientSex",
                  "StudyInstanceUID", "StudyID", "NumberOfStudyRelatedSeries",
                  "NumberOfStudyRelatedInstances"],
    Level.SERIES: ["StudyInstanceUID", "Modality", "TimezoneOffsetFromUTC", "SeriesDescription",
                   "SeriesInstanceUID", "SeriesNumber", "NumberOfSeriesRelatedInstances"],
    Level.IMAGE: ["StudyInstanceUID", "SeriesInstanceUID", "SOPClassUID", "SOPInstanceUID",
                  "InstanceAvailability", "TimezoneOffsetFromUTC", "InstanceNumber", "Rows",
                  "Columns", "BitsAllocated", "NumberOfFrames"],
}  # fmt: skip
CONTROL = {"limit", "offset", "fuzzymatching", "includefield"}


def _request_keys() -> tuple[dict[str, str], list[str]]:
    """(constraints, extra return keys) from the query string."""
    query = bottle.request.query
    constraints = {k: query.getunicode(k) or "" for k in query if k not in CONTROL}
    included = [name for value in query.getall("includefield")
                for name in value.split(",") if name.strip()]
    return constraints, included


def search(store: Store, config: Config, level: Level, fixed: dict[str, str]) -> Any:
    """One QIDO-RS search: the query string's keys plus the path's UIDs (``fixed``), answered
    with the level's default attributes, ``includefield`` ones and each match's RetrieveURL."""
    constraints, included = _request_keys()
    if "all" in included:
        included = [k for lvl in Level if lvl <= level for k in INDEX_KEYS[lvl]]
    constraints.update(fixed)
    returned = DEFAULT_KEYS[level] + included
    if level is not Level.STUDY and "StudyInstanceUID" not in fixed:
        returned = DEFAULT_KEYS[Level.STUDY] + returned
    fold_pn = not config.dicom.case_sensitive_pn  # C-FIND's rule: only names may fold
    query, matches = find(store, level, constraints, returned,
                          lambda vr: fold_pn and vr == "PN")
    offset = int_param("offset", 0) or 0
    limit = int_param("limit", None)
    page = islice(matches, offset, None if limit is None else offset + limit)
    base = base_url()
    out = []
    for match in page:
        ds = answer(query, match.value, config.dicom.aet)
        del ds.QueryRetrieveLevel
        del ds.RetrieveAETitle
        ds.add_new(0x00081190, "UR", _retrieve_url(base, match))
        out.append(ds.to_json_dict())
    return dicom_json(out)


def _retrieve_url(base: str, match: Match) -> str:
    """The WADO-RS address of a match (PS3.18 10.6.3.3.1 RetrieveURL)."""
    url = base
    for level, path, keyword in URL_PARTS:
        if level <= match.level:
            url += f"/{path}/{match.tags[level].get(keyword, '')}"
    return url


URL_PARTS = ((Level.STUDY, "studies", "StudyInstanceUID"),
             (Level.SERIES, "series", "SeriesInstanceUID"),
             (Level.IMAGE, "instances", "SOPInstanceUID"))


def install(app: bottle.Bottle, prefix: str, config: Config, store: Store) -> None:
    @app.get(f"{prefix}/studies")
    def studies() -> Any:
        return search(store, config, Level.STUDY, {})

    @app.get(f"{prefix}/series")
    def all_series() -> Any:
        return search(store, config, Level.SERIES, {})

    @app.get(f"{prefix}/studies/<study>/series")
    def series(study: str) -> Any:
        return search(store, config, Level.SERIES, {"StudyInstanceUID": study})

    @app.get(f"{prefix}/instances")
    def all_instances() -> Any:
        return search(store, config, Level.IMAGE, {})

    @app.get(f"{prefix}/studies/<study>/instances")
    def study_instances(study: str) -> Any:
        return search(store, config, Level.IMAGE, {"StudyInstanceUID": study})

    @app.get(f"{prefix}/studies/<study>/series/<series_uid>/instances")
    def instances(study: str, series_uid: str) -> Any:
        return search(store, config, Level.IMAGE,
                      {"StudyInstanceUID": study, "SeriesInstanceUID": series_uid})

