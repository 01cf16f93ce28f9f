"""Storage SCU: send stored instances to a remote node over one association (PS3.4 B.2).

Used by C-MOVE (a new association to the move destination) and C-GET (the requestor's own
association, where it accepted our SCU role), and meant for routing too.

Per instance the session picks an accepted presentation context for its SOP class:

* the stored transfer syntax is accepted: the file's bytes are sent untouched
  (``send_c_store(path)``, streamed in chunks when ``STORE_SEND_CHUNKED_DATASET`` is set);
* only an uncompressed syntax is: a compressed instance is decompressed by pydicom in the pixel
  helper process (``pixels.py``; if an installed decoder can) and the copy is sent; an
  uncompressed one is re-encoded by pynetdicom in the accepted syntax;
* otherwise the instance fails, with a log line naming what the peer accepted.

Outgoing associations use pynetdicom's standard requestor ``Association`` (``AE.associate``):
the event-driven reactor of ``reactor.py`` is only wired for the acceptor side.
"""

from __future__ import annotations

import logging
import os
import queue
import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, evt
from pynetdicom.association import Association
from pynetdicom.events import Event
from pynetdicom.pdu_primitives import A_ASSOCIATE, SCP_SCU_RoleSelectionNegotiation
from pynetdicom.presentation import PresentationContext, build_context

from .. import pixels
from ..config import DicomSettings, Modality
from .fastsend import FastSender, SendFailed
from .reactor import EventDUL, tune_socket, use_for_requests

log = logging.getLogger("appliance.dicom.scu")

MAX_CONTEXTS = 128  # PS3.8 9.3.2.2: odd context IDs 1-255
FALLBACK_SYNTAXES = (ExplicitVRLittleEndian, ImplicitVRLittleEndian)
FAILED = 0xA700  # our own verdict when no C-STORE could be attempted (out of resources)


@dataclass(frozen=True)
class Outgoing:
    """A stored instance to send."""

    sop_uid: str
    sop_class_uid: str
    transfer_syntax: str
    path: Path


class AssociationFailed(RuntimeError):
    """The remote node rejected, aborted or never answered the association request."""


def associate(settings: DicomSettings, modality: Modality, contexts: list[PresentationContext],
              roles: list[SCP_SCU_RoleSelectionNegotiation] | None = None,
              handlers: list[Any] | None = None) -> Association:
    """An established association with ``modality``, or ``AssociationFailed`` saying why:
    no TCP connection, rejected (with the peer's reason), aborted, or no answer in time."""
    seen: dict[str, bool] = {"connected": False, "answered": False}

    def connected(event: Event) -> None:
        seen["connected"] = True

    def answered(event: Event) -> None:
        seen["answered"] = True

    ae = make_ae(settings)
    start = time.monotonic()
    assoc = ae.associate(
        modality.host, modality.port, contexts=contexts, ae_title=modality.aet,
        ext_neg=list(roles or []),
        evt_handlers=[(evt.EVT_CONN_OPEN, connected), (evt.EVT_ACSE_RECV, answered),
                      *(handlers or [])],
    )  # fmt: skip
    if assoc.is_established:
        if assoc.dul.socket is not None and assoc.dul.socket.socket is not None:
            # without it each request waits for the peer's delayed ACK (~40 ms)
            tune_socket(assoc.dul.socket.socket)
        return assoc
    where = f"{modality.aet}@{modality.host}:{modality.port}"
    if not seen["connected"]:
        raise AssociationFailed(f"cannot connect to {where} (node down or port closed)")
    rsp = assoc.acceptor.primitive or _unread_answer(assoc)
    if rsp is not None and rsp.result in (0x01, 0x02):
        raise AssociationFailed(
            f"association rejected by {where}: {rsp.reason_str} ({rsp.result_str})"
        )
    if rsp is not None:
        raise AssociationFailed(f"{where} accepted none of the proposed presentation contexts")
    if seen["answered"]:
        raise AssociationFailed(f"association aborted by {where}")
    if time.monotonic() - start < settings.acse_timeout:
        raise AssociationFailed(f"{where} closed the connection without answering")
    raise AssociationFailed(f"no answer from {where} within {settings.acse_timeout:g} s")


def _unread_answer(assoc: Association) -> A_ASSOCIATE | None:
    """The A-ASSOCIATE answer pynetdicom received but never read: a peer that rejects and
    closes at once can close before pynetdicom checks the connection, which then gives up."""
    while True:
        try:
            primitive = assoc.dul.to_user_queue.get_nowait()
        except queue.Empty:
            return None
        if isinstance(primitive, A_ASSOCIATE):
            return primitive


