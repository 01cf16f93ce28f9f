"""A fast path for C-STORE reception, inside the DUL reactor (``reactor.EventDUL``).

pynetdicom receives a C-STORE through generic machinery: a PDU object per P-DATA-TF, the state
machine's event queue, DIMSE message assembly, pydicom decoding of the command set, events, a
hop to the association thread, and pydicom encoding of the response. That costs ~1.5 ms of CPU
per instance, and the GIL caps every association of the process together.

Here the DUL thread reads P-DATA-TF PDUs itself (PS3.8 9.3.5) while the association is
established (Sta6). At a message boundary (pynetdicom has no message in progress) a PDU whose
first PDV starts a command is read whole; if its command set (implicit VR little endian,
PS3.7 6.3.1) is a C-STORE-RQ (PS3.7 9.3.1.1) on a storage context, the message is taken over:
its dataset fragments are spooled to a Part 10 file as they arrive (PS3.10 7.1: preamble,
``DICM``, file meta group), the store consumes the file, and the C-STORE-RSP is written
straight back to the socket. Anything else -- another command, another PDU type, a command
split over PDUs -- goes to pynetdicom exactly as received, so negotiation, release, abort,
C-ECHO and the query/retrieve services are unchanged.

A message that fails midway (connection closed, A-ABORT or A-RELEASE-RQ, malformed PDV) has its
spool file removed and pynetdicom handles the rest (Evt17, the PDU's own event, Evt19).
"""

from __future__ import annotations

import io
import logging
import socket
import struct
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, cast

from pydicom.uid import UID
from pynetdicom import PYNETDICOM_IMPLEMENTATION_UID, PYNETDICOM_IMPLEMENTATION_VERSION, _config
from pynetdicom.service_class import StorageServiceClass
from pynetdicom.sop_class import uid_to_service_class

from ..health.metrics import DicomMetrics
from ..storage.spool import SpoolFile
from ..store import Expected, Store
from . import fastfind, handlers
from .fastfind import MAX_IDENTIFIER, EchoRequest, Finder, FindRequest
from .pdu import (
    COMMAND,
    LAST,
    NO_DATASET,
    P_DATA_TF,
    PDU_HEADER,
    PDU_TYPES,
    PDV_HEADER,
    Malformed,
    command_pdus,
    command_set,
    padded,
    parse_command,
    split_pdvs,
    text,
    ui,
    us,
)
from .reactor import _quickack

if TYPE_CHECKING:
    from .reactor import EventDUL

log = logging.getLogger("appliance.dicom")

BUFFER = 256 * 1024  # bytes: the most read at once; larger first PDUs go to pynetdicom
PDU_SLACK = 1024  # bytes tolerated over the negotiated maximum (some peers count headers)
C_STORE_RQ, C_STORE_RSP = 0x0001, 0x8001


# --- encoders and parsers -------------------------------------------------------------------

def _explicit(element: int, vr: bytes, value: bytes) -> bytes:
    """A group 0002 element, explicit VR LE with a 2-byte length (PS3.5 7.1.2)."""
    return struct.pack("<HH2sH", 0x0002, element, vr, len(value)) + value


def file_meta(sop_class: str, sop_instance: str, transfer_syntax: str) -> bytes:
    """Preamble, ``DICM`` and file meta group of a received instance (PS3.10 7.1), byte for byte
    what pynetdicom writes (``create_file_meta`` + pydicom's ``write_file_meta_info``)."""
    group = b"".join((
        struct.pack("<HH2sHI", 0x0002, 0x0001, b"OB", 0, 2) + b"\0\1",
        _explicit(0x0002, b"UI", ui(sop_class)),
        _explicit(0x0003, b"UI", ui(sop_instance)),
        _explicit(0x0010, b"UI", ui(transfer_syntax)),
        _explicit(0x0012, b"UI", ui(PYNETDICOM_IMPLEMENTATION_UID)),
        _explicit(0x0013, b"SH", padded(PYNETDICOM_IMPLEMENTATION_VERSION)),
    ))
    length = struct.pack("<HH2sHI", 0x0002, 0x0000, b"UL", 4, len(group))
    return b"\0" * 128 + b"DICM" + length + group


@dataclass(frozen=True)
class StoreRequest:
    """What the fast path needs of a C-STORE-RQ (PS3.7 9.3.1.1) and its context."""

    context_id: int
    message_id: int
    sop_class: str
    sop_instance: str
    transfer_syntax: str


