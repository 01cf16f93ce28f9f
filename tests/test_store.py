"""Real-peer integration tests of the C-ECHO/C-STORE SCP and the read-only REST API.

Every test starts its own ``appliance serve`` process and talks to it with DCMTK or pynetdicom,
then checks what the REST API (and the stored bytes) say against what was sent.
"""

from __future__ import annotations

import hashlib
import io
import re
import signal
import struct
import subprocess
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from pydicom import dcmread
from pydicom.filereader import read_file_meta_info
from pydicom.uid import UID

from appliance.index.ids import PublicIds, public_ids

from .conftest import (
    DCMTK_ENV,
    SUCCESS_LINE,
    ApplianceProcess,
    dcmtk,
    make_series,
    pydicom_file,
    pynetdicom_file,
    storescu,
    wait_for,
)

pytestmark = pytest.mark.integration

LEVELS = ("patients", "studies", "series", "instances")
LONG_VRS = {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT",
            b"UV"}


# --- helpers ---------------------------------------------------------------------------------

def ids_of(path: Path) -> PublicIds:
    """The Orthanc identifiers of a file, computed from its own tags (files without file meta
    information, like rtstruct.dcm, are read with ``force``)."""
    ds = dcmread(path, stop_before_pixels=True, force=True)
    return public_ids(str(ds.get("PatientID", "") or ""), str(ds.StudyInstanceUID),
                      str(ds.SeriesInstanceUID), str(ds.SOPInstanceUID))


def split_part10(data: bytes) -> tuple[bytes, bytes]:
    """(file meta group, dataset bytes) of a Part 10 file; asserts the preamble and DICM prefix.

    Group 0002 is always explicit VR little endian; it ends at the first element of another
    group.
    """
    assert len(data) >= 132 and data[128:132] == b"DICM", "no Part 10 preamble and DICM prefix"
    pos = 132
    while pos + 8 <= len(data):
        group, _elem = struct.unpack("<HH", data[pos:pos + 4])
        if group != 0x0002:
            break
        vr = data[pos + 4:pos + 6]
        if vr in LONG_VRS:
            (length,) = struct.unpack("<I", data[pos + 8:pos + 12])
            pos += 12 + length
        else:
            (length,) = struct.unpack("<H", data[pos + 6:pos + 8])
            pos += 8 + length
    return data[132:pos], data[pos:]


def instance_file(app: ApplianceProcess, instance_id: str) -> bytes:
    r = app.get(f"/instances/{instance_id}/file")
    assert r.status_code == 200, r.text
    assert r.headers["Content-Type"] == "application/dicom"
    return r.content


def check_part10(data: bytes, tmp_path: Path, sop_class: str, sop_instance: str,
                 transfer_syntax: str) -> None:
    """The stored file has a valid Part 10 header describing the instance."""
    meta_bytes, _ = split_part10(data)
    path = tmp_path / f"stored-{hashlib.md5(data).hexdigest()}.dcm"
    path.write_bytes(data)
    meta = read_file_meta_info(path)
    assert meta.TransferSyntaxUID == transfer_syntax
    assert meta.MediaStorageSOPClassUID == sop_class
    assert meta.MediaStorageSOPInstanceUID == sop_instance
    # (0002,0000) counts the bytes of the group after itself (12 bytes: tag, VR, length, UL)
    assert meta.FileMetaInformationGroupLength == len(meta_bytes) - 12
    ds = dcmread(path, stop_before_pixels=True)  # the whole header parses
    assert ds.SOPInstanceUID == sop_instance


def success_count(result: subprocess.CompletedProcess[str]) -> int:
    """storescu -v / dcmsend -v log to stderr ("I: Received Store Response (Success)")."""
    return (result.stdout + result.stderr).count(SUCCESS_LINE)


def expand(app: ApplianceProcess, level: str) -> list[dict[str, Any]]:
    return list(app.json(f"/{level}?expand"))


def blobs(app: ApplianceProcess) -> list[Path]:
    return [p for p in (app.data / "files").rglob("*") if p.is_file()]


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def unique(values: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(values))


# --- 1. echo, storescu, and the REST API -----------------------------------------------------

STORESCU_FILES = [
    pydicom_file("CT_small.dcm"),
    pydicom_file("MR_small.dcm"),
    pydicom_file("rtplan.dcm"),
    pydicom_file("rtdose.dcm"),
    pydicom_file("rtstruct.dcm"),
    pynetdicom_file("RTImageStorage.dcm"),
]


