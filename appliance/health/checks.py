"""The health registry: named probes, run together with a time limit each, giving one report.

A probe is a callable returning one ``Check`` or several (a per-destination or per-source probe
returns one per destination or source). Every probe runs in a thread of its own: one that does
not answer within ``timeout`` is reported failing ("wedged") instead of hanging the report, and
is not started again while it is still stuck. Probes marked ``liveness`` prove the process
itself works (a restart can help when they fail): the systemd watchdog is fed only while none of
them fails. A full disk or a destination down makes the box degraded or failing, but restarting
it would not help, so they do not stop the watchdog.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

log = logging.getLogger("appliance.health")

State = Literal["ok", "degraded", "failing"]
SEVERITY: dict[State, int] = {"ok": 0, "degraded": 1, "failing": 2}


@dataclass(frozen=True)
class Check:
    """One check's outcome: ``value`` is JSON (a number, a time, a small object), ``reason``
    says why the state is not ok. Never patient data: AE titles and counts only."""

    name: str
    state: State
    value: Any = None
    reason: str = ""
    liveness: bool = False


def worst(states: Sequence[State]) -> State:
    return max(states, key=SEVERITY.__getitem__, default="ok")


@dataclass(frozen=True)
class Report:
    checks: list[Check]
    at: float = field(default_factory=time.time)  # when the run ended (epoch seconds)

    @property
    def state(self) -> State:
        return worst([c.state for c in self.checks])

    @property
    def alive(self) -> bool:
        """No liveness check fails: the process is doing its work (the watchdog may be fed)."""
        return not any(c.liveness and c.state == "failing" for c in self.checks)

    def to_json(self) -> dict[str, Any]:
        return {
            "status": self.state,
            "time": self.at,
            "checks": [{"name": c.name, "status": c.state, "value": c.value, "reason": c.reason}
                       for c in self.checks],
        }


ProbeFn = Callable[[], "Check | list[Check]"]


@dataclass
class Probe:
    name: str
    run: ProbeFn
    liveness: bool = False
    running_since: float | None = None  # monotonic; set while its thread runs
    thread: threading.Thread | None = None
    result: list[Check] = field(default_factory=list)


class Health:
    """Runs the probes every ``interval`` seconds in the background, and on demand."""

    def __init__(self, interval: Callable[[], float], timeout: Callable[[], float]) -> None:
        self.interval = interval  # read at each run: the settings may change at run time
        self.timeout = timeout
        self.probes: list[Probe] = []
        self.latest: Report | None = None
        self._latest_at = 0.0  # monotonic time of the latest report (immune to clock changes)
        self.listeners: list[Callable[[Report], None]] = []  # told after each run
        self._run_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="health", daemon=True)

    def add(self, name: str, run: ProbeFn, liveness: bool = False) -> None:
        """Register a probe (``name`` names its checks when it raises or hangs)."""
        self.probes.append(Probe(name, run, liveness))

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(self.timeout() + 5)

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.run()
            except Exception:  # the loop must survive anything: the watchdog depends on it
                log.exception("health checks failed to run")
            self._stop.wait(self.interval())

    def fresh(self) -> Report | None:
        """The latest report if the background runs are keeping up (None: they are not)."""
        report = self.latest
        limit = 2 * self.interval() + self.timeout() + 1
        fresh = time.monotonic() - self._latest_at <= limit
        return report if report is not None and fresh else None

    def run(self, reuse_within: float = 0.0) -> Report:
        """Run every probe now (one run at a time) and keep the report; a report younger than
        ``reuse_within`` seconds is returned as it is (callers that arrive together, or too
        often, share one run: asking cannot be made to cost a commit and an fsync each)."""
        with self._run_lock:
            if self.latest is not None and time.monotonic() - self._latest_at < reuse_within:
                return self.latest
            deadline = time.monotonic() + self.timeout()
            started = [p for p in self.probes if self._start(p)]
            for probe in started:
                assert probe.thread is not None
                probe.thread.join(max(0.0, deadline - time.monotonic()))
            checks = [c for p in self.probes for c in self._outcome(p)]
            report = Report(checks)
            self._log_changes(report)
            self.latest, self._latest_at = report, time.monotonic()
        for listener in self.listeners:
            try:
                listener(report)
            except Exception:  # a status line that fails must not fail the checks
                log.exception("health listener failed")
        return report

    def _start(self, probe: Probe) -> bool:
        if probe.running_since is not None:  # still stuck since an earlier run
            return False
        probe.running_since = time.monotonic()
        probe.thread = threading.Thread(target=self._call, args=(probe,),
                                        name=f"check-{probe.name}", daemon=True)
        probe.thread.start()
        return True

    def _call(self, probe: Probe) -> None:
        try:
            outcome = probe.run()
            checks = outcome if isinstance(outcome, list) else [outcome]
        except Exception as exc:
            checks = [Check(probe.name, "failing", None, f"{type(exc).__name__}: {exc}")]
        probe.result = [_with_liveness(c, probe.liveness) for c in checks]
        probe.running_since = None

    def _outcome(self, probe: Probe) -> list[Check]:
        since = probe.running_since
        if since is None:
            return probe.result
        stuck = time.monotonic() - since
        return [Check(probe.name, "failing", None,
                      f"no answer for {stuck:.1f} s (wedged?)", probe.liveness)]

    def _log_changes(self, report: Report) -> None:
        before = {c.name: c.state for c in self.latest.checks} if self.latest else {}
        for check in report.checks:
            if before.get(check.name, "ok") != check.state:
                level = logging.INFO if check.state == "ok" else logging.WARNING
                log.log(level, "health check %s: %s%s", check.name, check.state,
                        f" ({check.reason})" if check.reason else "",
                        extra={"HEALTH_CHECK": check.name, "HEALTH_STATE": check.state})


def _with_liveness(check: Check, liveness: bool) -> Check:
    if check.liveness == liveness:
        return check
    return Check(check.name, check.state, check.value, check.reason, liveness)
