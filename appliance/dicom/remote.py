"""SCU services towards a remote node: C-ECHO, C-FIND, C-MOVE, C-GET and C-STORE (PS3.4 A, B,
C).

The command line (``appliance echo|send|query|retrieve``) calls them, and so will the REST API,
the web page and routing. Each call opens one association, does its work and releases it.
Association failures raise ``scu.AssociationFailed`` naming the reason (node down, rejected,
aborted, no answer); a refused request raises ``RemoteError`` with the peer's status.
"""

from __future__ import annotations

import logging
import re
import shutil
import time
from collections.abc import Callable, Iterator, Mapping
from copy import deepcopy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, cast

from pydicom.datadict import dictionary_VR, keyword_for_tag, tag_for_keyword
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.tag import Tag
from pydicom.uid import UID
from pynetdicom import StoragePresentationContexts, _config, build_context, build_role, evt
from pynetdicom.association import Association
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.events import Event
from pynetdicom.presentation import PresentationContext
from pynetdicom.status import code_to_category

from ..config import AE_TITLE, Config, DicomSettings, Modality
from .scu import FAILED, FALLBACK_SYNTAXES, AssociationFailed, Outgoing, StoreSession, associate

log = logging.getLogger("appliance.dicom.remote")

Level = Literal["PATIENT", "STUDY", "SERIES", "IMAGE"]
LEVELS: tuple[Level, ...] = ("PATIENT", "STUDY", "SERIES", "IMAGE")
InfoModel = Literal["patient", "study"]
PENDING = (0xFF00, 0xFF01)
SUCCESS = 0x0000

VERIFICATION = UID("1.2.840.10008.1.1")
MODELS: dict[tuple[InfoModel, str], UID] = {  # PS3.4 C.6.1, C.6.2
    ("patient", "find"): UID("1.2.840.10008.5.1.4.1.2.1.1"),
    ("patient", "move"): UID("1.2.840.10008.5.1.4.1.2.1.2"),
    ("patient", "get"): UID("1.2.840.10008.5.1.4.1.2.1.3"),
    ("study", "find"): UID("1.2.840.10008.5.1.4.1.2.2.1"),
    ("study", "move"): UID("1.2.840.10008.5.1.4.1.2.2.2"),
    ("study", "get"): UID("1.2.840.10008.5.1.4.1.2.2.3"),
}

# What we accept as the C-GET storage SCP: the stored syntaxes of common modalities, besides
# the uncompressed ones (the peer then sends its files as they are, without transcoding).
GET_SYNTAXES = [
    *FALLBACK_SYNTAXES,
    "1.2.840.10008.1.2.4.70",  # JPEG Lossless SV1
    "1.2.840.10008.1.2.4.50",  # JPEG Baseline
    "1.2.840.10008.1.2.4.90",  # JPEG 2000 lossless
    "1.2.840.10008.1.2.4.91",  # JPEG 2000
    "1.2.840.10008.1.2.4.80",  # JPEG-LS lossless
    "1.2.840.10008.1.2.5",  # RLE Lossless
]
MAX_GET_STORAGE_CLASSES = 127  # one context for the C-GET itself: 128 in all (PS3.8 9.3.2.2)


class RemoteError(RuntimeError):
    """The remote node refused or did not finish a request."""


class UnknownModality(ValueError):
    """No modality of that name in the configuration."""


class BadQuery(ValueError):
    """A query key, level or model that cannot be sent."""


def resolve(config: Config, name: str) -> Modality:
    """The configured modality called ``name``."""
    try:
        return config.modalities[name]
    except KeyError:
        known = ", ".join(sorted(config.modalities)) or "none configured"
        raise UnknownModality(f"unknown modality {name!r} (known: {known})") from None


def describe(modality: Modality) -> str:
    return f"{modality.aet}@{modality.host}:{modality.port}"


# --- C-ECHO -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class EchoResult:
    status: int | None  # None: no association, or no response
    milliseconds: float  # association, C-ECHO and release
    error: str = ""

    @property
    def ok(self) -> bool:
        return self.status == SUCCESS


