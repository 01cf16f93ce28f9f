"""The health registry and the watchdog's reading of systemd's environment, in process."""

from __future__ import annotations

import os
import threading

from appliance.health.checks import Check, Health
from appliance.health.watchdog import watchdog_interval


def registry(timeout: float = 0.2) -> Health:
    return Health(lambda: 10.0, lambda: timeout)


def test_a_wedged_probe_is_failing_and_not_started_twice() -> None:
    release = threading.Event()
    calls: list[int] = []

    def wedged() -> Check:
        calls.append(1)
        release.wait(30)
        return Check("stuck", "ok")

    health = registry()
    health.add("stuck", wedged, liveness=True)
    health.add("fine", lambda: Check("fine", "ok", 1.5))
    for _ in range(2):
        report = health.run()
        stuck = next(c for c in report.checks if c.name == "stuck")
        assert stuck.state == "failing" and "no answer" in stuck.reason and stuck.liveness
        assert report.state == "failing" and not report.alive
    assert calls == [1]  # the second run did not pile a new thread on the stuck one
    release.set()
    health.probes[0].thread.join(5)  # type: ignore[union-attr]
    report = health.run()
    assert report.state == "ok" and report.alive and calls == [1, 1]


def test_a_raising_probe_is_failing_with_its_error_and_degraded_is_still_alive() -> None:
    def broken() -> Check:
        raise OSError("disk on fire")

    health = registry()
    health.add("broken", broken)
    health.add("sources", lambda: [Check("source:A", "ok"), Check("source:B", "degraded",
                                                                  None, "silent")])
    report = health.run()
    assert [(c.name, c.state) for c in report.checks] == [
        ("broken", "failing"), ("source:A", "ok"), ("source:B", "degraded")]
    assert report.checks[0].reason == "OSError: disk on fire"
    assert report.alive  # no liveness check fails: the watchdog is still fed
    body = report.to_json()
    assert body["status"] == "failing" and body["checks"][2]["reason"] == "silent"


def test_watchdog_interval_follows_sd_watchdog_enabled() -> None:
    assert watchdog_interval({}) is None
    assert watchdog_interval({"WATCHDOG_USEC": "2000000"}) == 2.0
    assert watchdog_interval({"WATCHDOG_USEC": "0"}) is None
    assert watchdog_interval({"WATCHDOG_USEC": "soon"}) is None
    mine = {"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid())}
    assert watchdog_interval(mine) == 30.0
    assert watchdog_interval({**mine, "WATCHDOG_PID": str(os.getpid() + 1)}) is None
