"""Thin Query/Retrieve handlers (PS3.4 Annex C): who may ask, parse the identifier, search the
index, answer. Matching is in ``query.py``, the index search in ``index/search.py``, the
sub-operations in ``retrieve.py``.

Access control (decision): a calling AE that is not a known modality, or whose ``allow`` list
lacks the operation, is refused at the DIMSE level with 0xC001 and an ErrorComment (and a log
line), not at association level: the same association may carry C-STOREs, which
``store_from_unknown`` may allow.

Answer limit (decision): with ``dicom.max_find_answers`` = N, the first N matches are sent as
pending responses and the C-FIND ends with 0xA700 (Refused: out of resources) and an
ErrorComment, so the requestor knows the list is incomplete (Orthanc ends such a C-FIND with
success: a planning system would silently miss studies).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from pydicom.dataset import Dataset
from pynetdicom.events import Event

from ..config import Config, Permission
from ..configstore import ConfigStore
from ..index import search
from ..index.models import database
from ..store import Store
from .handlers import peer, status
from .query import (
    NOT_ALLOWED,
    UNABLE_TO_PROCESS,
    UNSUPPORTED_KEY,
    Query,
    QueryError,
    Root,
    answer,
    parse_identifier,
)
from .retrieve import MOVE_DESTINATION_UNKNOWN, Plan, Refusal
from .scu import Outgoing

log = logging.getLogger("appliance.dicom.qr")

SUCCESS = 0x0000
PENDING = 0xFF00
CANCELLED = 0xFE00
OUT_OF_RESOURCES = 0xA700

ROOTS: dict[str, Root] = {  # PS3.4 C.6.1 and C.6.2 SOP classes
    "1.2.840.10008.5.1.4.1.2.1.1": "patient",  # Patient Root Q/R - FIND
    "1.2.840.10008.5.1.4.1.2.1.2": "patient",  # Patient Root Q/R - MOVE
    "1.2.840.10008.5.1.4.1.2.1.3": "patient",  # Patient Root Q/R - GET
    "1.2.840.10008.5.1.4.1.2.2.1": "study",  # Study Root Q/R - FIND
    "1.2.840.10008.5.1.4.1.2.2.2": "study",  # Study Root Q/R - MOVE
    "1.2.840.10008.5.1.4.1.2.2.3": "study",  # Study Root Q/R - GET
}
QR_CONTEXTS = list(ROOTS)


@dataclass(frozen=True)
class Request:
    """What a Q/R handler needs of a request, whichever path received it."""

    sop_class: str  # the information model (a key of ``ROOTS``)
    calling_aet: str
    peer: str  # for log lines: AE title and address
    identifier: Callable[[], Dataset]  # decodes it (may raise)


def request_of(event: Event) -> Request:
    """The ``Request`` of a pynetdicom event."""
    return Request(str(event.request.AffectedSOPClassUID), event.assoc.requestor.ae_title,
                   peer(event), lambda: event.identifier)


def check_allowed(request: Request, config: Config, operation: Permission) -> None:
    """Only known modalities whose ``allow`` has ``operation`` (unless ``query_from_unknown``)."""
    aet = request.calling_aet
    modality = config.modality_by_aet(aet)
    if modality is None and config.dicom.query_from_unknown:
        return
    if modality is None or operation not in modality.allow:
        raise QueryError(NOT_ALLOWED, f"calling AE {aet} may not {operation}")


def parse(request: Request, config: Config, retrieve: bool) -> Query:
    """The request's identifier as a query (``QueryError`` if invalid or not answerable)."""
    root = ROOTS[request.sop_class]
    try:
        identifier = request.identifier()
    except Exception as exc:
        raise QueryError(UNABLE_TO_PROCESS, f"cannot decode the identifier: {exc}") from exc
    query = parse_identifier(identifier, root, retrieve, config.dicom.case_sensitive_pn)
    if config.dicom.unindexed_keys == "refuse":
        unheld = [k.keyword for k in query.keys if not search.is_held(k)]
        if unheld:
            raise QueryError(UNSUPPORTED_KEY, f"key not indexed: {', '.join(unheld)}")
    return query


Response = tuple[int, str, Dataset | None]  # status, error comment, identifier


def find(request: Request, config: Config, store: Store, cancelled: Callable[[], bool]
         ) -> Iterator[Response]:
    """C-FIND (PS3.4 C.4.1): one pending response per matching entity, then the final one."""
    try:
        check_allowed(request, config, "find")
        query = parse(request, config, retrieve=False)
    except QueryError as exc:
        log.warning("C-FIND from %s refused (0x%04X): %s", request.peer, exc.status,
                    exc.comment)
        yield exc.status, exc.comment, None
        return
    limit = config.dicom.max_find_answers
    sent = 0
    with database.connection_context():
        for match in search.search(query, store.read_header):
            if cancelled():
                log.info("C-FIND from %s cancelled after %d answers", request.peer, sent)
                yield CANCELLED, "", None
                return
            if limit and sent >= limit:
                log.warning("C-FIND from %s: more than %d matches, answers cut",
                            request.peer, limit)
                yield OUT_OF_RESOURCES, f"more than {limit} matches: first {limit} sent", None
                return
            yield PENDING, "", answer(query, match.value, config.dicom.aet)
            sent += 1
    log.info("C-FIND %s level from %s: %d answers", query.level.name, request.peer, sent)
    yield SUCCESS, "", None


def handle_find(event: Event, configs: ConfigStore, store: Store
                ) -> Iterator[tuple[Any, Any]]:
    """pynetdicom's C-FIND handler (requests the fast path leaves to pynetdicom)."""
    for code, comment, identifier in find(request_of(event), configs.current, store,
                                          lambda: bool(event.is_cancelled)):
        yield (status(code, comment) if comment else code), identifier


def _plan(event: Event, config: Config, store: Store, operation: Permission) -> Plan | Refusal:
    destination = None
    request = request_of(event)
    try:
        check_allowed(request, config, operation)
        if operation == "move":
            name = (event.move_destination or "").strip()
            destination = config.modality_by_aet(name)
            if destination is None:
                raise QueryError(MOVE_DESTINATION_UNKNOWN, f"unknown move destination {name}")
        query = parse(request, config, retrieve=True)
    except QueryError as exc:
        log.warning("C-%s from %s refused (0x%04X): %s", operation.upper(), peer(event),
                    exc.status, exc.comment)
        return Refusal(exc.status, exc.comment)
    with database.connection_context():
        items = [
            Outgoing(i.sop_uid, i.sop_class_uid, i.transfer_syntax, store.area.path(i.file))
            for match in search.search(query, store.read_header)
            for i in search.instances(match)
        ]
    log.info("C-%s from %s: %d instances%s", operation.upper(), peer(event), len(items),
             f" to {destination.aet}" if destination else "")
    return Plan(items, config.dicom, destination)


def handle_move(event: Event, configs: ConfigStore, store: Store) -> Plan | Refusal:
    """C-MOVE (PS3.4 C.4.2): resolve the instances; ``retrieve.py`` sends them."""
    return _plan(event, configs.current, store, "move")


def handle_get(event: Event, configs: ConfigStore, store: Store) -> Plan | Refusal:
    """C-GET (PS3.4 C.4.3): resolve the instances; sent back over the same association."""
    return _plan(event, configs.current, store, "get")
