"""The outbound queue's workers: per destination, threads that send due entries in batches over
one association, back off when the destination is unreachable, and record every outcome.

One destination being down never delays another: each has its own threads (``concurrency``
of the modality) and its own backoff. A ``Stability`` thread releases the entries held for
series and studies that have become stable.
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

from ..config import Config, Modality
from ..configstore import ConfigStore
from ..dicom.scu import FAILED, AssociationFailed, Outgoing, StoreSession
from ..store import Store
from . import queue
from .queue import Entry, Result

log = logging.getLogger("appliance.routing")

IDLE_WAIT = 30.0  # seconds a worker sleeps with nothing due (a wake-up cuts it short)
LINGER_STEP = 0.05  # seconds: the shortest wait between two claims while lingering


@dataclass
class DestinationState:
    """What the health checks and metrics show of a destination (in memory)."""

    sent_total: int = 0
    failed_total: int = 0
    consecutive_failures: int = 0
    last_success: float | None = None
    last_error: str = ""
    retry_at: float = 0.0  # no association attempt before (monotonic clock)


class Destination:
    """The workers of one destination, sharing its backoff and the entries in flight."""

    def __init__(self, name: str, dispatcher: Dispatcher) -> None:
        self.name = name
        self.dispatcher = dispatcher
        self.state = DestinationState()
        self.in_flight: set[int] = set()
        self.lock = threading.Lock()
        self.wakeup = threading.Condition(self.lock)
        self.threads: list[threading.Thread] = []

    def start(self, count: int) -> None:
        while len(self.threads) < count:
            thread = threading.Thread(target=self._run, name=f"send-{self.name}", daemon=True)
            self.threads.append(thread)
            thread.start()

    def wake(self) -> None:
        with self.lock:
            self.wakeup.notify_all()

    def _run(self) -> None:
        session: StoreSession | None = None
        try:
            while not self.dispatcher.stopping.is_set():
                try:
                    session = self._step(session)
                except Exception:  # a worker must not die: its destination would stall
                    log.exception("sending to %s failed", self.name)
                    session = _release(session)
                    self._unreachable("internal error (see the log)")
        finally:
            _release(session)

    def _step(self, session: StoreSession | None) -> StoreSession | None:
        batch = self._claim()
        if not batch and session is not None and session.alive:
            session.idle()
            batch = self._linger()
        if not batch:
            session = _release(session)
            self._wait(IDLE_WAIT)
            return None
        recorded: Future[Any] | None = None
        try:
            session, recorded = self._send(session, batch)
            return session
        finally:
            if recorded is None:
                self._settled(batch)
            else:  # the entries stay claimed until their outcome is committed
                recorded.add_done_callback(lambda _: self._settled(batch))

    def _linger(self) -> list[Entry]:
        """Keep the association for up to ``queue.linger`` seconds: the next instance may be
        close. A wake-up with nothing to claim yet goes on waiting (it used to release the
        association, and the next instance opened another)."""
        deadline = time.monotonic() + self.dispatcher.config.queue.linger
        while not self.dispatcher.stopping.is_set():
            started = time.monotonic()
            if started >= deadline:
                break
            self._wait(deadline - started)
            if batch := self._claim():
                return batch
            if time.monotonic() - started < LINGER_STEP:  # woken for nothing: do not spin
                self.dispatcher.stopping.wait(LINGER_STEP)
        return []

    def _settled(self, batch: list[Entry]) -> None:
        with self.lock:
            self.in_flight.difference_update(e.id for e in batch)

    def _claim(self) -> list[Entry]:
        """Due entries no other worker of this destination holds."""
        if time.monotonic() < self.state.retry_at:
            return []
        settings = self.dispatcher.config.queue
        with self.lock:
            batch = queue.due(self.name, time.time(), settings.batch, self.in_flight)
            self.in_flight.update(e.id for e in batch)
        return batch

    def _wait(self, longest: float) -> None:
        """Until woken, the next entry is due, or ``longest`` seconds."""
        now = time.monotonic()
        delay = longest
        if self.state.retry_at > now:
            delay = self.state.retry_at - now
        else:
            with self.lock:
                claimed = list(self.in_flight)  # sent, their outcome not yet committed
            next_due = queue.next_due(self.name, claimed)
            if next_due is not None:
                delay = max(0.0, next_due - time.time())
        with self.lock:
            if not self.dispatcher.stopping.is_set():
                self.wakeup.wait(min(delay, longest))

    def _send(self, session: StoreSession | None, batch: list[Entry]
              ) -> tuple[StoreSession | None, Future[Any] | None]:
        """Send a batch; the session to go on with, and the outcome's pending commit (sending
        goes on while the index records it)."""
        config = self.dispatcher.config
        modality = config.modalities.get(self.name)
        if modality is None:
            results = [Result(e, FAILED, "no such modality") for e in batch]
            return _release(session), self._record(modality, results)
        items = [self._outgoing(e) for e in batch]
        if session is None or not session.alive or not session.covers(items):
            session = _release(session)
            try:
                session = StoreSession.open(config.dicom, modality, items)
            except (AssociationFailed, OSError, RuntimeError) as exc:
                self._unreachable(str(exc))
                return None, None
        results = []
        for entry, item in zip(batch, items, strict=True):
            if self.dispatcher.stopping.is_set():
                break  # a stop waits for one instance, not a batch: the rest stays queued
            status = session.send(item)
            if status == FAILED and not session.alive:
                break  # the association died: the rest of the batch was not attempted
            results.append(Result(entry, status, "" if status != FAILED else session.last_error))
        recorded = self._record(modality, results)
        if not session.alive:
            self._unreachable("association lost during the batch")
            return None, recorded
        return session, recorded

    def _outgoing(self, entry: Entry) -> Outgoing:
        path = self.dispatcher.store.area.path(entry.file)
        return Outgoing(entry.sop_uid, entry.sop_class_uid, entry.transfer_syntax, path)

    def _record(self, modality: Modality | None, results: list[Result]) -> Future[Any] | None:
        if not results:
            return None
        settings = self.dispatcher.config.queue
        aet = modality.aet if modality else ""
        recorded = self.dispatcher.store.writer.submit(
            lambda: queue.record(self.name, aet, results, settings, time.time()), durable=False
        )
        delivered = sum(queue.outcome_of(r.status) != "failure" for r in results)
        state = self.state
        state.sent_total += delivered
        state.failed_total += len(results) - delivered
        if delivered:
            state.consecutive_failures = 0
            state.last_success = time.time()
        if delivered < len(results):
            failure = next(r for r in results if queue.outcome_of(r.status) == "failure")
            state.last_error = f"0x{failure.status:04X} {failure.error}".strip()
            log.warning("%s refused %d of %d instances (last: %s)", self.name,
                        len(results) - delivered, len(results), state.last_error)
        return recorded

    def _unreachable(self, error: str) -> None:
        state = self.state
        state.consecutive_failures += 1
        state.last_error = error
        wait = queue.backoff(self.dispatcher.config.queue, state.consecutive_failures)
        state.retry_at = time.monotonic() + wait
        log.warning("destination %s unreachable (%s): next attempt in %.0f s",
                    self.name, error, wait)
        settings = self.dispatcher.config.queue
        expired = self.dispatcher.store.writer.run(
            lambda: queue.expire(self.name, settings, time.time())
        )
        if expired:
            log.error("%d entries for %s failed: undelivered for longer than %.0f s",
                      expired, self.name, settings.max_age)


def _release(session: StoreSession | None) -> StoreSession | None:
    """Release ``session`` if any; always None (the caller's new session)."""
    if session is not None:
        session.release()
    return None


class Dispatcher:
    """Starts a ``Destination`` per known modality and wakes it when entries are queued."""

    def __init__(self, configs: ConfigStore, store: Store) -> None:
        self.configs = configs
        self.store = store
        self.stopping = threading.Event()
        self.destinations: dict[str, Destination] = {}
        self._lock = threading.Lock()
        self._stability = threading.Thread(target=self._release_stable, name="stability",
                                           daemon=True)

    @property
    def config(self) -> Config:
        return self.configs.current

    def start(self) -> None:
        self.configs.subscribe(lambda config: self.reconfigure())
        self.store.on_queued = self.wake
        self.reconfigure()
        self._stability.start()

    def reconfigure(self) -> None:
        """One destination per known modality, each with its threads; all look for work."""
        with self._lock:
            for name, modality in self.config.modalities.items():
                dest = self.destinations.setdefault(name, Destination(name, self))
                dest.start(modality.concurrency)
            for name in list(queue.stats()):
                self.destinations.setdefault(name, Destination(name, self)).start(1)
        self.wake(set(self.destinations))

    def wake(self, names: set[str]) -> None:
        for name in names:
            dest = self.destinations.get(name)
            if dest is not None:
                dest.wake()

    def retry_now(self, name: str) -> None:
        """Forget a destination's backoff (a retry asked by hand)."""
        dest = self.destinations.get(name)
        if dest is not None:
            dest.state.retry_at = 0.0
            dest.wake()

    def stop(self) -> None:
        self.stopping.set()
        log.info("routing: stopping after the instances being sent; the rest stays queued")
        for dest in self.destinations.values():
            dest.wake()
        for dest in self.destinations.values():
            for thread in dest.threads:
                thread.join(30)
        self._stability.join(5)

    def _release_stable(self) -> None:
        while not self.stopping.wait(stability_period(self.config)):
            try:
                self._release_once()
            except Exception:  # never let the thread die: held entries would wait forever
                log.exception("releasing stable series and studies failed")

    def _release_once(self) -> None:
        if not queue.any_held():
            return
        age = self.config.storage.stable_age
        released = self.store.writer.run(
            lambda: queue.release_stable(time.time() - age, time.time())
        )
        if released:
            log.info("stable series/studies released for %s", ", ".join(sorted(released)))
            self.wake(released)


def stability_period(config: Config) -> float:
    return min(5.0, max(0.2, config.storage.stable_age / 10))

