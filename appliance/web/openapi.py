"""The OpenAPI document of the box's APIs, generated from the Bottle routes (``app.routes``,
less the admin page's HTML routes) at request time, so a route cannot be left out; each
operation's summary comes from ``SUMMARIES`` or the view's docstring (a test fails when a
route has neither)."""

from __future__ import annotations

import re
from typing import Any

import bottle

from .. import __version__

PARAM = re.compile(r"<([a-zA-Z_][a-zA-Z_0-9]*)(?::([a-z]+)(?::([^>]*))?)?>")

SUMMARIES = {
    "GET /<level:re:patients|studies|series|instances>":
        "List the resources of a level (expand, since, limit)",
    "GET /<level:re:patients|studies|series|instances>/<public_id>":
        "One resource as Orthanc shows it",
    "GET /<level:re:patients|studies|series|instances>/<public_id>/statistics":
        "Instance count and disk size below a resource",
    "GET /<level:re:patients|studies>/<public_id>/protected": "Is it pinned against recycling?",
    "GET /changes": "The change log (since, limit, last)",
    "GET /instances/<public_id>/file": "The stored DICOM file",
    "GET /system": "Name, AE title, ports and versions",
    "GET /statistics": "Counts and sizes of the whole store",
    "POST /instances": "Store a DICOM file or a ZIP of them",
    "GET /instances/<public_id>/tags": "Every tag of an instance (Orthanc's full format)",
    "GET /instances/<public_id>/simplified-tags": "Every tag of an instance, keyword -> value",
    "GET /instances/<public_id>/preview": "The first frame as PNG",
    "GET /instances/<public_id>/frames/<frame:int>/preview": "A frame (from 0) as PNG",
    "GET /<level:re:patients|studies|series>/<public_id>/archive":
        "A ZIP of every instance below a resource (streamed)",
    "POST /tools/lookup": "Resources whose PatientID, UIDs or AccessionNumber is the body",
    "GET /dicom-web/studies": "QIDO-RS: search studies",
    "GET /dicom-web/series": "QIDO-RS: search series",
    "GET /dicom-web/studies/<study>/series": "QIDO-RS: search the series of a study",
    "GET /dicom-web/instances": "QIDO-RS: search instances",
    "GET /dicom-web/studies/<study>/instances": "QIDO-RS: search the instances of a study",
    "GET /dicom-web/studies/<study>/series/<series_uid>/instances":
        "QIDO-RS: search the instances of a series",
    "GET /dicom-web/studies/<study>": "WADO-RS: a study as multipart/related DICOM",
    "GET /dicom-web/studies/<study>/series/<series>": "WADO-RS: a series",
    "GET /dicom-web/studies/<study>/series/<series>/instances/<sop>": "WADO-RS: an instance",
    "GET /dicom-web/studies/<study>/metadata": "WADO-RS: metadata of a study's instances",
    "GET /dicom-web/studies/<study>/series/<series>/metadata":
        "WADO-RS: metadata of a series' instances",
    "GET /dicom-web/studies/<study>/series/<series>/instances/<sop>/metadata":
        "WADO-RS: metadata of an instance",
    "GET /dicom-web/studies/<study>/series/<series>/instances/<sop>/frames/<numbers>":
        "WADO-RS: frames (from 1), uncompressed",
    "GET /dicom-web/studies/<study>/series/<series>/instances/<sop>/rendered":
        "WADO-RS: the first frame as JPEG or PNG",
    "GET /dicom-web/studies/<study>/series/<series>/instances/<sop>/frames/<number:int>"
    "/rendered": "WADO-RS: a frame as JPEG or PNG",
    "POST /dicom-web/studies": "STOW-RS: store instances",
    "POST /dicom-web/studies/<study>": "STOW-RS: store instances of one study",
    "GET /modalities": "Known remote nodes",
    "GET /modalities/<name>/configuration": "One remote node",
    "PUT /modalities/<name>": "Create or replace a remote node",
    "DELETE /modalities/<name>": "Forget a remote node",
    "GET /routes": "Routing rules",
    "GET /routes/<name>": "One routing rule",
    "PUT /routes/<name>": "Create or replace a routing rule",
    "DELETE /routes/<name>": "Delete a routing rule",
    "GET /queue": "The outbound queue, per destination",
    "GET /queue/<name>": "Entries of one destination (state, limit)",
    "POST /queue/<name>/retry": "Retry a destination's failed entries now",
    "POST /queue/<name>/cancel": "Cancel a destination's waiting entries",
    "GET /exports": "The export log (since, limit)",
    "GET /health": "The checks' results (503 when one fails)",
    "GET /metrics": "Prometheus metrics",
    "GET /openapi.json": "This document",
}  # fmt: skip


def summary(route: bottle.Route) -> str:
    """The table's summary, else the first line of the view's docstring ("" if none)."""
    known = SUMMARIES.get(f"{route.method} {route.rule}")
    if known:
        return known
    doc = (route.callback.__doc__ or "").strip()
    return doc.splitlines()[0] if doc else ""


def path_of(rule: str) -> tuple[str, list[dict[str, Any]]]:
    """A Bottle rule as an OpenAPI path and its parameters."""
    params = []
    for name, kind, pattern in PARAM.findall(rule):
        schema: dict[str, Any] = {"type": "integer" if kind == "int" else "string"}
        if kind == "re" and re.fullmatch(r"[\w|-]+", pattern):
            schema["enum"] = pattern.split("|")
        params.append({"name": name, "in": "path", "required": True, "schema": schema})
    return PARAM.sub(lambda m: "{" + m.group(1) + "}", rule), params


def is_api(route: bottle.Route) -> bool:
    """The admin page's HTML routes are not part of the API the document describes."""
    return not str(getattr(route.callback, "__module__", "")).startswith(PAGES)


PAGES = "appliance.web.admin"


def document(app: bottle.Bottle) -> dict[str, Any]:
    paths: dict[str, dict[str, Any]] = {}
    for route in filter(is_api, app.routes):
        path, params = path_of(route.rule)
        operation = {
            "summary": summary(route),
            "operationId": f"{route.method.lower()}_{route.name or route.callback.__name__}"
                           f"_{len(paths)}",
            "parameters": params,
            "responses": {"200": {"description": "success"},
                          "default": {"description": "error: JSON with HttpStatus and Message"}},
        }
        paths.setdefault(path, {})[route.method.lower()] = operation
    return {
        "openapi": "3.0.3",
        "info": {"title": "DICOM appliance: REST API (Orthanc-compatible) and DICOMweb",
                 "version": __version__},
        "paths": paths,
    }


def install(app: bottle.Bottle) -> None:
    @app.get("/openapi.json")
    def openapi() -> Any:
        return document(app)
