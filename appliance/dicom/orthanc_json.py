"""A dataset as Orthanc's REST API shows it: ``/instances/{id}/tags`` ("full": tag, name, type,
value) and ``/simplified-tags`` (keyword -> value).

Values are text as in the file (numbers of binary VRs written out), binary values are null
(Orthanc's ``ConvertBinaryToNull``), and strings longer than ``TOO_LONG`` are left out
("TooLong"). Elements are walked without converting binary ones, so a deferred pixel data
element is never read.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pydicom.datadict import (
    dictionary_VR,
    keyword_for_tag,
    private_dictionary_description,
)
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.tag import BaseTag

TOO_LONG = 256
PADDING = 0xFFFCFFFC  # DataSetTrailingPadding: not shown
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
    text = (_at_text(elem.value) if vr == "AT" else _float_text(elem.value)
            if vr in ("FL", "FD") else _text(elem.value))
    if len(text) > TOO_LONG:
        return "TooLong", None
    return "String", text


def _float_text(value: Any) -> str:
    """Floats with 17 significant digits, as Orthanc (and C++'s lexical casts) write them."""
    values = value if isinstance(value, (list, MultiValue)) else [value]
    return "\\".join(format(float(v), ".17g") for v in values if v is not None)


def _at_text(value: Any) -> str:
    """Attribute tags as Orthanc writes them: ``gggg,eeee``."""
    values = value if isinstance(value, (list, MultiValue)) else [value]
    return "\\".join(tag_key(BaseTag(v)) for v in values if v is not None)


def _tags(ds: Dataset) -> list[BaseTag]:
    """The dataset's tags, without the file meta, group lengths and padding (Orthanc shows
    none of them here)."""
    return [t for t in ds.keys() if t.group != 0x0002 and t.element != 0 and t != PADDING]


def _creator(ds: Dataset, tag: BaseTag) -> str:
    """The private creator reserving a private element's block ("" if none)."""
    block = ds.get(BaseTag((tag.group << 16) | (tag.element >> 8)))
    return str(block.value) if block is not None and block.value else ""


def _name(ds: Dataset, tag: BaseTag) -> tuple[str, str]:
    """(name, private creator) as DCMTK's dictionary names them."""
    if not tag.is_private:
        return keyword_for_tag(tag) or UNKNOWN, ""
    if tag.is_private_creator:
        return "PrivateCreator", ""
    creator = _creator(ds, tag)
    try:
        description = private_dictionary_description(tag, creator)
    except KeyError:
        return UNKNOWN, creator
    return "".join(c for c in description.title() if c.isalnum()) or UNKNOWN, creator


Shape = Callable[[Dataset, BaseTag, str, Any], tuple[str, Any]]


def _convert(ds: Dataset, shape: Shape) -> dict[str, Any]:
    """Every element as ``shape`` writes it, sequences item by item."""
    out: dict[str, Any] = {}
    for tag in _tags(ds):
        kind, value = _entry(ds, tag)
        if kind == "Sequence":
            value = [_convert(item, shape) for item in value]
        key, entry = shape(ds, tag, kind, value)
        out[key] = entry
    return out


def _full_entry(ds: Dataset, tag: BaseTag, kind: str, value: Any) -> tuple[str, Any]:
    name, creator = _name(ds, tag)
    entry = {"Name": name, "Type": kind, "Value": value}
    if creator:
        entry["PrivateCreator"] = creator
    return tag_key(tag), entry


def _simple_entry(ds: Dataset, tag: BaseTag, kind: str, value: Any) -> tuple[str, Any]:
    return keyword_for_tag(tag) or tag_key(tag), value


def _short_entry(ds: Dataset, tag: BaseTag, kind: str, value: Any) -> tuple[str, Any]:
    return tag_key(tag), value


def full(ds: Dataset) -> dict[str, Any]:
    """Orthanc's full format: ``{"0010,0010": {"Name", "Type", "Value"}}``."""
    return _convert(ds, _full_entry)


def simplified(ds: Dataset) -> dict[str, Any]:
    """Orthanc's simplified format: keyword -> text, list of items, or null."""
    return _convert(ds, _simple_entry)


def short(ds: Dataset) -> dict[str, Any]:
    """Orthanc's short format: ``gggg,eeee`` -> text, list of items, or null."""
    return _convert(ds, _short_entry)
