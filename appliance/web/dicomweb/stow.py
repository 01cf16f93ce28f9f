"""STOW-RS (PS3.18 10.5): ``multipart/related; type="application/dicom"`` uploads, each part
written to the store's ``tmp`` folder as it arrives and stored by ``Store.receive``; the answer
is the standard dataset (ReferencedSOPSequence, FailedSOPSequence with FailureReason)."""

from __future__ import annotations

import functools
import logging
import os
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import bottle
from pydicom import dcmread
from pydicom.dataset import Dataset

from ...config import Config
from ...index.ingest import Origin
from ...index.resources import instance_uids
from ...index.tags import BadInstance
from ...store import Store
from ..api.common import fail
from ..api.upload import origin, upload_limit
from .common import base_url, dicom_json
from .multipart import Malformed, Splitter, media_params

log = logging.getLogger("appliance.web")

PROCESSING_FAILURE = 0x0110  # PS3.18 Table 10.5.3-3 (and PS3.4 status codes)
CANNOT_UNDERSTAND = 0xC000
MISMATCH = 0xA900
STORE_THREADS = 8  # parts stored at once, over every request
UIDS = [0x00080016, 0x00080018, 0x0020000D, 0x0020000E]


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


def _peek(path: Path) -> tuple[str, str, str, str]:
    """(SOP class, SOP instance, study, series) UIDs of an uploaded part, "" where
    unreadable."""
    try:
        ds = dcmread(path, stop_before_pixels=True, specific_tags=UIDS)
        return (str(ds.get("SOPClassUID", "")), str(ds.get("SOPInstanceUID", "")),
                str(ds.get("StudyInstanceUID", "")), str(ds.get("SeriesInstanceUID", "")))
    except Exception:  # garbage is the client's problem: reported as a failure below
        return "", "", "", ""


def store_part(store: Store, path: Path, study: str | None, came: Origin) -> Outcome:
    """Store one part; the part's file is consumed either way. Its UIDs come from the index
    once stored; the file is read for them only when it must be checked or was refused."""
    if study is not None:
        uids = _peek(path)
        if uids[2] != study:
            path.unlink(missing_ok=True)
            return Outcome(*uids, MISMATCH)
    keep = path.with_name(path.name + ".refused")
    os.link(path, keep)  # receive consumes the part: a refused one is read for its UIDs
    try:
        recorded = store.receive(path, came)
    except BadInstance as exc:
        uids = _peek(keep)
        log.warning("STOW-RS: %s refused (0x%04X): %s", uids[1] or path.name, exc.status, exc)
        return Outcome(*uids, exc.status)
    except Exception:
        uids = _peek(keep)
        log.exception("STOW-RS: %s not stored", uids[1] or path.name)
        return Outcome(*uids, PROCESSING_FAILURE)
    finally:
        keep.unlink(missing_ok=True)
    stored = instance_uids(recorded.ids.instance)
    if stored is None:  # deleted at once (by a hook, by recycling): stored all the same
        return Outcome("", "", "", "", None)
    return Outcome(stored.sop_class_uid, stored.sop_uid, stored.study_uid, stored.series_uid,
                   None)


def response(outcomes: list[Outcome], study: str | None) -> str:
    """PS3.18 10.5.3: 200 all stored, 202 some, 409 none."""
    base = base_url()
    ds = Dataset()
    stored = [o for o in outcomes if o.failure is None]
    failed = [o for o in outcomes if o.failure is not None]
    studies = {o.study_uid for o in stored}
    if study or len(studies) == 1:
        ds.RetrieveURL = f"{base}/studies/{study or studies.pop()}"
    ds.ReferencedSOPSequence = [_item(o, f"{base}/studies/{o.study_uid}/series/{o.series_uid}"
                                          f"/instances/{o.sop_uid}")
                                for o in stored]
    ds.FailedSOPSequence = [_item(o) for o in failed]
    for item, outcome in zip(ds.FailedSOPSequence, failed, strict=True):
        item.FailureReason = outcome.failure
    bottle.response.status = 200 if not failed else 202 if stored else 409
    return dicom_json(ds.to_json_dict())


def _item(outcome: Outcome, url: str | None = None) -> Dataset:
    item = Dataset()
    item.ReferencedSOPClassUID = outcome.sop_class
    item.ReferencedSOPInstanceUID = outcome.sop_uid
    if url:
        item.RetrieveURL = url
    return item


def install(app: bottle.Bottle, prefix: str, config: Config, store: Store) -> None:
    @app.post(f"{prefix}/studies")
    @app.post(f"{prefix}/studies/<study>")
    def stow(study: str | None = None) -> Any:
        boundary = _boundary()
        reader = LimitedReader(bottle.request.environ["wsgi.input"],
                               bottle.request.content_length, upload_limit(config))
        splitter = Splitter(boundary, lambda: _new_file(store))
        try:
            parts = splitter.split(reader.read)
        except Malformed as exc:
            _discard(splitter)
            fail(400, f"malformed multipart body: {exc}")
        except BaseException:
            _discard(splitter)
            raise
        if not parts:
            fail(400, "the multipart body has no part")
        came = origin()  # read here: the request is thread-local
        pending = [_pool().submit(_store_typed, store, headers.get_content_type(), path, study,
                                  came)
                   for headers, path in parts]
        return response([p.result() for p in pending], study)


@functools.cache
def _pool() -> ThreadPoolExecutor:
    """Stores the parts of a request side by side: their index commits and flushes are then
    shared (group commit), where one part after the other would pay one each."""
    return ThreadPoolExecutor(STORE_THREADS, thread_name_prefix="stow")


def _store_typed(store: Store, media: str, path: Path, study: str | None, came: Origin
                 ) -> Outcome:
    if media not in ("application/dicom", "text/plain"):  # text/plain: no Content-Type given
        path.unlink(missing_ok=True)
        return Outcome("", "", "", "", CANNOT_UNDERSTAND)
    return store_part(store, path, study, came)


def _new_file(store: Store) -> Path:
    fd, name = tempfile.mkstemp(dir=store.area.tmp, prefix="stow-")
    os.close(fd)
    return Path(name)


def _discard(splitter: Splitter) -> None:
    for _, path in splitter.parts:
        path.unlink(missing_ok=True)

