"""SCU services and commands (echo, send, query, retrieve) against real peers: DCMTK storescp
and dcmqrscp, and Orthanc."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from pydicom import dcmread
from pydicom.uid import generate_uid

from appliance.config import DicomSettings, Modality
from appliance.dicom import remote
from appliance.dicom.scu import Outgoing
from appliance.index.ids import orthanc_hash

from .conftest import (
    ROOT,
    ApplianceProcess,
    dcmtk,
    free_port,
    make_series,
    port_open,
    pydicom_file,
    storescu,
    wait_for,
)
from .peers import Orthanc, StoreSCP

pytestmark = pytest.mark.integration

QR_STUDY, OR_STUDY, APP_STUDY = generate_uid(), generate_uid(), generate_uid()


class QRSCP:
    """DCMTK dcmqrscp (forking: its single-process mode crashes after an association in DCMTK
    3.6.7) with a generated configuration: its storage area, and the AEs it may move to."""

    aet = "QRSCP"

    def __init__(self, root: Path, hosts: dict[str, tuple[str, int]]) -> None:
        self.root, self.port = root, free_port()
        (root / "db").mkdir(parents=True)
        table = "\n".join(f"{name} = ({aet}, 127.0.0.1, {port})"
                          for name, (aet, port) in hosts.items())
        (root / "qr.cfg").write_text(
            f"NetworkTCPPort = {self.port}\nMaxPDUSize = 16384\nMaxAssociations = 16\n\n"
            f"HostTable BEGIN\n{table}\nHostTable END\n\nVendorTable BEGIN\nVendorTable END\n\n"
            f"AETable BEGIN\n{self.aet} {root / 'db'} RW (200, 1024mb) ANY\nAETable END\n"
        )
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> QRSCP:
        with open(self.root / "qr.log", "wb") as log:
            self.proc = subprocess.Popen(["dcmqrscp", "-v", "-c", str(self.root / "qr.cfg")],
                                         stdout=log, stderr=subprocess.STDOUT)
        wait_for(lambda: port_open(self.port), 30, "dcmqrscp to listen")
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(30)


@dataclass
class Peers:
    root: Path
    app: ApplianceProcess
    qr: QRSCP
    orthanc: Orthanc
    dest_port: int
    config: Path  # the command line's configuration: our data, AE title and modalities
    files: dict[str, list[Path]]

    def modality(self, name: str) -> Modality:
        return Modality(**json.loads(self.config.read_text())["modalities"][name])


def cli(peers: Peers, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "appliance", *args, "--config",
                           str(peers.config)], capture_output=True, text=True, timeout=120,
                          cwd=ROOT)


def study(folder: Path, count: int, study_uid: str, patient_id: str, name: str,
          charset: str = "") -> list[Path]:
    paths = make_series(folder, count, patient_id=patient_id, study_uid=study_uid,
                        patient_name=name)
    if charset:
        for path in paths:
            ds = dcmread(path)
            ds.SpecificCharacterSet = charset
            ds.save_as(path)
    return paths


@pytest.fixture(scope="module")
def peers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Peers]:
    root = tmp_path_factory.mktemp("scu")
    dest_port = free_port()
    app = ApplianceProcess(root / "data")
    qr = QRSCP(root / "qr", {"appliance": ("APPLIANCE", app.dicom_port),
                             "dest": ("DEST", dest_port)})
    orthanc_port = free_port()
    node = {"host": "127.0.0.1"}
    modalities = {
        "dest": {"aet": "DEST", "port": dest_port, **node},
        "qrscp": {"aet": "QRSCP", "port": qr.port, **node},
        "orthanc": {"aet": "ORTHANC", "port": orthanc_port, **node},
        "down": {"aet": "DOWN", "port": free_port(), **node},
    }
    app.config = {"modalities": {"qrscp": modalities["qrscp"], "orthanc": modalities["orthanc"]}}
    config = root / "cli.json"
    config.write_text(json.dumps({"data": str(app.data), "dicom": {"aet": "APPLIANCE"},
                                  "modalities": modalities}))
    files = {
        "qr": study(root / "qr-in", 3, QR_STUDY, "QR1", "DOE^JOHN"),
        "or": study(root / "or-in", 2, OR_STUDY, "OR1", "Müller^Hans", "ISO_IR 192"),
        "app": study(root / "app-in", 2, APP_STUDY, "AP1", "Send^Me"),
    }
    with ExitStack() as started:
        orthanc = Orthanc(root / "orthanc", dicom_port=orthanc_port, modalities={
            "box": ["APPLIANCE", "127.0.0.1", app.dicom_port],
            "dest": ["DEST", "127.0.0.1", dest_port],
        })  # fmt: skip
        started.callback(orthanc.stop)
        started.callback(app.start().stop)
        started.callback(qr.start().stop)
        dcmtk("storescu", "-aec", "QRSCP", "127.0.0.1", str(qr.port), *map(str, files["qr"]))
        dcmtk("storescu", "-aec", "ORTHANC", "127.0.0.1", str(orthanc_port),
              *map(str, files["qr"] + files["or"]))
        storescu(app, *files["app"])
        yield Peers(root, app, qr, orthanc, dest_port, config, files)


@pytest.fixture
def dest(peers: Peers, tmp_path: Path) -> Iterator[StoreSCP]:
    scp = StoreSCP(peers.dest_port, tmp_path / "dest")
    yield scp
    scp.stop()


def sop_uids(paths: list[Path]) -> set[str]:
    return {str(dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in paths}


def study_count(json_of: Any, patient_id: str, study_uid: str) -> int:
    """Instances of a study, through an Orthanc-style REST API (the appliance's or Orthanc's)."""
    try:
        stats = json_of(f"/studies/{orthanc_hash(f'{patient_id}|{study_uid}')}/statistics")
    except Exception:
        return 0
    return int(stats["CountInstances"])


# --- C-ECHO -----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["dest", "qrscp", "orthanc"])
def test_echo(peers: Peers, dest: StoreSCP, name: str) -> None:
    done = cli(peers, "echo", name)
    assert done.returncode == 0, done.stderr
    assert f"C-ECHO {name} (" in done.stdout and "success" in done.stdout
    assert remote.echo(DicomSettings(), peers.modality(name)).status == 0


def test_echo_ad_hoc_node(peers: Peers) -> None:
    done = cli(peers, "echo", "--aet", "QRSCP", "--host", "127.0.0.1", "--port",
               str(peers.qr.port))
    assert done.returncode == 0, done.stderr


def test_node_down_unknown_name_and_rejection(peers: Peers) -> None:
    for args in (["echo", "down"], ["send", APP_STUDY, "--to", "down"],
                 ["query", "down", "-k", "PatientName"], ["retrieve", "down", "-k", "PatientID=X"]):
        done = cli(peers, *args)
        assert done.returncode == 1 and "cannot connect to DOWN@127.0.0.1" in done.stderr, args
    done = cli(peers, "echo", "nosuch")
    assert done.returncode == 2 and "unknown modality 'nosuch'" in done.stderr
    assert "known: dest, down, orthanc, qrscp" in done.stderr
    done = cli(peers, "send", APP_STUDY, "--to", "nosuch")
    assert done.returncode == 2 and "unknown modality 'nosuch'" in done.stderr
    # dcmqrscp refuses called AE titles it does not serve
    wrong = Modality(aet="WRONG", host="127.0.0.1", port=peers.qr.port)
    result = remote.echo(DicomSettings(), wrong)
    assert result.status is None and "rejected by WRONG" in result.error
    assert "Called AE title not recognised" in result.error
    with pytest.raises(remote.AssociationFailed, match="rejected"):
        remote.find(DicomSettings(), wrong, "STUDY", {"PatientName": ""})


def test_bad_query_keys(peers: Peers) -> None:
    for args, message in (
        (["-k", "NoSuchKeyword=1"], "not a DICOM keyword"),
        (["--level", "PATIENT", "-k", "PatientID"], "no PATIENT level"),
        (["-k", "=x"], "expected KEY=VALUE"),
    ):
        done = cli(peers, "query", "qrscp", *args)
        assert done.returncode == 2 and message in done.stderr, (args, done.stderr)
    done = cli(peers, "retrieve", "qrscp", "-k", "PatientID=X", "--out", "somewhere")
    assert done.returncode == 2 and "--out goes with --get" in done.stderr
    done = cli(peers, "retrieve", "qrscp", "-k", "PatientID=X", "--to", "A\\B")
    assert done.returncode == 2 and "not a valid AE title" in done.stderr


# --- C-STORE ----------------------------------------------------------------------------------


def test_send_study_to_storescp_while_serving(peers: Peers, dest: StoreSCP) -> None:
    done = cli(peers, "send", APP_STUDY, "--to", "dest")
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.count("Success (0x0000)") == 2
    assert "sent 2 instances to dest: 2 succeeded, 0 with warnings, 0 failed" in done.stdout
    assert sop_uids(dest.files()) == sop_uids(peers.files["app"])
    for sent in peers.files["app"]:
        original = dcmread(sent)
        arrived = dcmread(dest.out / f"CT.{original.SOPInstanceUID}")
        assert arrived.PixelData == original.PixelData
        assert arrived.PatientName == original.PatientName


def test_send_many_over_one_association(peers: Peers, dest: StoreSCP, tmp_path: Path) -> None:
    """1000 instances, one association, every response read (pynetdicom's own requestor loop
    used to drop one response in a few hundred on this fast peer)."""
    many = generate_uid()
    files = make_series(tmp_path / "many", 1000, patient_id="MANY", study_uid=many, size=8)
    storescu(peers.app, *files)
    done = cli(peers, "send", many, "--to", "dest")
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr
    assert "sent 1000 instances to dest: 1000 succeeded" in done.stdout
    assert sop_uids(dest.files()) == sop_uids(files)
    assert dest.log().count("Association Acknowledged") == 1


def test_send_by_orthanc_id_and_unknown_id(peers: Peers, dest: StoreSCP) -> None:
    series_id = peers.app.json(f"/studies/{orthanc_hash(f'AP1|{APP_STUDY}')}")["Series"][0]
    done = cli(peers, "send", series_id, "--to", "dest")
    assert done.returncode == 0, done.stderr
    wait_for(lambda: len(dest.files()) == 2, 30, "2 files at storescp")
    done = cli(peers, "send", "1.2.3.4.nothing", "--to", "dest")
    assert done.returncode == 2 and "no patient, study, series or instance" in done.stderr


def test_send_to_orthanc(peers: Peers) -> None:
    done = cli(peers, "send", APP_STUDY, "--to", "orthanc")
    assert done.returncode == 0, done.stderr
    assert study_count(peers.orthanc.json, "AP1", APP_STUDY) == 2


def test_send_to_a_node_that_aborts_or_refuses(peers: Peers, tmp_path: Path) -> None:
    """storescp aborting after the first C-STORE request: both instances reported as not
    stored, exit code 1. storescp refusing associations: the reason, exit code 1."""
    scp = StoreSCP(peers.dest_port, tmp_path / "aborting", "--abort-after")
    try:
        done = cli(peers, "send", APP_STUDY, "--to", "dest")
    finally:
        scp.stop()
    assert done.returncode == 1
    assert done.stdout.count("Failure (0xA700)") == 2
    assert "0 succeeded, 0 with warnings, 2 failed" in done.stdout
    scp = StoreSCP(peers.dest_port, tmp_path / "refusing", "--refuse")
    try:
        done = cli(peers, "send", APP_STUDY, "--to", "dest")
    finally:
        scp.stop()
    assert done.returncode == 1 and "association rejected by DEST" in done.stderr


def test_store_falls_back_to_uncompressed(peers: Peers, dest: StoreSCP) -> None:
    """storescp accepts only uncompressed syntaxes by default: an RLE Lossless instance is
    decompressed by pydicom and arrives in Explicit VR Little Endian."""
    path = pydicom_file("MR_small_RLE.dcm")
    original = dcmread(path)
    item = Outgoing(original.SOPInstanceUID, original.SOPClassUID,
                    original.file_meta.TransferSyntaxUID, path)
    result = remote.store(DicomSettings(), peers.modality("dest"), [item])
    assert [sent.status for sent in result.outcomes] == [0] and result.ok
    (arrived_path,) = dest.files()
    arrived = dcmread(arrived_path)
    assert not arrived.file_meta.TransferSyntaxUID.is_compressed
    assert (arrived.pixel_array == original.pixel_array).all()


# --- C-FIND -----------------------------------------------------------------------------------


def test_find_on_dcmqrscp(peers: Peers) -> None:
    qr = peers.modality("qrscp")
    answers = remote.find(DicomSettings(), qr, "STUDY",
                          {"PatientName": "DOE*", "StudyInstanceUID": "", "StudyDate": ""})
    assert [(a.StudyInstanceUID, a.StudyDate) for a in answers] == [(QR_STUDY, "20260101")]
    images = remote.find(DicomSettings(), qr, "IMAGE", {
        "StudyInstanceUID": QR_STUDY, "SeriesInstanceUID": "", "SOPInstanceUID": "",
    })  # fmt: skip
    assert {a.SOPInstanceUID for a in images} == sop_uids(peers.files["qr"])
    assert remote.find(DicomSettings(), qr, "STUDY", {"PatientName": "NOBODY*"}) == []
    done = cli(peers, "query", "qrscp", "--level", "study", "-k", "PatientName=DOE*",
               "-k", "StudyInstanceUID", "-k", "0008,0020", "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == [{"StudyDate": "20260101", "RetrieveAETitle": "QRSCP",
                                        "PatientName": "DOE^JOHN",
                                        "StudyInstanceUID": QR_STUDY}]
    table = cli(peers, "query", "qrscp", "-k", "PatientName=DOE*", "-k", "StudyInstanceUID")
    assert table.returncode == 0
    header, row = table.stdout.splitlines()
    assert header.split() == ["RetrieveAETitle", "PatientName", "StudyInstanceUID"]
    assert row.split() == ["QRSCP", "DOE^JOHN", QR_STUDY]


def test_find_on_orthanc_with_a_character_set(peers: Peers) -> None:
    answers = remote.find(DicomSettings(), peers.modality("orthanc"), "STUDY",
                          {"PatientName": "Müller*", "StudyInstanceUID": "", "PatientID": ""})
    assert [(str(a.PatientName), a.StudyInstanceUID) for a in answers] == [
        ("Müller^Hans", OR_STUDY)
    ]
    done = cli(peers, "query", "orthanc", "--level", "PATIENT", "--model", "patient",
               "-k", "PatientName=Müller*", "-k", "PatientID", "--json")
    assert done.returncode == 0, done.stderr
    (row,) = json.loads(done.stdout)
    assert row["PatientName"] == "Müller^Hans" and row["PatientID"] == "OR1"


# --- C-MOVE -----------------------------------------------------------------------------------


def test_move_from_dcmqrscp_to_a_third_node(peers: Peers, dest: StoreSCP) -> None:
    done = cli(peers, "retrieve", "qrscp", "--level", "STUDY", "-k",
               f"StudyInstanceUID={QR_STUDY}", "--to", "DEST")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "3 completed, 0 failed, 0 warnings" in done.stdout
    assert sop_uids(dest.files()) == sop_uids(peers.files["qr"])


def test_move_to_an_unknown_destination_fails(peers: Peers) -> None:
    result = remote.move(DicomSettings(), peers.modality("qrscp"), "STUDY",
                         {"StudyInstanceUID": QR_STUDY}, "NOWHERE")
    assert result.status == 0xA801 and not result.ok
    done = cli(peers, "retrieve", "qrscp", "-k", f"StudyInstanceUID={QR_STUDY}", "--to",
               "NOWHERE")
    assert done.returncode == 1 and "status 0xA801" in done.stdout


@pytest.mark.parametrize("name,patient,study_uid,count", [
    ("qrscp", "QR1", QR_STUDY, 3), ("orthanc", "OR1", OR_STUDY, 2),
])  # fmt: skip
def test_move_to_the_appliance(peers: Peers, name: str, patient: str, study_uid: str,
                               count: int) -> None:
    """Without --to, the destination is our own AE title: the running appliance."""
    done = cli(peers, "retrieve", name, "-k", f"StudyInstanceUID={study_uid}")
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"to APPLIANCE: status 0x0000 (Success): {count} completed" in done.stdout
    assert study_count(peers.app.json, patient, study_uid) == count


def test_move_from_orthanc_to_storescp(peers: Peers, dest: StoreSCP) -> None:
    result = remote.move(DicomSettings(), peers.modality("orthanc"), "SERIES",
                         {"StudyInstanceUID": QR_STUDY,
                          "SeriesInstanceUID": str(dcmread(peers.files["qr"][0])
                                                   .SeriesInstanceUID)}, "DEST")
    assert result.ok and result.completed == 3, result
    assert sop_uids(dest.files()) == sop_uids(peers.files["qr"])


# --- C-GET ------------------------------------------------------------------------------------


def index_sop_uids(data: Path) -> set[str]:
    with sqlite3.connect(data / "index.sqlite") as db:
        return {uid for (uid,) in db.execute("SELECT sop_uid FROM instance")}


@pytest.mark.parametrize("name,files,study_uid", [
    ("qrscp", "qr", QR_STUDY), ("orthanc", "or", OR_STUDY),
])  # fmt: skip
def test_get_into_the_store(peers: Peers, tmp_path: Path, name: str, files: str,
                            study_uid: str) -> None:
    """No appliance runs on this data directory: the command receives into the store."""
    data = tmp_path / "get-data"
    done = cli(peers, "retrieve", name, "--get", "-k", f"StudyInstanceUID={study_uid}",
               "--data", str(data))
    expected = sop_uids(peers.files[files])
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"{len(expected)} completed, 0 failed" in done.stdout
    assert index_sop_uids(data) == expected
    fsck = subprocess.run([sys.executable, "-m", "appliance", "fsck", "--verify", "--data",
                           str(data)], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert fsck.returncode == 0, fsck.stdout
    assert not list((data / "tmp").iterdir())


def test_get_while_the_appliance_serves(peers: Peers, tmp_path: Path) -> None:
    before = peers.app.statistics()["CountInstances"]
    done = cli(peers, "retrieve", "qrscp", "--get", "-k", f"StudyInstanceUID={QR_STUDY}")
    assert done.returncode == 2
    assert "in use by a running appliance" in done.stderr and "C-MOVE" in done.stderr
    out = tmp_path / "out"
    done = cli(peers, "retrieve", "qrscp", "--get", "-k", f"StudyInstanceUID={QR_STUDY}",
               "--out", str(out))
    assert done.returncode == 0, done.stdout + done.stderr
    assert sorted(p.name for p in out.iterdir()) == sorted(
        f"{uid}.dcm" for uid in sop_uids(peers.files["qr"])
    )
    for path in out.iterdir():
        assert dcmread(path).StudyInstanceUID == QR_STUDY
    assert peers.app.statistics()["CountInstances"] == before
