"""The C-MOVE and C-GET engine: sub-operations, pending responses, final status (PS3.4 C.4.2,
C.4.3).

pynetdicom's own retrieve loop only sends ``Dataset`` objects (every file decoded in full and
re-encoded) and picks no fallback syntax, so this service class replaces its ``_move_scp`` and
``_get_scp``: the handler bound to ``EVT_C_MOVE`` / ``EVT_C_GET`` (``qr.py``) validates the
request and returns a ``Plan`` (or a ``Refusal``); the engine runs the C-STORE sub-operations
through ``scu.StoreSession`` (one association per C-MOVE; the requestor's own association for
C-GET), answers pending responses as it goes, honours C-CANCEL between them, and ends with:

* 0x0000 when every sub-operation succeeded;
* 0xB000 when some failed or had warnings, 0xA702 when all failed, with the
  FailedSOPInstanceUIDList (C.4.2.1.4.2);
* 0xFE00 after a C-CANCEL, with the remaining count and the failed list;
* 0xA801 for an unknown move destination, the refusal's status otherwise.

pynetdicom offers no hook to choose the service class of a SOP class, so ``install`` routes the
Q/R SOP classes to this class by wrapping ``pynetdicom.association.uid_to_service_class``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from io import BytesIO
from typing import Any, cast

from pydicom.dataset import Dataset
from pynetdicom import association, evt
from pynetdicom.dimse_primitives import C_GET, C_MOVE
from pynetdicom.dsutils import encode
from pynetdicom.presentation import PresentationContext
from pynetdicom.service_class import QueryRetrieveServiceClass
from pynetdicom.sop_class import uid_to_service_class
from pynetdicom.status import code_to_category

from ..config import DicomSettings, Modality
from .fastsend import get_pending_command
from .scu import AssociationFailed, Outgoing, StoreSession

log = logging.getLogger("appliance.dicom.retrieve")

SUCCESS = 0x0000
WARNING = 0xB000
CANCELLED = 0xFE00
PENDING = 0xFF00
ALL_FAILED = 0xA702
TOO_MANY = 0xA701
MOVE_DESTINATION_UNKNOWN = 0xA801
MAX_SUBOPERATIONS = 65535  # the counts are US (C.4.2.1.6)
PENDING_EVERY = 0.5  # seconds between two pending responses


@dataclass(frozen=True)
class Refusal:
    """A retrieve refused before any sub-operation."""

    status: int
    comment: str


@dataclass(frozen=True)
class Plan:
    """What a retrieve request resolved to: the instances, and for C-MOVE where they go."""

    items: list[Outgoing]
    settings: DicomSettings
    destination: Modality | None = None  # None: C-GET, over the requestor's association


@dataclass
class Progress:
    remaining: int
    completed: int = 0
    failed: int = 0
    warning: int = 0
    failed_uids: list[str] = field(default_factory=list)
    cancelled: bool = False

    def record(self, item: Outgoing, status: int) -> None:
        self.remaining -= 1
        category = code_to_category(status)
        if category == "Success":
            self.completed += 1
        elif category == "Warning":
            self.warning += 1
        else:
            self.failed += 1
            self.failed_uids.append(item.sop_uid)

    def fail_rest(self, items: list[Outgoing]) -> None:
        self.failed_uids += [i.sop_uid for i in items]
        self.failed += len(items)
        self.remaining = 0

    @property
    def final_status(self) -> int:
        if self.cancelled:
            return CANCELLED
        if not self.failed and not self.warning:
            return SUCCESS
        return ALL_FAILED if not self.completed and not self.warning else WARNING


def run(session: StoreSession, items: list[Outgoing], first_msg_id: int,
        pending: Callable[[Progress], None], cancelled: Callable[[], bool]) -> Progress:
    """Send ``items`` one by one; stop on C-CANCEL or a lost association. Pending responses
    are optional (PS3.4 C.4.2.3.1): one after the first sub-operation, then at most one every
    ``PENDING_EVERY`` seconds (one per instance cost as much as the instance itself)."""
    progress = Progress(len(items))
    reported = -PENDING_EVERY
    for i, item in enumerate(items):
        if cancelled():
            progress.cancelled = True
            break
        if not session.alive:
            log.warning("association lost: %d instances not sent", len(items) - i)
            progress.fail_rest(items[i:])
            break
        progress.record(item, session.send(item, (first_msg_id + i) % 65535 + 1))
        if progress.remaining and time.monotonic() - reported >= PENDING_EVERY:
            pending(progress)
            reported = time.monotonic()
    return progress


class RetrieveServiceClass(QueryRetrieveServiceClass):
    """pynetdicom's Q/R service, with our C-MOVE and C-GET engine (C-FIND unchanged)."""

    def _move_scp(self, req: C_MOVE, context: PresentationContext) -> None:
        self._retrieve(req, C_MOVE(), context, evt.EVT_C_MOVE)

    def _get_scp(self, req: C_GET, context: PresentationContext) -> None:
        self._retrieve(req, C_GET(), context, evt.EVT_C_GET)

    def _retrieve(self, req: Any, rsp: Any, context: PresentationContext,
                  event: evt.InterventionEvent) -> None:
        rsp.MessageID = req.MessageID
        rsp.MessageIDBeingRespondedTo = req.MessageID
        rsp.AffectedSOPClassUID = req.AffectedSOPClassUID
        plan = self._plan(req, context, event)
        if isinstance(plan, Refusal):
            self._final(rsp, context, plan.status, Progress(0), plan.comment)
            return
        if len(plan.items) > MAX_SUBOPERATIONS:
            self._final(rsp, context, TOO_MANY, Progress(0),
                        f"{len(plan.items)} instances: more than {MAX_SUBOPERATIONS}")
            return
        session = self._session(plan, req)
        if session is None:
            progress = Progress(len(plan.items))
            progress.fail_rest(plan.items)
            self._final(rsp, context, ALL_FAILED, progress, "cannot reach the destination")
            return
        try:
            own = session if plan.destination is None else None
            progress = run(session, plan.items, int(req.MessageID),
                           lambda p: self._pending(rsp, context, p, own),
                           lambda: self.is_cancelled(req.MessageID))
        finally:
            if plan.destination is not None:
                session.release()
            else:
                session.idle()  # pynetdicom reads the requestor's next messages again
        self._final(rsp, context, progress.final_status, progress)

    def _plan(self, req: Any, context: PresentationContext,
              event: evt.InterventionEvent) -> Plan | Refusal:
        """What the bound handler (``qr.handle_move`` / ``handle_get``) resolved."""
        try:
            plan = evt.trigger(self.assoc, event, {
                "request": req, "context": context.as_tuple, "_is_cancelled": self.is_cancelled,
            })  # fmt: skip
        except Exception as exc:
            log.exception("retrieve request failed")
            return Refusal(0xC000, f"unable to process: {type(exc).__name__}")
        if not isinstance(plan, (Plan, Refusal)):
            return Refusal(0xC000, "unable to process: no retrieve handler")
        return plan

    def _session(self, plan: Plan, req: Any) -> StoreSession | None:
        if plan.destination is None:
            session = StoreSession(self.assoc)
            session.go_fast(plan.settings.dimse_timeout)
            return session
        originator = (self.assoc.requestor.ae_title, int(req.MessageID))
        try:
            return StoreSession.open(plan.settings, plan.destination, plan.items, originator)
        except AssociationFailed as exc:
            log.warning("C-MOVE to %s: %s", plan.destination.aet, exc)
            return None

    def _pending(self, rsp: Any, context: PresentationContext, progress: Progress,
                 own: StoreSession | None) -> None:
        """A pending response; for C-GET (``own``: the session on the requestor's association)
        written by the sending thread, in turn with the sub-operations."""
        if own is not None and own.fast is not None:
            counts = (progress.remaining, progress.completed, progress.failed, progress.warning)
            own.send_command(cast(int, context.context_id), get_pending_command(
                str(rsp.AffectedSOPClassUID), int(rsp.MessageIDBeingRespondedTo), counts))
            return
        rsp.Status = PENDING
        rsp.Identifier = None
        self._counts(rsp, progress, remaining=True)
        self.dimse.send_msg(rsp, cast(int, context.context_id))

    def _final(self, rsp: Any, context: PresentationContext, status: int, progress: Progress,
               comment: str = "") -> None:
        rsp.Status = status
        self._counts(rsp, progress, remaining=progress.cancelled)
        if comment:
            rsp.ErrorComment = comment[:64]
        rsp.Identifier = None
        if progress.failed_uids or status in (WARNING, ALL_FAILED, CANCELLED):
            ds = Dataset()
            ds.FailedSOPInstanceUIDList = progress.failed_uids
            ts = context.transfer_syntax[0]
            rsp.Identifier = BytesIO(
                encode(ds, ts.is_implicit_VR, ts.is_little_endian, ts.is_deflated) or b""
            )
        log.info("retrieve %d answered 0x%04X: %d completed, %d failed, %d warnings",
                 rsp.MessageIDBeingRespondedTo, status, progress.completed, progress.failed,
                 progress.warning)
        self.dimse.send_msg(rsp, cast(int, context.context_id))

    @staticmethod
    def _counts(rsp: Any, progress: Progress, remaining: bool) -> None:
        rsp.NumberOfRemainingSuboperations = progress.remaining if remaining else None
        rsp.NumberOfCompletedSuboperations = progress.completed
        rsp.NumberOfFailedSuboperations = progress.failed
        rsp.NumberOfWarningSuboperations = progress.warning


def _service_class(uid: str) -> type:
    found = uid_to_service_class(uid)
    return RetrieveServiceClass if found is QueryRetrieveServiceClass else found


def install() -> None:
    """Route Q/R SOP classes to ``RetrieveServiceClass`` (idempotent)."""
    association.uid_to_service_class = _service_class  # type: ignore[attr-defined]