def store_response(request: StoreRequest, status: int, comment: str = "") -> bytes:
    """The C-STORE-RSP command set (PS3.7 9.3.1.2), implicit VR LE, as pynetdicom encodes it."""
    elements = [
        (0x0002, ui(request.sop_class)),
        (0x0100, struct.pack("<H", C_STORE_RSP)),
        (0x0120, struct.pack("<H", request.message_id)),
        (0x0800, struct.pack("<H", NO_DATASET)),
        (0x0900, struct.pack("<H", status)),
    ]
    if comment:
        elements.append((0x0902, padded(comment[:64])))
    elements.append((0x1000, ui(request.sop_instance)))
    return command_set(elements)


# --- the socket side ------------------------------------------------------------------------

class PduBody:
    """The variable field of one PDU, read from ``sock`` into ``buffer``, never past its end."""

    def __init__(self, sock: socket.socket, length: int, buffer: bytearray) -> None:
        self.sock = sock
        self.unread = length  # not yet received from the socket
        self.buffer = buffer
        self.view = memoryview(buffer)
        self.pos = self.end = 0  # buffered, not yet consumed: buffer[pos:end]

    @property
    def remaining(self) -> int:
        return self.end - self.pos + self.unread

    def _recv(self) -> None:
        """Receive more of the PDU after ``end`` (raises EOFError if the connection closed)."""
        want = min(len(self.buffer) - self.end, self.unread)
        got = self.sock.recv_into(self.view[self.end:self.end + want])
        if not got:
            raise EOFError
        self.end += got
        self.unread -= got

    def take(self, n: int) -> memoryview:
        """The next ``n`` bytes (at most the buffer's size), valid until the next call."""
        if n > self.remaining:
            raise Malformed(f"{n} bytes wanted, {self.remaining} left in the PDU")
        if self.end - self.pos < n:
            kept = bytes(self.view[self.pos:self.end])
            self.buffer[:len(kept)] = kept
            self.pos, self.end = 0, len(kept)
            while self.end < n:
                self._recv()
        chunk = self.view[self.pos:self.pos + n]
        self.pos += n
        return chunk

    def stream(self, n: int) -> Iterator[memoryview]:
        """The next ``n`` bytes, in pieces (each valid until the next)."""
        if n > self.remaining:
            raise Malformed(f"{n} bytes wanted, {self.remaining} left in the PDU")
        while n:
            if self.pos == self.end:
                self.pos = self.end = 0
                self._recv()
            piece = min(n, self.end - self.pos)
            yield self.view[self.pos:self.pos + piece]
            self.pos += piece
            n -= piece

    def drain(self) -> None:
        for _ in self.stream(self.remaining):
            pass


@dataclass
class Incoming:
    """A taken-over request whose dataset is arriving: a C-STORE's spooled to ``path``, a
    C-FIND's identifier kept in memory."""

    request: StoreRequest | FindRequest
    file: SpoolFile | io.BytesIO
    path: Path | None = None


