"""A fast path for sending C-STOREs: forwarding and C-MOVE (associations we open) and C-GET
(the requestor's association).

pynetdicom's ``send_c_store`` parses the file meta with pydicom, builds the command with
pydicom, hands the PDUs to the DUL thread and waits for the response through two more queues:
about 2.5 ms per instance, mostly thread hand-offs under the GIL. Here the sending thread owns
the socket for the session (``EventDUL.hold``): it writes the C-STORE-RQ command (PS3.7
9.3.1.1) and the file's dataset bytes, untouched, as P-DATA-TF PDUs no larger than the peer's
maximum (PS3.8 9.3.5, E.2), and reads the C-STORE-RSP itself. Any other PDU the peer sends
(A-ABORT, A-RELEASE-RQ) goes to pynetdicom as received, which ends the association as usual;
a C-CANCEL-RQ (a C-GET requestor may send one at any time, PS3.7 9.3.3.3) is recorded where
pynetdicom's service class looks for it.
"""

from __future__ import annotations

import os
import select
import socket
import struct
import time
from dataclasses import dataclass
from pathlib import Path

from pynetdicom.dimse_primitives import C_CANCEL

from .pdu import (
    COMMAND,
    LAST,
    NO_DATASET,
    P_DATA_TF,
    PDU_HEADER,
    Malformed,
    command_pdus,
    command_set,
    padded,
    parse_command,
    split_pdvs,
    ui,
)
from .reactor import EventDUL, _quickack

C_STORE_RQ, C_STORE_RSP, C_GET_RSP, C_CANCEL_RQ = 0x0001, 0x8001, 0x8010, 0x0FFF
PENDING = 0xFF00
CHUNK = 1 << 20  # bytes of a file read at once
MAX_RESPONSE = 1 << 16  # bytes: a C-STORE-RSP command is a few hundred


class SendFailed(RuntimeError):
    """The instance could not be sent, or no response came (the association is unusable)."""


def dataset_offset(head: bytes, name: str) -> int:
    """Where the dataset starts in a Part 10 file whose first bytes are ``head``: after the
    preamble, ``DICM`` and the file meta group (PS3.10 7.1), whose (0002,0000) element gives
    its length."""
    if len(head) < 144 or head[128:132] != b"DICM":
        raise SendFailed(f"{name}: not a Part 10 file")
    group, element, vr, length = struct.unpack_from("<HH2sH", head, 132)
    if (group, element, vr, length) != (2, 0, b"UL", 4):
        raise SendFailed(f"{name}: the file meta group has no group length")
    return 144 + int(struct.unpack_from("<I", head, 140)[0])


def store_command(context_sop_class: str, sop_instance: str, message_id: int,
                  originator: tuple[str, int] | None) -> bytes:
    """The C-STORE-RQ command set, implicit VR LE, elements in ascending order (PS3.7 E.1)."""
    elements = [
        (0x0002, ui(context_sop_class)),
        (0x0100, struct.pack("<H", C_STORE_RQ)),
        (0x0110, struct.pack("<H", message_id)),
        (0x0700, struct.pack("<H", 0)),  # priority: medium
        (0x0800, struct.pack("<H", 0)),  # a dataset follows
        (0x1000, ui(sop_instance)),
    ]
    if originator is not None:
        elements += [(0x1030, padded(originator[0])),
                     (0x1031, struct.pack("<H", originator[1]))]
    return command_set(elements)


def get_pending_command(sop_class: str, message_id: int, counts: tuple[int, int, int, int]
                        ) -> bytes:
    """A pending C-GET-RSP without identifier (PS3.7 9.3.3.2): the counts of remaining,
    completed, failed and warning sub-operations."""
    elements = [
        (0x0002, ui(sop_class)),
        (0x0100, struct.pack("<H", C_GET_RSP)),
        (0x0120, struct.pack("<H", message_id)),
        (0x0800, struct.pack("<H", NO_DATASET)),
        (0x0900, struct.pack("<H", PENDING)),
    ]
    elements += [(0x1020 + i, struct.pack("<H", n)) for i, n in enumerate(counts)]
    return command_set(elements)


@dataclass(frozen=True)
class Response:
    status: int
    comment: str