def test_echoscu(appliance: ApplianceProcess) -> None:
    result = dcmtk("echoscu", "-v", "-aec", appliance.aet, "127.0.0.1",
                   str(appliance.dicom_port))
    assert "Received Echo Response (Success)" in result.stdout + result.stderr


def test_echo_to_closed_port_fails(appliance_factory: Any) -> None:
    """The control for the test above: echoscu does report a failure."""
    app = appliance_factory()  # never started: nothing listens on its port
    result = dcmtk("echoscu", "-aec", app.aet, "127.0.0.1", str(app.dicom_port), check=False)
    assert result.returncode != 0


def test_storescu_and_rest_api(appliance: ApplianceProcess, tmp_path: Path) -> None:
    app = appliance
    result = storescu(app, *STORESCU_FILES, options=("-v",))
    assert success_count(result) == len(STORESCU_FILES)

    sent = [ids_of(p) for p in STORESCU_FILES]
    expected = {
        "patients": unique(i.patient for i in sent),
        "studies": unique(i.study for i in sent),
        "series": unique(i.series for i in sent),
        "instances": unique(i.instance for i in sent),
    }
    assert len(expected["instances"]) == len(STORESCU_FILES)

    stats = app.statistics()
    assert stats["CountPatients"] == len(expected["patients"])
    assert stats["CountStudies"] == len(expected["studies"])
    assert stats["CountSeries"] == len(expected["series"])
    assert stats["CountInstances"] == len(expected["instances"])

    # storescu waits for each response before the next request: the order is the sending order
    for level in LEVELS:
        ids = app.json(f"/{level}")
        assert ids == expected[level], level
        expanded = expand(app, level)
        assert [r["ID"] for r in expanded] == ids, level
        assert {r["Type"] for r in expanded} == {
            {"patients": "Patient", "studies": "Study", "series": "Series",
             "instances": "Instance"}[level]
        }
        # paging: the second resource alone
        assert app.json(f"/{level}?limit=1&since=1") == ids[1:2], level
        assert app.json(f"/{level}?since={len(ids)}") == [], level
        assert app.json(f"/{level}?limit=0") == [], level

    instances = expand(app, "instances")
    assert sum(r["FileSize"] for r in instances) == int(stats["TotalDiskSize"])

    for path, ids in zip(STORESCU_FILES, sent, strict=True):
        ds = dcmread(path, stop_before_pixels=True, force=True)
        inst = app.json(f"/instances/{ids.instance}")
        assert inst["ID"] == ids.instance
        assert inst["ParentSeries"] == ids.series
        assert inst["MainDicomTags"]["SOPInstanceUID"] == ds.SOPInstanceUID
        assert inst["SOPClassUID"] == ds.SOPClassUID
        assert inst["RemoteAET"] == "STORESCU"
        data = instance_file(app, ids.instance)
        assert inst["FileSize"] == len(data)
        check_part10(data, tmp_path, ds.SOPClassUID, ds.SOPInstanceUID, inst["TransferSyntax"])

        series = app.json(f"/series/{ids.series}")
        assert series["ParentStudy"] == ids.study
        assert ids.instance in series["Instances"]
        assert series["MainDicomTags"]["SeriesInstanceUID"] == ds.SeriesInstanceUID

        study = app.json(f"/studies/{ids.study}")
        assert study["ParentPatient"] == ids.patient
        assert study["Series"] == unique(i.series for i in sent if i.study == ids.study)
        assert study["MainDicomTags"]["StudyInstanceUID"] == ds.StudyInstanceUID
        assert study["PatientMainDicomTags"].get("PatientID", "") == str(ds.get("PatientID", ""))

        patient = app.json(f"/patients/{ids.patient}")
        assert patient["Studies"] == unique(i.study for i in sent if i.patient == ids.patient)


def test_rest_api_errors(appliance: ApplianceProcess) -> None:
    app = appliance
    storescu(app, pydicom_file("CT_small.dcm"))
    unknown = "00000000-00000000-00000000-00000000-00000000"
    for level in LEVELS:
        for path in (f"/{level}/{unknown}", f"/{level}/{unknown}/statistics"):
            r = app.get(path)
            assert r.status_code == 404, path
            assert r.headers["Content-Type"].startswith("application/json")
            assert r.json()["Message"], path
        for query in ("limit=x", "since=x", "limit=-1", "since=1.5"):
            r = app.get(f"/{level}?{query}")
            assert r.status_code == 400, f"{level}?{query}"
            assert "Message" in r.json()
    r = app.get(f"/instances/{unknown}/file")
    assert r.status_code == 404 and "Message" in r.json()
    # the one instance that is there is found
    (instance,) = app.json("/instances")
    assert app.get(f"/instances/{instance}/file").status_code == 200


