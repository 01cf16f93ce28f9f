"""``POST /instances``: a DICOM file or a ZIP of them, streamed to the store's ``tmp`` folder
(never whole in memory), each file made durable and indexed by ``Store.receive``."""

from __future__ import annotations

import logging
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import bottle

from ...config import Config
from ...index.ingest import Origin, Recorded
from ...index.tags import BadInstance
from ...storage.governor import StoreFull
from ...store import Store
from .common import CHUNK, MB, as_json, fail, spool_body

log = logging.getLogger("appliance.web")

ZIP_MAGIC = b"PK\x03\x04"


def origin() -> Origin:
    return Origin(kind="RestApi", remote_address=bottle.request.remote_addr or "")


def recorded_json(recorded: Recorded) -> dict[str, Any]:
    """Orthanc's answer to an upload."""
    ids = recorded.ids
    return {
        "ID": ids.instance, "Path": f"/instances/{ids.instance}",
        "Status": "AlreadyStored" if recorded.outcome == "kept-first" else "Success",
        "ParentPatient": ids.patient, "ParentStudy": ids.study, "ParentSeries": ids.series,
    }


def upload_limit(config: Config) -> int:
    return int(config.http.max_upload_mb * MB)


def install(app: bottle.Bottle, config: Config, store: Store) -> None:
    @app.post("/instances")
    def upload() -> Any:
        path = spool_body(store, upload_limit(config))
        if _is_zip(path):
            try:
                return as_json(_receive_zip(store, path, upload_limit(config)))
            finally:
                path.unlink(missing_ok=True)
        try:
            recorded = store.receive(path, origin())
        except StoreFull as exc:
            fail(507, f"the store is full: {exc}")
        except BadInstance as exc:
            fail(400, f"not a DICOM instance that can be stored: {exc}")
        return as_json(recorded_json(recorded))


def _is_zip(path: Path) -> bool:
    with open(path, "rb") as f:
        return f.read(4) == ZIP_MAGIC


def _receive_zip(store: Store, path: Path, limit: int) -> list[dict[str, Any]]:
    """Every file of the archive, each with its own outcome (Orthanc's list)."""
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as exc:
        fail(400, f"not a valid ZIP archive: {exc}")
    results = []
    with archive:
        for member in archive.infolist():
            if member.is_dir():
                continue
            if member.file_size > limit:
                results.append(_failure(member, f"over the limit of {limit} bytes", 0xA700))
            else:
                results.append(_receive_member(store, archive, member))
    return results


def _receive_member(store: Store, archive: zipfile.ZipFile,
                    member: zipfile.ZipInfo) -> dict[str, Any]:
    fd, name = tempfile.mkstemp(dir=store.area.tmp, prefix="unzip-")
    tmp = Path(name)
    try:
        with open(fd, "wb") as out, archive.open(member) as src:
            while chunk := src.read(CHUNK):
                out.write(chunk)
        return {**recorded_json(store.receive(tmp, origin())), "File": member.filename}
    except (BadInstance, zipfile.BadZipFile, OSError, RuntimeError) as exc:
        tmp.unlink(missing_ok=True)
        status = exc.status if isinstance(exc, BadInstance) else 0xC000
        return _failure(member, str(exc), status)


def _failure(member: zipfile.ZipInfo, message: str, status: int) -> dict[str, Any]:
    log.warning("upload: %s of the ZIP not stored: %s", member.filename, message)
    return {"File": member.filename, "Status": "Failure", "Message": message,
            "FailureReason": status}
