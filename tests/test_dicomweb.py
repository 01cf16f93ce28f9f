"""DICOMweb (QIDO-RS, WADO-RS, STOW-RS) driven by dicomweb-client, the PyPI client."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import pytest
import requests
from dicomweb_client.api import DICOMwebClient
from PIL import Image
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from .conftest import ApplianceProcess, make_series, pydicom_file, storescu

pytestmark = pytest.mark.integration

NAMES = ["CT_small.dcm", "MR_small.dcm", "SC_rgb_jpeg_dcmtk.dcm", "JPEG2000.dcm"]


def client(app: ApplianceProcess) -> DICOMwebClient:
    return DICOMwebClient(f"{app.url}/dicom-web",
                          headers={"Authorization": app.session.headers["Authorization"]})


def uids(ds: Dataset) -> tuple[str, str, str]:
    return ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID


def test_stow_then_qido_and_wado(appliance: ApplianceProcess) -> None:
    web = client(appliance)
    datasets = [dcmread(pydicom_file(n)) for n in NAMES]
    answer = web.store_instances(datasets)
    assert len(answer.ReferencedSOPSequence) == len(NAMES)
    assert "FailedSOPSequence" not in answer or not answer.FailedSOPSequence
    assert appliance.statistics()["CountInstances"] == len(NAMES)

    ct, mr = datasets[0], datasets[1]
    studies = web.search_for_studies()
    assert len(studies) == len(NAMES)
    (found,) = web.search_for_studies(search_filters={"PatientName": "CompressedSamples^CT*"})
    assert Dataset.from_json(found).StudyInstanceUID == ct.StudyInstanceUID
    assert Dataset.from_json(found).ModalitiesInStudy == "CT"
    (found,) = web.search_for_studies(search_filters={"00100020": mr.PatientID})
    assert Dataset.from_json(found).NumberOfStudyRelatedInstances == 1
    assert len(web.search_for_studies(limit=2, offset=1)) == 2
    (series,) = web.search_for_series(ct.StudyInstanceUID)
    assert Dataset.from_json(series).Modality == "CT"
    (instance,) = web.search_for_instances(ct.StudyInstanceUID, ct.SeriesInstanceUID,
                                           fields=["ImageType"])
    found_ds = Dataset.from_json(instance)
    assert found_ds.SOPInstanceUID == ct.SOPInstanceUID and found_ds.Rows == 128
    assert list(found_ds.ImageType) == list(ct.ImageType)
    assert web.search_for_series(search_filters={"Modality": "XA"}) == []

    got = web.retrieve_instance(*uids(ct))
    assert got.PixelData == ct.PixelData
    (whole,) = web.retrieve_study(mr.StudyInstanceUID)
    assert whole.SOPInstanceUID == mr.SOPInstanceUID
    (meta,) = web.retrieve_series_metadata(ct.StudyInstanceUID, ct.SeriesInstanceUID)
    meta_ds = Dataset.from_json(meta)
    assert meta_ds.PatientName == ct.PatientName and "PixelData" not in meta_ds

    (frame,) = web.retrieve_instance_frames(*uids(ct), frame_numbers=[1])
    assert frame == ct.PixelData
    jpeg = datasets[2]
    (frame,) = web.retrieve_instance_frames(*uids(jpeg), frame_numbers=[1])
    assert len(frame) == jpeg.Rows * jpeg.Columns * 3, "frames are sent uncompressed"
    png = web.retrieve_instance_rendered(*uids(ct), media_types=("image/png",))
    assert Image.open(io.BytesIO(png)).size == (128, 128)
    rendered = web.retrieve_instance_rendered(*uids(jpeg))
    assert Image.open(io.BytesIO(rendered)).format == "JPEG"


def test_stow_reports_failures_per_instance(appliance: ApplianceProcess,
                                            tmp_path: Path) -> None:
    good = make_series(tmp_path / "s", 2)
    boundary = "xyzzy"
    parts = [p.read_bytes() for p in good] + [b"this is not DICOM"]
    body = b"".join(b"--%s\r\nContent-Type: application/dicom\r\n\r\n%s\r\n"
                    % (boundary.encode(), p) for p in parts) + b"--xyzzy--\r\n"
    r = stow(appliance, body, boundary)
    assert r.status_code == 202, r.text
    answer = Dataset.from_json(r.json())
    assert len(answer.ReferencedSOPSequence) == 2
    (failed,) = answer.FailedSOPSequence
    assert failed.FailureReason == 0xC000

    other = dcmread(pydicom_file("CT_small.dcm"))
    r = stow(appliance, body, boundary, study=other.StudyInstanceUID)
    assert r.status_code == 409, "no instance of that study"
    reasons = [i.FailureReason for i in Dataset.from_json(r.json()).FailedSOPSequence]
    assert reasons == [0xA900, 0xA900, 0xA900]
    assert appliance.statistics()["CountInstances"] == 2
    assert list((appliance.data / "tmp").iterdir()) == []


def app_get(app: ApplianceProcess, url: str, **kw: Any) -> requests.Response:
    return app.session.get(url, **kw)


def stow(app: ApplianceProcess, body: bytes, boundary: str, study: str = "",
         media: str = "application/dicom") -> requests.Response:
    path = f"/dicom-web/studies/{study}" if study else "/dicom-web/studies"
    headers = {"Content-Type": f'multipart/related; type="{media}"; boundary={boundary}'}
    return app.session.post(app.url + path, data=body, headers=headers, timeout=60)


@pytest.mark.parametrize("case", ["truncated", "not-multipart", "json-parts", "no-parts"])
def test_malformed_stow_is_refused_and_stores_nothing(appliance: ApplianceProcess,
                                                      tmp_path: Path, case: str) -> None:
    part = make_series(tmp_path / "s", 1)[0].read_bytes()
    body = b"--b\r\nContent-Type: application/dicom\r\n\r\n" + part
    status: dict[str, Any] = {
        "truncated": (stow(appliance, body, "b"), 400),
        "not-multipart": (appliance.session.post(f"{appliance.url}/dicom-web/studies", data=part,
                                        headers={"Content-Type": "application/dicom"},
                                        timeout=30), 415),
        "json-parts": (stow(appliance, body, "b", media="application/dicom+json"), 415),
        "no-parts": (stow(appliance, b"--b--\r\n", "b"), 400),
    }
    response, expected = status[case]
    assert response.status_code == expected, response.text
    assert appliance.statistics()["CountInstances"] == 0
    assert list((appliance.data / "tmp").iterdir()) == []


def test_qido_and_wado_errors(appliance: ApplianceProcess, tmp_path: Path) -> None:
    files = make_series(tmp_path / "s", 1)
    storescu(appliance, *files)
    ds = dcmread(files[0])
    base = f"{appliance.url}/dicom-web"
    assert app_get(appliance, f"{base}/studies/1.2.3", timeout=30).status_code == 404
    assert app_get(appliance, f"{base}/studies?NoSuchKeyword=1", timeout=30).status_code == 400
    assert app_get(appliance, f"{base}/studies?limit=x", timeout=30).status_code == 400
    instance = f"{base}/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}" \
               f"/instances/{ds.SOPInstanceUID}"
    assert app_get(appliance, f"{instance}/frames/2", timeout=30).status_code == 404
    assert app_get(appliance, f"{instance}/frames/0", timeout=30).status_code == 400
    jpeg = "1.2.840.10008.1.2.4.50"
    r = app_get(appliance, instance, timeout=30, headers={
        "Accept": f'multipart/related; type="application/dicom"; transfer-syntax={jpeg}'})
    assert r.status_code == 406
    assert app_get(appliance, f"{base}/studies?fuzzymatching=true", timeout=30).status_code == 200


def wado_instance(app: ApplianceProcess, ds: Dataset, syntax: str | None
                  ) -> tuple[requests.Response, bytes, str]:
    """GET one instance (``syntax``: the Accept's transfer-syntax, None: none given); the
    response, its one part's body and the part's Content-Type."""
    accept = 'multipart/related; type="application/dicom"'
    if syntax is not None:
        accept += f"; transfer-syntax={syntax}"
    study, series, sop = uids(ds)
    r = app_get(app, f"{app.url}/dicom-web/studies/{study}/series/{series}/instances/{sop}",
                timeout=120, headers={"Accept": accept})
    if r.status_code != 200:
        return r, b"", ""
    boundary = r.headers["Content-Type"].split("boundary=")[1].strip('"').encode()
    (part,) = [p for p in r.content.split(b"--" + boundary)[1:] if p.strip() not in (b"--", b"")]
    head, _, body = part.partition(b"\r\n\r\n")
    media = next(line.split(b":", 1)[1].strip().decode() for line in head.splitlines()
                 if line.lower().startswith(b"content-type"))
    return r, body[:-2], media  # the part ends with CRLF before the next delimiter


def test_wado_sends_explicit_le_unless_asked_for_the_stored_syntax(
        appliance: ApplianceProcess) -> None:
    """PS3.18 8.7.3.5.2: without a transfer-syntax the instances come in Explicit VR Little
    Endian (decompressed or re-encoded in the pixel helper); ``*`` gives the stored bytes; an
    instance that cannot be converted here is a 406 that names the way out."""
    names = ["MR_small_implicit.dcm", "SC_rgb_jpeg_dcmtk.dcm", "JPEG2000.dcm",
             "MR_small_jpeg_ls_lossless.dcm"]
    datasets = [dcmread(pydicom_file(n)) for n in names]
    jpeg_ls = datasets[3]  # an MR_small like the first: same UIDs unless changed
    jpeg_ls.SOPInstanceUID = jpeg_ls.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    client(appliance).store_instances(datasets)
    explicit = "1.2.840.10008.1.2.1"
    for ds in datasets[:3]:
        for asked in (None, explicit):
            r, body, media = wado_instance(appliance, ds, asked)
            assert r.status_code == 200 and media.endswith(f"transfer-syntax={explicit}"), media
            got = dcmread(io.BytesIO(body))
            assert got.file_meta.TransferSyntaxUID == explicit
            assert got.SOPInstanceUID == ds.SOPInstanceUID
            assert (got.pixel_array == ds.pixel_array).all(), "the same pixels, uncompressed"
        r, body, media = wado_instance(appliance, ds, "*")
        stored = ds.file_meta.TransferSyntaxUID
        assert media.endswith(f"transfer-syntax={stored}")
        assert dcmread(io.BytesIO(body)).PixelData == ds.PixelData, "as stored"
    r, _, _ = wado_instance(appliance, jpeg_ls, None)
    assert r.status_code == 406 and "transfer-syntax=*" in r.json()["Message"], r.text[:300]
    r, body, media = wado_instance(appliance, jpeg_ls, "*")
    assert r.status_code == 200 and dcmread(io.BytesIO(body)).PixelData == jpeg_ls.PixelData
