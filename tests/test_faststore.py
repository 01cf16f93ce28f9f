"""The fast paths (appliance/dicom/faststore.py, fastfind.py, pdu.py): their encoders and
parsers against pynetdicom's and pydicom's, then the real appliance fed by storescu, findscu,
pynetdicom and hand-made PDUs."""

from __future__ import annotations

import io
import json
import socket
import struct
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.filereader import read_file_meta_info
from pydicom.filewriter import write_file_meta_info
from pydicom.uid import (
    UID,
    CTImageStorage,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)
from pynetdicom import AE, build_context, evt
from pynetdicom.association import Association
from pynetdicom.dimse_messages import (
    C_CANCEL_RQ,
    C_ECHO_RQ,
    C_FIND_RQ,
    C_FIND_RSP,
    C_STORE_RQ,
    C_STORE_RSP,
)
from pynetdicom.dimse_primitives import C_CANCEL, C_ECHO, C_FIND, C_STORE
from pynetdicom.dsutils import create_file_meta, decode, encode
from pynetdicom.pdu import P_DATA_TF
from pynetdicom.sop_class import (
    PatientRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelFind,
    Verification,
)

from appliance.dicom import fastfind, faststore
from appliance.dicom.faststore import PduBody, StoreRequest
from appliance.dicom.pdu import Malformed, command_pdus, parse_command, split_pdvs

from .conftest import ApplianceProcess, make_series, storescu, temp_files, wait_for

SOP_CLASS = "1.2.840.10008.5.1.4.1.1.2"
SOP_INSTANCE = "1.2.826.0.1.3680043.8.498.12345678901234567890123"  # odd length: padded


# --- encoders and parsers --------------------------------------------------------------------

@pytest.mark.parametrize("ts", ["1.2.840.10008.1.2", "1.2.840.10008.1.2.1",
                                "1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.1.99"])
@pytest.mark.parametrize("instance", [SOP_INSTANCE, SOP_INSTANCE + "4"])
def test_file_meta_is_pynetdicoms(ts: str, instance: str, tmp_path: Path) -> None:
    ours = faststore.file_meta(SOP_CLASS, instance, ts)
    theirs = io.BytesIO()
    theirs.write(b"\0" * 128 + b"DICM")
    write_file_meta_info(theirs, create_file_meta(  # type: ignore[arg-type]
        sop_class_uid=UID(SOP_CLASS), sop_instance_uid=UID(instance), transfer_syntax=UID(ts)
    ))
    assert ours == theirs.getvalue()
    path = tmp_path / "meta.dcm"
    path.write_bytes(ours)
    meta = read_file_meta_info(path)
    assert meta.MediaStorageSOPClassUID == SOP_CLASS
    assert meta.MediaStorageSOPInstanceUID == instance
    assert meta.TransferSyntaxUID == ts
    assert meta.FileMetaInformationGroupLength == len(ours) - 132 - 12


def pynetdicom_response(request: StoreRequest, status: int, comment: str) -> bytes:
    rsp = C_STORE()
    rsp.MessageIDBeingRespondedTo = request.message_id
    rsp.AffectedSOPClassUID = request.sop_class
    rsp.AffectedSOPInstanceUID = request.sop_instance
    rsp.Status = status
    if comment:
        rsp.ErrorComment = comment
    msg = C_STORE_RSP()
    msg.primitive_to_message(rsp)
    return encode(msg.command_set, True, True)  # type: ignore[return-value]


@pytest.mark.parametrize("status,comment", [
    (0x0000, ""), (0xA900, "SOPInstanceUID 1.2.3 differs from the command's 1.2.34"),
    (0xA700, "not stored: OSError"), (0xC000, "x" * 64),
])
def test_store_response_is_pynetdicoms(status: int, comment: str) -> None:
    request = StoreRequest(1, 65535, SOP_CLASS, SOP_INSTANCE, ExplicitVRLittleEndian)
    ours = faststore.store_response(request, status, comment)
    assert ours == pynetdicom_response(request, status, comment)
    cs = decode(io.BytesIO(ours), True, True)
    assert cs.CommandGroupLength == len(ours) - 12
    assert cs.CommandField == 0x8001
    assert cs.MessageIDBeingRespondedTo == 65535
    assert cs.CommandDataSetType == 0x0101
    assert cs.Status == status
    assert cs.AffectedSOPClassUID == SOP_CLASS
    assert cs.AffectedSOPInstanceUID == SOP_INSTANCE
    assert cs.get("ErrorComment", "") == comment


