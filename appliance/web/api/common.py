"""Helpers shared by the REST and DICOMweb views: parameters, lookups, JSON and streams."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO, NoReturn

import bottle

from ...dicom import orthanc_json
from ...index import resources as index
from ...store import Store

CHUNK = 1 << 16
MB = 1024 * 1024


def fail(code: int, message: str) -> NoReturn:
    raise bottle.HTTPError(code, message)


def int_param(name: str, default: int | None) -> int | None:
    raw = bottle.request.query.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        fail(400, f"'{name}' must be an integer, got {raw!r}")
    if value < 0:
        fail(400, f"'{name}' must not be negative")
    return value


def found(level: str, public_id: str) -> Any:
    row = index.find(level, public_id)
    if row is None:
        fail(404, f"unknown resource: {level}/{public_id}")
    return row


def as_json(value: Any) -> str:
    bottle.response.content_type = "application/json"
    return json.dumps(value, indent=2)


def tags_as_asked(ds: Any) -> dict[str, Any]:
    """A dataset in the format the request asks for, as Orthanc: ``simplify``, ``short``, or
    the full format by default."""
    if "simplify" in bottle.request.query:
        return orthanc_json.simplified(ds)
    if "short" in bottle.request.query:
        return orthanc_json.short(ds)
    return orthanc_json.full(ds)


def json_body() -> Any:
    try:
        return json.loads(bottle.request.body.read() or b"null")
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        fail(400, f"the body is not valid JSON: {exc}")


def file_size(f: Any) -> int:
    return os.fstat(f.fileno()).st_size


def stream(f: BinaryIO) -> Iterator[bytes]:
    with f:
        while chunk := f.read(CHUNK):
            yield chunk


def opened(store: Store, public_id: str) -> BinaryIO:
    f = store.open_instance(public_id)
    if f is None:
        fail(404, f"unknown resource: instances/{public_id}")
    return f


def spool_body(store: Store, limit: int) -> Path:
    """The request body, copied chunk by chunk into a file of the store's ``tmp`` folder
    (never whole in memory); 413 beyond ``limit`` bytes. The caller owns the file."""
    length = bottle.request.content_length
    if length > limit:
        fail(413, f"the body ({length} bytes) is over the limit of {limit} bytes")
    source = bottle.request.environ["wsgi.input"]
    fd, name = tempfile.mkstemp(dir=store.area.tmp, prefix="upload-")
    path = Path(name)
    try:
        with os.fdopen(fd, "wb") as out:
            _copy(source, out, length, limit)
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    return path


def _copy(source: Any, out: BinaryIO, length: int, limit: int) -> None:
    remaining = length if length >= 0 else None
    copied = 0
    while remaining is None or remaining > 0:
        chunk = source.read(CHUNK if remaining is None else min(CHUNK, remaining))
        if not chunk:
            break
        copied += len(chunk)
        if copied > limit:
            fail(413, f"the body is over the limit of {limit} bytes")
        out.write(chunk)
        if remaining is not None:
            remaining -= len(chunk)
