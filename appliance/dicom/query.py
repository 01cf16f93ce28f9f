"""Query/Retrieve identifiers: parse and validate them into a query model, and match values.

Pure functions, no I/O: ``parse_identifier`` turns a C-FIND/C-MOVE/C-GET identifier into a
``Query`` (PS3.4 C.4.1.2 hierarchical validation), and each constrained key carries a
``Matcher`` implementing PS3.4 C.2.2.2 matching (single value, universal, wildcard, list, range,
combined date-time range). ``search.py`` narrows candidates with SQL and calls ``matches`` for
the final word, so every rule lives here once.
"""

from __future__ import annotations

import re
import string
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Literal

from pydicom.datadict import dictionary_VR, keyword_for_tag, tag_for_keyword
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.tag import BaseTag, Tag

from ..index.tags import INSTANCE_TAGS, PATIENT_TAGS, SERIES_TAGS, STUDY_TAGS

# PS3.4 C.4.1.1.4 and C.4.2.1.5 statuses (the C000-CFFF range is "unable to process").
IDENTIFIER_MISMATCH = 0xA900
UNABLE_TO_PROCESS = 0xC000
NOT_ALLOWED = 0xC001
UNSUPPORTED_KEY = 0xC002

Root = Literal["patient", "study"]


class Level(IntEnum):
    PATIENT = 0
    STUDY = 1
    SERIES = 2
    IMAGE = 3


UNIQUE_KEYS = {
    Level.PATIENT: "PatientID",
    Level.STUDY: "StudyInstanceUID",
    Level.SERIES: "SeriesInstanceUID",
    Level.IMAGE: "SOPInstanceUID",
}

# Keys that belong to no level (PS3.4 C.4.1.1.3.1): never "below the level".
NEUTRAL_KEYS = {
    "QueryRetrieveLevel", "SpecificCharacterSet", "RetrieveAETitle", "InstanceAvailability",
    "TimezoneOffsetFromUTC", "StorageMediaFileSetID", "StorageMediaFileSetUID",
    "QueryRetrieveView",
}  # fmt: skip

# Level of keys the index does not keep, after PS3.4 C.6.1.1 (patient root) and C.6.2.1.
STANDARD_KEYS = {
    Level.PATIENT: (
        "IssuerOfPatientID", "PatientBirthTime", "OtherPatientNames", "EthnicGroup",
        "PatientComments", "NumberOfPatientRelatedStudies", "NumberOfPatientRelatedSeries",
        "NumberOfPatientRelatedInstances", "OtherPatientIDsSequence",
        "IssuerOfPatientIDQualifiersSequence",
    ),
    Level.STUDY: (
        "NameOfPhysiciansReadingStudy", "AdmittingDiagnosesDescription", "PatientAge",
        "PatientSize", "PatientWeight", "Occupation", "AdditionalPatientHistory",
        "OtherStudyNumbers", "NumberOfStudyRelatedSeries", "NumberOfStudyRelatedInstances",
        "ModalitiesInStudy", "SOPClassesInStudy", "ProcedureCodeSequence",
    ),
    Level.SERIES: (
        "NumberOfSeriesRelatedInstances", "PerformedProcedureStepStartDate",
        "PerformedProcedureStepStartTime", "RequestAttributesSequence",
    ),
    Level.IMAGE: (
        "SOPClassUID", "ContentDate", "ContentTime", "Rows", "Columns", "BitsAllocated",
        "AcquisitionDate", "AcquisitionTime", "AlternateRepresentationSequence",
    ),
}  # fmt: skip
INDEX_KEYS = {
    Level.PATIENT: PATIENT_TAGS, Level.STUDY: STUDY_TAGS,
    Level.SERIES: SERIES_TAGS, Level.IMAGE: INSTANCE_TAGS,
}  # fmt: skip


def _levels() -> dict[str, Level]:
    out: dict[str, Level] = {}
    for table in (INDEX_KEYS, STANDARD_KEYS):
        for level in Level:
            for keyword in table[level]:
                out.setdefault(keyword, level)
    return out


LEVEL_OF = _levels()