@pytest.mark.parametrize("status,comment,dataset", [
    (0xFF00, "", True), (0x0000, "", False), (0xA700, "more than 10 matches: first 10 sent", False),
    (0xC001, "calling AE X may not find", False),
])
def test_find_response_is_pynetdicoms(status: int, comment: str, dataset: bool) -> None:
    rsp = C_FIND()
    rsp.MessageIDBeingRespondedTo = 9
    rsp.AffectedSOPClassUID = StudyRootQueryRetrieveInformationModelFind
    rsp.Status = status
    if comment:
        rsp.ErrorComment = comment
    if dataset:
        rsp.Identifier = io.BytesIO(b"\0" * 8)
    msg = C_FIND_RSP()
    msg.primitive_to_message(rsp)
    theirs = encode(msg.command_set, True, True)
    ours = fastfind.response(fastfind.C_FIND_RSP, StudyRootQueryRetrieveInformationModelFind, 9,
                             status, comment, dataset)
    assert ours == theirs


def find_command(message_id: int, model: str, identifier: Dataset, implicit: bool = True
                 ) -> tuple[C_FIND, C_FIND_RQ]:
    req = C_FIND()
    req.MessageID = message_id
    req.AffectedSOPClassUID = model
    req.Priority = 2
    req.Identifier = io.BytesIO(encode(identifier, implicit, True))  # type: ignore[arg-type]
    return req, C_FIND_RQ()


def test_is_cancel() -> None:
    req = C_CANCEL()
    req.MessageIDBeingRespondedTo = 5
    cancel = pdu(message_pdvs(req, C_CANCEL_RQ(), 3))
    assert fastfind.is_cancel(cancel, 5)
    assert not fastfind.is_cancel(cancel, 6)
    assert not fastfind.is_cancel(pdu(echo_pdvs(1, 5)), 5)
    assert not fastfind.is_cancel(b"\x07\x00\x00\x00\x00\x04\x00\x00\x00\x00", 5)  # A-ABORT


def store_command(message_id: int = 7, instance: str = SOP_INSTANCE) -> bytes:
    req = C_STORE()
    req.MessageID = message_id
    req.AffectedSOPClassUID = SOP_CLASS
    req.AffectedSOPInstanceUID = instance
    req.Priority = 2
    req.DataSet = io.BytesIO(b"\0" * 8)
    msg = C_STORE_RQ()
    msg.primitive_to_message(req)
    return encode(msg.command_set, True, True)  # type: ignore[return-value]


def test_parse_command() -> None:
    elements = parse_command(store_command(42))
    assert elements is not None
    assert struct.unpack("<H", elements[0x0100])[0] == 0x0001
    assert struct.unpack("<H", elements[0x0110])[0] == 42
    assert elements[0x1000].rstrip(b"\0").decode() == SOP_INSTANCE
    assert parse_command(b"\x08\x00\x18\x00\x02\x00\x00\x00ab") is None  # group 0008
    assert parse_command(store_command()[:-3]) is None  # truncated


@pytest.mark.parametrize("max_pdu", [0, 16, 64, 1000])
def test_command_pdus_decode_with_pynetdicom(max_pdu: int) -> None:
    command = faststore.store_response(
        StoreRequest(3, 1, SOP_CLASS, SOP_INSTANCE, ExplicitVRLittleEndian), 0
    )
    data = command_pdus(3, command, max_pdu)
    joined, pos, controls = b"", 0, []
    while pos < len(data):
        length = struct.unpack(">I", data[pos + 2:pos + 6])[0]
        assert max_pdu == 0 or length <= max_pdu
        pdu = P_DATA_TF()
        pdu.decode(data[pos:pos + 6 + length])
        for context_id, pdv in pdu.to_primitive().presentation_data_value_list:
            assert context_id == 3
            controls.append(pdv[0])
            joined += pdv[1:]
        pos += 6 + length
    assert joined == command
    assert controls[-1] == 0x03 and all(c == 0x01 for c in controls[:-1])


def test_split_pdvs() -> None:
    body = struct.pack(">IBB", 5, 1, 3) + b"abc" + struct.pack(">IBB", 3, 1, 0) + b"d"
    pdvs = split_pdvs(memoryview(body))
    assert [(p.context_id, p.control, body[p.start:p.end]) for p in pdvs] == [
        (1, 3, b"abc"), (1, 0, b"d")]
    for bad in (body[:-1], body + b"\0", struct.pack(">IBB", 1, 1, 3)):
        with pytest.raises(Malformed):
            split_pdvs(memoryview(bad))


