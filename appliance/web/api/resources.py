"""``/patients``, ``/studies``, ``/series``, ``/instances``: Orthanc's resource model, read-only."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import bottle

from ...config import Config
from ...index import resources as index
from ...index.quota import pin_expiry
from ...store import Store
from .common import as_json as _json
from .common import file_size, opened, stream
from .common import found as _found
from .common import int_param as _int_param

LEVEL_PATTERN = "<level:re:patients|studies|series|instances>"


def install(app: bottle.Bottle, config: Config, store: Store) -> None:
    stable_age = config.storage.stable_age

    @app.get(f"/{LEVEL_PATTERN}")
    def list_level(level: str) -> Any:
        since = _int_param("since", 0) or 0
        limit = _int_param("limit", None)
        ids = index.list_ids(level, since, limit)
        if "expand" in bottle.request.query:
            return _json([index.to_json(level, _found(level, i), stable_age) for i in ids])
        return _json(ids)

    @app.get(f"/{LEVEL_PATTERN}/<public_id>")
    def one(level: str, public_id: str) -> Any:
        return _json(index.to_json(level, _found(level, public_id), stable_age))

    @app.get(f"/{LEVEL_PATTERN}/<public_id>/statistics")
    def resource_statistics(level: str, public_id: str) -> Any:
        return _json(index.resource_statistics(level, _found(level, public_id)))

    @app.delete(f"/{LEVEL_PATTERN}/<public_id>")
    def delete(level: str, public_id: str) -> Any:
        """Orthanc's answer: the nearest ancestor still there, if any."""
        parent = index.parent_of(level, public_id)
        if store.delete_resource(level, public_id, "deleted through the REST API") is None:
            bottle.abort(404, f"unknown resource: {level}/{public_id}")
        while parent is not None and index.find(*parent) is None:
            parent = index.parent_of(*parent)
        remaining = None
        if parent is not None:
            name = index.LEVELS[parent[0]].name
            remaining = {"Type": name, "ID": parent[1], "Path": f"/{parent[0]}/{parent[1]}"}
        return _json({"RemainingAncestor": remaining})

    @app.get("/<level:re:patients|studies>/<public_id>/protected")
    def protected(level: str, public_id: str) -> Any:
        bottle.response.content_type = "text/plain"
        return "1" if index.is_protected(_found(level, public_id)) else "0"

    @app.put("/<level:re:patients|studies>/<public_id>/protected")
    def protect(level: str, public_id: str) -> Any:
        """Orthanc's body ("1" or "0"), or ``{"Protected": true, "Until": "YYYYMMDD"}`` for a
        pin that expires."""
        protected, until = _protection(bottle.request.body.read().decode("utf-8", "replace"))
        if not store.protect(level, public_id, protected, until):
            bottle.abort(404, f"unknown resource: {level}/{public_id}")
        bottle.response.content_type = "text/plain"
        return ""

    @app.get("/changes")
    def changes() -> Any:
        since = _int_param("since", 0) or 0
        limit = _int_param("limit", 100) or 100
        if "last" in bottle.request.query:
            return _json(index.last_change())
        return _json(index.changes(since, min(limit, 10000)))

    @app.get("/instances/<public_id>/file")
    def instance_file(public_id: str) -> Iterator[bytes]:
        f = opened(store, public_id)
        bottle.response.content_type = "application/dicom"
        bottle.response.set_header("Content-Length", str(file_size(f)))
        return stream(f)


def _protection(body: str) -> tuple[bool, float | None]:
    body = body.strip()
    if body in ("0", "1", "false", "true"):
        return body in ("1", "true"), None
    try:
        value = json.loads(body)
        protected = value["Protected"]
        until = value.get("Until")
        if not isinstance(protected, bool):
            raise TypeError
        expiry = pin_expiry(until) if until else None
    except (ValueError, KeyError, TypeError, AttributeError):
        bottle.abort(400, 'expected "1", "0" or {"Protected": true, "Until": "YYYYMMDD"}')
    return protected, expiry