def echo(settings: DicomSettings, modality: Modality) -> EchoResult:
    """C-ECHO (PS3.4 A.4): is the node there, and does it accept us?"""
    start = time.monotonic()

    def result(status: int | None, error: str = "") -> EchoResult:
        return EchoResult(status, (time.monotonic() - start) * 1000, error)

    try:
        assoc = associate(settings, modality, [build_context(VERIFICATION)])
    except AssociationFailed as exc:
        return result(None, str(exc))
    try:
        code = assoc.send_c_echo().get("Status")
    finally:
        release(assoc)
    if code is None:
        return result(None, f"no C-ECHO response from {describe(modality)}")
    return result(int(code), "" if code == SUCCESS else f"C-ECHO status 0x{int(code):04X}")


def release(assoc: Association) -> None:
    if assoc.is_established:
        assoc.release()


# --- identifiers ------------------------------------------------------------------------------


def identifier(level: str, keys: Mapping[str, str] | Dataset, model: InfoModel = "study"
               ) -> Dataset:
    """The request identifier: ``keys`` (keyword or ``gggg,eeee`` -> value; "" asks for the
    key's value) at ``level``. Non-ASCII values are sent as UTF-8 (ISO_IR 192)."""
    level = level.upper()
    if level not in LEVELS:
        raise BadQuery(f"level {level!r} is not one of {', '.join(LEVELS)}")
    if model == "study" and level == "PATIENT":
        raise BadQuery("the study root model has no PATIENT level (use the patient root)")
    if isinstance(keys, Dataset):
        ds = deepcopy(keys)
    else:
        ds = Dataset()
        for key, value in keys.items():
            _add_key(ds, key, value)
    ds.QueryRetrieveLevel = level
    if "SpecificCharacterSet" not in ds and not _ascii(ds):
        ds.SpecificCharacterSet = "ISO_IR 192"
    return ds


def _add_key(ds: Dataset, key: str, value: str) -> None:
    tag = _tag(key)
    try:
        vr = dictionary_VR(tag)
    except KeyError:
        raise BadQuery(f"{key}: not in the DICOM dictionary") from None
    if vr == "SQ":
        if value:
            raise BadQuery(f"{key}: a sequence key takes no value")
        ds.add_new(tag, vr, Sequence())
    else:
        ds.add_new(tag, vr, value)


def _tag(key: str) -> int:
    text = key.strip()
    hex_digits = text.replace(",", "")
    if len(hex_digits) == 8 and all(c in "0123456789abcdefABCDEF" for c in hex_digits):
        return int(Tag(int(hex_digits, 16)))
    tag = tag_for_keyword(text)
    if tag is None:
        raise BadQuery(f"{key}: not a DICOM keyword nor a gggg,eeee tag")
    return int(tag)


def _ascii(ds: Dataset) -> bool:
    return all(str(e.value).isascii() for e in ds if e.VR != "SQ")


def keyword(tag: int) -> str:
    return keyword_for_tag(tag) or f"{tag >> 16:04X},{tag & 0xFFFF:04X}"


# --- C-FIND -----------------------------------------------------------------------------------


def find(settings: DicomSettings, modality: Modality, level: str,
         keys: Mapping[str, str] | Dataset, model: InfoModel = "study") -> list[Dataset]:
    """C-FIND (PS3.4 C.4.1): the answers, decoded with their own SpecificCharacterSet."""
    request = identifier(level, keys, model)
    uid = MODELS[(model, "find")]
    assoc = associate(settings, modality, [build_context(uid)])
    answers = []
    try:
        for status, answer in assoc.send_c_find(request, uid):
            code = _status(status, "C-FIND", modality)
            if code in PENDING:
                if answer is not None:
                    answers.append(answer)
            elif code != SUCCESS:
                raise RemoteError(f"C-FIND refused by {describe(modality)}: "
                                  f"{_explain(code, status)}")
    finally:
        release(assoc)
    return answers


def _status(status: Dataset, what: str, modality: Modality) -> int:
    code = status.get("Status")
    if code is None:
        raise RemoteError(f"no {what} response from {describe(modality)} (timeout or abort)")
    return int(code)