TEXT_VRS = {"AE", "CS", "LO", "LT", "PN", "SH", "ST", "UC", "UR", "UT"}  # C.2.2.2.4 wildcards
# Combined date-time range matching pairs (PS3.4 C.2.2.2.5.1).
DATE_TIME_PAIRS = {
    "StudyDate": "StudyTime", "SeriesDate": "SeriesTime", "ContentDate": "ContentTime",
    "AcquisitionDate": "AcquisitionTime", "InstanceCreationDate": "InstanceCreationTime",
    "PatientBirthDate": "PatientBirthTime",
}  # fmt: skip


class QueryError(ValueError):
    """The identifier cannot be answered; ``status`` is the DIMSE failure to send."""

    def __init__(self, status: int, comment: str) -> None:
        super().__init__(comment)
        self.status = status
        self.comment = comment


# --- matchers ----------------------------------------------------------------------------------


def _fold(value: str, fold: bool) -> str:
    return value.casefold() if fold else value


@dataclass(frozen=True)
class Single:
    """Single value matching (C.2.2.2.1); person names may be case-insensitive."""

    value: str
    fold: bool = False

    def matches(self, candidate: str) -> bool:
        return _fold(candidate, self.fold) == _fold(self.value, self.fold)


@dataclass(frozen=True)
class Wildcard:
    """Wildcard matching (C.2.2.2.4): ``*`` any run, ``?`` one character; all else literal."""

    pattern: str
    fold: bool = False
    regex: re.Pattern[str] = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        parts = (".*" if c == "*" else "." if c == "?" else re.escape(c) for c in self.pattern)
        flags = re.DOTALL | (re.IGNORECASE if self.fold else 0)
        object.__setattr__(self, "regex", re.compile("".join(parts), flags))

    @property
    def prefix(self) -> str:
        """The literal text before the first wildcard (for index range scans)."""
        return re.split(r"[*?]", self.pattern, maxsplit=1)[0]

    def matches(self, candidate: str) -> bool:
        return self.regex.fullmatch(candidate) is not None


def normalize_time(value: str, upper: bool = False) -> str:
    """A TM as ``HHMMSS.FFFFFF``; a missing part is 0 (or its maximum for an upper bound)."""
    value = value.strip().replace(":", "")
    whole, _, frac = value.partition(".")
    filler = "235959" if upper else "000000"
    whole = whole + filler[len(whole):6] if len(whole) < 6 else whole[:6]
    frac = (frac + ("9" if upper else "0") * 6)[:6]
    return f"{whole}.{frac}"


def normalize_datetime(value: str, upper: bool = False) -> str:
    """A DT (or DA+TM) as ``YYYYMMDDHHMMSS.FFFFFF``, the UTC offset ignored."""
    value = re.sub(r"[+-]\d{4}$", "", value.strip())
    date, time = value[:8], value[8:]
    if len(date) < 8:
        date += ("00001231" if upper else "00000101")[len(date):]
    return date + normalize_time(time, upper)


def normalize(vr: str, value: str, upper: bool = False) -> str:
    value = value.strip()
    if vr == "DA":
        return value.replace(".", "")
    if vr == "TM":
        return normalize_time(value, upper)
    return normalize_datetime(value, upper)


@dataclass(frozen=True)
class Range:
    """Range matching (C.2.2.2.5) on DA, TM and DT; either end may be open."""

    vr: str
    low: str  # "" when open
    high: str

    def matches(self, candidate: str) -> bool:
        candidate = candidate.strip()
        if not candidate:
            return False
        value = normalize(self.vr, candidate)
        if self.low and value < normalize(self.vr, self.low):
            return False
        return not (self.high and value > normalize(self.vr, self.high, upper=True))


@dataclass(frozen=True)
class AnyOf:
    """List of UID / value matching (C.2.2.2.2 and C.2.2.2.8): any element may match."""

    items: tuple[Matcher, ...]

    def matches(self, candidate: str) -> bool:
        return any(item.matches(candidate) for item in self.items)


