"""Event-driven reactors for pynetdicom: fast when busy, idle when idle.

pynetdicom's DUL and association loops poll with fixed 1 ms sleeps: about half of one
association's wall time goes to sleeping, and an idle open association still burns CPU. Here both
loops block instead, and wake exactly when there is work:

* the DUL thread waits in ``select`` on its socket *and* an eventfd that every ``put`` on its
  input queues (primitives to send, state-machine events) writes to;
* the association thread waits on an ``Event`` that the DUL sets whenever it hands up a DIMSE
  message or an ACSE primitive, or stops.

The waits have a short timeout, so timers (ARTIM, network idle) still fire as before. The
accepted socket also gets ``TCP_NODELAY`` and ``TCP_QUICKACK``: a sender that leaves Nagle's
algorithm on (Debian's DCMTK does, by default) otherwise stalls ~40 ms per object on our
delayed ACKs.

With a ``PDataReceiver`` (``faststore.Receiver``), the DUL reads the PDUs of an established
association itself and serves C-STOREs without pynetdicom's DIMSE layer; every other PDU goes
through ``hand_over`` to pynetdicom's state machine as if pynetdicom had read it.
"""

from __future__ import annotations

import functools
import os
import queue
import select
import socket
import struct
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol, cast

from pynetdicom import evt
from pynetdicom._globals import MODE_ACCEPTOR
from pynetdicom.acse import ACSE
from pynetdicom.association import Association
from pynetdicom.dul import LOGGER, DULServiceProvider
from pynetdicom.pdu import A_ABORT_RQ
from pynetdicom.transport import (
    AssociationSocket,
    RequestHandler,
    ThreadedAssociationServer,
)

MAX_CONTROL_PDU = 1 << 20  # bytes: A-ASSOCIATE and friends are a few KB
WAIT = 1.0  # seconds: the longest a loop sleeps before looking at its timers (ARTIM, idle)


class NotifyingQueue(queue.Queue):  # type: ignore[type-arg]
    """A queue that calls ``wake`` after each ``put``."""

    def __init__(self, wake: Callable[[], None]) -> None:
        super().__init__()
        self._wake = wake

    def put(self, item: Any, block: bool = True, timeout: float | None = None) -> None:
        super().put(item, block, timeout)
        self._wake()


class PDataReceiver(Protocol):
    """Reads the PDUs of an established association in the DUL thread (``faststore``)."""

    def read_pdu(self) -> None:
        """Read one PDU: serve it, or give it to ``EventDUL.hand_over``."""

    def discard(self) -> None:
        """Drop any message in progress (the association is ending)."""


ReceiverFactory = Callable[["EventDUL"], PDataReceiver]