def _explain(code: int, status: Dataset) -> str:
    comment = status.get("ErrorComment", "")
    return f"status 0x{code:04X} ({code_to_category(code)})" + (f": {comment}" if comment else "")


# --- C-MOVE and C-GET -------------------------------------------------------------------------


@dataclass
class RetrieveResult:
    """The final response of a C-MOVE or C-GET (PS3.4 C.4.2.1.4, C.4.3.1.4)."""

    status: int
    completed: int = 0
    failed: int = 0
    warning: int = 0
    remaining: int = 0  # as the last pending response told
    failed_uids: list[str] = field(default_factory=list)
    comment: str = ""

    @property
    def ok(self) -> bool:
        return self.status == SUCCESS

    def summary(self) -> str:
        text = (f"status 0x{self.status:04X} ({code_to_category(self.status)}): "
                f"{self.completed} completed, {self.failed} failed, {self.warning} warnings")
        return text + (f" ({self.comment})" if self.comment else "")


def checked_aet(aet: str) -> str:
    """A C-MOVE destination, checked before anything is sent."""
    if not AE_TITLE.match(aet):
        raise BadQuery(f"{aet!r} is not a valid AE title (1-16 characters)")
    return aet


# Called with the counts of each pending response; True asks the peer to stop (C-CANCEL).
Watch = Callable[[RetrieveResult], bool]


def _final(responses: Iterator[tuple[Dataset, Dataset | None]], what: str,
           modality: Modality, cancel: Callable[[], None], watch: Watch | None
           ) -> RetrieveResult:
    """Read the responses to the end: the counts of the final one (or the last pending one,
    for peers that omit them in the final response). When ``watch`` asks, ``cancel`` sends a
    C-CANCEL once (PS3.7 9.3.2.3, 9.3.3.3): the peer ends with status 0xFE00."""
    counts = RetrieveResult(SUCCESS)
    cancelling = False
    for status, ident in responses:
        code = _status(status, what, modality)
        counts = RetrieveResult(
            code,
            int(status.get("NumberOfCompletedSuboperations", counts.completed) or 0),
            int(status.get("NumberOfFailedSuboperations", counts.failed) or 0),
            int(status.get("NumberOfWarningSuboperations", counts.warning) or 0),
            int(status.get("NumberOfRemainingSuboperations", counts.remaining) or 0),
            comment=str(status.get("ErrorComment", "")),
        )
        if code not in PENDING:
            if ident is not None and "FailedSOPInstanceUIDList" in ident:
                uids = ident.FailedSOPInstanceUIDList
                counts.failed_uids = [uids] if isinstance(uids, str) else list(uids)
            return counts
        if watch is not None and not cancelling and watch(counts):
            cancelling = True
            cancel()
    raise RemoteError(f"{what} to {describe(modality)} ended without a final response")


def _canceller(assoc: Association, model: UID) -> Callable[[], None]:
    """A C-CANCEL of the request we sent (message ID 1, pynetdicom's default)."""
    return lambda: assoc.send_c_cancel(1, query_model=model)


def move(settings: DicomSettings, modality: Modality, level: str,
         keys: Mapping[str, str] | Dataset, destination_aet: str,
         model: InfoModel = "study", watch: Watch | None = None) -> RetrieveResult:
    """C-MOVE (PS3.4 C.4.2): ask ``modality`` to send the matches to ``destination_aet`` (our
    own AE title, or a third node the remote knows); ``watch`` sees the progress and may
    cancel."""
    destination = checked_aet(destination_aet)
    request = identifier(level, keys, model)
    uid = MODELS[(model, "move")]
    assoc = associate(settings, modality, [build_context(uid)])
    try:
        return _final(assoc.send_c_move(request, destination, uid), "C-MOVE", modality,
                      _canceller(assoc, uid), watch)
    finally:
        release(assoc)


# (path of the spooled dataset, SOP class UID, SOP instance UID) -> C-STORE status
OnInstance = Callable[[Path, str, str], int]


