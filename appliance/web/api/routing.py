"""``/modalities``, ``/routes``, ``/queue`` and ``/exports``: the routing services over HTTP.

Modalities take Orthanc's body (``{"AET", "Host", "Port"}``) plus our ``Allow`` and
``Concurrency``; routes take the configuration's own keys. Every change is validated with the
whole configuration and saved as a new version (400 with the reason when invalid).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import bottle

from ...config import ConfigError
from ...index import resources
from ...jobs import Jobs
from ...routing.service import Routing, UnknownResource, modality_json
from .common import as_json as _json
from .common import fail
from .common import json_body as _body
from .jobs import started

MODALITY_KEYS = {"AET": "aet", "Host": "host", "Port": "port", "Allow": "allow",
                 "Concurrency": "concurrency"}


def _object() -> dict[str, Any]:
    body = _body()
    if not isinstance(body, dict):
        fail(400, "the body must be a JSON object")
    return body


def guarded(action: Callable[[], Any]) -> Any:
    """Service errors as HTTP errors: invalid configuration 400, unknown names 404."""
    try:
        return action()
    except ConfigError as exc:
        fail(400, str(exc))
    except UnknownResource as exc:
        fail(404, str(exc))


def modality_values(body: dict[str, Any]) -> dict[str, Any]:
    unknown = set(body) - set(MODALITY_KEYS)
    if unknown:
        fail(400, f"unknown modality keys: {', '.join(sorted(unknown))}"
                          f" (expected {', '.join(MODALITY_KEYS)})")
    return {MODALITY_KEYS[k]: v for k, v in body.items()}


def resource_level(public_id: str) -> str:
    """The level of an Orthanc ID (Orthanc accepts any level where a resource is expected)."""
    for level in resources.LEVELS:
        if resources.find(level, public_id) is not None:
            return level
    raise UnknownResource(f"unknown resource {public_id!r}")


def install(app: bottle.Bottle, routing: Routing, jobs: Jobs) -> None:
    @app.get("/modalities")
    def modalities() -> Any:
        items = routing.modalities()
        if "expand" in bottle.request.query:
            return _json({n: modality_json(n, m) for n, m in items.items()})
        return _json(sorted(items))

    @app.get("/modalities/<name>/configuration")
    def modality(name: str) -> Any:
        found = routing.modalities().get(name)
        if found is None:
            fail(404, f"no modality named {name!r}")
        return _json(modality_json(name, found))

    @app.put("/modalities/<name>")
    def put_modality(name: str) -> Any:
        values = modality_values(_object())
        guarded(lambda: routing.put_modality(name, values))
        return _json({})

    @app.delete("/modalities/<name>")
    def delete_modality(name: str) -> Any:
        guarded(lambda: routing.delete_modality(name))
        return _json({})

    @app.post("/modalities/<name>/store", role="viewer")  # viewers may send to known nodes
    def store(name: str) -> Any:
        """Send resources (an ID, a list, or {"Resources", "Asynchronous", "Timeout"})

        Orthanc's body: an ID, a list of IDs, or ``{"Resources": [...], "Asynchronous",
        "Timeout"}``. Always through the durable queue: asynchronous answers at once with a
        job (``{"ID", "Path"}``) that follows the queued instances to delivery; synchronous
        waits for the outcome (502 if some instance was refused or is still waiting — those
        stay queued and are retried)."""
        body = _body()
        options = body if isinstance(body, dict) else {}
        ids = options.get("Resources") if isinstance(body, dict) else body
        ids = [ids] if isinstance(ids, str) else ids
        if not isinstance(ids, list) or not ids or not all(isinstance(i, str) for i in ids):
            fail(400, "expected a resource ID, a list of IDs or {\"Resources\": [...]}")
        timeout = options.get("Timeout", 60)
        if not isinstance(timeout, (int, float)) or timeout < 0:
            fail(400, "Timeout must be a number of seconds")
        if not isinstance(options.get("Asynchronous", False), bool):
            fail(400, "Asynchronous must be true or false")
        entries: list[int] = guarded(lambda: routing.queue_resources(
            [(resource_level(i), i) for i in ids], name))
        answer = {"Description": "REST API", "LocalAet": routing.configs.current.dicom.aet,
                  "RemoteAet": routing.modalities()[name].aet, "ParentResources": ids,
                  "InstancesCount": len(entries), "Queued": len(entries)}
        if options.get("Asynchronous"):
            return started(routing.track(jobs, name, entries, answer))
        delivered, refused, waiting = routing.wait(entries, float(timeout))
        answer.update(FailedInstancesCount=refused + waiting, Delivered=delivered,
                      Refused=refused, Waiting=waiting)
        if refused or waiting:
            bottle.response.status = 502
        return _json(answer)

    @app.get("/routes")
    def routes() -> Any:
        return _json({n: dataclasses.asdict(r) for n, r in routing.routes().items()})

    @app.get("/routes/<name>")
    def route(name: str) -> Any:
        found = routing.routes().get(name)
        if found is None:
            fail(404, f"no route named {name!r}")
        return _json(dataclasses.asdict(found))

    @app.put("/routes/<name>")
    def put_route(name: str) -> Any:
        values = _object()
        saved: Any = guarded(lambda: routing.put_route(name, values))
        return _json(dataclasses.asdict(saved))

    @app.delete("/routes/<name>")
    def delete_route(name: str) -> Any:
        guarded(lambda: routing.delete_route(name))
        return _json({})

    @app.get("/queue")
    def queue_state() -> Any:
        return _json(routing.queue_state())

    @app.get("/queue/<name>")
    def entries(name: str) -> Any:
        state = bottle.request.query.get("state") or None
        if state not in (None, "pending", "held", "failed"):
            fail(400, "state must be pending, held or failed")
        return _json(routing.entries(name, state, _limit(1000)))

    @app.post("/queue/<name>/retry")
    def retry(name: str) -> Any:
        return _json({"Retried": routing.retry(name)})

    @app.post("/queue/<name>/cancel")
    def cancel(name: str) -> Any:
        return _json({"Cancelled": routing.cancel(name)})

    @app.get("/exports")
    def exports() -> Any:
        since = _limit(0, "since")
        return _json(routing.exports(since, _limit(100)))


def _limit(default: int, name: str = "limit") -> int:
    raw = bottle.request.query.get(name)
    if not raw:
        return default
    if not raw.isdigit():
        fail(400, f"'{name}' must be a non-negative integer")
    return int(raw)
