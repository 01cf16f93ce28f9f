"""Search the index for a Query/Retrieve query (PS3.4 C.4.1.3.1.1 hierarchical search).

SQL narrows the candidates on the indexed columns (exact values, UID lists, literal prefixes,
study date ranges: all index lookups), then every constraint is checked in Python with the
matchers of ``dicom/query.py``, which have the final word. Keys the index does not keep are read
from one stored file of the entity (its header only). One candidate row per entity at the
requested level: no duplicates by construction (each level's rows are joined to their single
parent).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from peewee import Expression, fn
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.tag import BaseTag

from ..dicom.query import (
    INDEX_KEYS,
    NEUTRAL_KEYS,
    AnyOf,
    DateTimeRange,
    Key,
    Level,
    Matcher,
    Query,
    Range,
    Single,
    Wildcard,
    element_text,
    matches,
)
from .models import BaseModel, Instance, Patient, Series, Study

log = logging.getLogger(__name__)

HeaderReader = Callable[[str, Sequence[BaseTag]], Dataset]
"""Reads the given tags of a stored file (its storage name) without the pixel data."""

MODELS: dict[Level, type[BaseModel]] = {
    Level.PATIENT: Patient, Level.STUDY: Study, Level.SERIES: Series, Level.IMAGE: Instance,
}  # fmt: skip
PARENT = {Level.STUDY: Study.patient, Level.SERIES: Series.study, Level.IMAGE: Instance.series}

# Indexed columns, by keyword: SQL may narrow on them.
COLUMNS: dict[str, Any] = {
    "PatientID": Patient.patient_id,
    "PatientName": Patient.patient_name,
    "StudyInstanceUID": Study.study_uid,
    "StudyDate": Study.study_date,
    "AccessionNumber": Study.accession_number,
    "SeriesInstanceUID": Series.series_uid,
    "Modality": Series.modality,
    "SOPInstanceUID": Instance.sop_uid,
}


@dataclass(frozen=True)
class InstanceRef:
    """A stored instance, as a retrieve needs it."""

    sop_uid: str
    sop_class_uid: str
    transfer_syntax: str
    file: str


# --- computed keys (PS3.4 C.6.1.1.x "Number of ... Related ...", ModalitiesInStudy) -----------


def _instances_of(level: Level, key: int) -> Any:
    """Instances below the entity ``key`` of ``level``."""
    query = Instance.select(Instance.id)
    if level is Level.IMAGE:
        return query.where(Instance.id == key)
    query = query.join(Series, on=Instance.series == Series.id)
    if level is Level.SERIES:
        return query.where(Series.id == key)
    if level is Level.STUDY:
        return query.where(Series.study == key)
    return query.join(Study, on=Series.study == Study.id).where(Study.patient == key)


def _series_of(level: Level, key: int) -> Any:
    query = Series.select(Series.id)
    if level is Level.STUDY:
        return query.where(Series.study == key)
    return query.join(Study, on=Series.study == Study.id).where(Study.patient == key)


def _distinct(values: Any) -> str:
    return "\\".join(sorted({v for (v,) in values.tuples() if v}))


COMPUTED: dict[str, Callable[[int], str]] = {
    "NumberOfPatientRelatedStudies":
        lambda k: str(Study.select().where(Study.patient == k).count()),
    "NumberOfPatientRelatedSeries": lambda k: str(_series_of(Level.PATIENT, k).count()),
    "NumberOfPatientRelatedInstances": lambda k: str(_instances_of(Level.PATIENT, k).count()),
    "NumberOfStudyRelatedSeries": lambda k: str(_series_of(Level.STUDY, k).count()),
    "NumberOfStudyRelatedInstances": lambda k: str(_instances_of(Level.STUDY, k).count()),
    "NumberOfSeriesRelatedInstances": lambda k: str(_instances_of(Level.SERIES, k).count()),
    "ModalitiesInStudy":
        lambda k: _distinct(Series.select(Series.modality).where(Series.study == k)),
    "SOPClassesInStudy": lambda k: _distinct(
        Instance.select(Instance.sop_class_uid).join(Series, on=Instance.series == Series.id)
        .where(Series.study == k)
    ),
}  # fmt: skip


def is_held(key: Key) -> bool:
    """Can the index answer ``key`` without reading a file?"""
    return (
        key.keyword in COMPUTED
        or key.keyword in NEUTRAL_KEYS
        or key.keyword in INDEX_KEYS[key.level]
        or key.keyword == "SOPClassUID"
    )


# --- candidates -------------------------------------------------------------------------------


@dataclass
class Match:
    """One entity at the query level, with lazy access to the values of its keys."""

    level: Level
    ids: dict[Level, int]
    tags: dict[Level, dict[str, str]]
    instance: InstanceRef | None
    reader: HeaderReader
    unheld: Sequence[Key]
    _file_ds: Dataset | None = field(default=None, repr=False)

    def value(self, key: Key) -> str | DataElement | None:
        """The entity's value: text from the index, an element read from its file, or None."""
        if key.keyword in COMPUTED:
            return COMPUTED[key.keyword](self.ids[key.level])
        if key.keyword == "SOPClassUID" and self.instance is not None:
            return self.instance.sop_class_uid
        if key.keyword in INDEX_KEYS[key.level]:
            return self.tags[key.level].get(key.keyword)
        if key.keyword in NEUTRAL_KEYS:
            return None
        return self._file().get(key.tag)

    def text(self, key: Key) -> str:
        value = self.value(key)
        if isinstance(value, DataElement):
            return element_text(value)
        return value or ""

    def _file(self) -> Dataset:
        if self._file_ds is None:
            name = self.instance.file if self.instance else representative_file(self)
            self._file_ds = Dataset()
            try:
                if name:
                    self._file_ds = self.reader(name, [k.tag for k in self.unheld])
            except Exception as exc:  # a missing or unreadable file: the keys stay empty
                log.warning("cannot read stored file %s for query keys: %s", name, exc)
        return self._file_ds


