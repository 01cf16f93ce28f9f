"""A dataset as Orthanc's REST API shows it: ``/instances/{id}/tags`` ("full": tag, name, type,
value) and ``/simplified-tags`` (keyword -> value).

Values are text as in the file (numbers of binary VRs written out), binary values are null
(Orthanc's ``ConvertBinaryToNull``), and strings longer than ``TOO_LONG`` are left out
("TooLong"). Elements are walked without converting binary ones, so a deferred pixel data
element is never read.
"""

from __future__ import annotations

from typing import Any

from pydicom.datadict import dictionary_VR, keyword_for_tag
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.tag import BaseTag

TOO_LONG = 256
BINARY_VRS = {"OB", "OD", "OF", "OL", "OV", "OW", "UN", "OB or OW", "US or OW", "US or SS or OW"}
UNKNOWN = "Unknown Tag & Data"


def tag_key(tag: BaseTag) -> str:
    return f"{tag.group:04x},{tag.element:04x}"


def _vr(ds: Dataset, tag: BaseTag) -> str:
    vr = ds.get_item(tag).VR
    if vr:
        return str(vr)
    try:
        return str(dictionary_VR(tag))
    except KeyError:
        return "UN"


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, (list, MultiValue)):
        return "\\".join(_text(v) for v in value)
    if isinstance(value, bytes):
        return value.decode("latin-1").rstrip("\x00 ")
    return str(value)


def _entry(ds: Dataset, tag: BaseTag) -> tuple[str, Any]:
    """(Orthanc's type, value) of one element."""
    vr = _vr(ds, tag)
    if vr in BINARY_VRS or tag == 0x7FE00010:
        return "Null", None
    elem = ds[tag]
    if vr == "SQ":
        return "Sequence", list(elem.value)
    text = _text(elem.value)
    if len(text) > TOO_LONG:
        return "TooLong", None
    return "String", text


def _tags(ds: Dataset) -> list[BaseTag]:
    """The dataset's tags, without the file meta and group lengths (Orthanc shows those
    elsewhere)."""
    return [t for t in ds.keys() if t.group != 0x0002 and t.element != 0]


def full(ds: Dataset) -> dict[str, Any]:
    """Orthanc's full format: ``{"0010,0010": {"Name", "Type", "Value"}}``."""
    out: dict[str, Any] = {}
    for tag in _tags(ds):
        kind, value = _entry(ds, tag)
        if kind == "Sequence":
            value = [full(item) for item in value]
        out[tag_key(tag)] = {"Name": keyword_for_tag(tag) or UNKNOWN, "Type": kind,
                             "Value": value}
    return out


def simplified(ds: Dataset) -> dict[str, Any]:
    """Orthanc's simplified format: keyword -> text, list of items, or null."""
    out: dict[str, Any] = {}
    for tag in _tags(ds):
        kind, value = _entry(ds, tag)
        if kind == "Sequence":
            value = [simplified(item) for item in value]
        out[keyword_for_tag(tag) or tag_key(tag)] = value
    return out
