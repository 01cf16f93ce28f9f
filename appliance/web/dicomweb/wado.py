"""WADO-RS (PS3.18 10.4): studies, series and instances as ``multipart/related;
type="application/dicom"`` streamed from the stored files (as stored with ``transfer-syntax=*``,
else in Explicit VR Little Endian), their metadata as DICOM JSON, frames (uncompressed) and
rendered images."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import suppress
from functools import partial
from typing import Any, BinaryIO

import bottle

from ...dicom.render import NoSuchFrame, Undecodable
from ...index.resources import StoredInstance, instances_by_uid
from ...store import Store
from ..api.common import fail, stream
from .common import dicom_json
from .multipart import JoinedFile, accepts, framed, join, new_boundary, related_type

log = logging.getLogger("appliance.web")

EXPLICIT_LE = "1.2.840.10008.1.2.1"
DEFER = 4096
PIXEL_TAGS = (0x7FE00010, 0x7FE00008, 0x7FE00009)
RENDERED = {"image/jpeg": "JPEG", "image/png": "PNG"}


def _found(study: str, series: str | None = None,
           sop: str | None = None) -> list[StoredInstance]:
    found = instances_by_uid(study, series, sop)
    if not found:
        fail(404, "no such " + ("instance" if sop else "series" if series else "study"))
    return found


def _wanted_syntax(instances: list[StoredInstance]) -> str:
    """The transfer syntax the client asks for: ``*`` (as stored), or one UID; absent, Explicit
    VR Little Endian (PS3.18 8.7.3.5.2, since 2016c). We convert to that one only (406 for
    another that some instance is not stored in)."""
    params = accepts(bottle.request.get_header("Accept", ""), "application/dicom")
    if params is None:
        fail(406, 'only multipart/related; type="application/dicom" is served here')
    wanted = params.get("transfer-syntax") or EXPLICIT_LE
    if wanted not in ("*", EXPLICIT_LE) and any(i.transfer_syntax != wanted for i in instances):
        fail(406, f"instances are stored in another transfer syntax than {wanted}, and are"
                  f" converted to {EXPLICIT_LE} only (or ask for transfer-syntax=*)")
    return wanted


def retrieve(store: Store, instances: list[StoredInstance]) -> Iterator[bytes] | JoinedFile:
    """Each instance as stored, or converted to Explicit VR Little Endian when asked (the
    default); with nothing to convert, the stored files as one joined file. The first
    conversion happens before the answer starts, so that an instance that cannot be converted
    is a 406; a later one that cannot is sent as stored, its part saying in which syntax."""
    wanted = _wanted_syntax(instances)
    convert = [wanted == EXPLICIT_LE and i.transfer_syntax != EXPLICIT_LE for i in instances]
    if not any(convert):
        return _as_stored(store, instances)
    at = convert.index(True)
    try:
        first = (at, store.open_explicit_le(instances[at].public_id))
    except Undecodable as exc:
        fail(406, f"cannot convert to {EXPLICIT_LE} (ask for transfer-syntax=*): {exc}")
    boundary = new_boundary()
    bottle.response.content_type = related_type("application/dicom", boundary)
    parts = (_part(store, i, convert[n], first[1] if first[0] == n else None)
             for n, i in enumerate(instances))
    return join(parts, boundary)


def _as_stored(store: Store, instances: list[StoredInstance]) -> JoinedFile:
    """The stored files as they are, sent by waitress as one file (see ``JoinedFile``);
    instances deleted since the listing are left out."""
    files = store.instance_files([i.public_id for i in instances])
    parts = []
    for instance in instances:
        path = files.get(instance.public_id)
        if path is None:
            continue
        with suppress(FileNotFoundError):
            parts.append((f"application/dicom; transfer-syntax={instance.transfer_syntax}",
                          (path, path.stat().st_size)))
    boundary = new_boundary()
    bottle.response.content_type = related_type("application/dicom", boundary)
    return JoinedFile(framed(parts, boundary))


def _part(store: Store, instance: StoredInstance, convert: bool, converted: BinaryIO | None
          ) -> tuple[str, Iterator[bytes]]:
    if convert and converted is None:
        try:
            converted = store.open_explicit_le(instance.public_id)
        except Undecodable as exc:
            log.warning("WADO-RS: %s sent as stored (%s): %s", instance.public_id,
                        instance.transfer_syntax, exc)
    if converted is not None:
        return f"application/dicom; transfer-syntax={EXPLICIT_LE}", stream(converted)
    return (f"application/dicom; transfer-syntax={instance.transfer_syntax}",
            _file_chunks(store, instance.public_id))


def _file_chunks(store: Store, public_id: str) -> Iterator[bytes]:
    f = store.open_instance(public_id)
    if f is not None:  # deleted since the listing: the part stays empty
        yield from stream(f)


def metadata(store: Store, instances: list[StoredInstance]) -> str:
    """Every element but the pixel data, per instance (binary values inline)."""
    out = []
    for instance in instances:
        ds = store.read_instance(instance.public_id, DEFER)
        if ds is None:
            continue
        for tag in PIXEL_TAGS:
            if tag in ds:
                del ds[tag]
        out.append(ds.to_json_dict(bulk_data_threshold=1 << 62))
    return dicom_json(out)


def _frame_numbers(text: str) -> list[int]:
    try:
        numbers = [int(n) for n in text.split(",")]
    except ValueError:
        fail(400, f"frame numbers must be integers separated by commas, got {text!r}")
    if not numbers or min(numbers) < 1:
        fail(400, "frame numbers start at 1")
    return numbers


def frames(store: Store, instance: StoredInstance, numbers: list[int]) -> Iterator[bytes]:
    """Each frame uncompressed, as ``application/octet-stream`` parts."""
    if accepts(bottle.request.get_header("Accept", ""), "application/octet-stream") is None:
        fail(406, 'frames are served as multipart/related; type="application/octet-stream"')
    decoded = [_pixels(partial(store.frame, instance.public_id, n - 1)) for n in numbers]
    boundary = new_boundary()
    bottle.response.content_type = related_type("application/octet-stream", boundary)
    return join((("application/octet-stream", [data]) for data in decoded), boundary)


def rendered(store: Store, instance: StoredInstance, number: int) -> bytes:
    """One frame as JPEG (the default, PS3.18 8.7.4) or PNG, after the Accept header."""
    accept = bottle.request.get_header("Accept", "") or "image/jpeg"
    media = next((m for m in RENDERED if accepts(accept, m) is not None), None)
    if media is None:
        fail(406, "rendered images are image/jpeg or image/png")
    data = _pixels(lambda: store.render(instance.public_id, number - 1, RENDERED[media]))
    bottle.response.content_type = media
    return data


def _pixels(job: Callable[[], bytes | None]) -> bytes:
    """A pixel job's bytes; 404 for a frame (or instance) that is not there, 415 when the
    pixel data cannot be decoded here."""
    try:
        data = job()
    except Undecodable as exc:
        fail(404 if isinstance(exc, NoSuchFrame) else 415, str(exc))
    if data is None:
        fail(404, "the instance is no longer stored")
    return data


def install(app: bottle.Bottle, prefix: str, store: Store) -> None:
    study_path = f"{prefix}/studies/<study>"
    series_path = f"{study_path}/series/<series>"
    instance_path = f"{series_path}/instances/<sop>"

    @app.get(study_path)
    @app.get(series_path)
    @app.get(instance_path)
    def retrieve_resource(study: str, series: str | None = None, sop: str | None = None) -> Any:
        return retrieve(store, _found(study, series, sop))

    @app.get(f"{study_path}/metadata")
    @app.get(f"{series_path}/metadata")
    @app.get(f"{instance_path}/metadata")
    def retrieve_metadata(study: str, series: str | None = None,
                          sop: str | None = None) -> Any:
        return metadata(store, _found(study, series, sop))

    @app.get(f"{instance_path}/frames/<numbers>")
    def retrieve_frames(study: str, series: str, sop: str, numbers: str) -> Any:
        return frames(store, _found(study, series, sop)[0], _frame_numbers(numbers))

    @app.get(f"{instance_path}/rendered")
    @app.get(f"{instance_path}/frames/<number:int>/rendered")
    def retrieve_rendered(study: str, series: str, sop: str, number: int = 1) -> Any:
        if number < 1:
            fail(400, "frame numbers start at 1")
        return rendered(store, _found(study, series, sop)[0], number)
