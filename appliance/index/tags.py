"""Read the few tags the index needs from a stored file, and nothing else.

Parsing stops before the pixel data and keeps only the elements asked for (``rawscan``'s walk
over the element headers, or pydicom's ``specific_tags`` for the files it leaves to pydicom), so a
1 GB multi-frame object costs as much to index as a 10 KB one.
The main tags of each level follow Orthanc's defaults, so the REST API can show the same JSON.
"""

from __future__ import annotations

import io
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from pydicom import dcmread
from pydicom.charset import convert_encodings, decode_bytes
from pydicom.datadict import dictionary_VR
from pydicom.errors import InvalidDicomError
from pydicom.multival import MultiValue
from pydicom.tag import BaseTag, Tag
from pydicom.uid import UID, DeflatedExplicitVRLittleEndian, ImplicitVRLittleEndian
from pydicom.valuerep import PN_DELIMS, TEXT_VR_DELIMS

from ..storage.spool import HEAD, Spooled
from . import rawscan
from .rawscan import LONG_VRS, UNDEFINED, Values

PATIENT_TAGS = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "OtherPatientIDs")
STUDY_TAGS = (
    "StudyDate", "StudyTime", "StudyID", "StudyDescription", "AccessionNumber",
    "StudyInstanceUID", "RequestedProcedureDescription", "InstitutionName",
    "RequestingPhysician", "ReferringPhysicianName", "TimezoneOffsetFromUTC",
)  # fmt: skip
SERIES_TAGS = (
    "SeriesDate", "SeriesTime", "Modality", "Manufacturer", "StationName", "SeriesDescription",
    "BodyPartExamined", "SequenceName", "ProtocolName", "SeriesNumber", "CardiacNumberOfImages",
    "ImagesInAcquisition", "NumberOfTemporalPositions", "NumberOfSlices", "NumberOfTimeSlices",
    "SeriesInstanceUID", "ImageOrientationPatient", "SeriesType", "OperatorsName",
    "PerformedProcedureStepDescription", "AcquisitionDeviceProcessingDescription",
    "ContrastBolusAgent",
)  # fmt: skip
INSTANCE_TAGS = (
    "InstanceCreationDate", "InstanceCreationTime", "AcquisitionNumber", "ImageIndex",
    "InstanceNumber", "NumberOfFrames", "TemporalPositionIdentifier", "SOPInstanceUID",
    "ImagePositionPatient", "ImageComments", "ImageOrientationPatient",
)  # fmt: skip
OTHER_TAGS = ("SOPClassUID", "SpecificCharacterSet")


KEYWORD_TAGS: dict[str, int] = {  # plain ints: a BaseTag compares in Python, slowly
    k: int(Tag(k))
    for k in PATIENT_TAGS + STUDY_TAGS + SERIES_TAGS + INSTANCE_TAGS + OTHER_TAGS
}
WANTED: list[BaseTag] = [Tag(tag) for tag in KEYWORD_TAGS.values()]
WANTED_TAGS = frozenset(KEYWORD_TAGS.values())
CHARSET = KEYWORD_TAGS["SpecificCharacterSet"]
TEXT_VRS = {"PN", "LO", "SH", "ST", "LT", "UC", "UT"}


class BadInstance(ValueError):
    """The file is not a DICOM instance we can index; ``status`` is the C-STORE status to send."""

    def __init__(self, message: str, status: int = 0xC000) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class InstanceTags:
    """What the index records of one instance."""

    patient: dict[str, str]
    study: dict[str, str]
    series: dict[str, str]
    instance: dict[str, str]
    sop_class_uid: str
    transfer_syntax: str

    @property
    def patient_id(self) -> str:
        return self.patient.get("PatientID", "")

    @property
    def study_uid(self) -> str:
        return self.study["StudyInstanceUID"]

    @property
    def series_uid(self) -> str:
        return self.series["SeriesInstanceUID"]

    @property
    def sop_uid(self) -> str:
        return self.instance["SOPInstanceUID"]