class FastSender:
    """Sends C-STOREs over ``dul``'s socket from the calling thread (one at a time)."""

    def __init__(self, dul: EventDUL, peer_max_pdu: int, timeout: float) -> None:
        self.dul = dul
        self.max_pdu = peer_max_pdu
        self.timeout = timeout
        self.held = False
        self.cancelled = dul.assoc.dimse.cancel_req  # pynetdicom's, by message ID

    @property
    def sock(self) -> socket.socket:
        transport = self.dul.socket
        if transport is None or transport.socket is None:
            raise SendFailed("the connection is closed")
        return transport.socket

    def hold(self) -> None:
        if not self.held:
            self.dul.hold()
            self.held = True

    def unhold(self) -> None:
        if self.held:
            self.held = False
            self.dul.unhold()

    def send(self, path: Path, context_id: int, sop_class: str, sop_instance: str,
             message_id: int, originator: tuple[str, int] | None) -> Response:
        """Send the file's dataset and return the peer's response (``SendFailed`` if the
        association broke: it is unusable afterwards)."""
        self.hold()
        sock = self.sock
        command = store_command(sop_class, sop_instance, message_id, originator)
        try:
            self._send_dataset(sock, path, context_id,
                               command_pdus(context_id, command, self.max_pdu))
            # Linux delays ACKs again once we send right after receiving: a peer that leaves
            # Nagle's algorithm on (DCMTK's default) would hold the rest of its response until
            # our ACK came, ~40 ms per instance (22 instances/s forwarded to such a storescp)
            _quickack(sock)
            return self._response(sock, message_id)
        except (OSError, EOFError, Malformed) as exc:
            raise SendFailed(f"{type(exc).__name__}: {exc}") from exc

    def send_command(self, context_id: int, command: bytes) -> None:
        """Write a command without dataset (a pending C-GET response) in turn with the
        C-STOREs: the DUL thread would write it whenever it runs, possibly between a C-STORE's
        command and its dataset (PS3.8 9.3.5.1 forbids interleaving messages)."""
        self.hold()
        try:
            self.sock.sendall(command_pdus(context_id, command, self.max_pdu))
        except OSError as exc:
            raise SendFailed(f"{type(exc).__name__}: {exc}") from exc

    def _send_dataset(self, sock: socket.socket, path: Path, context_id: int,
                      command: bytes) -> None:
        """The command's PDUs, then the dataset's bytes as PDVs no larger than the peer takes,
        written a ``CHUNK`` at a time: a small instance is one read and one write."""
        size = min(self.max_pdu - 6, CHUNK) if self.max_pdu > 6 else CHUNK
        with open(path, "rb", buffering=0) as f:
            data = memoryview(f.read(CHUNK))
            start = dataset_offset(bytes(data[:144]), path.name)
            left = os.fstat(f.fileno()).st_size - start
            if left < 0:
                raise EOFError(f"{path.name} ends inside its file meta group")
            data = data[start:]
            out: list[bytes | memoryview] = [command]
            while True:
                if len(data) < min(size, left):
                    more = f.read(CHUNK)
                    if not more:
                        raise EOFError(f"{path.name} ends before its size")
                    data = memoryview(bytes(data) + more)
                piece, data = data[:min(size, left)], data[min(size, left):]
                left -= len(piece)
                out += [PDU_HEADER.pack(P_DATA_TF, 0, len(piece) + 6), struct.pack(
                    ">IBB", len(piece) + 2, context_id, 0 if left > 0 else LAST), piece]
                if left <= 0 or len(data) < size:
                    sock.sendall(b"".join(out))
                    out = []
                if left <= 0:
                    return

    def _response(self, sock: socket.socket, message_id: int) -> Response:
        command = bytearray()
        deadline = time.monotonic() + self.timeout
        while True:
            header = self._recv(sock, 6, deadline, waiting=True)
            pdu_type, _, length = PDU_HEADER.unpack(header)
            if length > MAX_RESPONSE:
                raise Malformed(f"a PDU of {length} bytes where a C-STORE response belongs")
            body = self._recv(sock, length, deadline)
            _quickack(sock)
            if pdu_type != P_DATA_TF:
                self.unhold()
                self.dul.hand_over(bytearray(header + body))  # pynetdicom ends the association
                raise SendFailed(f"the peer sent PDU type 0x{pdu_type:02X} instead of a "
                                 "C-STORE response")
            pdvs = memoryview(body)
            for pdv in split_pdvs(pdvs):
                if not pdv.control & COMMAND:
                    raise Malformed("a dataset in a C-STORE response")
                command += pdvs[pdv.start:pdv.end]
                if pdv.control & LAST:
                    response = self._parse(command, message_id)
                    if response is not None:
                        return response
                    command = bytearray()  # a C-CANCEL-RQ: the response is still to come

    def _parse(self, command: bytearray, message_id: int) -> Response | None:
        elements = parse_command(command)
        try:
            assert elements is not None
            field = struct.unpack("<H", elements[0x0100])[0]
            answered = struct.unpack("<H", elements[0x0120])[0]
            status = struct.unpack("<H", elements.get(0x0900, b"\0\0"))[0]
        except (AssertionError, KeyError, struct.error) as exc:
            raise Malformed("not a C-STORE response") from exc
        if field == C_CANCEL_RQ:
            cancel = C_CANCEL()
            cancel.MessageIDBeingRespondedTo = answered
            self.cancelled[answered] = cancel
            return None
        if field != C_STORE_RSP or answered != message_id:
            raise Malformed(f"response 0x{field:04X} to message {answered}, not ours")
        comment = elements.get(0x0902, b"").rstrip(b"\0 ").decode("latin-1")
        self.dul._idle_timer.restart()
        return Response(int(status), comment)

    @staticmethod
    def _recv(sock: socket.socket, n: int, deadline: float, waiting: bool = False) -> bytes:
        """``n`` bytes; ``waiting``: none are there yet (otherwise they usually are: the body
        of a PDU arrives with its header), so wait before reading."""
        data = bytearray()
        while len(data) < n:
            if waiting:
                left = deadline - time.monotonic()
                if left <= 0 or not select.select([sock], [], [], left)[0]:
                    raise TimeoutError("no C-STORE response within the DIMSE timeout")
            try:
                got = sock.recv(n - len(data), socket.MSG_DONTWAIT)
            except BlockingIOError:
                waiting = True
                continue
            if not got:
                raise EOFError("the peer closed the connection")
            data += got
        return bytes(data)
