"""Thin DIMSE event handlers: translate between pynetdicom events and the store's services."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from pydicom.dataset import Dataset
from pynetdicom.events import Event

from ..index.ingest import Origin
from ..index.tags import BadInstance
from ..store import Expected, Store

log = logging.getLogger("appliance.dicom")

SUCCESS = 0x0000
OUT_OF_RESOURCES = 0xA700
CANNOT_UNDERSTAND = 0xC000


def peer(event: Event) -> str:
    req = event.assoc.requestor
    return f"{req.ae_title}@{req.address}:{req.port}"


def origin_of(event: Event) -> Origin:
    req = event.assoc.requestor
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


def handle_store(event: Event, store: Store) -> int | Dataset:
    """C-STORE: answer success only once the instance is durable and indexed."""
    request = event.request
    expected = Expected(
        str(request.AffectedSOPClassUID), str(request.AffectedSOPInstanceUID)
    )
    try:
        store.receive(Path(event.dataset_path), origin_of(event), expected)
    except BadInstance as exc:
        log.warning(
            "C-STORE of %s from %s refused (0x%04X): %s",
            expected.sop_instance_uid, peer(event), exc.status, exc,
        )
        return status(exc.status, str(exc))
    except Exception as exc:
        log.exception("C-STORE of %s from %s failed", expected.sop_instance_uid, peer(event))
        return status(OUT_OF_RESOURCES, f"not stored: {type(exc).__name__}")
    return SUCCESS


def discard_partial(event: Event) -> None:
    """An association that ended mid-transfer leaves pynetdicom's spool file behind: remove it."""
    message: Any = getattr(event.assoc.dimse, "message", None)
    spool = getattr(message, "_data_set_file", None)
    if spool is None:
        return
    spool.close()
    Path(spool.name).unlink(missing_ok=True)
    log.warning("transfer from %s interrupted: partial dataset discarded", peer(event))


def log_accepted(event: Event) -> None:
    log.info("association accepted from %s", peer(event))


def log_rejected(event: Event) -> None:
    log.warning("association rejected from %s", peer(event))


def log_aborted(event: Event) -> None:
    log.warning("association aborted with %s", peer(event))
    discard_partial(event)