def _decode(raw: bytes, vr: str, encodings: list[str], little: bool) -> str:
    """A raw value as Orthanc shows it (multiple values stay joined by backslashes)."""
    if vr in ("US", "SS"):
        fmt = ("<" if little else ">") + ("H" if vr == "US" else "h") * (len(raw) // 2)
        return "\\".join(str(v) for v in struct.unpack(fmt, raw[: len(raw) // 2 * 2]))
    if vr in TEXT_VRS:
        delimiters = (PN_DELIMS | {0x3D} if vr == "PN" else TEXT_VR_DELIMS) | {0x5C}
        return decode_bytes(raw, encodings, delimiters).rstrip("\x00 ")
    return raw.decode("ascii", "replace").strip("\x00 ")


def _level(values: Values, keywords: tuple[str, ...], encodings: list[str], little: bool,
           implicit: bool) -> dict[str, str]:
    """The tags of one level, converted straight from the raw bytes (no pydicom conversion)."""
    out = {}
    for keyword in keywords:
        tag = KEYWORD_TAGS[keyword]
        if tag not in values:
            continue
        explicit_vr, value = values[tag]
        vr = (explicit_vr if not implicit and explicit_vr else None) or dictionary_VR(tag)
        if vr == "SQ":
            continue
        if isinstance(value, bytes):
            out[keyword] = _decode(value, vr, encodings, little)
        elif value is None:
            out[keyword] = ""
        else:  # already converted by pydicom (e.g. SpecificCharacterSet)
            terms = value if isinstance(value, MultiValue) else [value]
            out[keyword] = "\\".join(map(str, terms))
    return out


def _read_header(source: BinaryIO, head: bytes, size: int) -> tuple[rawscan.Header, UID]:
    """The header walked from ``head`` (rawscan) or parsed by pydicom from ``source`` (in
    memory when ``head`` is the whole file: pydicom's many reads would be syscalls), then the
    rest of the file checked."""
    header = rawscan.scan(head, len(head) == size, WANTED_TAGS) or _parse(source)
    source.seek(header.end)
    ts = UID(header.transfer_syntax or ImplicitVRLittleEndian)
    check_tail(source, size, ts)
    return header, ts


def _parse(source: BinaryIO) -> rawscan.Header:
    """The header as pydicom reads it (the files ``rawscan`` leaves to it)."""
    source.seek(0)
    ds = dcmread(source, stop_before_pixels=True, specific_tags=WANTED)
    values: Values = {int(tag): (elem.VR, elem.value) for tag in WANTED_TAGS
                      if tag in ds and (elem := ds.get_item(tag)) is not None}
    syntax = ds.file_meta.get("TransferSyntaxUID")
    return rawscan.Header(str(syntax) if syntax else "", values, source.tell())


def _encodings(values: Values) -> list[str]:
    """The Python codecs of the dataset's Specific Character Set."""
    value = values.get(CHARSET, (None, None))[1]
    if isinstance(value, bytes):
        terms = [term.strip(" \0") for term in value.decode("ascii", "replace").split("\\")]
    elif isinstance(value, str):
        terms = [value]
    else:
        terms = [str(term) for term in value or ()]  # type: ignore[attr-defined]
    return convert_encodings(terms if any(terms) else ["ISO_IR 6"])


def check_tail(f: BinaryIO, size: int, ts: UID) -> None:
    """Check that the elements after the parsed header (the pixel data and any trailer) fit in
    the file, without reading them: a truncated object must not be acknowledged.
    """
    if ts == DeflatedExplicitVRLittleEndian:
        return  # inflated while parsing: truncation already raised by zlib
    endian = "<" if ts.is_little_endian else ">"
    pos = f.tell()
    if pos > size:
        raise BadInstance("truncated dataset: the last element is cut")
    while pos < size:
        head = _read_exact(f, 8)
        group, elem = struct.unpack(endian + "HH", head[:4])
        if ts.is_implicit_VR:
            (length,) = struct.unpack(endian + "I", head[4:])
            value_at = pos + 8
        elif head[4:6] in LONG_VRS:
            (length,) = struct.unpack(endian + "I", _read_exact(f, 4))
            value_at = pos + 12
        else:
            (length,) = struct.unpack(endian + "H", head[6:])
            value_at = pos + 8
        if length == UNDEFINED:
            value_at = _skip_items(f, value_at, size, endian)
            length = 0
        if value_at + length > size:
            raise BadInstance(f"truncated dataset: element ({group:04X},{elem:04X}) is cut")
        pos = value_at + length
        f.seek(pos)


def _read_exact(f: BinaryIO, n: int) -> bytes:
    data = f.read(n)
    if len(data) != n:
        raise BadInstance("truncated dataset: cut inside an element header")
    return data


def _skip_items(f: BinaryIO, pos: int, size: int, endian: str) -> int:
    """Walk the items of an undefined-length value (encapsulated pixel data); return the end."""
    f.seek(pos)
    while True:
        group, elem, length = struct.unpack(endian + "HHI", _read_exact(f, 8))
        pos += 8
        if (group, elem) == (0xFFFE, 0xE0DD):
            return pos
        if (group, elem) != (0xFFFE, 0xE000) or length == UNDEFINED or pos + length > size:
            raise BadInstance("truncated or malformed encapsulated value")
        pos += length
        f.seek(pos)


def read_instance_tags(path: Path, spooled: Spooled | None = None) -> InstanceTags:
    """Parse the index tags of a Part 10 file; raise ``BadInstance`` with a reason otherwise.
    ``spooled``: what its writer kept of it (its head is not read again; a whole small file
    is not opened at all)."""
    try:
        if spooled is not None and spooled.whole:
            header, ts = _read_header(io.BytesIO(spooled.head), spooled.head, spooled.size)
        else:
            with open(path, "rb") as f:
                size = os.fstat(f.fileno()).st_size
                head = spooled.head if spooled is not None else f.read(HEAD)
                header, ts = _read_header(io.BytesIO(head) if len(head) == size else f, head,
                                          size)
        args = (_encodings(header.values), ts.is_little_endian, ts.is_implicit_VR)
        other = _level(header.values, OTHER_TAGS, *args)
        tags = InstanceTags(
            patient=_level(header.values, PATIENT_TAGS, *args),
            study=_level(header.values, STUDY_TAGS, *args),
            series=_level(header.values, SERIES_TAGS, *args),
            instance=_level(header.values, INSTANCE_TAGS, *args),
            sop_class_uid=other.get("SOPClassUID", ""),
            transfer_syntax=header.transfer_syntax,
        )
    except BadInstance:
        raise
    except (InvalidDicomError, EOFError, OSError, ValueError, KeyError, TypeError) as exc:
        raise BadInstance(f"unreadable dataset: {exc}") from exc
    except Exception as exc:  # pydicom raises many kinds on garbage; none may escape as a crash
        raise BadInstance(f"unreadable dataset: {type(exc).__name__}: {exc}") from exc
    for level, key in (
        (tags.study, "StudyInstanceUID"),
        (tags.series, "SeriesInstanceUID"),
        (tags.instance, "SOPInstanceUID"),
    ):
        if not level.get(key):
            raise BadInstance(f"missing {key}", 0xA900)
    if not tags.sop_class_uid:
        raise BadInstance("missing SOPClassUID", 0xA900)
    return tags