class EventDUL(DULServiceProvider):
    """The DUL reactor, blocking on its socket and an eventfd instead of sleeping."""

    def __init__(self, assoc: Association, assoc_activity: threading.Event,
                 receiver: ReceiverFactory | None = None) -> None:
        super().__init__(assoc)
        self.receiver = receiver(self) if receiver is not None else None
        self._efd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self.event_queue = NotifyingQueue(self.wake)
        self.to_provider_queue = NotifyingQueue(self.wake)
        self.to_user_queue = NotifyingQueue(assoc_activity.set)
        self._assoc_activity = assoc_activity
        self._sleeping = False
        self._readable = False  # the last ``_wait`` found the socket readable
        self._io_lock = threading.Lock()  # held while this thread reads the socket
        self.held = False  # another thread owns the socket's reads (``fastsend``)

    def wake(self) -> None:
        """Interrupt ``_wait``; a no-op (no syscall) while the reactor is running anyway."""
        if not self._sleeping:
            return
        try:
            os.eventfd_write(self._efd, 1)
        except (OSError, ValueError):  # closed (-1): the reactor has stopped
            pass

    def hold(self) -> None:
        """Stop reading the socket (a sender reads its responses itself) until ``unhold``."""
        with self._io_lock:
            self.held = True
        self.wake()  # a select that includes the socket must end

    def unhold(self) -> None:
        self.held = False
        self._idle_timer.restart()
        self.wake()

    def _transport_event(self) -> bool:
        with self._io_lock:
            if self.held:
                return False
            if self._readable and self.state_machine.current_state == "Sta6":
                # ``_wait``'s select has just said so, and only this thread reads: no second
                # select (pynetdicom's ``ready``) before each PDU
                self._readable = False
                self._read_pdu_data()
                return True
            self._readable = False
            return self._is_transport_event()

    def kill_dul(self) -> None:
        super().kill_dul()
        self.wake()

    def _wait(self) -> None:
        """Block until the socket is readable, something was queued, or ``WAIT`` passes.

        ``_sleeping`` is raised before the queues are looked at: a ``put`` that the look misses
        sees the flag and writes the eventfd, so no wake-up is ever lost.
        """
        self._readable = False
        sock = self.socket.socket if self.socket is not None else None
        fds: list[Any] = [self._efd]
        if sock is not None and self.socket._is_connected and not self.held:  # type: ignore[union-attr]
            fds.append(sock)
        self._sleeping = True
        try:
            if not (self.event_queue.qsize() or self.to_provider_queue.qsize()
                    or self._kill_thread):
                ready, _, _ = select.select(fds, [], [], WAIT)
            else:
                ready = []
        except (OSError, ValueError):  # the socket closed under us: let the loop notice
            return
        finally:
            self._sleeping = False
        self._readable = sock is not None and sock in ready
        if self._efd in ready:
            try:
                os.eventfd_read(self._efd)
            except BlockingIOError:
                pass

    def _read_pdu_data(self) -> None:
        """Read a PDU: through the receiver while the association is established (Sta6)."""
        if self.receiver is not None and self.state_machine.current_state == "Sta6":
            self.receiver.read_pdu()
            return
        if self.receiver is not None:
            self.receiver.discard()
        if not self._oversized():
            super()._read_pdu_data()

    def _oversized(self) -> bool:
        """Close the connection, before reading it, on a PDU longer than any a conforming peer
        sends (pynetdicom would hold it whole in memory): association-control PDUs are a few
        KB, and P-DATA is bounded by the maximum we announced (PS3.8 9.3, D.1)."""
        transport = self.socket
        if transport is None or transport.socket is None:
            return False
        try:
            head = transport.socket.recv(6, socket.MSG_PEEK | socket.MSG_DONTWAIT)
        except OSError:
            return False
        if len(head) < 6:
            return False
        pdu_type, _, length = struct.unpack(">BBI", head)
        mine = self.assoc.acceptor if self.assoc.is_acceptor else self.assoc.requestor
        limit = (mine.maximum_length + 1024 if mine.maximum_length else None) \
            if pdu_type == 0x04 else MAX_CONTROL_PDU
        if limit is None or length <= limit:
            return False
        LOGGER.error("PDU type 0x%02X of %d bytes refused: the connection is closed",
                     pdu_type, length)
        transport.close()
        return True

    def hand_over(self, data: bytearray) -> None:
        """Give pynetdicom a whole PDU read from the socket: the end of its ``_read_pdu_data``
        (decode, queue the FSM event and the PDU; Evt19 if it does not decode)."""
        try:
            pdu, event = self._decode_pdu(data)
        except Exception as exc:
            LOGGER.error("Unable to decode the received PDU data")
            LOGGER.exception(exc)
            self.event_queue.put("Evt19")
            return
        self.event_queue.put(event)
        self._recv_pdu.put(pdu)

    def run_reactor(self) -> None:
        """pynetdicom's ``DULServiceProvider.run_reactor``, waiting instead of sleeping."""
        cast(EventAssociation, self.assoc)._go.wait()
        self._idle_timer.start()
        idle = False
        try:
            while True:
                if not self.assoc._dul_ready.is_set():
                    self.assoc._dul_ready.set()
                    idle = True
                if idle:
                    self._wait()
                if self._kill_thread:
                    break
                if self.artim_timer.expired:
                    self.event_queue.put("Evt18")
                try:
                    if self._process_recv_primitive():
                        pass
                    elif not self.event_queue.qsize() and self._transport_event():
                        # (pending events first: the socket is polled only when they are done)
                        self._idle_timer.restart()
                except Exception:
                    self._abort_hard()
                    return
                try:
                    event = self.event_queue.get(block=False)
                except queue.Empty:
                    idle = True
                    continue
                self.state_machine.do_action(event)
                idle = False
        finally:
            if self.receiver is not None:
                self.receiver.discard()
            if self.assoc.mode == MODE_ACCEPTOR and self.assoc.requestor.primitive is None:
                # the connection ended before an A-ASSOCIATE-RQ (a port probe): the association
                # thread would otherwise wait for one, holding a slot, until the ACSE timeout
                self.to_user_queue.put(None)  # type: ignore[arg-type]
            self._assoc_activity.set()
            os.close(self._efd)
            self._efd = -1

    def _abort_hard(self) -> None:
        """As pynetdicom does on an exception in the reactor: A-ABORT and stop both threads."""
        import logging

        logging.getLogger("pynetdicom").exception("Exception in DUL.run(), aborting association")
        abort_pdu = A_ABORT_RQ()
        abort_pdu.source = 0x02
        abort_pdu.reason_diagnostic = 0x00
        try:
            if self.socket is not None:
                self.socket.send(abort_pdu.encode())
        finally:
            self.assoc.is_aborted = True
            self.assoc.is_established = False
            self.assoc._kill = True
            self._kill_thread = True