def test_store_with_temp_dir_on_another_filesystem(appliance_factory: Any, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """A tmpfs /tmp (the default on many distributions) must not break reception: the
    received dataset has to be spooled on the data's own filesystem."""
    other = Path("/dev/shm")
    if not other.is_dir() or other.stat().st_dev == tmp_path.stat().st_dev:
        pytest.skip("no second filesystem (/dev/shm) to put the temporary folder on")
    spool = other / f"appliance-test-{tmp_path.name}"
    spool.mkdir()
    try:
        monkeypatch.setenv("TMPDIR", str(spool))  # inherited by the appliance process
        app = appliance_factory().start()
        path = pydicom_file("CT_small.dcm")
        result = storescu(app, path, options=("-v",), check=False)
        assert success_count(result) == 1, result.stderr + app.log()
        assert app.json("/instances") == [ids_of(path).instance]
        assert list(spool.iterdir()) == []
    finally:
        for leftover in spool.iterdir():
            leftover.unlink()
        spool.rmdir()


# --- 2. bit-for-bit storage with pynetdicom as the SCU ---------------------------------------

BIT_FOR_BIT = [
    *[pydicom_file(n) for n in (
        "CT_small.dcm", "MR_small.dcm", "JPEG2000.dcm", "JPEG-lossy.dcm", "JPGExtended.dcm",
        "MR_small_RLE.dcm", "MR_small_jpeg_ls_lossless.dcm", "MR_small_jp2klossless.dcm",
        "MR_small_bigendian.dcm", "MR_small_implicit.dcm", "image_dfl.dcm", "SC_rgb_rle.dcm",
        "JPEGLSNearLossless_08.dcm", "rtdose_rle.dcm", "SC_rgb_jpeg_gdcm.dcm",
        "SC_rgb_small_odd.dcm", "examples_ybr_color.dcm", "rtdose.dcm",
    )],
    *[pynetdicom_file(n) for n in (
        "SCImageStorage_Deflated.dcm", "MRImageStorage_JPG2000_Lossless.dcm",
        "MRImageStorage_ExplicitVRBigEndian.dcm", "RTImageStorage.dcm",
    )],
]


@pytest.mark.parametrize("path", BIT_FOR_BIT, ids=lambda p: p.name)
def test_pynetdicom_store_is_bit_for_bit(appliance: ApplianceProcess, path: Path,
                                          monkeypatch: pytest.MonkeyPatch,
                                          tmp_path: Path) -> None:
    from pynetdicom import AE, _config

    # send the file's dataset bytes as they are (no decoding, no re-encoding)
    monkeypatch.setattr(_config, "STORE_SEND_CHUNKED_DATASET", True)
    meta = read_file_meta_info(path)
    sop_class = UID(str(meta.MediaStorageSOPClassUID))
    sop_instance = str(meta.MediaStorageSOPInstanceUID)
    ts = UID(str(meta.TransferSyntaxUID))
    original = path.read_bytes()
    _, original_dataset = split_part10(original)

    ae = AE(ae_title="PYNETDICOM")
    try:
        ae.add_requested_context(sop_class, [ts])
    except ValueError as exc:
        pytest.skip(f"pynetdicom will not propose {ts.name} for {path.name}: {exc}")
    assoc = ae.associate("127.0.0.1", appliance.dicom_port, ae_title=appliance.aet)
    assert assoc.is_established, "association refused"
    try:
        accepted = [cx for cx in assoc.accepted_contexts if cx.abstract_syntax == sop_class]
        assert [cx.transfer_syntax[0] for cx in accepted] == [ts], (
            f"{ts.name} for {sop_class.name} not accepted"
        )
        status = assoc.send_c_store(path)
    finally:
        assoc.release()

    ds = dcmread(path, stop_before_pixels=True)
    refusal = None
    if "StudyInstanceUID" not in ds or "SeriesInstanceUID" not in ds:
        refusal = "missing"  # JPEGLSNearLossless_08.dcm: cannot be indexed
    elif ds.SOPInstanceUID != sop_instance:
        # rtdose.dcm, RTImageStorage.dcm: the file meta names another instance than the dataset,
        # and pynetdicom announces the file meta's UID in the command (PS3.4 B.2.3)
        refusal = "differs"
    if refusal:
        assert status.get("Status") == 0xA900, status
        assert refusal in status.get("ErrorComment", "")
        assert appliance.statistics()["CountInstances"] == 0
        assert blobs(appliance) == []
        return
    assert status.get("Status") == 0x0000, status
    ids = ids_of(path)
    inst = appliance.json(f"/instances/{ids.instance}")
    assert inst["TransferSyntax"] == ts
    assert inst["RemoteAET"] == "PYNETDICOM"
    stored = instance_file(appliance, ids.instance)
    assert inst["FileSize"] == len(stored)
    _, stored_dataset = split_part10(stored)
    assert len(stored_dataset) == len(original_dataset)
    assert md5(stored_dataset) == md5(original_dataset), "the dataset bytes changed"
    check_part10(stored, tmp_path, sop_class, sop_instance, ts)


# --- 3. storescu transfer syntax proposals ---------------------------------------------------

@pytest.mark.parametrize(
    "option, name, expected",
    [
        # DCMTK sends a compressed file as it is when it proposes its transfer syntax
        ("-xs", "SC_rgb_jpeg_gdcm.dcm", None),  # JPEG Lossless SV1
        ("-xv", "MR_small_jp2klossless.dcm", None),  # JPEG 2000 lossless
        ("-xw", "JPEG2000.dcm", None),  # JPEG 2000
        ("-xx", "JPEG-lossy.dcm", None),  # JPEG Extended
        ("-xt", "MR_small_jpeg_ls_lossless.dcm", None),  # JPEG-LS lossless
        ("-xr", "MR_small_RLE.dcm", None),  # RLE lossless
        ("-xd", "image_dfl.dcm", None),  # deflated
        # uncompressed files are converted to the syntax agreed (Explicit VR Little Endian
        # when offered), or sent as they are when the file's own syntax was proposed
        ("-xe", "MR_small_bigendian.dcm", "1.2.840.10008.1.2.1"),
        ("-xb", "MR_small_bigendian.dcm", None),
        ("-xb", "CT_small.dcm", "1.2.840.10008.1.2.1"),
        ("-xi", "CT_small.dcm", "1.2.840.10008.1.2"),
    ],
)
def test_storescu_transfer_syntax(appliance: ApplianceProcess, tmp_path: Path, option: str,
                                  name: str, expected: str | None) -> None:
    path = pydicom_file(name)
    meta = read_file_meta_info(path)
    expected = expected or str(meta.TransferSyntaxUID)
    result = storescu(appliance, path, options=(option, "-v"))
    assert success_count(result) == 1
    ids = ids_of(path)
    inst = appliance.json(f"/instances/{ids.instance}")
    assert inst["TransferSyntax"] == expected
    stored = instance_file(appliance, ids.instance)
    check_part10(stored, tmp_path, str(meta.MediaStorageSOPClassUID),
                 str(meta.MediaStorageSOPInstanceUID), expected)
    if expected == meta.TransferSyntaxUID:
        # sent as it is: DCMTK re-serialises the dataset, but the (compressed) pixel data is
        # the file's own
        assert dcmread(io.BytesIO(stored)).PixelData == dcmread(path).PixelData


# --- 4. parallel senders ---------------------------------------------------------------------

def test_four_parallel_storescu(appliance: ApplianceProcess, tmp_path: Path) -> None:
    app = appliance
    series = [make_series(tmp_path / f"s{i}", 100, patient_id=f"PARALLEL{i}")
              for i in range(4)]
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda paths: storescu(app, *paths, options=("-v",)), series))
    assert [success_count(r) for r in results] == [100] * 4

    stats = app.statistics()
    assert (stats["CountPatients"], stats["CountStudies"], stats["CountSeries"],
            stats["CountInstances"]) == (4, 4, 4, 400)
    instances = expand(app, "instances")
    assert len(instances) == 400
    assert sum(r["FileSize"] for r in instances) == int(stats["TotalDiskSize"])
    assert len({r["FileUuid"] for r in instances}) == 400
    assert len(blobs(app)) == 400
    for paths in series:
        ids = [ids_of(p) for p in paths]
        one = app.json(f"/series/{ids[0].series}")
        assert sorted(one["Instances"]) == sorted(i.instance for i in ids)
        stats_of = app.json(f"/series/{ids[0].series}/statistics")
        assert stats_of["CountInstances"] == 100