def test_pdu_body_never_reads_past_the_pdu() -> None:
    a, b = socket.socketpair()
    try:
        payload = bytes(range(256)) * 40  # 10240 bytes, then the next PDU's bytes
        a.sendall(payload + b"NEXT")
        body = PduBody(b, len(payload), bytearray(1000))
        assert bytes(body.take(6)) == payload[:6]
        streamed = b"".join(bytes(p) for p in body.stream(5000))
        assert streamed == payload[6:5006]
        assert bytes(body.take(10)) == payload[5006:5016]
        with pytest.raises(Malformed):
            body.take(body.remaining + 1)
        body.drain()
        assert body.remaining == 0
        assert b.recv(4) == b"NEXT"
    finally:
        a.close()
        b.close()


# --- the appliance ---------------------------------------------------------------------------

def dataset_bytes(data: bytes) -> bytes:
    """The bytes after the file meta group of a Part 10 file."""
    group_length = struct.unpack("<I", data[140:144])[0]
    return data[144 + group_length:]


def stored_file(app: ApplianceProcess, sop_instance: str) -> bytes:
    for inst in app.json("/instances?expand"):
        if inst["MainDicomTags"]["SOPInstanceUID"] == sop_instance:
            r = app.get(f"/instances/{inst['ID']}/file")
            r.raise_for_status()
            return bytes(r.content)
    raise AssertionError(f"{sop_instance} not stored")


@pytest.mark.parametrize("fast", [True, False], ids=["fast", "pynetdicom"])
def test_multi_pdu_dataset_arrives_intact(appliance_factory: Any, tmp_path: Path,
                                          fast: bool) -> None:
    app = appliance_factory(config={"dicom": {"fast_store": fast}}).start()
    big = make_series(tmp_path / "big", 1, size=724)[0]  # ~1 MB: ~256 PDUs of 4 KB
    small = make_series(tmp_path / "small", 3, size=16)
    result = storescu(app, big, *small, options=("-v", "-pdu", "4096"))
    assert result.stderr.count("Received Store Response (Success)") == 4, result.stderr
    for path in [big, *small]:
        sent = path.read_bytes()
        stored = stored_file(app, str(dcmread(path, stop_before_pixels=True).SOPInstanceUID))
        assert dataset_bytes(stored) == dataset_bytes(sent)
    assert not temp_files(app.data)


def associate(app: ApplianceProcess) -> Association:
    ae = AE(ae_title="FASTSCU")
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
    ae.requested_contexts = [
        build_context(CTImageStorage, ExplicitVRLittleEndian),
        build_context(Verification),
        build_context(PatientRootQueryRetrieveInformationModelFind),
    ]
    assoc = ae.associate("127.0.0.1", app.dicom_port, ae_title=app.aet)
    assert assoc.is_established
    return assoc


def test_echo_and_find_between_stores(appliance_factory: Any, tmp_path: Path) -> None:
    app = appliance_factory(config={"dicom": {"query_from_unknown": True}}).start()
    files = make_series(tmp_path / "s", 3, patient_id="FAST1", size=16)
    assoc = associate(app)
    try:
        assert assoc.send_c_store(files[0]).Status == 0x0000
        assert assoc.send_c_echo().Status == 0x0000
        query = Dataset()
        query.QueryRetrieveLevel = "PATIENT"
        query.PatientID = "FAST1"
        answers = [(s.Status, ident) for s, ident in
                   assoc.send_c_find(query, PatientRootQueryRetrieveInformationModelFind)]
        assert [ident.PatientID for _, ident in answers if ident is not None] == ["FAST1"]
        assert answers[-1][0] == 0x0000
        assert assoc.send_c_store(files[1]).Status == 0x0000
        assert assoc.send_c_echo().Status == 0x0000
        assert assoc.send_c_store(files[2]).Status == 0x0000
    finally:
        assoc.release()
    assert app.statistics()["CountInstances"] == 3


# --- hand-made PDUs: several messages in one PDU ---------------------------------------------

def message_pdvs(primitive: Any, message: Any, context_id: int,
                 max_pdu: int = 0) -> list[tuple[int, bytes]]:
    message.primitive_to_message(primitive)
    return [pdv for p_data in message.encode_msg(context_id, max_pdu)
            for pdv in p_data.presentation_data_value_list]


