"""What is inside the resources: tags, previews, ZIP archives, and the parent and children
routes (``/studies/{id}/series``, ``/series/{id}/patient``, ...)."""

from __future__ import annotations

import zipfile
from collections.abc import Iterator
from typing import IO, Any, cast

import bottle

from ...config import Config
from ...dicom import orthanc_json
from ...dicom.render import NoSuchFrame, Undecodable
from ...index import resources as index
from ...store import Store
from .common import CHUNK, as_json, fail, found

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
        ds = dataset(public_id)
        if "simplify" in bottle.request.query or "short" in bottle.request.query:
            return as_json(orthanc_json.simplified(ds))
        return as_json(orthanc_json.full(ds))

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
        entries = index.archive_entries(level, found(level, public_id))
        bottle.response.content_type = "application/zip"
        bottle.response.set_header("Content-Disposition",
                                   f'attachment; filename="{public_id}.zip"')
        return zip_stream(store, entries)

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


class _Sink:
    """A write-only stream zipfile writes into; the generator takes the bytes out."""

    def __init__(self) -> None:
        self.chunks: list[bytes] = []

    def write(self, data: bytes) -> int:
        self.chunks.append(bytes(data))
        return len(data)

    def flush(self) -> None:
        pass

    def take(self) -> bytes:
        data = b"".join(self.chunks)
        self.chunks.clear()
        return data


def zip_stream(store: Store, entries: list[tuple[str, str]]) -> Iterator[bytes]:
    """A ZIP of the stored files, built as it is sent (stored, not deflated: DICOM pixel data
    hardly compresses and the CPU is small)."""
    sink = _Sink()
    with zipfile.ZipFile(cast(IO[bytes], sink), "w", zipfile.ZIP_STORED) as archive:
        for name, public_id in entries:
            f = store.open_instance(public_id)
            if f is None:
                continue  # deleted since the listing
            with f, archive.open(name, "w", force_zip64=True) as member:
                while chunk := f.read(CHUNK):
                    member.write(chunk)
                    yield sink.take()
        yield sink.take()
    yield sink.take()
