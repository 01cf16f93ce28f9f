"""The checks themselves: each does real work (a C-ECHO over the network, a committed index
write, an fsynced file) and says what it found. They run in the threads of ``checks.Health``."""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from pynetdicom import AE
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from ..config import Config, HealthSettings
from ..index import health as index_health
from ..index.models import database
from ..routing import queue
from ..routing.worker import Destination, DestinationState, Dispatcher
from ..storage.governor import Governor, free_bytes
from ..store import Store
from .checks import Check, State

MB = 1024 * 1024
TRANSIENT = 0x02  # A-ASSOCIATE-RJ result "rejected (transient)": the local limit is reached


def _ms(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 1)


def loopback(host: str) -> str:
    """Where to reach our own listener: loopback when it binds every address."""
    return {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)


class DicomEcho:
    """A real C-ECHO to our own listener, with our own AE title. Every association slot taken
    is "busy" (degraded) until it has lasted ``busy_grace`` seconds; anything else that keeps
    the echo from succeeding means the listener is not serving (failing)."""

    def __init__(self, config: Callable[[], Config], port: int) -> None:
        self.config = config
        self.port = port
        self.busy_since: float | None = None

    def __call__(self) -> Check:
        config = self.config()
        timeout = config.health.timeout
        ae = AE(ae_title=config.dicom.aet)
        ae.add_requested_context(Verification)
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout
        ae.connection_timeout = timeout
        started = time.perf_counter()
        assoc = ae.associate(loopback(config.dicom.host), self.port, ae_title=config.dicom.aet)
        if assoc.is_established:
            status = assoc.send_c_echo()
            assoc.release()
            code = getattr(status, "Status", None)
            if code == 0:
                self.busy_since = None
                return Check("dicom", "ok", _ms(started))
            return Check("dicom", "failing", None, f"C-ECHO answered {code!r}")
        primitive = assoc.acceptor.primitive
        if assoc.is_rejected and primitive is not None and primitive.result == TRANSIENT:
            return self._busy(config.health)
        self.busy_since = None
        what = "rejected" if assoc.is_rejected else "not established (no answer)"
        return Check("dicom", "failing", None,
                     f"association to {config.dicom.aet} on port {self.port} {what}")

    def _busy(self, settings: HealthSettings) -> Check:
        now = time.monotonic()
        if self.busy_since is None:
            self.busy_since = now
        busy = now - self.busy_since
        state: State = "failing" if busy >= settings.busy_grace else "degraded"
        return Check("dicom", state, None,
                     f"every association slot taken for {busy:.0f} s (self C-ECHO refused)")


def index_read() -> Check:
    """A real query of the largest table (on a reader connection of its own)."""
    started = time.perf_counter()
    with database.connection_context():
        index_health.newest_instance()
    return Check("index_read", "ok", _ms(started))


def index_write(store: Store, timeout: float) -> Check:
    """A heartbeat row committed by the index writer and read back: the writer thread is not
    wedged and the database takes writes."""
    started = time.perf_counter()
    now = time.time()
    store.writer.run(lambda: index_health.beat("health", now), timeout)
    with database.connection_context():
        stored = index_health.last_beat("health")
    if stored != now:
        return Check("index_write", "failing", None, "the heartbeat written was not read back")
    return Check("index_write", "ok", _ms(started))


STORAGE_PROBE = "health-"  # the name's prefix of ``storage_write``'s file


def storage_write(folder: Path) -> Check:
    """Write, fsync and remove a small file where received instances are spooled."""
    started = time.perf_counter()
    fd, name = tempfile.mkstemp(prefix=STORAGE_PROBE, dir=folder)
    try:
        os.write(fd, b"\0" * 4096)
        os.fsync(fd)
    finally:
        os.close(fd)
        os.unlink(name)
    return Check("storage", "ok", _ms(started))


def disk(folder: Path, settings: HealthSettings) -> Check:
    free = free_bytes(folder) / MB
    value = round(free, 1)
    if free < settings.disk_failing_mb:
        return Check("disk", "failing", value,
                     f"{free:.0f} MB free, below {settings.disk_failing_mb:.0f} MB")
    if free < settings.disk_degraded_mb:
        return Check("disk", "degraded", value,
                     f"{free:.0f} MB free, below {settings.disk_degraded_mb:.0f} MB")
    return Check("disk", "ok", value)


def quota(governor: Governor) -> Check:
    """The store refuses new instances (0xA700) when nothing can be recycled: say so and why."""
    totals = governor.totals
    value = {"bytes": totals.bytes, "patients": totals.patients, "studies": totals.studies,
             "recycled": governor.recycled_total}
    if governor.full_reason:
        return Check("quota", "failing", value, f"new instances refused: {governor.full_reason}")
    return Check("quota", "ok", value)


def silent(last: float | None, since: float, limit: float | None, now: float) -> float | None:
    """Seconds of silence beyond ``limit`` (None: not silent). A source never heard from is
    counted from ``since`` (the start of the process)."""
    if limit is None:
        return None
    quiet = now - (last if last is not None else since)
    return quiet if quiet > limit else None


def sources(last_seen: dict[str, float], settings: HealthSettings, started: float
            ) -> list[Check]:
    """Per calling AE title: when it last sent something; degraded when silent too long."""
    now = time.time()
    checks = []
    for aet in sorted(set(last_seen) | set(settings.max_silence)):
        last = last_seen.get(aet)
        limit = settings.max_silence.get(aet)
        quiet = silent(last, started, limit, now)
        if quiet is None:
            checks.append(Check(f"source:{aet}", "ok", last))
        else:
            checks.append(Check(f"source:{aet}", "degraded", last,
                                f"silent for {quiet:.0f} s (limit {limit:.0f} s)"))
    return checks


def destinations(dispatcher: Dispatcher, settings: HealthSettings) -> list[Check]:
    """Per destination: its backlog, the age of its oldest pending entry, its failures, its
    sender threads (they never end while the appliance runs)."""
    with database.connection_context():
        stats = queue.stats()
    now = time.time()
    return [destination(name, stats.get(name, queue.DestinationStats()),
                        dispatcher.destinations.get(name), settings, now)
            for name in sorted(set(stats) | set(dispatcher.destinations))]


def destination(name: str, counts: queue.DestinationStats, dest: Destination | None,
                settings: HealthSettings, now: float) -> Check:
    state = dest.state if dest is not None else DestinationState()
    threads = dest.threads if dest is not None else []
    alive = sum(t.is_alive() for t in threads)
    age = now - counts.oldest_pending if counts.oldest_pending is not None else 0.0
    failures = state.consecutive_failures
    value = {"pending": counts.pending, "held": counts.held, "failed": counts.failed,
             "oldest_pending_seconds": round(age, 1), "consecutive_failures": failures,
             "last_success": state.last_success, "workers": alive}
    reasons = []
    if alive < len(threads):
        reasons.append(f"{len(threads) - alive} of {len(threads)} sender threads ended")
    if age > settings.max_queue_age:
        reasons.append(f"oldest pending entry waits for {age:.0f} s")
    if failures >= settings.max_consecutive_failures:
        reasons.append(f"{failures} failures in a row ({state.last_error})")
    if counts.failed:
        reasons.append(f"{counts.failed} entries failed (retry or cancel them)")
    return Check(f"destination:{name}", "degraded" if reasons else "ok", value,
                 "; ".join(reasons))