def store_pdvs(path: Path, context_id: int, message_id: int,
               max_pdu: int = 0) -> list[tuple[int, bytes]]:
    ds = dcmread(path, stop_before_pixels=True)
    req = C_STORE()
    req.MessageID = message_id
    req.AffectedSOPClassUID = ds.SOPClassUID
    req.AffectedSOPInstanceUID = ds.SOPInstanceUID
    req.Priority = 2
    req.DataSet = io.BytesIO(dataset_bytes(path.read_bytes()))
    return message_pdvs(req, C_STORE_RQ(), context_id, max_pdu)


def echo_pdvs(context_id: int, message_id: int) -> list[tuple[int, bytes]]:
    req = C_ECHO()
    req.MessageID = message_id
    req.AffectedSOPClassUID = Verification
    return message_pdvs(req, C_ECHO_RQ(), context_id)


def pdu(pdvs: list[tuple[int, bytes]]) -> bytes:
    """One P-DATA-TF PDU (the PDV data carries its message control header)."""
    items = b"".join(struct.pack(">IB", len(data) + 1, cid) + data for cid, data in pdvs)
    return struct.pack(">BBI", 4, 0, len(items)) + items


def exchange(assoc: Association, data: bytes, answers: int) -> list[Any]:
    """Send raw PDUs, return the next ``answers`` DIMSE messages (as ``send_c_*`` do, the
    association's reactor is held meanwhile so that it leaves the responses to us)."""
    assoc._reactor_checkpoint.clear()
    while not assoc._is_paused:
        time.sleep(0.001)
    try:
        assert assoc.dul.socket is not None
        assoc.dul.socket.send(data)
        return [assoc.dimse.get_msg(block=True)[1] for _ in range(answers)]
    finally:
        assoc._reactor_checkpoint.set()


def test_several_messages_in_one_pdu(appliance: ApplianceProcess, tmp_path: Path) -> None:
    files = make_series(tmp_path / "s", 5, size=16)
    assoc = associate(appliance)
    try:
        ct = next(cx.context_id for cx in assoc.accepted_contexts
                  if cx.abstract_syntax == CTImageStorage)
        echo = next(cx.context_id for cx in assoc.accepted_contexts
                    if cx.abstract_syntax == Verification)
        # two whole C-STOREs in one PDU
        one = pdu(store_pdvs(files[0], ct, 1) + store_pdvs(files[1], ct, 2))
        # a C-STORE whose dataset is split in 100-byte fragments over three PDUs, the last one
        # also carrying a whole C-STORE and a C-ECHO (handed to pynetdicom). (pynetdicom itself
        # would drop messages that follow another in the same PDU: the C-ECHO comes last.)
        split = store_pdvs(files[2], ct, 3, max_pdu=106)
        three = pdu(split[:3]) + pdu(split[3:-1]) + pdu(
            split[-1:] + store_pdvs(files[3], ct, 4) + echo_pdvs(echo, 5))
        responses = exchange(assoc, one + three, 5)
        assert [(type(r).__name__, r.MessageIDBeingRespondedTo, r.Status) for r in responses] \
            == [("C_STORE", 1, 0), ("C_STORE", 2, 0), ("C_STORE", 3, 0),
                ("C_STORE", 4, 0), ("C_ECHO", 5, 0)]
        assert assoc.send_c_store(files[4]).Status == 0x0000  # the association still works
    finally:
        assoc.release()
    for path in files:
        stored = stored_file(appliance, str(dcmread(path).SOPInstanceUID))
        assert dataset_bytes(stored) == dataset_bytes(path.read_bytes())
    assert not temp_files(appliance.data)


def test_malformed_pdv_mid_dataset_aborts_and_cleans_up(appliance: ApplianceProcess,
                                                        tmp_path: Path) -> None:
    files = make_series(tmp_path / "s", 2, size=16)
    assoc = associate(appliance)
    ct = next(cx.context_id for cx in assoc.accepted_contexts
              if cx.abstract_syntax == CTImageStorage)
    split = store_pdvs(files[0], ct, 1, max_pdu=106)
    aborted = threading.Event()
    assoc.bind(evt.EVT_ABORTED, lambda event: aborted.set())
    # the dataset starts, then a fragment claims more bytes than its PDU holds
    bad = bytearray(pdu(split[3:4]))
    bad[6:10] = struct.pack(">I", 500)
    assert assoc.dul.socket is not None
    assoc.dul.socket.send(pdu(split[:3]) + bytes(bad))
    for _ in range(300):
        if aborted.is_set() or not assoc.is_established:
            break
        time.sleep(0.05)
    assert not assoc.is_established
    assoc.kill()
    deadline = time.monotonic() + 10
    while temp_files(appliance.data) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not temp_files(appliance.data)
    assert "partial dataset discarded" in appliance.log()
    assert appliance.statistics()["CountInstances"] == 0
    ok = storescu(appliance, files[1], options=("-v",))
    assert "Received Store Response (Success)" in ok.stderr