# --- 5. dcmsend ------------------------------------------------------------------------------

def test_dcmsend_series(appliance: ApplianceProcess, tmp_path: Path) -> None:
    paths = make_series(tmp_path / "series", 20, patient_id="DCMSEND")
    result = dcmtk("dcmsend", "-v", "-aet", "DCMSEND", "-aec", appliance.aet, "127.0.0.1",
                   str(appliance.dicom_port), *map(str, paths))
    assert result.returncode == 0
    ids = [ids_of(p) for p in paths]
    assert appliance.statistics()["CountInstances"] == 20
    assert sorted(appliance.json("/instances")) == sorted(i.instance for i in ids)
    series = appliance.json(f"/series/{ids[0].series}")
    assert len(series["Instances"]) == 20
    assert {r["RemoteAET"] for r in expand(appliance, "instances")} == {"DCMSEND"}
    numbers = sorted(r["IndexInSeries"] for r in expand(appliance, "instances"))
    assert numbers == list(range(1, 21))


# --- 6. duplicate SOP instances --------------------------------------------------------------

@pytest.mark.parametrize("duplicates", [None, "keep", "overwrite"])
def test_duplicate_sop_instance(appliance_factory: Any, tmp_path: Path,
                                duplicates: str | None) -> None:
    config = {"storage": {"duplicates": duplicates}} if duplicates else None
    app = appliance_factory(config=config).start()
    (first,) = make_series(tmp_path / "first", 1, patient_id="DUP")
    ds = dcmread(first)
    ds.InstanceNumber = 2
    second = tmp_path / "second.dcm"
    ds.save_as(second, enforce_file_format=True)
    assert ids_of(first) == ids_of(second)
    instance = ids_of(first).instance

    storescu(app, first)
    first_md5 = md5(instance_file(app, instance))
    result = storescu(app, second, options=("-v",))
    assert success_count(result) == 1, "a duplicate is acknowledged either way"

    stored = instance_file(app, instance)
    stored_number = dcmread(io.BytesIO(stored), stop_before_pixels=True).InstanceNumber
    inst = app.json(f"/instances/{instance}")
    if duplicates == "overwrite":
        assert md5(stored) != first_md5
        assert stored_number == 2
        assert inst["MainDicomTags"]["InstanceNumber"] == "2"
    else:
        assert md5(stored) == first_md5
        assert stored_number == 1
        assert inst["MainDicomTags"]["InstanceNumber"] == "1"
    stats = app.statistics()
    assert stats["CountInstances"] == 1
    assert int(stats["TotalDiskSize"]) == inst["FileSize"] == len(stored)
    assert len(blobs(app)) == 1, "the unused or replaced blob was not removed"
    wait_for(lambda: "duplicate" in app.log().lower(), 10, "the duplicate to be logged")