@dataclass(frozen=True)
class DateTimeRange:
    """Combined date and time range matching (C.2.2.2.5.1): ``date`` and ``time`` keys form
    one DT range. ``matches`` takes the candidate as ``date + time``."""

    date_key: str
    time_key: str
    low: str
    high: str

    def matches(self, candidate: str) -> bool:
        if not candidate.strip():
            return False
        value = normalize_datetime(candidate)
        if self.low and value < normalize_datetime(self.low):
            return False
        return not (self.high and value > normalize_datetime(self.high, upper=True))


Matcher = Single | Wildcard | Range | AnyOf | DateTimeRange


def split_range(vr: str, text: str) -> tuple[str, str] | None:
    """``low-high`` (either side may be empty), or None if ``text`` is not a range."""
    if "-" not in text:
        return None
    if vr != "DT":
        low, _, high = text.partition("-")
        return low, high
    # a DT may carry "-HHMM" offsets: take the split that leaves two plausible datetimes
    for i, c in enumerate(text):
        if c == "-" and _plausible_dt(text[:i]) and _plausible_dt(text[i + 1:]):
            return text[:i], text[i + 1:]
    return None


def _plausible_dt(text: str) -> bool:
    return text == "" or re.fullmatch(r"\d{4,14}(\.\d{1,6})?([+-]\d{4})?", text) is not None


def value_matcher(vr: str, text: str, fold: bool) -> Matcher | None:
    """The matcher for one value (no backslash), or None for universal matching."""
    if text == "":
        return None
    if vr in ("DA", "TM", "DT"):
        bounds = split_range(vr, text)
        if bounds is not None:
            return Range(vr, *bounds)
    if vr in TEXT_VRS and ("*" in text or "?" in text):
        if set(text) == {"*"}:
            return None  # C.2.2.2.4: "*" alone is universal matching
        return Wildcard(text, fold)
    return Single(text, fold)


def key_matcher(vr: str, values: list[str], fold: bool) -> Matcher | None:
    """A key's matcher: list matching when several values were given."""
    values = [v.strip() if vr not in ("LT", "ST", "UT") else v.rstrip() for v in values]
    if not values or (len(values) == 1 and values[0] == ""):
        return None
    matchers = [value_matcher(vr, v, fold) for v in values]
    if any(m is None for m in matchers):
        return None  # one universal element makes the whole list universal
    if len(matchers) == 1:
        return matchers[0]
    return AnyOf(tuple(m for m in matchers if m is not None))


def matches(matcher: Matcher, stored: str) -> bool:
    """Does a stored value (multiple values joined by backslashes) match?"""
    if isinstance(matcher, DateTimeRange):
        return matcher.matches(stored)
    return any(matcher.matches(part) for part in stored.split("\\")) if stored else False


# --- identifiers ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Key:
    """One key of the identifier: a return key, and a constraint if ``matcher`` is set."""

    keyword: str  # the DICOM keyword, or the tag as "(gggg,eeee)" for private tags
    tag: BaseTag
    vr: str
    level: Level
    matcher: Matcher | None = None
    values: tuple[str, ...] = ()  # the values asked for, as sent


@dataclass(frozen=True)
class Query:
    root: Root
    level: Level
    keys: tuple[Key, ...]
    combined: tuple[DateTimeRange, ...] = ()

    def key(self, keyword: str) -> Key | None:
        return next((k for k in self.keys if k.keyword == keyword), None)

    @property
    def constraints(self) -> list[Key]:
        return [k for k in self.keys if k.matcher is not None]


def element_values(elem: DataElement) -> list[str]:
    """An identifier element's values as text (empty list when zero-length)."""
    value = elem.value
    if value is None or value == "" or elem.VR == "SQ":
        return []
    if isinstance(value, (list, MultiValue)):
        return [str(v) for v in value]
    if isinstance(value, bytes):
        return [value.decode("ascii", "replace")]
    return [str(value)]


def element_text(elem: DataElement) -> str:
    """A stored element's value as text, multiple values joined by backslashes."""
    values = element_values(elem)
    return "\\".join(v.rstrip("\x00 ") for v in values)