def contexts_for(items: Iterable[Outgoing]) -> list[PresentationContext]:
    """One context per (SOP class, stored syntax) pair, then one uncompressed fallback per SOP
    class: separate contexts let the peer accept the stored syntax and the fallback
    independently. At most 128 (fallbacks are dropped first, then pairs, with a warning)."""
    pairs: dict[tuple[str, str], None] = {}
    for item in items:
        pairs.setdefault((item.sop_class_uid, item.transfer_syntax), None)
    exact = [build_context(cls, ts) for cls, ts in pairs]
    classes = dict.fromkeys(cls for cls, _ in pairs)
    fallbacks = []
    for cls in classes:
        stored = {ts for c, ts in pairs if c == cls}
        extra: list[str] = [str(ts) for ts in FALLBACK_SYNTAXES if ts not in stored]
        if extra:
            fallbacks.append(build_context(cls, extra))
    contexts = exact + fallbacks
    if len(contexts) > MAX_CONTEXTS:
        log.warning(
            "%d presentation contexts needed, %d allowed: some instances will fail",
            len(contexts), MAX_CONTEXTS,
        )
    return contexts[:MAX_CONTEXTS]


def pairs_of(items: Iterable[Outgoing]) -> frozenset[tuple[str, str]]:
    return frozenset((item.sop_class_uid, item.transfer_syntax) for item in items)


def make_ae(settings: DicomSettings) -> AE:
    """An AE for outgoing associations, with our title and timeouts.

    Its associations are the reactor's event-driven ones in every process (the command line
    too, not only ``serve``): pynetdicom's own requestor loop can take the response of a
    request for itself and drop it (one C-STORE in a few hundred, on a fast peer, then a DIMSE
    timeout)."""
    use_for_requests()
    ae = AE(ae_title=settings.aet)
    ae.acse_timeout = settings.acse_timeout
    ae.dimse_timeout = settings.dimse_timeout
    ae.network_timeout = settings.network_timeout
    ae.maximum_pdu_size = settings.maximum_pdu
    ae.connection_timeout = settings.acse_timeout  # a host that drops packets: fail, not hang
    return ae