class Checkpoint(threading.Event):
    """pynetdicom's reactor checkpoint, which also wakes the reactor when cleared: the SCU
    methods (``send_c_store``...) clear it and then wait for the reactor to pause there."""

    def __init__(self, activity: threading.Event) -> None:
        super().__init__()
        self._activity = activity

    def clear(self) -> None:
        super().clear()
        self._activity.set()


class NarrowingACSE(ACSE):
    """pynetdicom's ACSE, whose acceptor negotiation sees only the supported contexts of the
    abstract syntaxes the requestor proposed: it indexes all ~180 of them (a UID object each)
    for every association otherwise, a good part of a C-ECHO's time."""

    def _negotiate_as_acceptor(self) -> None:
        by_syntax = getattr(self.assoc._server, "contexts_by_syntax", None)
        proposed = self.requestor.primitive
        if by_syntax is not None and proposed is not None:
            syntaxes = {str(cx.abstract_syntax)
                        for cx in proposed.presentation_context_definition_list}
            self.acceptor._contexts = [cx for uid in syntaxes for cx in by_syntax.get(uid, ())]
        super()._negotiate_as_acceptor()


class EventAssociation(Association):
    """An association whose reactor waits on an ``Event`` instead of polling every 1 ms.

    A *spare* (an acceptor made before its connection arrives) starts both its threads at once
    and holds them until ``go``: starting two threads costs about a millisecond on a small
    box, which every short association (C-ECHO, C-FIND, a modality's store) would otherwise
    wait for before its A-ASSOCIATE-AC. Until then it counts as no acceptor (``is_acceptor``)
    and has no ``AcceptorThread`` name, so pynetdicom's association limits ignore it; nor does
    an association whose reactor has returned, while its thread makes the next spare.
    """

    def __init__(self, ae: Any, mode: str, receiver: ReceiverFactory | None = None,
                 spare: bool = False) -> None:
        super().__init__(ae, mode)
        self.acse = NarrowingACSE(self)
        self._activity = threading.Event()
        self.dul = EventDUL(self, self._activity, receiver)
        self.dimse.msg_queue = NotifyingQueue(self._activity.set)
        checkpoint = Checkpoint(self._activity)
        checkpoint.set()
        self._reactor_checkpoint = checkpoint
        self._spare = spare
        self._finished = False  # its reactor has returned: it holds no slot any more
        self._go = threading.Event()
        if spare:
            self.dul.daemon = True  # never holds the process up if it is never used
            self._start_threads()
        else:
            self._go.set()

    @property
    def is_acceptor(self) -> bool:
        return not self._spare and not self._finished and self.mode == MODE_ACCEPTOR

    def _start_threads(self) -> None:
        """As pynetdicom's acceptors start: the DUL first (it reads the A-ASSOCIATE-RQ)."""
        self.dul.start()
        self._started_dul = True
        self.start()

    def go(self) -> None:
        """Run: let a spare's threads go on, or start them."""
        if self._spare:
            self._spare = False
            self._go.set()
        else:
            self._start_threads()

    def run_reactor(self) -> None:
        self._go.wait()
        if self._kill:  # a spare killed unused: the server stopped
            return
        super().run_reactor()
        self._finished = True
        if isinstance(self._server, EventServer):
            # the next spare is made here, once this association is over, and not right after
            # the connection that took the last one: threads starting then would compete for
            # the GIL with that association's own first steps
            self._server.prepare_spare()

    def kill(self) -> None:
        if self._spare:  # never used: stop both threads where they wait
            self._kill = True
            self.dul.kill_dul()
            self._go.set()
        self._activity.set()
        super().kill()

    def _serve_request(self, msg: Any, context_id: int) -> None:
        """pynetdicom's, timed for the metrics (``EventServer.on_served``) when we accept."""
        started = time.perf_counter()
        try:
            super()._serve_request(msg, context_id)
        finally:
            served = getattr(self._server, "on_served", None)
            if served is not None:
                served(type(msg).__name__, time.perf_counter() - started)

    def _run_reactor(self) -> None:
        """pynetdicom's ``Association._run_reactor``, waiting instead of sleeping."""
        self._is_paused = False
        while not self._kill:
            self._activity.wait(WAIT)
            self._activity.clear()
            self._is_paused = True
            self._reactor_checkpoint.wait()
            self._is_paused = False
            if not self._reactor_checkpoint.is_set():
                # An SCU call (send_c_store...) took the floor again as we woke, and may have
                # seen us still paused: pause again before touching its response.
                continue

            context_id, msg = self.dimse.get_msg(block=False)
            if msg:
                self._serve_request(msg, context_id)  # type: ignore[arg-type]
                self._activity.set()  # look again at once: more may be queued

            if self.is_established and self.acse.is_release_requested():
                self.acse.send_release(is_response=True)
                self.is_released = True
                self.is_established = False
                evt.trigger(self, evt.EVT_RELEASED, {})
                self.kill()
                return

            if self.acse.is_aborted():
                self.dul.receive_pdu(wait=False)
                self.is_aborted = True
                self.is_established = False
                evt.trigger(self, evt.EVT_ABORTED, {})
                self.kill()
                return

            if not self.dul.is_alive():
                self.kill()
                return

            if self.dul.idle_timer_expired():
                if self.network_timeout_response == "A-RELEASE":
                    self._is_paused = True
                    self._reactor_checkpoint.wait()
                    self.release()
                    self._is_paused = False
                else:
                    self.abort()
                self.kill()
                return


