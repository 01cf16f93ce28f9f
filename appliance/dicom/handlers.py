"""Thin DIMSE event handlers: translate between pynetdicom events and the store's services."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

from pydicom.dataset import Dataset
from pynetdicom.association import Association
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.events import Event

from ..health.metrics import DicomMetrics
from ..index.ingest import Origin
from ..index.tags import BadInstance
from ..storage.spool import Spooled
from ..store import Expected, Store

log = logging.getLogger("appliance.dicom")

SUCCESS = 0x0000
OUT_OF_RESOURCES = 0xA700
CANNOT_UNDERSTAND = 0xC000
LOOPBACK = {"127.0.0.1", "::1"}


def peer_of(assoc: Association) -> str:
    req = assoc.requestor
    return f"{req.ae_title}@{req.address}:{req.port}"


def peer(event: Event) -> str:
    return peer_of(event.assoc)


def origin_of(assoc: Association) -> Origin:
    req = assoc.requestor
    called = req.primitive.called_ae_title if req.primitive is not None else ""
    return Origin(
        calling_aet=req.ae_title, called_aet=str(called).strip(), remote_address=req.address
    )


def status(code: int, comment: str) -> Dataset:
    """A status dataset with an error comment (LO: 64 characters at most)."""
    ds = Dataset()
    ds.Status = code
    ds.ErrorComment = comment[:64]
    return ds


def handle_echo(event: Event) -> int:
    log.debug("C-ECHO from %s", peer(event))
    return SUCCESS


def handle_store(event: Event, store: Store, metrics: DicomMetrics) -> int | Dataset:
    """C-STORE: answer success only once the instance is durable and indexed."""
    request = cast(C_STORE, event.request)
    expected = Expected(
        str(request.AffectedSOPClassUID), str(request.AffectedSOPInstanceUID)
    )
    code, comment = store_received(
        store, Path(event.dataset_path), expected, origin_of(event.assoc), peer(event), metrics
    )
    return status(code, comment) if comment else code


def store_received(store: Store, path: Path, expected: Expected, origin: Origin,
                   sender: str, metrics: DicomMetrics | None,
                   spooled: Spooled | None = None) -> tuple[int, str]:
    """Hand a spooled C-STORE dataset to the store (which consumes ``path``); return the
    C-STORE status (PS3.4 B.2.3) and an error comment ("" on success). Shared by
    ``handle_store``, the fast path (``faststore``) and our own C-GET (``receiver``; no
    ``metrics`` from the command line). ``spooled``: what was learnt of the file as it was
    written."""
    started = time.perf_counter()
    try:
        size = spooled.size if spooled else path.stat().st_size
        store.receive(path, origin, expected, spooled)
    except BadInstance as exc:
        log.warning(
            "C-STORE of %s from %s refused (0x%04X): %s",
            expected.sop_instance_uid, sender, exc.status, exc,
        )
        return exc.status, str(exc)[:64]
    except Exception as exc:
        log.exception("C-STORE of %s from %s failed", expected.sop_instance_uid, sender)
        return OUT_OF_RESOURCES, f"not stored: {type(exc).__name__}"[:64]
    if metrics is not None:
        metrics.stored(origin.calling_aet, size, time.perf_counter() - started)
    return SUCCESS, ""


def receiver(store: Store, origin: Origin, sender: str) -> Callable[[Path, str, str], int]:
    """Where the C-STORE sub-operations of our own C-GET go (``remote.get``'s
    ``on_instance``): into the store, as any received instance."""

    def receive(path: Path, sop_class_uid: str, sop_instance_uid: str) -> int:
        expected = Expected(sop_class_uid, sop_instance_uid)
        return store_received(store, path, expected, origin, sender, None)[0]

    return receive


def log_discarded(sender: str) -> None:
    log.warning("transfer from %s interrupted: partial dataset discarded", sender)


def discard_partial(event: Event) -> None:
    """An association that ended mid-transfer leaves pynetdicom's spool file behind: remove it."""
    message: Any = getattr(event.assoc.dimse, "message", None)
    spool = getattr(message, "_data_set_file", None)
    if spool is None:
        return
    spool.close()
    Path(spool.name).unlink(missing_ok=True)
    log_discarded(peer(event))


def from_ourselves(assoc: Association) -> bool:
    """Our own health check's C-ECHO (every few seconds: not worth a log line each)."""
    req = assoc.requestor
    return req.ae_title == assoc.acceptor.ae_title and req.address in LOOPBACK


def journal_fields(assoc: Association) -> dict[str, str]:
    """Structured fields for journald (the stderr handler ignores them): who, which association."""
    req = assoc.requestor
    return {"PEER_AE": req.ae_title, "PEER_ADDRESS": f"{req.address}:{req.port}",
            "ASSOCIATION": assoc.name}


def log_accepted(event: Event) -> None:
    level = logging.DEBUG if from_ourselves(event.assoc) else logging.INFO
    log.log(level, "association accepted from %s", peer(event),
            extra=journal_fields(event.assoc))


def log_rejected(event: Event) -> None:
    level = logging.DEBUG if from_ourselves(event.assoc) else logging.WARNING
    log.log(level, "association rejected from %s", peer(event),
            extra=journal_fields(event.assoc))


def log_aborted(event: Event) -> None:
    log.warning("association aborted with %s", peer(event), extra=journal_fields(event.assoc))
    discard_partial(event)