class StoreSession:
    """C-STORE over an established association, choosing a context per instance."""

    def __init__(self, assoc: Association, originator: tuple[str, int] | None = None,
                 proposed: frozenset[tuple[str, str]] = frozenset()) -> None:
        self.assoc = assoc
        self.originator = originator  # (AE title, message ID) of a C-MOVE request
        self.proposed = proposed  # (SOP class, transfer syntax) pairs we proposed
        self.last_error = ""  # why the last ``send`` returned FAILED
        self.sent = 0  # message IDs of our own: 1, 2, ...
        self.fast: FastSender | None = None  # set on associations we opened (``open``)
        self._by_class: dict[str, dict[str, int]] | None = None  # see ``_contexts``

    @classmethod
    def open(cls, settings: DicomSettings, modality: Modality, items: Iterable[Outgoing],
             originator: tuple[str, int] | None = None) -> StoreSession:
        """Associate with ``modality``, proposing the contexts ``items`` need."""
        items = list(items)
        assoc = associate(settings, modality, contexts_for(items))
        session = cls(assoc, originator, pairs_of(items))
        session.go_fast(settings.dimse_timeout)
        return session

    def go_fast(self, timeout: float) -> None:
        """Send through ``fastsend`` (when the association is event-driven)."""
        dul = self.assoc.dul
        if isinstance(dul, EventDUL):
            peer = self.assoc.acceptor if self.assoc.is_requestor else self.assoc.requestor
            self.fast = FastSender(dul, int(peer.maximum_length or 0), timeout)

    def covers(self, items: Iterable[Outgoing]) -> bool:
        """Whether this association was proposed everything ``items`` need."""
        return pairs_of(items) <= self.proposed

    @property
    def alive(self) -> bool:
        return bool(self.assoc.is_established)

    def release(self) -> None:
        if self.fast is not None:
            self.fast.unhold()
        if self.assoc.is_established:
            self.assoc.release()

    def idle(self) -> None:
        """Nothing to send for a while: let pynetdicom watch the connection again."""
        if self.fast is not None:
            self.fast.unhold()

    def send(self, item: Outgoing, msg_id: int | None = None) -> int:
        """Send one instance; return the peer's C-STORE status (``FAILED`` if not sent, with
        the reason in ``last_error``)."""
        accepted = self._accepted_syntaxes(item.sop_class_uid)
        if not accepted:
            return self._fail(item, f"{UID(item.sop_class_uid).name} has no accepted "
                                    "presentation context")
        payload: Path | Dataset = item.path
        syntax = item.transfer_syntax
        if syntax not in accepted:
            converted = self._convert(item, accepted)
            if isinstance(converted, str):
                return self._fail(item, converted)
            payload, syntax = converted
        if msg_id is None:
            self.sent += 1
            msg_id = self.sent % 65535 + 1
        try:
            return self._send(item, payload, syntax, msg_id)
        finally:
            if isinstance(payload, Path) and payload != item.path:
                payload.unlink(missing_ok=True)  # a decompressed temporary copy

    def send_command(self, context_id: int, command: bytes) -> None:
        """Write a command set through the fast path (``fast`` must be set); a broken
        connection aborts the association, as a failed C-STORE does."""
        assert self.fast is not None
        try:
            self.fast.send_command(context_id, command)
        except SendFailed as exc:
            log.warning("association lost: %s", exc)
            self._abort()

    def _abort(self) -> None:
        if self.fast is not None:
            self.fast.unhold()
        self.assoc.abort()

    def _send(self, item: Outgoing, payload: Path | Dataset, syntax: str, msg_id: int) -> int:
        if isinstance(payload, Path) and self.fast is not None:
            context_id = self._context_id(item.sop_class_uid, syntax)
            try:
                response = self.fast.send(payload, context_id, item.sop_class_uid, item.sop_uid,
                                          msg_id, self.originator)
            except (SendFailed, OSError) as exc:
                self._abort()
                return self._fail(item, str(exc))
            return response.status
        if self.fast is not None:
            self.fast.unhold()  # pynetdicom's DUL thread reads the response
        try:
            aet, orig_id = self.originator or (None, None)
            status = self.assoc.send_c_store(
                payload, msg_id=msg_id, originator_aet=aet, originator_id=orig_id
            )
        except (ValueError, RuntimeError, AttributeError, OSError) as exc:
            return self._fail(item, str(exc))
        code = status.get("Status")
        if code is None:
            return self._fail(item, "no C-STORE response (timeout or abort)")
        return int(code)

    def _context_id(self, sop_class: str, syntax: str) -> int:
        return self._contexts()[sop_class][syntax]

    def _contexts(self) -> dict[str, dict[str, int]]:
        """Accepted contexts where we are the SCU: context ID by transfer syntax by SOP class,
        built once (pynetdicom sorts them anew on each look, and a C-GET requestor may have
        proposed a hundred)."""
        if self._by_class is None:
            self._by_class = {}
            for cx in self.assoc.accepted_contexts:
                if cx.as_scu:
                    syntaxes = self._by_class.setdefault(str(cx.abstract_syntax), {})
                    syntaxes.setdefault(str(cx.transfer_syntax[0]), int(cx.context_id or 0))
        return self._by_class

    def _fail(self, item: Outgoing, reason: str) -> int:
        log.warning("instance %s not sent: %s", item.sop_uid, reason)
        self.last_error = reason
        return FAILED

    def _accepted_syntaxes(self, sop_class: str) -> set[str]:
        return set(self._contexts().get(sop_class, ()))

    def _convert(self, item: Outgoing, accepted: set[str]
                 ) -> tuple[Path | Dataset, str] | str:
        """The instance in an uncompressed syntax the peer accepts — a decompressed temporary
        file (the caller removes it) or a dataset pynetdicom re-encodes — with that syntax, or
        why it cannot be."""
        names = ", ".join(sorted(UID(ts).name for ts in accepted))
        if not any(ts in accepted for ts in FALLBACK_SYNTAXES):
            return f"stored as {UID(item.transfer_syntax).name}, the peer accepts only {names}"
        source = item.path
        if UID(item.transfer_syntax).is_compressed:
            fd, name = tempfile.mkstemp(suffix=".dcm")  # the store's tmp/ when serving
            os.close(fd)
            try:
                error = pixels.worker.run(pixels.decompress_file, str(item.path), name)
            except (pixels.PixelError, TimeoutError) as exc:
                error = str(exc)
            if error:
                Path(name).unlink(missing_ok=True)
                return (f"the peer accepts only {names} and decompressing "
                        f"{UID(item.transfer_syntax).name} failed: {error}")
            if ExplicitVRLittleEndian in accepted:
                return Path(name), ExplicitVRLittleEndian
            source = Path(name)
        ds = dcmread(source)  # uncompressed: pynetdicom re-encodes it in an accepted syntax
        if source != item.path:
            source.unlink(missing_ok=True)
        return ds, ""