class Receiver:
    """Reads the PDUs of one established acceptor association and serves its C-STOREs
    (installed by ``EventDUL``; runs in the DUL thread only)."""

    def __init__(self, dul: EventDUL, store: Store, metrics: DicomMetrics,
                 finder: Finder | None = None) -> None:
        self.dul = dul
        self.store = store
        self.metrics = metrics
        self.finder = finder  # C-ECHO and C-FIND too, when set
        self.buffer = bytearray(BUFFER)
        self.header = bytearray(6)
        self.incoming: Incoming | None = None

    @property
    def sock(self) -> socket.socket:
        assert self.dul.socket is not None and self.dul.socket.socket is not None
        return self.dul.socket.socket

    def read_pdu(self) -> None:
        """Read one PDU (the socket is readable): serve it, or hand it to pynetdicom. Mirrors
        the checks of pynetdicom's ``DULServiceProvider._read_pdu_data``."""
        try:
            self._read_pdu()
        except (EOFError, ConnectionError):
            self.discard()
            self.dul.event_queue.put("Evt17")  # transport connection closed
        except OSError as exc:  # the socket, or the spool file (disk full...)
            log.warning("C-STORE reception from %s failed: %s", self._peer(), exc)
            self.discard()
            self.dul.event_queue.put("Evt17")
        except Malformed as exc:
            log.warning("malformed P-DATA-TF from %s: %s", self._peer(), exc)
            self.discard()
            self.dul.event_queue.put("Evt19")  # invalid PDU: pynetdicom aborts

    def _read_pdu(self) -> None:
        header = memoryview(self.header)
        got = 0
        while got < 6:
            n = self.sock.recv_into(header[got:])
            if not n:
                raise EOFError
            got += n
        _quickack(self.sock)
        pdu_type, _, length = PDU_HEADER.unpack(self.header)
        limit = self.dul.assoc.acceptor.maximum_length
        if pdu_type == P_DATA_TF and limit and length > limit + PDU_SLACK:
            # PS3.8 D.1: the peer agreed to our maximum; a larger PDU would be held in memory
            log.error("P-DATA-TF of %d bytes exceeds the negotiated maximum %d", length, limit)
            self.discard()
            self.dul.event_queue.put("Evt19")
            return
        body = PduBody(self.sock, length, self.buffer)
        if pdu_type == P_DATA_TF:
            if self.incoming is not None:
                self._continue(body)
                return
            if length <= len(self.buffer) and self._at_boundary():
                self._start(body.take(length))
                return
        elif self.incoming is not None:  # A-ABORT, A-RELEASE-RQ... in the middle of a dataset
            self.discard()
        if pdu_type not in PDU_TYPES:
            log.error("Unknown PDU type received '0x%02X'", pdu_type)
            self.dul.event_queue.put("Evt19")
            return
        data = bytearray(self.header)
        for piece in body.stream(length):
            data += piece
        self.dul.hand_over(data)

    def _at_boundary(self) -> bool:
        """No message in progress, none queued or being refused: a new one may be taken."""
        assoc = self.dul.assoc
        return (assoc.is_acceptor and assoc.dimse.message is None
                and not assoc.dimse.msg_queue.qsize() and not assoc._sent_release)

    def _hand_over(self, pdvs: memoryview) -> None:
        """Give PDV items to pynetdicom as the P-DATA-TF PDU they came in (or the rest of it)."""
        self.dul.hand_over(bytearray(PDU_HEADER.pack(P_DATA_TF, 0, len(pdvs))) + pdvs)

    def _start(self, body: memoryview) -> None:
        """A P-DATA-TF at a message boundary: take over a C-STORE-RQ, hand over the rest."""
        try:
            pdvs = split_pdvs(body)
        except Malformed:
            self._hand_over(body)  # pynetdicom decides (its decode fails: Evt19)
            return
        command, count = bytearray(), 0
        for pdv in pdvs:
            if not pdv.control & COMMAND or pdv.context_id != pdvs[0].context_id:
                break
            command += body[pdv.start:pdv.end]
            count += 1
            if pdv.control & LAST:
                break
        else:
            count = 0  # the command continues in another PDU
        if not count or not pdvs[count - 1].control & LAST:
            self._hand_over(body)
            return
        request = self._request(pdvs[0].context_id, command)
        if request is None:
            self._hand_over(body)
            return
        if isinstance(request, EchoRequest):
            assert self.finder is not None
            self.finder.echo(self._send, request)
            if count < len(pdvs):
                self._start(body[pdvs[count].start - 6:])
            return
        self._open(request)
        for i, pdv in enumerate(pdvs[count:], count):
            if self._fragment(pdv.context_id, pdv.control, body[pdv.start:pdv.end]):
                rest = pdvs[i + 1:]
                if rest:
                    self._start(body[rest[0].start - 6:])
                return

    def _continue(self, body: PduBody) -> None:
        """A P-DATA-TF in the middle of a taken-over dataset: spool its fragments."""
        while body.remaining:
            length, context_id, control = PDV_HEADER.unpack(body.take(6))
            if length < 2:
                raise Malformed(f"PDV item length {length}")
            pieces = body.stream(length - 2)
            if self._fragment(context_id, control, pieces):
                if body.remaining > len(self.buffer):
                    raise Malformed("a large PDU goes on after the end of a dataset")
                if body.remaining:
                    self._start(body.take(body.remaining))
                return

    def _fragment(self, context_id: int, control: int,
                  data: memoryview | Iterator[memoryview]) -> bool:
        """Spool one dataset fragment (PS3.8 E.2); True once the last was stored and answered."""
        incoming = self.incoming
        assert incoming is not None
        if control & COMMAND or context_id != incoming.request.context_id:
            raise Malformed("a command or another context inside a dataset")
        if isinstance(data, memoryview):
            incoming.file.write(data)
        else:
            for piece in data:
                incoming.file.write(piece)
        if isinstance(incoming.file, io.BytesIO) and incoming.file.tell() > MAX_IDENTIFIER:
            raise Malformed("a C-FIND identifier of more than 1 MB")
        if not control & LAST:
            return False
        self.incoming = None
        self._complete(incoming)
        return True

    def _request(self, context_id: int, command: bytearray
                 ) -> StoreRequest | FindRequest | EchoRequest | None:
        """The request in ``command``, if it is one the fast path serves."""
        elements = parse_command(command)
        if elements is None:
            return None
        store = self._store_request(context_id, elements)
        context = self.dul.assoc._accepted_cx.get(context_id)
        if store is not None or self.finder is None or context is None:
            return store
        return fastfind.request_of(context_id, elements, str(context.abstract_syntax),
                                   str(context.transfer_syntax[0]))

    def _store_request(self, context_id: int, elements: dict[int, bytes]) -> StoreRequest | None:
        """The C-STORE-RQ in ``elements``, if it is one the fast path serves."""
        try:
            if (us(elements[0x0100]) != C_STORE_RQ or us(elements[0x0800]) == NO_DATASET
                    or 0x0700 not in elements):
                return None
            sop_class = text(elements[0x0002])
            request = StoreRequest(
                context_id, us(elements[0x0110]), sop_class, text(elements[0x1000]),
                str(self.dul.assoc._accepted_cx[context_id].transfer_syntax[0]),
            )
        except (KeyError, IndexError, struct.error, UnicodeDecodeError):
            return None
        return request if self._is_storage(sop_class) else None

    def _is_storage(self, sop_class: str) -> bool:
        """Would pynetdicom serve this C-STORE with its Storage Service Class? (as
        ``Association._serve_request`` chooses the service class)"""
        if _config.UNRESTRICTED_STORAGE_SERVICE:
            return True
        extended = self.dul.assoc.acceptor.accepted_common_extended.get(UID(sop_class))
        class_uid = extended[0] if extended else sop_class
        return issubclass(uid_to_service_class(class_uid), StorageServiceClass)

    def _open(self, request: StoreRequest | FindRequest) -> None:
        if isinstance(request, FindRequest):
            self.incoming = Incoming(request, io.BytesIO())
            return
        fd, name = tempfile.mkstemp(suffix=".dcm", dir=self.store.area.tmp)
        spool = SpoolFile(fd)
        self.incoming = Incoming(request, spool, Path(name))
        spool.write(file_meta(request.sop_class, request.sop_instance, request.transfer_syntax))

    def _complete(self, incoming: Incoming) -> None:
        """Store the spooled instance (durable before we answer), then send the C-STORE-RSP;
        or answer the C-FIND."""
        request = incoming.request
        if isinstance(request, FindRequest):
            self._find(request, cast(io.BytesIO, incoming.file).getvalue())
            return
        assert incoming.path is not None and isinstance(incoming.file, SpoolFile)
        status, comment = handlers.store_received(
            self.store, incoming.path, Expected(request.sop_class, request.sop_instance),
            handlers.origin_of(self.dul.assoc), self._peer(), self.metrics,
            incoming.file.close(),
        )
        if status:  # the store consumes the file, unless it failed early
            incoming.path.unlink(missing_ok=True)
        self._send(request.context_id, store_response(request, status, comment), None)

    def _find(self, request: FindRequest, identifier: bytes) -> None:
        assert self.finder is not None
        deferred = self.finder.find(self._send, self.sock, request, identifier,
                                    self.dul.assoc.requestor.ae_title, self._peer())
        for pdu in deferred:  # what came while we answered (an A-ABORT...): pynetdicom's
            self.dul.hand_over(bytearray(pdu))

    def _send(self, context_id: int, command: bytes, dataset: bytes | None) -> None:
        """A response message, in PDUs within the requestor's maximum length, in one write."""
        # the DUL's state, not ``is_established``: a C-ECHO may come (and be answered) before
        # the association thread, which sent the A-ASSOCIATE-AC, has flagged it established
        if self.dul.state_machine.current_state != "Sta6" or self.dul.socket is None:
            return
        max_pdu = int(self.dul.assoc.requestor.maximum_length or 0)
        data = command_pdus(context_id, command, max_pdu)
        if dataset is not None:
            data += command_pdus(context_id, dataset, max_pdu, control=0)
        self.dul.socket.send(data)
        self.dul._idle_timer.restart()  # a long answer is activity, not an idle association

    def discard(self) -> None:
        """Drop a partly received dataset (the transfer failed, or the association ends)."""
        incoming, self.incoming = self.incoming, None
        if incoming is None:
            return
        incoming.file.close()
        if incoming.path is not None:
            incoming.path.unlink(missing_ok=True)
            handlers.log_discarded(self._peer())

    def _peer(self) -> str:
        return handlers.peer_of(self.dul.assoc)
