"""What is inside the resources: tags, previews, ZIP archives, and the parent and children
routes (``/studies/{id}/series``, ``/series/{id}/patient``, ...)."""

from __future__ import annotations

from typing import Any

import bottle

from ...config import Config
from ...dicom import orthanc_json
from ...dicom.render import NoSuchFrame, Undecodable
from ...index import resources as index
from ...storage.archive import zip_stream
from ...store import Store
from .common import as_json, fail, found, tags_as_asked

DEFER = 4096  # bytes: longer values are read only if shown (never the pixel data)


def install(app: bottle.Bottle, config: Config, store: Store) -> None:
    stable_age = config.storage.stable_age

    def dataset(public_id: str) -> Any:
        ds = store.read_instance(public_id, DEFER)
        if ds is None:
            fail(404, f"unknown resource: instances/{public_id}")
        return ds

    @app.get("/instances/<public_id>/tags")
    def tags(public_id: str) -> Any:
        return as_json(tags_as_asked(dataset(public_id)))

    @app.get("/instances/<public_id>/simplified-tags")
    def simplified_tags(public_id: str) -> Any:
        return as_json(orthanc_json.simplified(dataset(public_id)))

    @app.get("/instances/<public_id>/preview")
    @app.get("/instances/<public_id>/frames/<frame:int>/preview")
    def preview(public_id: str, frame: int = 0) -> Any:
        try:
            png = store.render(public_id, frame)
        except Undecodable as exc:
            fail(404 if isinstance(exc, NoSuchFrame) else 415, str(exc))
        if png is None:
            fail(404, f"unknown resource: instances/{public_id}")
        bottle.response.content_type = "image/png"
        return png

    @app.get("/<level:re:patients|studies|series>/<public_id>/archive")
    def archive(level: str, public_id: str) -> Any:
        files = store.files_of(level, public_id)
        if files is None:
            fail(404, f"unknown resource: {level}/{public_id}")
        bottle.response.content_type = "application/zip"
        bottle.response.set_header("Content-Disposition",
                                   f'attachment; filename="{public_id}.zip"')
        return zip_stream(files)

    @app.get("/<level:re:patients|studies|series|instances>/<public_id>"
             "/<target:re:studies|series|instances|patient|study>")
    def related(level: str, public_id: str, target: str) -> Any:
        """Children lists (plural) and the one ancestor (singular), expanded as Orthanc
        answers them."""
        if (level, target) in CHILDREN:
            rows = index.related(level, found(level, public_id), target)
            return as_json([index.to_json(target, row, stable_age) for row in rows])
        parent = PARENTS.get((level, target))
        if parent is None:
            fail(404, f"no route /{level}/{{id}}/{target}")
        (row,) = index.related(level, found(level, public_id), parent)
        return as_json(index.to_json(parent, row, stable_age))


CHILDREN = {("patients", "studies"), ("patients", "series"), ("patients", "instances"),
            ("studies", "series"), ("studies", "instances"), ("series", "instances")}
PARENTS = {("studies", "patient"): "patients", ("series", "patient"): "patients",
           ("series", "study"): "studies", ("instances", "patient"): "patients",
           ("instances", "study"): "studies", ("instances", "series"): "series"}
