"""STOW-RS (PS3.18 10.5): ``multipart/related; type="application/dicom"`` uploads, each part
written to the store's ``tmp`` folder as it arrives and stored by ``Store.receive``; the answer
is the standard dataset (ReferencedSOPSequence, FailedSOPSequence with FailureReason)."""

from __future__ import annotations

import functools
import io
import itertools
import logging
import uuid
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import bottle
from pydicom import dcmread

from ...config import Config
from ...index.ingest import Origin
from ...index.tags import BadInstance
from ...store import Store
from ..api.common import fail
from ..api.upload import origin, upload_limit
from .common import base_url, dicom_json
from .multipart import Malformed, Part, Splitter, media_params

log = logging.getLogger("appliance.web")

SPOOL_PREFIX = f"stow-{uuid.uuid4().hex[:12]}-"  # this process's part files in tmp
_spooled = itertools.count()

PROCESSING_FAILURE = 0x0110  # PS3.18 Table 10.5.3-3 (and PS3.4 status codes)
CANNOT_UNDERSTAND = 0xC000
MISMATCH = 0xA900
STORE_THREADS = 32  # parts stored at once, over every request: at most one writer batch
UIDS = [0x00080016, 0x00080018, 0x0020000D, 0x0020000E]
RETRIEVE_URL, FAILURE_REASON = "00081190", "00081197"
REFERENCED_SOPS, FAILED_SOPS = "00081199", "00081198"


@dataclass
class Outcome:
    sop_class: str
    sop_uid: str
    study_uid: str
    series_uid: str
    failure: int | None  # None: stored


class LimitedReader:
    """The request body, refused (413) beyond ``limit`` bytes."""

    def __init__(self, source: Any, length: int, limit: int) -> None:
        if length > limit:
            fail(413, f"the body ({length} bytes) is over the limit of {limit} bytes")
        self.source, self.remaining, self.limit, self.total = source, length, limit, 0

    def read(self, size: int) -> bytes:
        if self.remaining == 0:
            return b""
        chunk = self.source.read(size if self.remaining < 0 else min(size, self.remaining))
        self.total += len(chunk)
        if self.remaining > 0:
            self.remaining -= len(chunk)
        if self.total > self.limit:
            fail(413, f"the body is over the limit of {self.limit} bytes")
        return bytes(chunk)


def _boundary() -> str:
    kind, params = media_params(bottle.request.content_type)
    if kind != "multipart/related" or "boundary" not in params:
        fail(415, 'STOW-RS takes multipart/related; type="application/dicom" with a boundary')
    if params.get("type", "application/dicom").lower() != "application/dicom":
        fail(415, f"parts of type {params['type']!r} are not supported (application/dicom)")
    return params["boundary"]


def _peek(source: Path | bytes) -> tuple[str, str, str, str]:
    """(SOP class, SOP instance, study, series) UIDs of an uploaded part (its file, or its
    first bytes), "" where unreadable."""
    try:
        ds = dcmread(io.BytesIO(source) if isinstance(source, bytes) else source,
                     stop_before_pixels=True, specific_tags=UIDS)
        return (str(ds.get("SOPClassUID", "")), str(ds.get("SOPInstanceUID", "")),
                str(ds.get("StudyInstanceUID", "")), str(ds.get("SeriesInstanceUID", "")))
    except Exception:  # garbage is the client's problem: reported as a failure below
        return "", "", "", ""


def store_part(store: Store, part: Part, study: str | None, came: Origin) -> Outcome:
    """Store one part; the part's file is consumed either way. Its UIDs are the ones the store
    read; a part checked against the study of the URL is read for them first, a refused one
    is looked at in its first bytes."""
    if study is not None:
        uids = _peek(part.path)
        if uids[2] != study:
            part.path.unlink(missing_ok=True)
            return Outcome(*uids, MISMATCH)
    try:
        _, tags = store.receive_tagged(part.path, came, spooled=part.spooled)
    except BadInstance as exc:
        uids = _peek(part.spooled.head)
        log.warning("STOW-RS: %s refused (0x%04X): %s", uids[1] or part.path.name, exc.status,
                    exc)
        return Outcome(*uids, exc.status)
    except Exception:
        uids = _peek(part.spooled.head)
        log.exception("STOW-RS: %s not stored", uids[1] or part.path.name)
        return Outcome(*uids, PROCESSING_FAILURE)
    return Outcome(tags.sop_class_uid, tags.sop_uid, tags.study_uid, tags.series_uid, None)


