"""Differential test against a real Orthanc (Debian package): the same files uploaded to both
over REST must give the same identifiers, resource JSON, tags, ``/tools/find`` answers and
``/statistics`` counts."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from .conftest import ApplianceProcess
from .peers import Orthanc
from .test_rest_api import part10

pytestmark = pytest.mark.integration

FILES = ["CT_small.dcm", "MR_small.dcm", "rtplan.dcm", "rtstruct.dcm", "rtdose.dcm",
         "SC_rgb_jpeg_dcmtk.dcm"]
LEVELS = ("patients", "studies", "series", "instances")
# Ours, not Orthanc 1.10's (Debian 12): storage details, newer Orthanc keys (Labels, the
# instance's SOPClassUID/TransferSyntax of 1.12), and the timing-dependent IsStable/LastUpdate.
OURS_ONLY = {"Labels", "IsProtected", "ProtectedUntil", "FileUuid", "ReceptionDate",
             "RemoteAET", "SOPClassUID", "TransferSyntax", "IsStable", "LastUpdate"}
# Main tags Orthanc added after 1.10, which we show as newer versions do.
NEWER_MAIN_TAGS = {"TimezoneOffsetFromUTC", "ImageComments"}
FINDS = [
    {"Level": "Patient", "Query": {"PatientName": "*SAMPLES*"}},
    {"Level": "Patient", "Query": {"PatientName": "compressedsamples^ct1"}},
    {"Level": "Study", "Query": {"StudyDate": "20040101-20041231"}},
    {"Level": "Study", "Query": {"PatientID": "1CT1\\4MR1"}},
    {"Level": "Series", "Query": {"Modality": "RT*"}},
    {"Level": "Series", "Query": {"Modality": "CT\\MR\\OT"}, "Limit": 2},
    {"Level": "Series", "Query": {"PatientName": "*^*"}, "Since": 1, "Limit": 3},
    {"Level": "Instance", "Query": {"SOPInstanceUID": "1.3.6.1.4.1.5962.1.1.1.1.1.20040119072730"
                                                      ".12322\\1.2.3"}},
    {"Level": "Instance", "Query": {"Modality": "CT\\MR\\RTDOSE"}, "Expand": True},
    {"Level": "Study", "Query": {"StudyDescription": "E+1"}, "CaseSensitive": False},
    {"Level": "Study", "Query": {"StudyDescription": "E+1"}},
    {"Level": "Study", "Query": {"StudyDescription": "E+1"}, "CaseSensitive": True},
    {"Level": "Patient", "Query": {"PatientName": "compressed*"}, "CaseSensitive": True},
]


SESSION = requests.Session()  # the box's token is added to it for its URLs


@pytest.fixture
def pair(appliance: ApplianceProcess, tmp_path: Path) -> Iterator[tuple[str, str]]:
    orthanc = Orthanc(tmp_path / "orthanc")
    SESSION.headers["Authorization"] = appliance.session.headers["Authorization"]
    try:
        yield orthanc.url, appliance.url
    finally:
        orthanc.stop()


def get(url: str) -> Any:
    r = SESSION.get(url, timeout=30)
    r.raise_for_status()
    return r.json()


def resource(json: dict[str, Any]) -> dict[str, Any]:
    """What both must agree on: children as sets, our extra keys and newer tags left out."""
    out = {k: sorted(v) if isinstance(v, list) else v
           for k, v in json.items() if k not in OURS_ONLY}
    out["MainDicomTags"] = {k: v for k, v in json["MainDicomTags"].items()
                            if k not in NEWER_MAIN_TAGS}
    return out


def public_tags(tags: dict[str, Any]) -> dict[str, Any]:
    """Tags without private names and retirement marks (dictionary editions differ); values
    and types still compared."""
    out = {}
    for key, entry in tags.items():
        private = int(key[:4], 16) % 2 == 1
        value = entry["Value"]
        if entry["Type"] == "Sequence":
            value = [public_tags(item) for item in value]
        out[key] = {"Type": entry["Type"], "Value": value,
                    **({} if private else {"Name": entry["Name"].removeprefix("RETIRED_")})}
    return out


def differences(ours: Any, theirs: Any, path: str = "") -> list[str]:
    """Where two JSON values differ, as readable paths (for the assertion message)."""
    if isinstance(ours, dict) and isinstance(theirs, dict):
        return [d for k in sorted(set(ours) | set(theirs))
                for d in differences(ours.get(k), theirs.get(k), f"{path}/{k}")]
    if isinstance(ours, list) and isinstance(theirs, list) and len(ours) == len(theirs):
        return [d for i, (a, b) in enumerate(zip(ours, theirs, strict=True))
                for d in differences(a, b, f"{path}[{i}]")]
    return [] if ours == theirs else [f"{path}: ours {ours!r}, Orthanc {theirs!r}"]


def test_same_answers_as_orthanc(pair: tuple[str, str], tmp_path: Path) -> None:
    orthanc, box = pair
    for name in FILES:
        data = part10(name, tmp_path / "files").read_bytes()
        theirs = SESSION.post(f"{orthanc}/instances", data=data, timeout=30).json()
        ours = SESSION.post(f"{box}/instances", data=data, timeout=30).json()
        assert ours == theirs, name
    again = part10(FILES[0], tmp_path / "files").read_bytes()
    assert SESSION.post(f"{box}/instances", data=again, timeout=30).json()["Status"] == \
        SESSION.post(f"{orthanc}/instances", data=again, timeout=30).json()["Status"]

    for level in LEVELS:
        ids = get(f"{orthanc}/{level}")
        assert sorted(get(f"{box}/{level}")) == sorted(ids), level
        for public_id in ids:
            assert differences(resource(get(f"{box}/{level}/{public_id}")),
                               resource(get(f"{orthanc}/{level}/{public_id}"))) == []
            assert get(f"{box}/{level}/{public_id}/statistics")["DiskSize"] == \
                get(f"{orthanc}/{level}/{public_id}/statistics")["DiskSize"]
    for public_id in get(f"{orthanc}/instances"):
        assert differences(public_tags(get(f"{box}/instances/{public_id}/tags")),
                           public_tags(get(f"{orthanc}/instances/{public_id}/tags"))) == []
        assert get(f"{box}/instances/{public_id}/simplified-tags")["SOPInstanceUID"] == \
            get(f"{orthanc}/instances/{public_id}/simplified-tags")["SOPInstanceUID"]
        short = get(f"{orthanc}/instances/{public_id}/tags?short")
        assert get(f"{box}/instances/{public_id}/tags?short")["0008,0018"] == short["0008,0018"]

    for body in FINDS:
        theirs = SESSION.post(f"{orthanc}/tools/find", json=body, timeout=30).json()
        ours = SESSION.post(f"{box}/tools/find", json=body, timeout=30).json()
        if "Limit" in body or "Since" in body:
            # pages of an order neither defines: the same size, taken from the same answers
            whole = {k: v for k, v in body.items() if k not in ("Limit", "Since")}
            every = SESSION.post(f"{orthanc}/tools/find", json=whole, timeout=30).json()
            assert len(ours) == len(theirs) and set(ours) <= set(every), body
        elif body.get("Expand"):
            assert sorted(r["ID"] for r in ours) == sorted(r["ID"] for r in theirs), body
            by_id = sorted(ours, key=lambda r: r["ID"]), sorted(theirs, key=lambda r: r["ID"])
            assert differences([resource(r) for r in by_id[0]],
                               [resource(r) for r in by_id[1]]) == [], body
        else:
            assert sorted(ours) == sorted(theirs), body

    counts = ("CountPatients", "CountStudies", "CountSeries", "CountInstances")
    theirs_stats, ours_stats = get(f"{orthanc}/statistics"), get(f"{box}/statistics")
    assert {k: ours_stats[k] for k in counts} == {k: theirs_stats[k] for k in counts}
