"""Routing rules: which destinations an arriving instance goes to.

Conditions are compiled once per configuration. Each is a list of patterns of which one must
match: exact by default, ``*``/``?`` wildcards (case-sensitive, as DICOM values
are), or ``re:`` for a regular expression (``re.fullmatch``). A multi-valued element
matches when the whole value or any one of its values does.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from pydicom import dcmread
from pydicom.multival import MultiValue

from ..config import Config, Route, Trigger
from ..index.ingest import Origin
from ..index.tags import KEYWORD_TAGS, InstanceTags

Matcher = Callable[[str], bool]


def compile_pattern(pattern: str) -> Matcher:
    if pattern.startswith("re:"):
        regex = re.compile(pattern[3:])
        return lambda value: regex.fullmatch(value) is not None
    if "*" in pattern or "?" in pattern:
        translated = re.compile(
            "".join({"*": ".*", "?": "."}.get(c, re.escape(c)) for c in pattern), re.DOTALL
        )
        return lambda value: translated.fullmatch(value) is not None
    return lambda value: value == pattern


def compile_condition(patterns: Iterable[str]) -> Matcher | None:
    """``None`` for an empty list: the condition does not restrict anything."""
    matchers = [compile_pattern(p) for p in patterns]
    if not matchers:
        return None

    def match(value: str) -> bool:
        candidates = [value, *value.split("\\")] if "\\" in value else [value]
        return any(m(c) for m in matchers for c in candidates)

    return match


@dataclass(frozen=True)
class Planned:
    """One queue entry to create with the instance."""

    route: str
    destination: str
    trigger: Trigger


@dataclass(frozen=True)
class CompiledRoute:
    name: str
    route: Route
    conditions: tuple[tuple[str, Matcher], ...]  # (key, matcher): key a keyword or an origin


ORIGIN_KEYS = {"calling_aet", "called_aet"}


class Rules:
    """The enabled routes of one configuration, ready to match."""

    def __init__(self, config: Config) -> None:
        self.routes = [self._compile(n, r) for n, r in config.routes.items() if r.enabled]
        keywords = {k for r in self.routes for k, _ in r.conditions if k not in ORIGIN_KEYS}
        self.file_keywords = sorted(keywords - set(KEYWORD_TAGS))  # not among the index tags

    @staticmethod
    def _compile(name: str, route: Route) -> CompiledRoute:
        pairs = [("calling_aet", route.calling_aet), ("called_aet", route.called_aet),
                 ("Modality", route.modality), ("SOPClassUID", route.sop_class),
                 *route.tags.items()]
        conditions = tuple(
            (key, matcher) for key, patterns in pairs
            if (matcher := compile_condition(patterns)) is not None
        )
        return CompiledRoute(name, route, conditions)

    def match(self, tags: InstanceTags, origin: Origin, path: Path) -> list[Planned]:
        """The queue entries an arriving instance needs (``path``: its file, read only when a
        rule has a condition on a tag the index does not keep)."""
        if not self.routes:
            return []
        values = {"calling_aet": origin.calling_aet, "called_aet": origin.called_aet,
                  "SOPClassUID": tags.sop_class_uid, **tags.patient, **tags.study,
                  **tags.series, **tags.instance}
        if self.file_keywords:
            values.update(read_values(path, self.file_keywords))
        planned: dict[tuple[str, Trigger], str] = {}
        for compiled in self.routes:
            if all(matcher(values.get(key, "")) for key, matcher in compiled.conditions):
                for dest in compiled.route.destinations:
                    planned.setdefault((dest, compiled.route.trigger), compiled.name)
        return [Planned(route, dest, trigger) for (dest, trigger), route in planned.items()]


def read_values(path: Path, keywords: list[str]) -> dict[str, str]:
    """Elements of a file the index does not keep, as strings (backslash between values)."""
    ds = dcmread(path, stop_before_pixels=True, specific_tags=keywords)
    out = {}
    for keyword in keywords:
        value = ds.get(keyword)
        if value is None or keyword not in ds or ds[keyword].VR == "SQ":
            continue
        out[keyword] = "\\".join(map(str, value)) if isinstance(value, MultiValue) else str(value)
    return out