def response(outcomes: list[Outcome], study: str | None) -> str:
    """PS3.18 10.5.3: 200 all stored, 202 some, 409 none. The dataset is written in the DICOM
    JSON model (PS3.18 F.2) directly: through pydicom datasets it cost more than storing."""
    base = base_url()
    stored = [o for o in outcomes if o.failure is None]
    failed = [o for o in outcomes if o.failure is not None]
    answer: dict[str, Any] = {}
    studies = {o.study_uid for o in stored}
    if study or len(studies) == 1:
        answer[RETRIEVE_URL] = _element("UR", f"{base}/studies/{study or studies.pop()}")
    answer[REFERENCED_SOPS] = _sequence(
        {**_reference(o), RETRIEVE_URL: _element(
            "UR", f"{base}/studies/{o.study_uid}/series/{o.series_uid}/instances/{o.sop_uid}")}
        for o in stored)
    answer[FAILED_SOPS] = _sequence({**_reference(o), FAILURE_REASON: _element("US", o.failure)}
                                    for o in failed)
    bottle.response.status = 200 if not failed else 202 if stored else 409
    return dicom_json(answer)


def _element(vr: str, value: str | int | None) -> dict[str, Any]:
    """An attribute of the DICOM JSON model (PS3.18 F.2.2): an empty one has no Value."""
    return {"vr": vr} if value in ("", None) else {"vr": vr, "Value": [value]}


def _sequence(items: Iterable[dict[str, Any]]) -> dict[str, Any]:
    return {"vr": "SQ", "Value": list(items)}


def _reference(outcome: Outcome) -> dict[str, Any]:
    return {"00081150": _element("UI", outcome.sop_class),
            "00081155": _element("UI", outcome.sop_uid)}


def install(app: bottle.Bottle, prefix: str, config: Config, store: Store) -> None:
    @app.post(f"{prefix}/studies")
    @app.post(f"{prefix}/studies/<study>")
    def stow(study: str | None = None) -> Any:
        boundary = _boundary()
        reader = LimitedReader(bottle.request.environ["wsgi.input"],
                               bottle.request.content_length, upload_limit(config))
        parts = _receive(Splitter(boundary, reader.read, lambda: _new_file(store)))
        came = origin()  # read here: the request is thread-local
        pending = [_pool().submit(_store_typed, store, part, study, came) for part in parts]
        return response([p.result() for p in pending], study)


def _receive(splitter: Splitter) -> list[Part]:
    """Every part, written to its file; nothing is stored before the body is whole (a
    malformed body stores nothing)."""
    parts: list[Part] = []
    try:
        parts.extend(splitter.parts())
    except Malformed as exc:
        _discard(parts)
        fail(400, f"malformed multipart body: {exc}")
    except BaseException:
        _discard(parts)
        raise
    if not parts:
        fail(400, "the multipart body has no part")
    return parts


@functools.cache
def _pool() -> ThreadPoolExecutor:
    """Stores the parts of a request side by side: their index commits and flushes are then
    shared (group commit), where one part after the other would pay one each."""
    return ThreadPoolExecutor(STORE_THREADS, thread_name_prefix="stow")


def _store_typed(store: Store, part: Part, study: str | None, came: Origin) -> Outcome:
    if part.media not in ("application/dicom", "text/plain"):  # text/plain: no Content-Type
        part.path.unlink(missing_ok=True)
        return Outcome("", "", "", "", CANNOT_UNDERSTAND)
    return store_part(store, part, study, came)


def _new_file(store: Store) -> Path:
    """A new name in ``tmp`` (the part file is created exclusively: a name left by an earlier
    process is an error, not overwritten)."""
    return store.area.tmp / f"{SPOOL_PREFIX}{next(_spooled)}"


def _discard(parts: list[Part]) -> None:
    for part in parts:
        part.path.unlink(missing_ok=True)