# --- C-FIND and C-ECHO -------------------------------------------------------------------------

def find_answers(app: ApplianceProcess, query: Dataset, transfer_syntax: str,
                 max_pdu: int = 16382) -> list[tuple[int, dict[str, Any] | None]]:
    ae = AE(ae_title="FASTSCU")
    ae.maximum_pdu_size = max_pdu
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind, transfer_syntax)
    assoc = ae.associate("127.0.0.1", app.dicom_port, ae_title=app.aet)
    assert assoc.is_established
    try:
        return [(s.Status, ident.to_json_dict() if ident is not None else None) for s, ident
                in assoc.send_c_find(query, StudyRootQueryRetrieveInformationModelFind)]
    finally:
        assoc.release()


@pytest.mark.parametrize("transfer_syntax", [ImplicitVRLittleEndian, ExplicitVRLittleEndian,
                                             DeflatedExplicitVRLittleEndian])
def test_find_answers_as_pynetdicom_does(appliance_factory: Any, tmp_path: Path,
                                         transfer_syntax: str) -> None:
    """The fast path (little endian) and pynetdicom's (fast_store off; deflate always) give
    the same answers, also when each answer spans several PDUs of the requestor's maximum."""
    config = {"dicom": {"query_from_unknown": True}}
    fast = appliance_factory("fast", config=config).start()
    slow = appliance_factory("slow", config={"dicom": {**config["dicom"],
                                                       "fast_store": False}}).start()
    study = "1.2.826.0.1.3680043.8.498.777"
    files = make_series(tmp_path / "a", 4, patient_id="FIND1", study_uid=study, size=16,
                        series_uid=study + ".1", patient_name="Müller^Jörg")
    files += make_series(tmp_path / "b", 2, patient_id="FIND1", study_uid=study, size=16,
                         modality="MR", patient_name="Müller^Jörg")
    for app in (fast, slow):
        storescu(app, *files)
    images = Dataset()
    images.QueryRetrieveLevel = "IMAGE"
    images.StudyInstanceUID = study
    images.SeriesInstanceUID = study + ".1"
    images.SOPInstanceUID = ""
    images.Rows = None  # not indexed: read from the files
    studies = Dataset()
    studies.QueryRetrieveLevel = "STUDY"
    studies.PatientName = "M*"
    studies.StudyInstanceUID = ""
    studies.ModalitiesInStudy = ""
    studies.NumberOfStudyRelatedInstances = None
    for query, count in ((images, 5), (studies, 2)):
        answers = {app: sorted(find_answers(app, query, transfer_syntax, max_pdu=4096),
                               key=lambda a: json.dumps(a[1], sort_keys=True))
                   for app in (fast, slow)}
        assert len(answers[fast]) == count
        assert answers[fast][0] == (0x0000, None)  # the final response ("null") sorts first
        assert answers[fast] == answers[slow]
    rows = {a[1]["00280010"]["Value"][0] for a in find_answers(fast, images, transfer_syntax)
            if a[1]}
    assert rows == {16}
    found = [a[1] for a in find_answers(fast, studies, transfer_syntax) if a[1]]
    assert found[0]["00100010"]["Value"][0]["Alphabetic"] == "Müller^Jörg"
    assert found[0]["00201208"]["Value"] == [6]