class QuickAckSocket(AssociationSocket):
    """Re-arms ``TCP_QUICKACK`` after each read (Linux clears it), so senders that leave Nagle's
    algorithm on never wait for our delayed ACKs."""

    def recv(self, nr_bytes: int) -> bytearray:
        data = super().recv(nr_bytes)
        _quickack(self.socket)
        return data


def _quickack(sock: socket.socket | None) -> None:
    if sock is not None and hasattr(socket, "TCP_QUICKACK"):
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK, 1)
        except OSError:
            pass


def tune_socket(sock: socket.socket) -> None:
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    _quickack(sock)


class EventRequestHandler(RequestHandler):
    """pynetdicom's request handler, building event-driven associations on tuned sockets."""

    def handle(self) -> None:
        """As ``RequestHandler.handle``, on the server's spare association if it has one, then
        a spare made ready for the next connection."""
        assoc = self._create_association()
        evt.trigger(assoc, evt.EVT_CONN_OPEN, {"address": self.client_address})
        assoc.go()

    def _create_association(self) -> EventAssociation:
        """As ``RequestHandler._create_association``, with our association and socket."""
        tune_socket(self.request)
        server = self.server
        assoc = server.take_spare() if isinstance(server, EventServer) else None
        if assoc is None:
            assoc = EventAssociation(self.ae, MODE_ACCEPTOR, getattr(server, "receiver", None))
            bind_handlers(assoc, server)
        assoc._server = server
        # pynetdicom's ``active_associations`` finds acceptors by this name prefix
        assoc.name = f"AcceptorThread@{self.client_address[0]}:{self.client_address[1]}"
        assoc.set_socket(QuickAckSocket(assoc, client_socket=self.request))
        acceptor = assoc.acceptor
        acceptor.maximum_length = self.ae.maximum_pdu_size
        acceptor.ae_title = server.ae_title
        acceptor.address_info = self.local
        acceptor.implementation_class_uid = self.ae.implementation_class_uid
        acceptor.implementation_version_name = self.ae.implementation_version_name
        # pynetdicom deep-copies the ~180 contexts here (~25 ms per association); its acceptor
        # negotiation only reads them, so the server's list is shared
        acceptor.supported_contexts = server.contexts
        assoc.requestor.address_info = self.remote
        return assoc


