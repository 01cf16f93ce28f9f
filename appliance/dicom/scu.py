"""Storage SCU: send stored instances to a remote node over one association (PS3.4 B.2).

Used by C-MOVE (a new association to the move destination) and C-GET (the requestor's own
association, where it accepted our SCU role), and meant for routing too.

Per instance the session picks an accepted presentation context for its SOP class:

* the stored transfer syntax is accepted: the file's bytes are sent untouched
  (``send_c_store(path)``, streamed in chunks when ``STORE_SEND_CHUNKED_DATASET`` is set);
* only an uncompressed syntax is: the dataset is decompressed by pydicom (if its installed
  pixel data handlers can) and pynetdicom re-encodes it in the accepted syntax;
* otherwise the instance fails, with a log line naming what the peer accepted.

Outgoing associations use pynetdicom's standard requestor ``Association`` (``AE.associate``):
the event-driven reactor of ``reactor.py`` is only wired for the acceptor side.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE
from pynetdicom.association import Association
from pynetdicom.presentation import PresentationContext, build_context

from ..config import DicomSettings, Modality
from .reactor import tune_socket

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
    """An AE for outgoing associations, with our title and timeouts."""
    ae = AE(ae_title=settings.aet)
    ae.acse_timeout = settings.acse_timeout
    ae.dimse_timeout = settings.dimse_timeout
    ae.network_timeout = settings.network_timeout
    ae.maximum_pdu_size = settings.maximum_pdu
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

    @classmethod
    def open(cls, settings: DicomSettings, modality: Modality, items: Iterable[Outgoing],
             originator: tuple[str, int] | None = None) -> StoreSession:
        """Associate with ``modality``, proposing the contexts ``items`` need."""
        items = list(items)
        ae = make_ae(settings)
        assoc = ae.associate(modality.host, modality.port, contexts=contexts_for(items),
                             ae_title=modality.aet)
        if not assoc.is_established:
            raise AssociationFailed(
                f"association with {modality.aet}@{modality.host}:{modality.port} failed"
            )
        if assoc.dul.socket is not None and assoc.dul.socket.socket is not None:
            # without it each C-STORE waits for the peer's delayed ACK (~40 ms)
            tune_socket(assoc.dul.socket.socket)
        return cls(assoc, originator, pairs_of(items))

    def covers(self, items: Iterable[Outgoing]) -> bool:
        """Whether this association was proposed everything ``items`` need."""
        return pairs_of(items) <= self.proposed

    @property
    def alive(self) -> bool:
        return bool(self.assoc.is_established)

    def release(self) -> None:
        if self.assoc.is_established:
            self.assoc.release()

    def send(self, item: Outgoing, msg_id: int | None = None) -> int:
        """Send one instance; return the peer's C-STORE status (``FAILED`` if not sent, with
        the reason in ``last_error``)."""
        accepted = self._accepted_syntaxes(item.sop_class_uid)
        if not accepted:
            return self._fail(item, f"{UID(item.sop_class_uid).name} has no accepted "
                                    "presentation context")
        payload: Path | Dataset = item.path
        if item.transfer_syntax not in accepted:
            converted = self._convert(item, accepted)
            if isinstance(converted, str):
                return self._fail(item, converted)
            payload = converted
        if msg_id is None:
            self.sent += 1
            msg_id = self.sent % 65535 + 1
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

    def _fail(self, item: Outgoing, reason: str) -> int:
        log.warning("instance %s not sent: %s", item.sop_uid, reason)
        self.last_error = reason
        return FAILED

    def _accepted_syntaxes(self, sop_class: str) -> set[str]:
        return {
            str(cx.transfer_syntax[0]) for cx in self.assoc.accepted_contexts
            if cx.abstract_syntax == sop_class and cx.as_scu
        }  # fmt: skip

    def _convert(self, item: Outgoing, accepted: set[str]) -> Dataset | str:
        """The dataset in an uncompressed syntax the peer accepts, or why it cannot be."""
        names = ", ".join(sorted(UID(ts).name for ts in accepted))
        if not any(ts in accepted for ts in FALLBACK_SYNTAXES):
            return f"stored as {UID(item.transfer_syntax).name}, the peer accepts only {names}"
        try:
            ds = dcmread(item.path)
            if UID(item.transfer_syntax).is_compressed:
                ds.decompress()
        except Exception as exc:  # pydicom raises many kinds when a decoder is missing
            return (f"the peer accepts only {names} and decompressing "
                    f"{UID(item.transfer_syntax).name} failed: {exc}")
        return ds


VERIFICATION = "1.2.840.10008.1.1"  # PS3.4 A.4: the Verification SOP Class


def echo(settings: DicomSettings, modality: Modality) -> str:
    """C-ECHO ``modality``: "" on success, else why it failed (for the admin page)."""
    ae = make_ae(settings)
    ae.add_requested_context(VERIFICATION)
    assoc = ae.associate(modality.host, modality.port, ae_title=modality.aet)
    if not assoc.is_established:
        return (f"no association with {modality.aet}@{modality.host}:{modality.port} "
                "(refused, rejected or unreachable)")
    try:
        status = assoc.send_c_echo()
    finally:
        assoc.release()
    code = status.get("Status") if status else None
    if code is None:
        return "no C-ECHO response (timeout or abort)"
    return "" if code == 0 else f"C-ECHO answered status 0x{int(code):04X}"