def parse_level(identifier: Dataset, root: Root) -> Level:
    text = str(identifier.get("QueryRetrieveLevel", "") or "").strip().upper()
    try:
        level = Level[text]
    except KeyError:
        raise QueryError(
            IDENTIFIER_MISMATCH, f"invalid QueryRetrieveLevel {text!r}"
        ) from None
    if root == "study" and level is Level.PATIENT:
        raise QueryError(IDENTIFIER_MISMATCH, "PATIENT level is not in the Study Root model")
    return level


def _key_of(elem: DataElement, level: Level, fold_pn: bool) -> Key:
    tag = Tag(elem.tag)
    keyword = keyword_for_tag(tag) or f"({tag.group:04X},{tag.element:04X})"
    vr = elem.VR if elem.VR not in ("UN", "") else _dictionary_vr(tag)
    key_level = LEVEL_OF.get(keyword, level)
    if elem.VR == "SQ" and elem.value and any(len(item) for item in elem.value):
        if any(element_values(e) for item in elem.value for e in item):
            raise QueryError(UNSUPPORTED_KEY, f"sequence matching on {keyword} unsupported")
    values = element_values(elem)
    matcher = key_matcher(vr, values, fold=fold_pn and vr == "PN")
    return Key(keyword, tag, vr, key_level, matcher, tuple(values))


def _dictionary_vr(tag: BaseTag) -> str:
    try:
        return str(dictionary_VR(tag))
    except KeyError:
        return "UN"


def _check_levels(keys: list[Key], root: Root, level: Level, retrieve: bool) -> None:
    """PS3.4 C.4.1.2.1 / C.4.2.2.1: unique keys of the levels above, nothing below."""
    by_name = {k.keyword: k for k in keys}
    top = Level.PATIENT if root == "patient" else Level.STUDY
    for above in Level:
        if above < top or above > level or (above == level and not retrieve):
            continue
        key = by_name.get(UNIQUE_KEYS[above])
        if key is None or not key.values or not any(key.values):
            raise QueryError(
                IDENTIFIER_MISMATCH, f"{UNIQUE_KEYS[above]} is required at {level.name} level"
            )
        if above < level and isinstance(key.matcher, Wildcard):
            raise QueryError(IDENTIFIER_MISMATCH, f"{UNIQUE_KEYS[above]} must not be a wildcard")
    for key in keys:
        if key.keyword not in NEUTRAL_KEYS and key.level > level:
            raise QueryError(
                IDENTIFIER_MISMATCH, f"{key.keyword} is below the {level.name} level"
            )


def combine_date_time(keys: list[Key]) -> tuple[list[Key], tuple[DateTimeRange, ...]]:
    """When both keys of a date/time pair are ranges, match them as one DT range
    (C.2.2.2.5.1); the pair's keys stay return keys."""
    by_name = {k.keyword: k for k in keys}
    combined = []
    for date_kw, time_kw in DATE_TIME_PAIRS.items():
        date, time = by_name.get(date_kw), by_name.get(time_kw)
        if date is None or time is None:
            continue
        if isinstance(date.matcher, Range) and isinstance(time.matcher, Range):
            combined.append(DateTimeRange(
                date_kw, time_kw, _join_dt(date.matcher.low, time.matcher.low),
                _join_dt(date.matcher.high, time.matcher.high),
            ))  # fmt: skip
            by_name[date_kw] = Key(date.keyword, date.tag, date.vr, date.level, None, date.values)
            by_name[time_kw] = Key(time.keyword, time.tag, time.vr, time.level, None, time.values)
    return [by_name[k.keyword] for k in keys], tuple(combined)


def _join_dt(date: str, time: str) -> str:
    return date + time.replace(":", "") if date else ""


def parse_identifier(
    identifier: Dataset, root: Root, retrieve: bool = False, case_sensitive_pn: bool = False
) -> Query:
    """Validate ``identifier`` and return its query; raise ``QueryError`` otherwise."""
    level = parse_level(identifier, root)
    keys = []
    for elem in identifier:
        if elem.tag.element == 0 or elem.tag.group in (0x0000, 0x0002):
            continue  # group lengths, command and meta elements are not keys
        key = _key_of(elem, level, fold_pn=not case_sensitive_pn)
        if key.keyword in ("QueryRetrieveLevel", "SpecificCharacterSet"):
            continue
        keys.append(key)
    _check_levels(keys, root, level, retrieve)
    keys, combined = combine_date_time(keys)
    return Query(root, level, tuple(keys), combined)


