"""P-DATA-TF PDUs and command sets, read and written by hand for the fast paths (``faststore``,
``fastfind``, ``fastsend``): PS3.8 9.3.5 and Annex E, PS3.7 6.3.1 and Annex E."""

from __future__ import annotations

import struct
from dataclasses import dataclass

P_DATA_TF = 0x04
PDU_TYPES = range(0x01, 0x08)  # PS3.8 9.3.1: A-ASSOCIATE-RQ .. A-ABORT
NO_DATASET = 0x0101  # (0000,0800) CommandDataSetType: no dataset follows (PS3.7 E.1)
COMMAND, LAST = 0x01, 0x02  # message control header bits (PS3.8 E.2)

PDU_HEADER = struct.Struct(">BBI")  # type, reserved, length (PS3.8 9.3.1)
PDV_HEADER = struct.Struct(">IBB")  # item length, context ID, message control header
ELEMENT = struct.Struct("<HHI")  # implicit VR LE: group, element, length (PS3.5 7.1.3)


class Malformed(ValueError):
    """The peer's PDVs do not add up (PS3.8 9.3.5)."""


def parse_command(data: bytes | bytearray | memoryview) -> dict[int, bytes] | None:
    """A command set (implicit VR LE, group 0000 only: PS3.7 6.3.1) by element number, or
    None if it is not one."""
    elements: dict[int, bytes] = {}
    offset, end = 0, len(data)
    while offset < end:
        if offset + 8 > end:
            return None
        group, element, length = ELEMENT.unpack_from(data, offset)
        offset += 8
        if group != 0 or offset + length > end:
            return None
        elements[element] = bytes(data[offset:offset + length])
        offset += length
    return elements


def text(value: bytes) -> str:
    return value.rstrip(b"\0 ").decode("ascii")


def us(value: bytes) -> int:
    return int(struct.unpack("<H", value)[0])


def ui(uid: str) -> bytes:
    """A UI value, padded with a NUL to even length (PS3.5 6.2)."""
    raw = uid.encode("ascii")
    return raw + b"\0" if len(raw) % 2 else raw


def padded(value: str) -> bytes:
    """A text value (SH, LO), padded with a space to even length (PS3.5 6.2)."""
    raw = value.encode("latin-1", "replace")
    return raw + b" " if len(raw) % 2 else raw


def command_set(elements: list[tuple[int, bytes]]) -> bytes:
    """A command set from (element, value) pairs of group 0000 in ascending order, implicit VR
    LE, led by its group length (PS3.7 6.3.1, E.1)."""
    body = b"".join(ELEMENT.pack(0, tag, len(value)) + value for tag, value in elements)
    return ELEMENT.pack(0, 0, 4) + struct.pack("<I", len(body)) + body


def command_pdus(context_id: int, command: bytes, max_pdu: int, control: int = COMMAND) -> bytes:
    """P-DATA-TF PDUs of one PDV each carrying ``command`` (or, with ``control`` 0, a dataset:
    PS3.8 9.3.5, E.2), fragments no larger than the peer's maximum PDU length allows (0: no
    limit), as pynetdicom's ``DIMSEMessage.encode_msg`` splits them."""
    size = max(1, max_pdu - 6) if max_pdu else max(1, len(command))
    pieces = [command[i:i + size] for i in range(0, len(command), size)]
    out = []
    for i, piece in enumerate(pieces):
        bits = control | LAST if i == len(pieces) - 1 else control
        out.append(PDU_HEADER.pack(P_DATA_TF, 0, len(piece) + 6)
                   + PDV_HEADER.pack(len(piece) + 2, context_id, bits) + piece)
    return b"".join(out)


@dataclass(frozen=True)
class Pdv:
    context_id: int
    control: int
    start: int  # the fragment's bounds in the PDU's variable field
    end: int


def split_pdvs(body: memoryview) -> list[Pdv]:
    """The PDV items of a P-DATA-TF variable field (PS3.8 9.3.5)."""
    pdvs, offset = [], 0
    while offset < len(body):
        if offset + 6 > len(body):
            raise Malformed("truncated PDV header")
        length, context_id, control = PDV_HEADER.unpack_from(body, offset)
        if length < 2 or offset + 4 + length > len(body):
            raise Malformed(f"PDV item length {length} exceeds the PDU")
        pdvs.append(Pdv(context_id, control, offset + 6, offset + 4 + length))
        offset += 4 + length
    return pdvs