def get(settings: DicomSettings, modality: Modality, level: str,
        keys: Mapping[str, str] | Dataset, on_instance: OnInstance,
        model: InfoModel = "study", sop_classes: list[str] | None = None,
        watch: Watch | None = None) -> RetrieveResult:
    """C-GET (PS3.4 C.4.3): the matches come back over our association, as C-STORE requests
    for which we take the SCP role; each is spooled to a file (in ``tempfile``'s folder: the
    appliance points it at the storage area's ``tmp/``) and handed to ``on_instance``, whose
    status is the C-STORE response. The file is removed afterwards unless ``on_instance``
    took it.

    ``sop_classes``: the storage classes to offer (default: the first 127 pynetdicom knows,
    which include every common image class); ``watch`` sees the progress and may cancel."""
    _config.STORE_RECV_CHUNKED_DATASET = True
    request = identifier(level, keys, model)
    uid = MODELS[(model, "get")]
    storage = _get_storage_contexts(sop_classes)
    roles = [build_role(cx.abstract_syntax or "", scp_role=True) for cx in storage]

    def received(event: Event) -> int:
        return _received(event, on_instance)

    assoc = associate(settings, modality, [build_context(uid), *storage], roles,
                      [(evt.EVT_C_STORE, received)])
    try:
        return _final(assoc.send_c_get(request, uid), "C-GET", modality,
                      _canceller(assoc, uid), watch)
    finally:
        release(assoc)


def _get_storage_contexts(sop_classes: list[str] | None) -> list[PresentationContext]:
    uids = sop_classes or [str(cx.abstract_syntax) for cx in StoragePresentationContexts]
    return [build_context(uid, GET_SYNTAXES) for uid in uids[:MAX_GET_STORAGE_CLASSES]]


def _received(event: Event, on_instance: OnInstance) -> int:
    request = cast(C_STORE, event.request)
    path = Path(event.dataset_path)
    try:
        return on_instance(path, str(request.AffectedSOPClassUID),
                           str(request.AffectedSOPInstanceUID))
    except Exception:
        log.exception("C-GET: instance %s not kept", request.AffectedSOPInstanceUID)
        return FAILED
    finally:
        path.unlink(missing_ok=True)  # the requestor side of pynetdicom leaves its spool


UID_NAME = re.compile(r"^[0-9.]{1,64}$")


def save_into(folder: Path) -> OnInstance:
    """A C-GET ``on_instance`` that keeps the files in ``folder`` as ``<SOPInstanceUID>.dcm``
    (when the store cannot take them: another process holds it)."""
    folder.mkdir(parents=True, exist_ok=True)

    def save(path: Path, sop_class_uid: str, sop_instance_uid: str) -> int:
        if not UID_NAME.match(sop_instance_uid):
            log.warning("C-GET: instance %r not kept: not a UID", sop_instance_uid)
            return FAILED
        shutil.move(path, folder / f"{sop_instance_uid}.dcm")
        return SUCCESS

    return save


# --- C-STORE ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Sent:
    """One instance's outcome: the destination's C-STORE status, or ``scu.FAILED`` and why it
    was not sent."""

    item: Outgoing
    status: int
    error: str = ""

    @property
    def category(self) -> str:
        return str(code_to_category(self.status))


@dataclass
class StoreResult:
    outcomes: list[Sent] = field(default_factory=list)

    def count(self, category: str) -> int:
        return sum(1 for sent in self.outcomes if sent.category == category)

    @property
    def failed(self) -> int:
        return len(self.outcomes) - self.count("Success") - self.count("Warning")

    @property
    def ok(self) -> bool:
        """Every instance stored (warnings included: the destination kept them)."""
        return self.failed == 0


def store(settings: DicomSettings, modality: Modality, items: list[Outgoing]) -> StoreResult:
    """C-STORE (PS3.4 B.2) of ``items`` over one association, with the transfer-syntax
    fallback of ``StoreSession``; instances after a lost association count as not sent."""
    result = StoreResult()
    if not items:
        return result
    session = StoreSession.open(settings, modality, items)
    try:
        for item in items:
            if not session.alive:
                result.outcomes.append(Sent(item, FAILED, "association lost"))
                continue
            code = session.send(item)
            result.outcomes.append(Sent(item, code, session.last_error if code == FAILED else ""))
    finally:
        session.release()
    return result
