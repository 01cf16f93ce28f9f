"""C-ECHO and C-FIND served in the DUL thread, beside the C-STORE fast path (``faststore``).

Through pynetdicom, each C-FIND response costs a DIMSE message built with pydicom, a hop from
the association thread to the DUL thread and a PDU object: ~0.8 ms per answer and several
milliseconds per query on a busy two-core box, where a planning system waits for every list.
Here the DUL thread, which already read the request, decodes the identifier, runs the same
query (``qr.find``: access control, matching, answer limit) and writes each response straight
to the socket (PS3.7 9.1.2, 9.3.2; PS3.8 E.2).

While the answers go out the requestor may send a C-CANCEL-RQ (PS3.7 9.3.2.3): the socket is
looked at before each answer; a cancel for this request ends the C-FIND with 0xFE00. Whatever
else arrives meanwhile is kept and given to pynetdicom after the final response (an A-ABORT at
once, and no more answers are sent).
"""

from __future__ import annotations

import io
import logging
import select
import socket
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass

from pydicom.dataset import Dataset
from pydicom.uid import ImplicitVRLittleEndian
from pynetdicom.dsutils import decode, encode

from ..configstore import ConfigStore
from ..health.metrics import DicomMetrics
from ..store import Store
from . import qr
from .pdu import (
    COMMAND,
    NO_DATASET,
    P_DATA_TF,
    PDU_HEADER,
    Malformed,
    command_set,
    padded,
    parse_command,
    split_pdvs,
    text,
    ui,
    us,
)
from .query import UNABLE_TO_PROCESS

log = logging.getLogger("appliance.dicom")

VERIFICATION = "1.2.840.10008.1.1"
C_ECHO_RQ, C_ECHO_RSP = 0x0030, 0x8030
C_FIND_RQ, C_FIND_RSP = 0x0020, 0x8020
C_CANCEL_RQ = 0x0FFF
A_ABORT = 0x07
DATASET = 0x0001  # (0000,0800) when a dataset follows, as pynetdicom writes it (PS3.7 E.1)
FIND_MODELS = ("1.2.840.10008.5.1.4.1.2.1.1", "1.2.840.10008.5.1.4.1.2.2.1")  # PS3.4 C.6
LITTLE_ENDIAN = (ImplicitVRLittleEndian, "1.2.840.10008.1.2.1")  # deflate: left to pynetdicom
MAX_IDENTIFIER = 1 << 20  # bytes: a query's keys are a few hundred; more is not a query
MAX_PDU_READ = 1 << 20  # bytes: the largest PDU read while answering (a cancel is ~80)


@dataclass(frozen=True)
class EchoRequest:
    """A C-ECHO-RQ (PS3.7 9.3.5.1): answered at once."""

    context_id: int
    message_id: int
    sop_class: str


@dataclass(frozen=True)
class FindRequest:
    """What the fast path needs of a C-FIND-RQ (PS3.7 9.3.2.1) and its context."""

    context_id: int
    message_id: int
    sop_class: str
    implicit: bool  # the context's transfer syntax: implicit or explicit VR little endian


def request_of(context_id: int, elements: dict[int, bytes], abstract_syntax: str,
               transfer_syntax: str) -> EchoRequest | FindRequest | None:
    """The C-ECHO-RQ or C-FIND-RQ in a command set, if it is one the fast path serves: on a
    context of its own SOP class, a C-FIND's identifier in little endian (PS3.7 9.3.2.1)."""
    try:
        command, message_id = us(elements[0x0100]), us(elements[0x0110])
        sop_class, has_dataset = text(elements[0x0002]), us(elements[0x0800]) != NO_DATASET
    except (KeyError, struct.error, UnicodeDecodeError):
        return None
    if sop_class != abstract_syntax:
        return None
    if command == C_ECHO_RQ and sop_class == VERIFICATION and not has_dataset:
        return EchoRequest(context_id, message_id, sop_class)
    if (command == C_FIND_RQ and sop_class in FIND_MODELS and has_dataset
            and transfer_syntax in LITTLE_ENDIAN):
        return FindRequest(context_id, message_id, sop_class,
                           transfer_syntax == ImplicitVRLittleEndian)
    return None