# --- 7. association policy -------------------------------------------------------------------

def test_check_called_aet(appliance_factory: Any) -> None:
    app = appliance_factory(config={"dicom": {"check_called_aet": True}}).start()
    path = pydicom_file("CT_small.dcm")
    wrong = dcmtk("storescu", "-aec", "NOTTHEAPPLIANCE", "127.0.0.1", str(app.dicom_port),
                  str(path), check=False)
    assert wrong.returncode != 0
    assert app.statistics()["CountInstances"] == 0
    echo = dcmtk("echoscu", "-aec", "NOTTHEAPPLIANCE", "127.0.0.1", str(app.dicom_port),
                 check=False)
    assert echo.returncode != 0
    storescu(app, path)  # the right called AE title is accepted
    assert app.statistics()["CountInstances"] == 1


def test_called_aet_not_checked_by_default(appliance: ApplianceProcess) -> None:
    path = pydicom_file("CT_small.dcm")
    dcmtk("storescu", "-aec", "ANYTHING", "127.0.0.1", str(appliance.dicom_port), str(path))
    assert appliance.statistics()["CountInstances"] == 1


def test_store_from_known_modalities_only(appliance_factory: Any) -> None:
    config = {
        "dicom": {"store_from_unknown": False},
        "modalities": {"ct": {"aet": "KNOWNCT", "host": "127.0.0.1", "port": 104}},
    }
    app = appliance_factory(config=config).start()
    ct, mr = pydicom_file("CT_small.dcm"), pydicom_file("MR_small.dcm")
    stranger = storescu(app, mr, options=("-aet", "STRANGER"), check=False)
    assert stranger.returncode != 0
    assert app.statistics()["CountInstances"] == 0
    storescu(app, ct, options=("-aet", "KNOWNCT"))
    assert app.json("/instances") == [ids_of(ct).instance]
    assert app.json(f"/instances/{ids_of(ct).instance}")["RemoteAET"] == "KNOWNCT"


