"""``/modalities/{name}/echo|query|move|get`` and ``/queries``: Orthanc's query/retrieve routes
over ``dicom.queryretrieve``.

As Orthanc: a failed echo or retrieve is 500 with the reason; a synchronous retrieve answers
with the job's content (``Description``, ``LocalAet``, ``RemoteAet``, ``Query``,
``TargetAet``) plus the sub-operation counts; an asynchronous one (``"Asynchronous": true`` or
``"Synchronous": false``) is checked, then runs as a job and answers ``{"ID", "Path"}``.
Queries and echoes are open to viewers (they change nothing here); retrieves write into the
store or send elsewhere: administrators only.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import bottle

from ...dicom import remote
from ...dicom.queryretrieve import (
    ORTHANC_LEVELS,
    QueryRetrieve,
    Retrieval,
    Retrieved,
    UnknownQuery,
)
from ...dicom.scu import AssociationFailed
from ...jobs import Jobs
from .common import as_json, fail, json_body, tags_as_asked
from .jobs import started

QUERY_KEYS = {"Level", "Query", "Normalize", "Timeout"}
ECHO_KEYS = {"Timeout", "CheckFind"}
MOVE_KEYS = {"Level", "Resources", "TargetAet", "Timeout", "Synchronous", "Asynchronous"}
GET_KEYS = MOVE_KEYS - {"TargetAet"}
RETRIEVE_KEYS = {"TargetAet", "Timeout", "Synchronous", "Asynchronous", "RetrieveMethod"}
METHODS = {"C-MOVE": False, "C-GET": True}
CHILD_LEVELS = {"studies": "Study", "series": "Series", "instances": "Instance"}
# The child queries an answer of each level offers (``query-...``).
CHILDREN = {"PATIENT": ("studies", "series", "instances"), "STUDY": ("series", "instances"),
            "SERIES": ("instances",), "IMAGE": ()}


def guarded(action: Callable[[], Any]) -> Any:
    """Service errors as HTTP errors: unknown modality or query 404, a request that cannot be
    sent 400, a remote that is down or refuses 500 (as Orthanc)."""
    try:
        return action()
    except (remote.UnknownModality, UnknownQuery) as exc:
        fail(404, str(exc))
    except remote.BadQuery as exc:
        fail(400, str(exc))
    except (AssociationFailed, remote.RemoteError) as exc:
        fail(500, str(exc))


def options(body: Any, allowed: set[str], required: tuple[str, ...] = ()) -> dict[str, Any]:
    """A JSON object body with only ``allowed`` keys, ``required`` ones present (400
    otherwise); ``Timeout`` a positive number of seconds, if given."""
    if not isinstance(body, dict):
        fail(400, "the body must be a JSON object")
    unknown = set(body) - allowed
    if unknown:
        fail(400, f"unknown keys: {', '.join(sorted(unknown))} (expected "
                  f"{', '.join(sorted(allowed))})")
    missing = [k for k in required if k not in body]
    if missing:
        fail(400, f"the body must contain {', '.join(missing)}")
    timeout = body.get("Timeout")
    if timeout is not None and (isinstance(timeout, bool) or not isinstance(timeout, int | float)
                                or not 0 <= timeout <= 3600):
        fail(400, "Timeout must be a number of seconds (0-3600)")
    for key in ("Synchronous", "Asynchronous"):
        if not isinstance(body.get(key, False), bool):
            fail(400, f"{key} must be true or false")
    return body


def asynchronous(body: dict[str, Any]) -> bool:
    return body.get("Synchronous") is False or body.get("Asynchronous") is True


def optional_body(allowed: set[str]) -> dict[str, Any]:
    """An empty body, or a JSON object of ``allowed`` keys."""
    raw = bottle.request.body.read()
    if not raw.strip():
        return {}
    try:
        return options(json.loads(raw), allowed)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        fail(400, f"the body is not valid JSON: {exc}")


def retrieve_body() -> dict[str, Any]:
    """Orthanc's retrieve body: a JSON object, or the target AE title as plain text (or as a
    JSON string)."""
    raw = bottle.request.body.read()
    try:
        body = json.loads(raw) if raw.strip() else {}
    except (json.JSONDecodeError, UnicodeDecodeError):
        body = raw.decode("utf-8", "replace").strip()
    if isinstance(body, str):
        body = {"TargetAet": body}
    body = options(body, RETRIEVE_KEYS)
    method = body.get("RetrieveMethod", "C-MOVE")
    if method not in METHODS:
        fail(400, "RetrieveMethod must be C-MOVE or C-GET")
    return body


def text_map(value: Any, what: str) -> dict[str, str]:
    if not isinstance(value, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        fail(400, f"{what} must be a JSON object of DICOM keys to strings")
    return value


def level_of(body: dict[str, Any]) -> str:
    level = body["Level"]
    if not isinstance(level, str):
        fail(400, "Level must be Patient, Study, Series or Instance")
    return level


def resources_of(body: dict[str, Any]) -> list[dict[str, str]]:
    resources = body["Resources"]
    if not isinstance(resources, list) or not resources:
        fail(400, "Resources must be a non-empty list of identifiers like "
                  "{\"StudyInstanceUID\": \"...\"}")
    return [text_map(r, "each of Resources") for r in resources]


def target_of(body: dict[str, Any]) -> str:
    target = body.get("TargetAet", "")
    if not isinstance(target, str):
        fail(400, "TargetAet must be an AE title")
    return target


def run(plan: Retrieval, body: dict[str, Any], jobs: Jobs) -> Any:
    """As a job (``{"ID", "Path"}`` at once), or synchronously: the job's content, 500 if it
    failed."""
    if asynchronous(body):
        return started(jobs.submit(plan.job_type, plan.content(), plan.work))
    done: Retrieved = guarded(plan.run)
    what = "C-GET" if plan.into_store else "C-MOVE"
    if not done.ok:
        fail(500, f"{what} from {plan.modality.aet}: {done.summary()}")
    return as_json(done.content())


def plain(text: str) -> str:
    bottle.response.content_type = "text/plain; charset=utf-8"
    return text


def install(app: bottle.Bottle, service: QueryRetrieve, jobs: Jobs) -> None:
    @app.post("/modalities/<name>/echo", role="viewer")
    def echo(name: str) -> Any:
        """C-ECHO a remote node: ``{}``, or 500 with the reason

        Optional body: ``{"Timeout", "CheckFind"}`` (CheckFind: also a C-FIND, as Orthanc)."""
        body = optional_body(ECHO_KEYS)
        error = guarded(lambda: service.echo(name, body.get("Timeout"),
                                             bool(body.get("CheckFind"))))
        if error:
            fail(500, f"C-ECHO {name}: {error}")
        return as_json({})

    @app.post("/modalities/<name>/query", role="viewer")
    def query(name: str) -> Any:
        """C-FIND on a remote node; the answers are held under ``/queries/{id}``"""
        body = options(json_body(), QUERY_KEYS, ("Level",))
        keys = text_map(body.get("Query", {}), "Query")
        normalize = body.get("Normalize", True)
        if not isinstance(normalize, bool):
            fail(400, "Normalize must be true or false")
        held = guarded(lambda: service.query(name, level_of(body), keys, normalize,
                                             body.get("Timeout")))
        return as_json({"ID": held.id, "Path": f"/queries/{held.id}"})

    @app.post("/modalities/<name>/move")
    def move(name: str) -> Any:
        """C-MOVE from a remote node to us or to ``TargetAet`` (or as a job: Asynchronous)"""
        body = options(json_body(), MOVE_KEYS, ("Level", "Resources"))
        plan = guarded(lambda: service.move(name, level_of(body), resources_of(body),
                                            target_of(body), body.get("Timeout")))
        return run(plan, body, jobs)

    @app.post("/modalities/<name>/get")
    def get(name: str) -> Any:
        """C-GET from a remote node into the store (or as a job: Asynchronous)"""
        body = options(json_body(), GET_KEYS, ("Level", "Resources"))
        plan = guarded(lambda: service.get(name, level_of(body), resources_of(body),
                                           body.get("Timeout")))
        return run(plan, body, jobs)

    @app.get("/queries")
    def queries() -> Any:
        """The held queries, oldest first"""
        return as_json(service.queries())

    @app.get("/queries/<query_id>")
    def query_children(query_id: str) -> Any:
        """What a held query offers"""
        guarded(lambda: service.held(query_id))
        return as_json(["answers", "level", "modality", "query", "retrieve"])

    @app.delete("/queries/<query_id>", role="viewer")
    def forget(query_id: str) -> Any:
        """Forget a held query"""
        guarded(lambda: service.forget(query_id))
        return plain("")

    @app.get("/queries/<query_id>/answers")
    def answers(query_id: str) -> Any:
        """The answers' indexes, or with ``expand`` their tags (``simplify``, ``short``)"""
        held = guarded(lambda: service.held(query_id))
        if "expand" in bottle.request.query:
            return as_json([tags_as_asked(a) for a in held.answers])
        return as_json([str(i) for i in range(len(held.answers))])

    @app.get("/queries/<query_id>/answers/<index:int>")
    def answer_children(query_id: str, index: int) -> Any:
        """What an answer offers"""
        level = guarded(lambda: service.held(query_id)).level
        guarded(lambda: service.answer(query_id, index))
        return as_json(["content", "retrieve", *(f"query-{child}" for child in CHILDREN[level])])

    @app.post("/queries/<query_id>/answers/<index:int>/query-<child:re:studies|series|instances>",
              role="viewer")
    def query_below(query_id: str, index: int, child: str) -> Any:
        """C-FIND the studies, series or instances of an answer; held as a new query"""
        body = options(json_body(), {"Query", "Timeout"})
        keys = text_map(body.get("Query", {}), "Query")
        held = guarded(lambda: service.query_children(query_id, index, CHILD_LEVELS[child], keys,
                                                      body.get("Timeout")))
        return as_json({"ID": held.id, "Path": f"/queries/{held.id}"})

    @app.get("/queries/<query_id>/answers/<index:int>/content")
    def content(query_id: str, index: int) -> Any:
        """One answer's tags (``simplify``, ``short``)"""
        return as_json(tags_as_asked(guarded(lambda: service.answer(query_id, index))))

    @app.get("/queries/<query_id>/level")
    def level(query_id: str) -> Any:
        """The query's level (Patient, Study, Series, Instance)"""
        return plain(ORTHANC_LEVELS[guarded(lambda: service.held(query_id)).level])

    @app.get("/queries/<query_id>/modality")
    def modality(query_id: str) -> Any:
        """The name of the modality the query asked"""
        return plain(guarded(lambda: service.held(query_id)).modality)

    @app.get("/queries/<query_id>/query")
    def asked(query_id: str) -> Any:
        """The keys as they were asked (``simplify``, ``short``)"""
        return as_json(tags_as_asked(guarded(lambda: service.held(query_id)).asked))

    @app.post("/queries/<query_id>/retrieve")
    @app.post("/queries/<query_id>/answers/<index:int>/retrieve")
    def retrieve(query_id: str, index: int | None = None) -> Any:
        """Retrieve every answer, or one: C-MOVE (to us or TargetAet) or C-GET

        The body: the target AE title as text, or ``{"TargetAet", "RetrieveMethod",
        "Timeout", "Asynchronous"}``."""
        body = retrieve_body()
        use_get = METHODS[body.get("RetrieveMethod", "C-MOVE")]
        plan = guarded(lambda: service.retrieve(query_id, index, target_of(body), use_get,
                                                body.get("Timeout")))
        return run(plan, body, jobs)