def tag_of(name: str) -> BaseTag:
    """A keyword (``PatientName``) or a tag (``00100010``, ``0010,0010``) as a tag."""
    text = name.strip().strip("()").replace(",", "")
    known = tag_for_keyword(text)
    if known is not None:
        return Tag(known)
    if len(text) != 8 or not all(c in string.hexdigits for c in text):
        raise QueryError(UNSUPPORTED_KEY, f"{name!r} is neither a DICOM keyword nor a tag")
    return Tag(int(text, 16))


def relational_query(level: Level, constraints: dict[str, str], returned: list[str],
                     fold: Callable[[str], bool]) -> Query:
    """A query from text values (REST ``/tools/find``, QIDO-RS): keys of the level and the
    levels above may be constrained, with C-FIND's matching rules; ``fold`` says which VRs
    match case-insensitively. ``returned`` names more return keys."""
    keys: dict[BaseTag, Key] = {}
    for name, text in [*constraints.items(), *((r, "") for r in returned)]:
        tag = tag_of(name)
        if tag in keys and not text:
            continue
        keyword = keyword_for_tag(tag) or f"({tag.group:04X},{tag.element:04X})"
        vr = _dictionary_vr(tag)
        key_level = LEVEL_OF.get(keyword, level)
        if key_level > level and keyword not in NEUTRAL_KEYS:
            raise QueryError(IDENTIFIER_MISMATCH, f"{keyword} is below the {level.name} level")
        values = [text] if vr in ("LT", "ST", "UT") else text.split("\\")
        keys[tag] = Key(keyword, tag, vr, key_level, key_matcher(vr, values, fold(vr)),
                        tuple(values))
    ordered, combined = combine_date_time(list(keys.values()))
    return Query("patient", level, tuple(ordered), combined)


# --- answers ----------------------------------------------------------------------------------

TEXT_ANSWER_VRS = TEXT_VRS | {"AS", "DA", "DS", "DT", "IS", "TM", "UI"}
Value = str | DataElement | None


def _element(key: Key, value: Value) -> DataElement:
    """The answer element for ``key``: the value, or present but empty (C.4.1.1.3.2)."""
    if isinstance(value, DataElement):
        if value.VR not in TEXT_ANSWER_VRS:
            return DataElement(key.tag, value.VR, value.value)
        value = element_text(value)
    if not value:
        return DataElement(key.tag, key.vr, [] if key.vr == "SQ" else None)
    vr = key.vr if key.vr in TEXT_ANSWER_VRS else "LO"
    parts: str | list[str] = value if vr in ("LT", "ST", "UT") else value.split("\\")
    if isinstance(parts, list) and len(parts) == 1:
        parts = parts[0]
    try:
        return DataElement(key.tag, vr, parts)
    except (ValueError, TypeError, OverflowError):
        return DataElement(key.tag, vr, None)  # a stored value invalid for its VR


def _non_ascii(ds: Dataset) -> bool:
    return any(
        isinstance(elem.value, str) and not elem.value.isascii()
        or isinstance(elem.value, (list, MultiValue)) and any(not str(v).isascii()
                                                              for v in elem.value)
        or elem.VR == "PN" and elem.value is not None and not str(elem.value).isascii()
        for elem in ds
    )


def answer(query: Query, value_of: Callable[[Key], Value], aet: str) -> Dataset:
    """One C-FIND answer: every requested key (empty where the entity has no value), the
    level and our AE title (C.4.1.1.3.2); UTF-8 declared when a value is not ASCII."""
    ds = Dataset()
    ds.QueryRetrieveLevel = query.level.name
    for key in query.keys:
        if key.keyword == "InstanceAvailability":
            ds.InstanceAvailability = "ONLINE"
        elif key.keyword != "RetrieveAETitle":
            ds[key.tag] = _element(key, value_of(key))
    ds.RetrieveAETitle = aet
    if _non_ascii(ds):
        ds.SpecificCharacterSet = "ISO_IR 192"
    return ds
