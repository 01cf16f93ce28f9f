"""Query/Retrieve SCP against real peers: DCMTK findscu/movescu/getscu/storescp, pynetdicom as
an SCU where exact statuses matter, and Orthanc as the querying PACS."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import JPEGBaseline8Bit, generate_uid
from pynetdicom import AE, build_role, evt
from pynetdicom import sop_class as sc

from .conftest import (
    ApplianceProcess,
    dcmtk,
    free_port,
    make_series,
    pydicom_file,
    storescu,
    wait_for,
)
from .conftest import identifier as ident
from .peers import Orthanc, StoreSCP

pytestmark = pytest.mark.integration

S1, S2, S3 = generate_uid(), generate_uid(), generate_uid()
S2_MR, S2_CT = generate_uid(), generate_uid()
BIG, BIG_SERIES = generate_uid(), generate_uid()


def make_instances(folder: Path, count: int, *, date: str, time: str, extra: dict[str, Any],
                   **kw: Any) -> list[Path]:
    paths = make_series(folder, count, **kw)
    for path in paths:
        ds = dcmread(path)
        ds.StudyDate, ds.StudyTime = date, time
        for keyword, value in extra.items():
            setattr(ds, keyword, value)
        ds.save_as(path)
    return paths


def dataset(root: Path) -> list[Path]:
    """Three patients: names and IDs with non-ASCII, % and _; S2 has an MR and a CT series."""
    return (
        make_instances(root / "s1", 3, patient_id="P%1", patient_name="Müller^Hans",
                       study_uid=S1, modality="CT", date="20250101", time="080000",
                       extra={"AccessionNumber": "ACC_1", "SpecificCharacterSet": "ISO_IR 192"})
        + make_instances(root / "s2a", 2, patient_id="P_2", patient_name="Doe^John",
                         study_uid=S2, series_uid=S2_MR, modality="MR", date="20260315",
                         time="143000", extra={"AccessionNumber": "ACC2"})
        + make_instances(root / "s2b", 1, patient_id="P_2", patient_name="Doe^John",
                         study_uid=S2, series_uid=S2_CT, modality="CT", date="20260315",
                         time="143000", extra={"AccessionNumber": "ACC2"})
        + make_instances(root / "s3", 1, patient_id="PX12", patient_name="DOE^JANE",
                         study_uid=S3, modality="CT", date="20260316", time="090000",
                         extra={"PatientWeight": "70"})
    )  # fmt: skip


class World:
    def __init__(self, app: ApplianceProcess, dest_port: int, orthanc_port: int,
                 root: Path) -> None:
        self.app, self.dest_port, self.orthanc_port, self.root = app, dest_port, orthanc_port, root
        self._n = 0

    def tmpdir(self, name: str) -> Path:
        self._n += 1
        path = self.root / f"{name}-{self._n}"
        path.mkdir(parents=True)
        return path


def modalities(dest_port: int, orthanc_port: int) -> dict[str, Any]:
    return {
        "findscu": {"aet": "FINDSCU", "host": "127.0.0.1", "port": 104},
        "dest": {"aet": "DEST", "host": "127.0.0.1", "port": dest_port},
        "orthanc": {"aet": "ORTHANC", "host": "127.0.0.1", "port": orthanc_port},
        "nofind": {"aet": "NOFIND", "host": "127.0.0.1", "port": 104,
                   "allow": ["echo", "store", "move"]},
    }


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    root = tmp_path_factory.mktemp("qr")
    dest_port, orthanc_port = free_port(), free_port()
    app = ApplianceProcess(root / "data", config={"modalities": modalities(dest_port,
                                                                           orthanc_port)})
    app.start()
    try:
        storescu(app, *dataset(root / "in"))
        assert app.statistics()["CountInstances"] == 7
        yield World(app, dest_port, orthanc_port, root)
    finally:
        if app.proc is not None and app.proc.poll() is None:
            app.kill()


# --- peers ------------------------------------------------------------------------------------


def findscu(world: World, *keys: str, root: str = "-S", aet: str = "FINDSCU",
            files: tuple[str, ...] = ()) -> list[Dataset]:
    """C-FIND with DCMTK; the answers as written by ``-X -od`` (one file per response)."""
    out = world.tmpdir("find")
    args = [root, "-aet", aet, "-aec", world.app.aet, "-X", "-od", str(out)]
    for key in keys:
        args += ["-k", key]
    dcmtk("findscu", *args, "127.0.0.1", str(world.app.dicom_port), *files, timeout=60)
    return [dcmread(p) for p in sorted(out.glob("rsp*.dcm"))]


def pynetdicom_find(app: ApplianceProcess, identifier: Dataset, aet: str = "FINDSCU",
                    model: str = sc.StudyRootQueryRetrieveInformationModelFind
                    ) -> list[tuple[int, Dataset | None, str]]:
    """(status, identifier, error comment) of every response."""
    ae = AE(ae_title=aet)
    ae.add_requested_context(model)
    assoc = ae.associate("127.0.0.1", app.dicom_port, ae_title=app.aet)
    assert assoc.is_established
    try:
        return [(int(s.Status), ident, str(s.get("ErrorComment", "")))
                for s, ident in assoc.send_c_find(identifier, model)]
    finally:
        assoc.release()


def pynetdicom_move(app: ApplianceProcess, identifier: Dataset, destination: str,
                    aet: str = "FINDSCU") -> list[tuple[Dataset, Dataset | None]]:
    ae = AE(ae_title=aet)
    ae.add_requested_context(sc.StudyRootQueryRetrieveInformationModelMove)
    assoc = ae.associate("127.0.0.1", app.dicom_port, ae_title=app.aet)
    assert assoc.is_established
    try:
        return list(assoc.send_c_move(identifier, destination,
                                      sc.StudyRootQueryRetrieveInformationModelMove))
    finally:
        assoc.release()


@pytest.fixture
def storescp(world: World) -> Iterator[StoreSCP]:
    scp = StoreSCP(world.dest_port, world.tmpdir("dest"))
    yield scp
    scp.stop()


# --- C-FIND: levels ---------------------------------------------------------------------------


def test_study_root_levels(world: World) -> None:
    studies = findscu(world, "QueryRetrieveLevel=STUDY", "PatientName", "StudyInstanceUID")
    assert sorted(a.StudyInstanceUID for a in studies) == sorted([S1, S2, S3])
    assert all(a.QueryRetrieveLevel == "STUDY" and a.RetrieveAETitle == "APPLIANCE"
               for a in studies)
    series = findscu(world, "QueryRetrieveLevel=SERIES", f"StudyInstanceUID={S2}",
                     "SeriesInstanceUID", "Modality")
    assert sorted((a.SeriesInstanceUID, a.Modality) for a in series) == sorted(
        [(S2_MR, "MR"), (S2_CT, "CT")])
    images = findscu(world, "QueryRetrieveLevel=IMAGE", f"StudyInstanceUID={S2}",
                     f"SeriesInstanceUID={S2_MR}", "SOPInstanceUID", "InstanceNumber",
                     "SOPClassUID")
    assert len(images) == 2 and len({a.SOPInstanceUID for a in images}) == 2
    assert sorted(int(a.InstanceNumber) for a in images) == [1, 2]
    assert all(a.SOPClassUID == sc.CTImageStorage for a in images)


def test_patient_root_levels(world: World) -> None:
    patients = findscu(world, "QueryRetrieveLevel=PATIENT", "PatientID", "PatientName",
                       "NumberOfPatientRelatedStudies", "NumberOfPatientRelatedSeries",
                       "NumberOfPatientRelatedInstances", root="-P")
    counts = {a.PatientID: (a.NumberOfPatientRelatedStudies, a.NumberOfPatientRelatedSeries,
                            a.NumberOfPatientRelatedInstances) for a in patients}
    assert counts == {"P%1": (1, 1, 3), "P_2": (1, 2, 3), "PX12": (1, 1, 1)}
    studies = findscu(world, "QueryRetrieveLevel=STUDY", "PatientID=P_2", "StudyInstanceUID",
                      root="-P")
    assert [a.StudyInstanceUID for a in studies] == [S2]
    series = findscu(world, "QueryRetrieveLevel=SERIES", "PatientID=P_2",
                     f"StudyInstanceUID={S2}", "SeriesInstanceUID", root="-P")
    assert len(series) == 2
    images = findscu(world, "QueryRetrieveLevel=IMAGE", "PatientID=P_2",
                     f"StudyInstanceUID={S2}", f"SeriesInstanceUID={S2_CT}", "SOPInstanceUID",
                     root="-P")
    assert len(images) == 1


# --- C-FIND: matching -------------------------------------------------------------------------


def study_ids(world: World, *keys: str) -> set[str]:
    return {a.StudyInstanceUID for a in
            findscu(world, "QueryRetrieveLevel=STUDY", "StudyInstanceUID", *keys)}


@pytest.mark.parametrize(
    ("keys", "expected"),
    [
        (("PatientName=Doe*",), {"S2", "S3"}),  # wildcard, case-insensitive PN
        (("PatientName=doe^john",), {"S2"}),  # single value, case-insensitive PN
        (("PatientName=M?ller*",), {"S1"}),  # ? matches one (non-ASCII) character
        (("PatientName=*",), {"S1", "S2", "S3"}),  # "*" is universal
        (("PatientID=P%1",), {"S1"}),  # % is literal
        (("PatientID=P%",), set()),
        (("PatientID=P_2",), {"S2"}),  # _ is literal
        (("PatientID=P_",), set()),
        (("PatientID=P?2",), {"S2"}),
        (("PatientID=p_2",), set()),  # case-sensitive LO
        (("PatientID=P%1\\PX12",), {"S1", "S3"}),  # list matching
        (("AccessionNumber=ACC_1",), {"S1"}),
        (("AccessionNumber=ACC*",), {"S1", "S2"}),
        (("StudyDate=20260101-",), {"S2", "S3"}),  # open ranges
        (("StudyDate=-20251231",), {"S1"}),
        (("StudyDate=20260315-20260316",), {"S2", "S3"}),
        (("StudyDate=20260315",), {"S2"}),
        (("StudyTime=0800-1000",), {"S1", "S3"}),  # TM range
        # combined date-time range: 15th 14:00 .. 16th 10:00
        (("StudyDate=20260315-20260316", "StudyTime=1400-1000"), {"S2", "S3"}),
        (("StudyDate=20260315-20260316", "StudyTime=1500-1000"), {"S3"}),
        (("ModalitiesInStudy=MR",), {"S2"}),  # a study matches if any modality does
        (("ModalitiesInStudy=CT",), {"S1", "S2", "S3"}),
        (("ModalitiesInStudy=MR\\PT",), {"S2"}),
        ((f"StudyInstanceUID={S1}\\{S3}",), {"S1", "S3"}),  # UID list
        (("PatientWeight=70",), {"S3"}),  # not in the index: read from the file
    ],
)
def test_matching(world: World, keys: tuple[str, ...], expected: set[str]) -> None:
    names = {S1: "S1", S2: "S2", S3: "S3"}
    found = study_ids(world, *keys) if not keys[0].startswith("StudyInstanceUID") else {
        a.StudyInstanceUID for a in findscu(world, "QueryRetrieveLevel=STUDY", *keys)}
    assert {names[u] for u in found} == expected


def test_computed_and_unindexed_return_keys(world: World) -> None:
    (answer,) = findscu(world, "QueryRetrieveLevel=STUDY", f"StudyInstanceUID={S2}",
                        "ModalitiesInStudy", "SOPClassesInStudy", "NumberOfStudyRelatedSeries",
                        "NumberOfStudyRelatedInstances", "PatientWeight", "StudyDescription",
                        "PatientName")
    assert list(answer.ModalitiesInStudy) == ["CT", "MR"]
    assert answer.SOPClassesInStudy == sc.CTImageStorage
    assert answer.NumberOfStudyRelatedSeries == 2
    assert answer.NumberOfStudyRelatedInstances == 3
    for empty in ("PatientWeight", "StudyDescription"):  # present, zero length
        assert empty in answer and answer[empty].is_empty
    (s3,) = findscu(world, "QueryRetrieveLevel=STUDY", f"StudyInstanceUID={S3}",
                    "PatientWeight")
    assert float(s3.PatientWeight) == 70
    series = findscu(world, "QueryRetrieveLevel=SERIES", f"StudyInstanceUID={S2}",
                     "SeriesInstanceUID", "NumberOfSeriesRelatedInstances")
    assert {a.SeriesInstanceUID: a.NumberOfSeriesRelatedInstances for a in series} == {
        S2_MR: 2, S2_CT: 1}


def test_character_sets(world: World) -> None:
    (answer,) = findscu(world, "QueryRetrieveLevel=STUDY", "SpecificCharacterSet=ISO_IR 192",
                        "PatientName=Müller*", "PatientID")
    assert answer.SpecificCharacterSet == "ISO_IR 192"
    assert str(answer.PatientName) == "Müller^Hans"
    # a query declared in Latin-1 is decoded as such
    query = ident("STUDY", SpecificCharacterSet="ISO_IR 100", PatientName="MÜLLER^HANS",
                  StudyInstanceUID="")
    query_file = world.tmpdir("latin1") / "query.dcm"
    query.save_as(query_file, implicit_vr=False, little_endian=True)
    assert b"\xdc" in query_file.read_bytes()  # Ü in Latin-1
    answers = findscu(world, files=(str(query_file),))
    assert [a.StudyInstanceUID for a in answers] == [S1]


# --- C-FIND: refusals -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("identifier", "model", "status", "comment"),
    [
        (ident("SERIES"), sc.StudyRootQueryRetrieveInformationModelFind, 0xA900,
         "StudyInstanceUID is required"),
        (ident("STUDY", Modality="CT"), sc.StudyRootQueryRetrieveInformationModelFind,
         0xA900, "below the STUDY level"),
        (ident("STUDY"), sc.PatientRootQueryRetrieveInformationModelFind, 0xA900,
         "PatientID is required"),
        (ident("PATIENT"), sc.StudyRootQueryRetrieveInformationModelFind, 0xA900,
         "not in the Study Root"),
        (ident("WORLD"), sc.StudyRootQueryRetrieveInformationModelFind, 0xA900,
         "invalid QueryRetrieveLevel"),
    ],
)
def test_malformed_identifiers(world: World, identifier: Dataset, model: str, status: int,
                               comment: str) -> None:
    ((got, _, error_comment),) = pynetdicom_find(world.app, identifier, model=model)
    assert got == status and comment in error_comment


def test_unknown_and_limited_callers_are_refused(world: World) -> None:
    for aet, reason in (("STRANGER", "STRANGER may not find"), ("NOFIND", "NOFIND may not find")):
        ((status, _, comment),) = pynetdicom_find(world.app, ident("STUDY"), aet=aet)
        assert status == 0xC001 and reason in comment
    assert "calling AE STRANGER may not find" in world.app.log()


@pytest.fixture
def big_app(appliance_factory: Any, world: World, tmp_path: Path) -> ApplianceProcess:
    """300 small instances of one series, for cancellation."""
    app = appliance_factory("big", config={"modalities": modalities(world.dest_port,
                                                                    world.orthanc_port)})
    app.start()
    storescu(app, *make_series(tmp_path / "big", 300, patient_id="BIG", study_uid=BIG,
                               series_uid=BIG_SERIES, size=8))
    return app


def send_and_cancel(app: ApplianceProcess, model: str, identifier: Dataset,
                    destination: str | None = None) -> list[Dataset]:
    """Issue a C-FIND or C-MOVE, send C-CANCEL after the first pending response; return all
    response statuses."""
    ae = AE(ae_title="FINDSCU")
    ae.add_requested_context(model)
    assoc = ae.associate("127.0.0.1", app.dicom_port, ae_title=app.aet)
    assert assoc.is_established
    try:
        if destination is None:
            responses = assoc.send_c_find(identifier, model, msg_id=7)
        else:
            responses = assoc.send_c_move(identifier, destination, model, msg_id=7)
        statuses = []
        for status, _ in responses:
            statuses.append(status)
            if len(statuses) == 1:
                cx = assoc._get_valid_context(model, "", "scu")
                assoc.send_c_cancel(7, cx.context_id)
        return statuses
    finally:
        assoc.release()


def test_cancel_find(big_app: ApplianceProcess) -> None:
    statuses = send_and_cancel(
        big_app, sc.StudyRootQueryRetrieveInformationModelFind,
        ident("IMAGE", StudyInstanceUID=BIG, SeriesInstanceUID=BIG_SERIES, SOPInstanceUID="",
              Rows="", Columns="", BitsAllocated=""))  # read from the files: slower answers
    assert statuses[-1].Status == 0xFE00, len(statuses)
    assert len(statuses) < 300


def test_cancel_move(big_app: ApplianceProcess, storescp: StoreSCP) -> None:
    statuses = send_and_cancel(big_app, sc.StudyRootQueryRetrieveInformationModelMove,
                               ident("STUDY", StudyInstanceUID=BIG), "DEST")
    final = statuses[-1]
    assert final.Status == 0xFE00
    assert final.NumberOfRemainingSuboperations > 0
    assert final.NumberOfCompletedSuboperations + final.NumberOfRemainingSuboperations == 300
    wait_for(lambda: "Association Release" in storescp.log(), 30, "the move association end")
    assert len(storescp.files()) == final.NumberOfCompletedSuboperations


def pynetdicom_get(app: ApplianceProcess, model: str, identifier: Dataset,
                   on_store: Callable[[Any], int], msg_id: int = 1, max_pdu: int = 16382
                   ) -> list[Any]:
    """C-GET of CT instances with pynetdicom (exact statuses); ``on_store`` answers each."""
    ae = AE(ae_title="FINDSCU")
    ae.maximum_pdu_size = max_pdu
    ae.add_requested_context(model)
    ae.add_requested_context(sc.CTImageStorage)
    assoc = ae.associate("127.0.0.1", app.dicom_port, ae_title=app.aet,
                         ext_neg=[build_role(sc.CTImageStorage, scp_role=True)],
                         evt_handlers=[(evt.EVT_C_STORE, on_store)])
    assert assoc.is_established
    try:
        return list(assoc.send_c_get(identifier, model, msg_id=msg_id))
    finally:
        assoc.release()


def test_cancel_get(big_app: ApplianceProcess) -> None:
    """A C-CANCEL sent by the C-GET requestor while it receives the instances (it arrives
    where the appliance waits for a C-STORE response) ends the retrieve with 0xFE00."""
    model = sc.StudyRootQueryRetrieveInformationModelGet
    received: list[str] = []

    def on_store(event: Any) -> int:
        received.append(event.request.AffectedSOPInstanceUID)
        if len(received) == 5:
            cx = event.assoc._get_valid_context(model, "", "scu")
            event.assoc.send_c_cancel(9, cx.context_id)
        return 0x0000

    responses = pynetdicom_get(big_app, model, ident("STUDY", StudyInstanceUID=BIG), on_store,
                               msg_id=9)
    final = responses[-1][0]
    assert final.Status == 0xFE00
    assert final.NumberOfCompletedSuboperations == len(received) < 300
    assert final.NumberOfCompletedSuboperations + final.NumberOfRemainingSuboperations == 300


def test_get_pending_responses_between_stores(big_app: ApplianceProcess, tmp_path: Path
                                              ) -> None:
    """Pending C-GET responses travel between the C-STOREs, never inside one (getscu reports
    "Unexpected PDV type" otherwise), with counts that add up."""
    out = tmp_path / "get"
    out.mkdir()
    result = dcmtk("getscu", "-S", "-aet", "FINDSCU", "-aec", big_app.aet, "-od", str(out),
                   "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={BIG}",
                   "127.0.0.1", str(big_app.dicom_port), timeout=120)
    assert [ln for ln in result.stderr.splitlines() if ln.startswith(("E:", "F:"))] == []
    assert len(list(out.iterdir())) == 300
    responses = pynetdicom_get(big_app, sc.StudyRootQueryRetrieveInformationModelGet,
                               ident("STUDY", StudyInstanceUID=BIG), lambda event: 0x0000)
    *pending, final = [status for status, _ in responses]
    assert pending and all(p.Status == 0xFF00 for p in pending)
    assert all(p.NumberOfRemainingSuboperations + p.NumberOfCompletedSuboperations == 300
               for p in pending)
    assert final.Status == 0x0000 and final.NumberOfCompletedSuboperations == 300


# --- C-MOVE -----------------------------------------------------------------------------------


def test_move_study_to_storescp(world: World, storescp: StoreSCP) -> None:
    result = dcmtk("movescu", "-S", "-aet", "FINDSCU", "-aem", "DEST", "-aec", world.app.aet,
                   "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={S2}",
                   "127.0.0.1", str(world.app.dicom_port), timeout=120)
    assert result.returncode == 0
    wait_for(lambda: len(storescp.files()) == 3, 30, "3 instances at the destination")
    received = {dcmread(p).SeriesInstanceUID for p in storescp.files()}
    assert received == {S2_MR, S2_CT}


def test_move_reports_counts_and_uses_one_association(world: World, storescp: StoreSCP) -> None:
    responses = pynetdicom_move(world.app, ident("SERIES", StudyInstanceUID=S1,
                                                 SeriesInstanceUID=""), "DEST")
    # SeriesInstanceUID is the unique key of the level: empty is refused for a retrieve
    assert int(responses[-1][0].Status) == 0xA900
    (series,) = findscu(world, "QueryRetrieveLevel=SERIES", f"StudyInstanceUID={S1}",
                        "SeriesInstanceUID")
    responses = pynetdicom_move(world.app, ident("SERIES", StudyInstanceUID=S1,
                                                 SeriesInstanceUID=series.SeriesInstanceUID),
                                "DEST")
    pending = [s for s, _ in responses if s.Status == 0xFF00]
    final = responses[-1][0]
    # one pending response after the first sub-operation, then at most one every 0.5 s
    assert pending and pending[0].NumberOfRemainingSuboperations == 2
    assert pending[0].NumberOfCompletedSuboperations == 1
    assert final.Status == 0x0000 and final.NumberOfCompletedSuboperations == 3
    assert final.NumberOfFailedSuboperations == 0
    wait_for(lambda: len(storescp.files()) == 3, 30, "3 instances at the destination")
    assert storescp.log().count("Association Acknowledged") == 1


def test_move_to_unknown_destination(world: World) -> None:
    ((status, _),) = pynetdicom_move(world.app, ident("STUDY", StudyInstanceUID=S1), "NOWHERE")
    assert status.Status == 0xA801
    result = dcmtk("movescu", "-S", "-aet", "FINDSCU", "-aem", "NOWHERE", "-aec",
                   world.app.aet, "-k", "QueryRetrieveLevel=STUDY", "-k",
                   f"StudyInstanceUID={S1}", "127.0.0.1", str(world.app.dicom_port),
                   timeout=60, check=False)
    assert "MoveDestinationUnknown" in result.stderr or "a801" in result.stderr.lower()


def test_move_destination_down_fails_all(world: World) -> None:
    responses = pynetdicom_move(world.app, ident("STUDY", StudyInstanceUID=S3), "DEST")
    final = responses[-1][0]
    assert final.Status == 0xA702 and final.NumberOfFailedSuboperations == 1
    assert responses[-1][1] is not None and len(responses[-1][1].FailedSOPInstanceUIDList) >= 1


@pytest.fixture
def compressed_app(appliance_factory: Any, world: World) -> ApplianceProcess:
    app = appliance_factory("compressed", config={"modalities": modalities(world.dest_port,
                                                                           world.orthanc_port)})
    app.start()
    path = pydicom_file("SC_rgb_jpeg_dcmtk.dcm")
    ae = AE(ae_title="FINDSCU")
    ae.add_requested_context(sc.SecondaryCaptureImageStorage, JPEGBaseline8Bit)
    assoc = ae.associate("127.0.0.1", app.dicom_port, ae_title=app.aet)
    assert assoc.is_established
    try:
        assert assoc.send_c_store(path).Status == 0x0000
    finally:
        assoc.release()
    return app


def test_move_compressed_to_uncompressed_only_peer(compressed_app: ApplianceProcess,
                                                   world: World, storescp: StoreSCP) -> None:
    source = dcmread(pydicom_file("SC_rgb_jpeg_dcmtk.dcm"))
    responses = pynetdicom_move(compressed_app, ident("STUDY",
                                                      StudyInstanceUID=source.StudyInstanceUID),
                                "DEST")
    final, _ = responses[-1]
    assert final.Status == 0x0000
    wait_for(lambda: len(storescp.files()) == 1, 30, "the decompressed instance")
    received = dcmread(storescp.files()[0])
    assert not received.file_meta.TransferSyntaxUID.is_compressed
    assert received.pixel_array.shape == source.pixel_array.shape


def test_move_compressed_bytes_untouched(compressed_app: ApplianceProcess,
                                         world: World) -> None:
    scp = StoreSCP(world.dest_port, world.tmpdir("dest-all"), "+xa")
    try:
        source = dcmread(pydicom_file("SC_rgb_jpeg_dcmtk.dcm"))
        responses = pynetdicom_move(
            compressed_app, ident("STUDY", StudyInstanceUID=source.StudyInstanceUID), "DEST")
        assert responses[-1][0].Status == 0x0000
        wait_for(lambda: len(scp.files()) == 1, 30, "the instance")
        received = dcmread(scp.files()[0])
        assert received.file_meta.TransferSyntaxUID == source.file_meta.TransferSyntaxUID
        assert received.PixelData == source.PixelData
    finally:
        scp.stop()


# --- C-GET ------------------------------------------------------------------------------------


def test_getscu_study(world: World) -> None:
    out = world.tmpdir("get")
    dcmtk("getscu", "-S", "-aet", "FINDSCU", "-aec", world.app.aet, "-od", str(out),
          "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={S1}",
          "127.0.0.1", str(world.app.dicom_port), timeout=120)
    files = sorted(out.iterdir())
    assert len(files) == 3
    assert {dcmread(p).StudyInstanceUID for p in files} == {S1}


def test_get_counts_with_pynetdicom(world: World) -> None:
    received: list[str] = []

    def on_store(event: Any) -> int:
        received.append(event.request.AffectedSOPInstanceUID)
        return 0x0000

    responses = pynetdicom_get(world.app, sc.PatientRootQueryRetrieveInformationModelGet,
                               ident("STUDY", PatientID="P_2", StudyInstanceUID=S2), on_store)
    final = responses[-1][0]
    assert final.Status == 0x0000 and final.NumberOfCompletedSuboperations == 3
    assert len(set(received)) == 3


def test_get_in_small_pdus(world: World) -> None:
    """A requestor taking PDUs of 1 KB gets each stored dataset whole, in many PDVs."""
    received: dict[str, Dataset] = {}

    def on_store(event: Any) -> int:
        received[event.request.AffectedSOPInstanceUID] = event.dataset
        return 0x0000

    responses = pynetdicom_get(world.app, sc.StudyRootQueryRetrieveInformationModelGet,
                               ident("STUDY", StudyInstanceUID=S1), on_store, max_pdu=1024)
    assert responses[-1][0].Status == 0x0000
    sources = {ds.SOPInstanceUID: ds for ds in map(dcmread, (world.root / "in" / "s1").iterdir())}
    assert received.keys() == sources.keys()
    assert all(received[uid] == sources[uid] for uid in sources)


# --- settings ---------------------------------------------------------------------------------


def test_settings(appliance_factory: Any, tmp_path: Path) -> None:
    app = appliance_factory("settings", config={"dicom": {
        "query_from_unknown": True, "case_sensitive_pn": True, "unindexed_keys": "refuse",
        "max_find_answers": 2,
    }})  # fmt: skip
    app.start()
    storescu(app, *make_series(tmp_path / "a", 1, patient_id="A", patient_name="Doe^A"),
             *make_series(tmp_path / "b", 1, patient_id="B", patient_name="Doe^B"),
             *make_series(tmp_path / "c", 1, patient_id="C", patient_name="Doe^C"))
    # query_from_unknown: any AE may query; max_find_answers: 2 answers, then 0xA700
    responses = pynetdicom_find(app, ident("STUDY", PatientName="Doe*"), aet="ANYONE")
    assert [s for s, _, _ in responses] == [0xFF00, 0xFF00, 0xA700]
    assert "first 2 sent" in responses[-1][2]
    # case_sensitive_pn
    responses = pynetdicom_find(app, ident("STUDY", PatientName="doe*"), aet="ANYONE")
    assert [s for s, _, _ in responses] == [0x0000]
    # unindexed_keys = refuse
    ((status, _, comment),) = pynetdicom_find(app, ident("STUDY", PatientWeight=""),
                                              aet="ANYONE")
    assert status == 0xC002 and "PatientWeight" in comment


# --- Orthanc as the querying PACS -------------------------------------------------------------


@pytest.fixture
def orthanc(world: World) -> Iterator[str]:
    peer = Orthanc(world.tmpdir("orthanc"), dicom_port=world.orthanc_port,
                   modalities={"box": ["APPLIANCE", "127.0.0.1", world.app.dicom_port]})
    try:
        yield peer.url
    finally:
        peer.stop()


def test_orthanc_queries_and_retrieves(world: World, orthanc: str) -> None:
    r = requests.post(f"{orthanc}/modalities/box/query", timeout=60,
                      json={"Level": "Study", "Query": {"PatientName": "*"}})
    assert r.ok, r.text
    query_id = r.json()["ID"]
    answers = requests.get(f"{orthanc}/queries/{query_id}/answers", timeout=30).json()
    contents = [requests.get(f"{orthanc}/queries/{query_id}/answers/{a}/content?simplify",
                             timeout=30).json() for a in answers]
    assert sorted(c["StudyInstanceUID"] for c in contents) == sorted([S1, S2, S3])
    index = next(i for i, c in zip(answers, contents, strict=True)
                 if c["StudyInstanceUID"] == S2)
    r = requests.post(f"{orthanc}/queries/{query_id}/answers/{index}/retrieve", timeout=120,
                      json={"TargetAet": "ORTHANC", "Synchronous": True})
    assert r.ok, r.text
    wait_for(lambda: len(requests.get(f"{orthanc}/instances", timeout=10).json()) == 3, 60,
             "3 instances in Orthanc")
    studies = requests.get(f"{orthanc}/studies?expand", timeout=10).json()
    assert [s["MainDicomTags"]["StudyInstanceUID"] for s in studies] == [S2]