def test_identifier_over_several_pdus_then_echo(appliance_factory: Any, tmp_path: Path) -> None:
    """A C-FIND whose identifier comes in 100-byte fragments over three PDUs, followed in the
    last one by a C-ECHO: both answered, in order."""
    app = appliance_factory(config={"dicom": {"query_from_unknown": True}}).start()
    storescu(app, *make_series(tmp_path / "s", 2, patient_id="SPLIT1", size=16))
    assoc = associate(app)
    try:
        find, implicit = next(
            (cx.context_id, cx.transfer_syntax[0] == ImplicitVRLittleEndian)
            for cx in assoc.accepted_contexts
            if cx.abstract_syntax == PatientRootQueryRetrieveInformationModelFind)
        echo = next(cx.context_id for cx in assoc.accepted_contexts
                    if cx.abstract_syntax == Verification)
        query = Dataset()
        query.QueryRetrieveLevel = "PATIENT"
        query.PatientID = ["SPLIT1"] + [f"NOPE{i:04}" for i in range(30)]  # list matching:
        query.PatientName = ""  # an identifier long enough to split
        pdvs = message_pdvs(*find_command(1, PatientRootQueryRetrieveInformationModelFind,
                                          query, implicit), find, max_pdu=106)
        data = pdu(pdvs[:2]) + pdu(pdvs[2:-1]) + pdu(pdvs[-1:] + echo_pdvs(echo, 2))
        responses = exchange(assoc, data, 3)
        assert [(type(r).__name__, r.MessageIDBeingRespondedTo, r.Status) for r in responses] \
            == [("C_FIND", 1, 0xFF00), ("C_FIND", 1, 0x0000), ("C_ECHO", 2, 0)]
        assert decode(responses[0].Identifier, implicit, True).PatientID == "SPLIT1"
    finally:
        assoc.release()


def test_abort_while_answering_leaves_the_server_well(appliance_factory: Any,
                                                      tmp_path: Path) -> None:
    app = appliance_factory(config={"dicom": {"query_from_unknown": True}}).start()
    storescu(app, *make_series(tmp_path / "s", 40, patient_id="ABORT1", size=16))
    assoc = associate(app)
    find, implicit = next((cx.context_id, cx.transfer_syntax[0] == ImplicitVRLittleEndian)
                          for cx in assoc.accepted_contexts
                          if cx.abstract_syntax == PatientRootQueryRetrieveInformationModelFind)
    query = Dataset()
    query.QueryRetrieveLevel = "IMAGE"
    query.PatientID = "ABORT1"
    query.StudyInstanceUID = query.SeriesInstanceUID = query.SOPInstanceUID = ""
    query.Rows = None  # read from the files: answers come slowly enough to abort among them
    del query.StudyInstanceUID, query.SeriesInstanceUID
    assert assoc.dul.socket is not None
    assoc.dul.socket.send(pdu(message_pdvs(*find_command(
        1, PatientRootQueryRetrieveInformationModelFind, query, implicit), find)))
    assoc.abort()
    for _ in range(200):
        if "association aborted with FASTSCU" in app.log():
            break
        time.sleep(0.05)
    assert "association aborted with FASTSCU" in app.log()
    assert "Traceback" not in app.log()
    again = associate(app)
    try:
        assert again.send_c_echo().Status == 0x0000
    finally:
        again.release()


def test_waiting_spare_association_counts_for_nothing(appliance_factory: Any) -> None:
    """The association made ready before a connection (``reactor``) takes no slot of
    ``max_associations``, and each connection in turn gets a working one."""
    app = appliance_factory(config={"dicom": {"max_associations": 2},
                                    "health": {"interval": 3600}}).start()
    held: list[Association] = []

    def hold_two() -> bool:  # (the start-up's own C-ECHOs may still hold slots a moment)
        ae = AE(ae_title="FASTSCU")
        ae.add_requested_context(Verification)
        held.extend(ae.associate("127.0.0.1", app.dicom_port, ae_title=app.aet)
                    for _ in range(2))
        if all(a.is_established for a in held):
            return True
        for a in held:
            if a.is_established:
                a.release()
            else:
                a.kill()
        held.clear()
        return False

    wait_for(hold_two, 10, "two associations")
    try:
        ae = AE(ae_title="FASTSCU")
        ae.add_requested_context(Verification)
        third = ae.associate("127.0.0.1", app.dicom_port, ae_title=app.aet)
        assert third.is_rejected
        assert [a.send_c_echo().Status for a in held] == [0, 0]
    finally:
        for assoc in held:
            assoc.release()
    echoes = []

    def echo() -> bool:  # (released associations may hold their slot a moment)
        ae = AE(ae_title="FASTSCU")
        ae.add_requested_context(Verification)
        assoc = ae.associate("127.0.0.1", app.dicom_port, ae_title=app.aet)
        if assoc.is_established:
            echoes.append(assoc.send_c_echo().Status)
            assoc.release()
        return assoc.is_released

    for _ in range(5):  # one after the other, as C-ECHO probes come
        wait_for(echo, 10, "a C-ECHO")
    assert echoes == [0] * 5