def bind_handlers(assoc: Association, server: Any) -> None:
    """The server's event handlers, bound to one of its associations (as pynetdicom does)."""
    for event, bound in server._handlers.items():
        if event.is_intervention and bound:
            assoc.bind(event, *bound)
        elif isinstance(event, evt.NotificationEvent):
            for handler, args in cast(list[tuple[Callable[..., Any], Any]], bound):
                assoc.bind(event, handler, args)


def use_for_requests() -> None:
    """Make ``AE.associate`` build event-driven associations too (outgoing C-STORE, C-FIND...):
    pynetdicom's ``AE`` names the class in its module, with no other way to choose it."""
    import pynetdicom.ae

    pynetdicom.ae.Association = EventAssociation  # type: ignore[misc]


class EventServer(ThreadedAssociationServer):
    """The threaded association server, with event-driven associations."""

    daemon_threads = True
    receiver: ReceiverFactory | None = None  # reads PDUs of established associations
    on_served: Callable[[str, float], None] | None = None  # (primitive class, seconds): metrics

    def process_request(self, request: Any, client_address: Any) -> None:
        """Build and start the association in the listening thread: that only creates objects
        and starts the association's own threads, and a thread more per connection (as
        ``ThreadingMixIn`` starts) delays the A-ASSOCIATE-AC of every short C-FIND or C-ECHO."""
        self.process_request_thread(request, client_address)

    _spare: EventAssociation | None = None
    _spare_lock = threading.Lock()
    _closed = False

    def prepare_spare(self) -> None:
        """Have an association waiting for the next connection (if none is)."""
        if self._spare is not None or self._closed:
            return
        spare = EventAssociation(self.ae, MODE_ACCEPTOR, self.receiver, spare=True)
        bind_handlers(spare, self)  # now, rather than once a connection waits for it
        with self._spare_lock:
            kept = self._spare is None and not self._closed
            if kept:
                self._spare = spare
        if not kept:  # another thread was quicker, or the server closed meanwhile
            spare.kill()

    def take_spare(self) -> EventAssociation | None:
        with self._spare_lock:
            spare, self._spare = self._spare, None
        return spare

    def server_close(self) -> None:
        with self._spare_lock:
            self._closed = True
        spare = self.take_spare()
        if spare is not None:
            spare.kill()
        super().server_close()

    @functools.cached_property
    def contexts_by_syntax(self) -> dict[str, list[Any]]:
        """The supported presentation contexts by abstract syntax (``NarrowingACSE``)."""
        index: dict[str, list[Any]] = {}
        for cx in self.contexts:
            index.setdefault(str(cx.abstract_syntax), []).append(cx)
        return index

    def service_actions(self) -> None:
        """Nothing: pynetdicom's runs a full ``gc.collect()`` every 60 connections (or half
        seconds idle), stalling every association for milliseconds; the collector's own
        thresholds reclaim finished associations' cycles well enough."""