# --- 8. SIGTERM during a send ----------------------------------------------------------------

def sent_files(log: str) -> list[str]:
    """The files storescu -v reports as acknowledged with success, in order."""
    done = []
    current = None
    for line in log.splitlines():
        m = re.search(r"Sending file: (.+)$", line)
        if m:
            current = m.group(1).strip()
        elif SUCCESS_LINE in line and current is not None:
            done.append(current)
            current = None
    return done


def test_sigterm_during_send(appliance: ApplianceProcess, tmp_path: Path) -> None:
    app = appliance
    paths = make_series(tmp_path / "series", 300, patient_id="SIGTERM", size=128)
    out = tmp_path / "storescu.log"
    with open(out, "w") as log:
        sender = subprocess.Popen(
            ["storescu", "-v", "-aec", app.aet, "127.0.0.1", str(app.dicom_port),
             *map(str, paths)],
            stdout=log, stderr=subprocess.STDOUT, env=DCMTK_ENV,
        )
    try:
        seen = 0

        def some_stored() -> bool:
            nonlocal seen
            seen = app.statistics()["CountInstances"]
            return seen >= 20

        wait_for(some_stored, 60, "the first instances to arrive")
        assert seen < 300, "the send finished before the signal: nothing was interrupted"
        assert app.stop(signal.SIGTERM) == 0, app.log()
        sender.wait(120)
    finally:
        if sender.poll() is None:
            sender.kill()
            sender.wait()

    text = out.read_text()
    acknowledged = sent_files(text)
    assert len(acknowledged) == text.count(SUCCESS_LINE)
    assert len(acknowledged) >= seen

    report = app.fsck("--verify")
    assert report.returncode == 0, report.stdout + report.stderr
    for line in ("temporary files: 0", "files without an index row: 0",
                 "index rows whose file is missing: 0", "files whose checksum differs: 0"):
        assert line in report.stdout, report.stdout

    app.start()
    stats = app.statistics()
    assert stats["CountInstances"] == len(acknowledged)
    present = set(app.json("/instances"))
    missing = [p for p in acknowledged if ids_of(Path(p)).instance not in present]
    assert missing == [], f"acknowledged but lost: {missing[:5]}"
    # after the restart the store still accepts what was not sent
    rest = [p for p in paths if str(p) not in set(acknowledged)]
    if rest:
        storescu(app, *rest)
    assert app.statistics()["CountInstances"] == 300


@pytest.mark.parametrize("accept", [False, True], ids=["default", "accept-unknown"])
def test_unknown_sop_class(appliance_factory: Any, tmp_path: Path, accept: bool) -> None:
    """A storage SOP class pynetdicom does not know is refused by default, stored if asked."""
    from pydicom import dcmread
    from pynetdicom import AE

    private_class = "1.2.826.0.1.3680043.8.498.999.1"
    (path,) = make_series(tmp_path / "unknown", 1)
    ds = dcmread(path)
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = private_class
    ds.save_as(path, enforce_file_format=True)
    app = appliance_factory(config={"dicom": {"accept_unknown_sop_classes": accept}}).start()
    ae = AE(ae_title="PRIVATE")
    ae.add_requested_context(private_class, [str(ds.file_meta.TransferSyntaxUID)])
    assoc = ae.associate("127.0.0.1", app.dicom_port, ae_title=app.aet)
    try:
        if not accept:
            assert not assoc.is_established or not assoc.accepted_contexts
            assert app.statistics()["CountInstances"] == 0
            return
        assert assoc.is_established and assoc.accepted_contexts
        status = assoc.send_c_store(ds)
        assert status.Status == 0x0000
    finally:
        if assoc.is_established:
            assoc.release()
    stored = expand(app, "instances")
    assert [i["SOPClassUID"] for i in stored] == [private_class]
