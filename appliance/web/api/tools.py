"""``/tools/find`` and ``/tools/lookup``: searches with C-FIND's matching rules."""

from __future__ import annotations

from collections.abc import Callable
from itertools import islice
from typing import Any

import bottle

from ...config import Config
from ...dicom.query import Level, QueryError, relational_query
from ...index import resources as index
from ...index.search import MODELS, Match, search
from ...store import Store
from .common import as_json, fail, json_body

LEVEL_NAMES = {"patient": Level.PATIENT, "study": Level.STUDY, "series": Level.SERIES,
               "instance": Level.IMAGE}
PATHS = {Level.PATIENT: "patients", Level.STUDY: "studies", Level.SERIES: "series",
         Level.IMAGE: "instances"}


def find(store: Store, level: Level, constraints: dict[str, str], returned: list[str],
         fold: Callable[[str], bool]) -> Any:
    """The matches of a text query, lazily; 400 for a key that cannot be asked. ``fold``
    says which VRs match case-insensitively."""
    try:
        query = relational_query(level, constraints, returned, fold)
    except QueryError as exc:
        fail(400, exc.comment)
    return query, search(query, store.read_header)


def row_of(match: Match) -> Any:
    return MODELS[match.level].get_by_id(match.ids[match.level])


def install(app: bottle.Bottle, config: Config, store: Store) -> None:
    stable_age = config.storage.stable_age

    @app.post("/tools/find")
    def tools_find() -> Any:
        """Orthanc's body: ``{"Level", "Query", "Expand", "Limit", "Since", "CaseSensitive"}``
        (as Orthanc: case-insensitive unless CaseSensitive is true)."""
        body = _find_body(json_body())
        level = LEVEL_NAMES[body["Level"].lower()]
        case_sensitive = body["CaseSensitive"]
        _, matches = find(store, level, body["Query"], [], lambda vr: not case_sensitive)
        since, limit = body["Since"], body["Limit"]
        page = islice(matches, since, since + limit if limit else None)
        path = PATHS[level]
        if body["Expand"]:
            return as_json([index.to_json(path, row_of(m), stable_age) for m in page])
        return as_json([row_of(m).public_id for m in page])

    @app.post("/tools/lookup")
    def tools_lookup() -> Any:
        identifier = bottle.request.body.read().decode("utf-8", "replace").strip()
        if not identifier:
            fail(400, "the body must be the identifier to look up")
        return as_json(index.lookup(identifier))


def _find_body(body: Any) -> dict[str, Any]:
    """The request checked and completed with Orthanc's defaults (400 with the reason)."""
    if not isinstance(body, dict):
        fail(400, "the body must be a JSON object")
    out = {"Expand": False, "Limit": 0, "Since": 0, "CaseSensitive": False, **body}
    if not isinstance(out.get("Level"), str) or out["Level"].lower() not in LEVEL_NAMES:
        fail(400, "Level must be one of Patient, Study, Series, Instance")
    query = out.get("Query")
    if not isinstance(query, dict):
        fail(400, "Query must be an object of tag -> value")
    out["Query"] = {k: _text(k, v) for k, v in query.items()}
    for key in ("Limit", "Since"):
        if not isinstance(out[key], int) or isinstance(out[key], bool) or out[key] < 0:
            fail(400, f"{key} must be a non-negative integer")
    for key in ("Expand", "CaseSensitive"):
        if not isinstance(out[key], bool):
            fail(400, f"{key} must be true or false")
    return out


def _text(key: str, value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return "\\".join(value)
    fail(400, f"Query.{key} must be a string")