def response(command: int, sop_class: str, message_id: int, status: int, comment: str = "",
             dataset: bool = False) -> bytes:
    """A C-ECHO-RSP or C-FIND-RSP command set (PS3.7 9.1.2.1, 9.3.2.2)."""
    elements = [
        (0x0002, ui(sop_class)),
        (0x0100, struct.pack("<H", command)),
        (0x0120, struct.pack("<H", message_id)),
        (0x0800, struct.pack("<H", DATASET if dataset else NO_DATASET)),
        (0x0900, struct.pack("<H", status)),
    ]
    if comment:
        elements.append((0x0902, padded(comment[:64])))
    return command_set(elements)


def is_cancel(pdu: bytes, message_id: int) -> bool:
    """Is this P-DATA-TF PDU a C-CANCEL-RQ for ``message_id`` (in one PDU, as all are)?"""
    if pdu[0] != P_DATA_TF:
        return False
    body = memoryview(pdu)[6:]
    try:
        pdvs = split_pdvs(body)
    except Malformed:
        return False
    command = b"".join(bytes(body[p.start:p.end]) for p in pdvs if p.control & COMMAND)
    elements = parse_command(command) if command else None
    if not elements or 0x0100 not in elements or 0x0120 not in elements:
        return False
    return us(elements[0x0100]) == C_CANCEL_RQ and us(elements[0x0120]) == message_id


def read_pdu(sock: socket.socket) -> bytes:
    """One whole PDU (blocking until it is complete; EOFError if the connection closed)."""
    data = bytearray()
    want = 6
    while len(data) < want:
        chunk = sock.recv(want - len(data))
        if not chunk:
            raise EOFError
        data += chunk
        if len(data) == 6 and want == 6:
            want += PDU_HEADER.unpack(data)[2]
            if want > MAX_PDU_READ + 6:
                raise Malformed(f"a {want}-byte PDU while answering a C-FIND")
    return bytes(data)


class CancelWatch:
    """What the requestor sends while we answer: a C-CANCEL for our request, or PDUs kept for
    pynetdicom (``deferred``); ``aborted`` once an A-ABORT came (nothing more may be sent)."""

    def __init__(self, sock: socket.socket, message_id: int) -> None:
        self.sock = sock
        self.message_id = message_id
        self.deferred: list[bytes] = []
        self.cancel = self.aborted = False

    def __call__(self) -> bool:
        while not (self.cancel or self.aborted):
            readable, _, _ = select.select([self.sock], [], [], 0)
            if not readable:
                break
            pdu = read_pdu(self.sock)
            if is_cancel(pdu, self.message_id):
                self.cancel = True
                continue
            self.deferred.append(pdu)
            self.aborted = pdu[0] == A_ABORT
        return self.cancel or self.aborted


Send = Callable[[int, bytes, "bytes | None"], None]  # context ID, command set, dataset


class Finder:
    """Serves the C-ECHOs and C-FINDs the receivers take over (shared by all associations)."""

    def __init__(self, configs: ConfigStore, store: Store, metrics: DicomMetrics) -> None:
        self.configs = configs
        self.store = store
        self.metrics = metrics

    def echo(self, send: Send, request: EchoRequest) -> None:
        started = time.perf_counter()
        send(request.context_id,
             response(C_ECHO_RSP, request.sop_class, request.message_id, qr.SUCCESS), None)
        self.metrics.served("C_ECHO", time.perf_counter() - started)

    def find(self, send: Send, sock: socket.socket, request: FindRequest, identifier: bytes,
             calling_aet: str, peer: str) -> list[bytes]:
        """Answer the C-FIND; the PDUs that arrived meanwhile and are pynetdicom's to handle."""
        started = time.perf_counter()
        watch = CancelWatch(sock, request.message_id)
        query = qr.Request(request.sop_class, calling_aet, peer,
                           lambda: decode(io.BytesIO(identifier), request.implicit, True))
        for status, comment, answer in qr.find(query, self.configs.current, self.store, watch):
            if watch.aborted or not self._respond(send, request, status, comment, answer):
                break
        self.metrics.served("C_FIND", time.perf_counter() - started)
        return watch.deferred

    @staticmethod
    def _respond(send: Send, request: FindRequest, status: int, comment: str,
                 answer: Dataset | None) -> bool:
        """Send one response; False if an answer could not be encoded (the C-FIND then ends
        with a failure: pynetdicom logged why)."""
        data = encode(answer, request.implicit, True) if answer is not None else None
        if answer is not None and data is None:
            status, comment = UNABLE_TO_PROCESS, "an answer could not be encoded"
        send(request.context_id, response(C_FIND_RSP, request.sop_class, request.message_id,
                                          status, comment, data is not None), data)
        return answer is None or data is not None
