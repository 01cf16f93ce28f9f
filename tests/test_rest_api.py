"""The Orthanc-compatible REST API driven by pyorthanc (the PyPI client for Orthanc) and by
plain HTTP for the error cases."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path
from typing import Any

import pyorthanc
import pytest
import requests
from PIL import Image
from pydicom import dcmread

from .conftest import (
    ADMIN,
    ADMIN_PASSWORD,
    ApplianceProcess,
    make_series,
    pydicom_file,
    storescu,
    wait_for,
)

pytestmark = pytest.mark.integration

FILES = ["CT_small.dcm", "MR_small.dcm", "rtplan.dcm", "rtstruct.dcm", "rtdose.dcm"]


def part10(name: str, folder: Path) -> Path:
    """A pydicom test file as a Part 10 file (``rtstruct.dcm`` is a bare dataset)."""
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ImplicitVRLittleEndian

    ds = dcmread(pydicom_file(name), force=True)
    if "TransferSyntaxUID" not in ds.file_meta:
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
        ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    folder.mkdir(parents=True, exist_ok=True)
    ds.save_as(folder / name, enforce_file_format=True)
    return folder / name


def post(app: ApplianceProcess, path: str, **kw: Any) -> requests.Response:
    return app.session.post(app.url + path, timeout=60, **kw)


def test_pyorthanc_upload_list_find_tags_download_protect_delete(
        appliance: ApplianceProcess, tmp_path: Path) -> None:
    client = pyorthanc.Orthanc(appliance.url, username=ADMIN, password=ADMIN_PASSWORD)
    uploaded = [pyorthanc.upload(client, part10(name, tmp_path))[0] for name in FILES]
    assert len(client.get_instances()) == len(FILES)
    ct = dcmread(pydicom_file("CT_small.dcm"))

    (study,) = pyorthanc.find_studies(client, query={"PatientID": str(ct.PatientID)})
    assert study.uid == ct.StudyInstanceUID
    assert pyorthanc.find_studies(client, query={"PatientName": "compressedsamples^ct*"})
    assert [s.modality for s in pyorthanc.find_series(client, query={"Modality": "RTPLAN"})] \
        == ["RTPLAN"]

    instance = next(i for i in uploaded if i.uid == ct.SOPInstanceUID)
    assert instance.simplified_tags["PatientName"] == str(ct.PatientName)
    assert client.get_instances_id_tags(instance.id_)["0010,0020"]["Value"] == ct.PatientID
    assert dcmread(io.BytesIO(instance.get_dicom_file_content())).SOPInstanceUID \
        == ct.SOPInstanceUID

    patient = pyorthanc.Patient(client.get_studies_id(study.id_)["ParentPatient"], client)
    assert not patient.protected
    patient.protected = True
    assert patient.protected
    assert appliance.json(f"/studies/{study.id_}/patient")["IsProtected"]
    assert client.get_statistics()["CountInstances"] == len(FILES)
    client.delete_studies_id(study.id_)
    stats = client.get_statistics()
    assert stats["CountInstances"] == len(FILES) - 1
    assert stats["CountStudies"] == len(client.get_studies())


def test_zip_upload_archive_preview_and_related_routes(appliance: ApplianceProcess,
                                                        tmp_path: Path) -> None:
    files = make_series(tmp_path / "s", 3)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for f in files:
            archive.write(f, f.name)
        archive.writestr("readme.txt", "not DICOM")
    results = post(appliance, "/instances", data=buffer.getvalue()).json()
    assert sorted(r["Status"] for r in results) == ["Failure", "Success", "Success", "Success"]
    assert next(r for r in results if r["File"] == "readme.txt")["FailureReason"] == 0xC000

    (study,) = appliance.json("/studies")
    series = appliance.json(f"/studies/{study}/series")
    assert [s["Type"] for s in series] == ["Series"]
    instances = appliance.json(f"/series/{series[0]['ID']}/instances")
    assert len(instances) == 3
    assert appliance.json(f"/instances/{instances[0]['ID']}/study")["ID"] == study
    patient = appliance.json(f"/studies/{study}/patient")
    assert len(appliance.json(f"/patients/{patient['ID']}/instances")) == 3

    r = appliance.get(f"/studies/{study}/archive")
    assert r.status_code == 200 and r.headers["Content-Type"] == "application/zip"
    with zipfile.ZipFile(io.BytesIO(r.content)) as archive:
        names = archive.namelist()
        assert len(names) == 3
        got = {dcmread(io.BytesIO(archive.read(n))).SOPInstanceUID for n in names}
    assert got == {dcmread(f).SOPInstanceUID for f in files}

    png = appliance.get(f"/instances/{instances[0]['ID']}/preview")
    assert png.headers["Content-Type"] == "image/png"
    assert Image.open(io.BytesIO(png.content)).size == (64, 64)


def test_preview_of_a_jpeg_and_of_undecodable_pixels(appliance: ApplianceProcess) -> None:
    jpeg = post(appliance, "/instances",
                data=pydicom_file("SC_rgb_jpeg_dcmtk.dcm").read_bytes()).json()
    image = Image.open(io.BytesIO(appliance.get(f"/instances/{jpeg['ID']}/preview").content))
    assert image.mode == "RGB"
    for name in ("rtplan.dcm", "SC_rgb_jpeg_gdcm.dcm"):  # no pixels; JPEG lossless: no codec
        stored = post(appliance, "/instances", data=pydicom_file(name).read_bytes()).json()
        r = appliance.get(f"/instances/{stored['ID']}/preview")
        assert r.status_code == 415 and r.json()["Message"], name


def test_the_pixel_helper_does_not_outlive_a_killed_appliance(appliance: ApplianceProcess
                                                              ) -> None:
    """``kill -9`` of the appliance: its pixel helper process (started by a preview) exits
    too, instead of lingering with its decoders."""
    assert appliance.proc is not None
    jpeg = post(appliance, "/instances",
                data=pydicom_file("SC_rgb_jpeg_dcmtk.dcm").read_bytes()).json()
    assert appliance.get(f"/instances/{jpeg['ID']}/preview").status_code == 200
    helpers = children(appliance.proc.pid)
    assert helpers, "a preview starts the pixel helper"
    appliance.kill()
    wait_for(lambda: not any(Path(f"/proc/{pid}").exists() for pid in helpers), 30,
             "the pixel helper to exit after the appliance")


def children(pid: int) -> list[int]:
    return [int(child) for task in Path(f"/proc/{pid}/task").iterdir()
            for child in (task / "children").read_text().split()]


def test_tools_find_follows_cfind_matching(appliance: ApplianceProcess, tmp_path: Path) -> None:
    make = make_series
    storescu(appliance, *make(tmp_path / "a", 2, patient_id="A1", patient_name="Doe^John"))
    storescu(appliance, *make(tmp_path / "b", 1, patient_id="B2", patient_name="Roe^Jane",
                              modality="MR"))

    def find(body: dict[str, Any]) -> Any:
        r = post(appliance, "/tools/find", json=body)
        assert r.status_code == 200, r.text
        return r.json()

    assert len(find({"Level": "Study", "Query": {"PatientName": "doe*"}})) == 1
    assert not find({"Level": "Study", "Query": {"PatientName": "doe*"}, "CaseSensitive": True})
    assert len(find({"Level": "Series", "Query": {"Modality": "CT\\MR"}})) == 2
    assert len(find({"Level": "Instance", "Query": {"PatientID": "A?"}})) == 2
    assert len(find({"Level": "Instance", "Query": {}, "Limit": 2, "Since": 1})) == 2
    assert find({"Level": "Study", "Query": {"StudyDate": "20270101-"}}) == []
    (expanded,) = find({"Level": "Patient", "Query": {"PatientID": "B2"}, "Expand": True})
    assert expanded["MainDicomTags"]["PatientName"] == "Roe^Jane"
    (lookup,) = post(appliance, "/tools/lookup", data="B2").json()
    assert lookup["Type"] == "Patient" and lookup["ID"] == expanded["ID"]


@pytest.mark.parametrize("body, message", [
    ("not json", "not valid JSON"),
    ({"Level": "Galaxy", "Query": {}}, "Level"),
    ({"Level": "Study"}, "Query"),
    ({"Level": "Study", "Query": {"NoSuchKeyword": "x"}}, "neither a DICOM keyword"),
    ({"Level": "Study", "Query": {"SOPInstanceUID": "1.2"}}, "below the STUDY level"),
    ({"Level": "Study", "Query": {}, "Limit": -1}, "Limit"),
])
def test_tools_find_bad_bodies_are_400(appliance: ApplianceProcess, body: Any,
                                       message: str) -> None:
    kw = {"data": body} if isinstance(body, str) else {"json": body}
    r = post(appliance, "/tools/find", **kw)
    assert r.status_code == 400 and message in r.json()["Message"], r.text


def test_errors_unknown_ids_non_dicom_and_oversize(appliance_factory: Any,
                                                   tmp_path: Path) -> None:
    app = appliance_factory(config={"http": {"max_upload_mb": 0.1}}).start()
    for path in ("/instances/nope/tags", "/instances/nope/preview", "/studies/nope/archive",
                 "/studies/nope/series", "/series/nope/patient", "/instances/nope/file"):
        r = app.get(path)
        assert r.status_code == 404 and r.json()["HttpStatus"] == 404, path
    r = post(app, "/instances", data=b"GIF89a not a DICOM file" * 10)
    assert r.status_code == 400 and "not a DICOM instance" in r.json()["Message"]
    big = make_series(tmp_path / "big", 1, size=256)[0]  # 128 KB of pixels
    r = post(app, "/instances", data=big.read_bytes())
    assert r.status_code == 413
    r = post(app, "/instances", data=(c for c in [big.read_bytes()]))  # chunked, no length
    assert r.status_code == 413
    assert app.statistics()["CountInstances"] == 0
    assert list((app.data / "tmp").iterdir()) == [], "uploads leave nothing behind"
    assert app.get("/changes?last").json()["Changes"] == []