def representative_file(match: Match) -> str | None:
    """The storage name of one instance of the entity (its first received)."""
    query = _instances_of(match.level, match.ids[match.level])
    row = query.select(Instance.file).order_by(Instance.id).limit(1).tuples().first()
    return row[0] if row else None


def _condition(column: Any, matcher: Matcher | None) -> Expression | None:
    """An SQL condition that keeps every row ``matcher`` may match (None: no narrowing)."""
    if isinstance(matcher, Single) and not matcher.fold:
        return column == matcher.value
    if isinstance(matcher, AnyOf) and all(
        isinstance(m, Single) and not m.fold for m in matcher.items
    ):
        return column.in_([m.value for m in matcher.items if isinstance(m, Single)])
    if isinstance(matcher, Wildcard) and not matcher.fold and matcher.prefix:
        return (column >= matcher.prefix) & (column < matcher.prefix + "\U0010ffff")
    if isinstance(matcher, Range) and matcher.vr == "DA":
        low = column >= matcher.low if matcher.low else None
        high = column <= matcher.high if matcher.high else None
        if low is not None and high is not None:
            return low & high
        return low if low is not None else high
    return None


def _narrow(query: Query) -> list[Expression]:
    conditions = []
    for key in query.constraints:
        cond: Any
        if key.keyword in COLUMNS:
            cond = _condition(COLUMNS[key.keyword], key.matcher)
        elif key.keyword == "ModalitiesInStudy":
            cond = _condition(Series.modality, key.matcher)
            if cond is not None:
                cond = fn.EXISTS(Series.select(Series.id).where((Series.study == Study.id) & cond))
        else:
            cond = None
        if cond is not None:
            conditions.append(cond)
    return conditions


def _select(level: Level) -> Any:
    """Rows of ``level`` joined to all their ancestors (one row per entity)."""
    fields: list[Any] = []
    for lvl in Level:
        if lvl <= level:
            fields += [MODELS[lvl].id, MODELS[lvl].tags]  # type: ignore[attr-defined]
    if level is Level.IMAGE:
        fields += [Instance.sop_uid, Instance.sop_class_uid, Instance.transfer_syntax,
                   Instance.file]
    query = MODELS[level].select(*fields)
    for child in range(level, Level.PATIENT, -1):
        parent = MODELS[Level(child - 1)]
        query = query.join(parent, on=PARENT[Level(child)] == parent.id)  # type: ignore[attr-defined]
    return query.order_by(MODELS[level].id)  # type: ignore[attr-defined]


def _row_match(level: Level, row: tuple[Any, ...], reader: HeaderReader,
               unheld: Sequence[Key]) -> Match:
    ids, tags = {}, {}
    for i, lvl in enumerate(lvl for lvl in Level if lvl <= level):
        ids[lvl] = row[2 * i]
        tags[lvl] = row[2 * i + 1] or {}
    instance = InstanceRef(*row[-4:]) if level is Level.IMAGE else None
    return Match(level, ids, tags, instance, reader, unheld)


def _accepts(query: Query, match: Match) -> bool:
    for key in query.constraints:
        assert key.matcher is not None
        if not matches(key.matcher, match.text(key)):
            return False
    return all(_accepts_combined(query, c, match) for c in query.combined)


def _accepts_combined(query: Query, combined: DateTimeRange, match: Match) -> bool:
    date, time = query.key(combined.date_key), query.key(combined.time_key)
    assert date is not None and time is not None
    return combined.matches(match.text(date) + match.text(time))


def search(query: Query, reader: HeaderReader) -> Iterator[Match]:
    """The entities at the query's level matching every key, in the order they were stored."""
    unheld = [k for k in query.keys if not is_held(k)]
    select = _select(query.level)
    for condition in _narrow(query):
        select = select.where(condition)
    for row in select.tuples().iterator():
        match = _row_match(query.level, row, reader, unheld)
        if _accepts(query, match):
            yield match


def instances(match: Match) -> list[InstanceRef]:
    """The stored instances below a matched entity (itself at IMAGE level)."""
    if match.instance is not None:
        return [match.instance]
    query = _instances_of(match.level, match.ids[match.level]).select(
        Instance.sop_uid, Instance.sop_class_uid, Instance.transfer_syntax, Instance.file
    )
    return [InstanceRef(*row) for row in query.order_by(Instance.id).tuples()]
