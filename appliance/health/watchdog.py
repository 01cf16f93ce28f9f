"""The systemd watchdog and status line (``sd_notify``): ``WATCHDOG=1`` only while the process
proves it works, so that systemd restarts a wedged appliance; ``STATUS=`` kept current.

The interval comes from systemd (``WatchdogSec=`` in the unit sets ``WATCHDOG_USEC``), with
``sd_watchdog_enabled`` semantics: ignored when ``WATCHDOG_PID`` names another process. We ping
at half the interval, as sd_watchdog_enabled(3) advises. Outside systemd (no ``NOTIFY_SOCKET``)
every notification is a silent no-op.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Mapping

from systemd import daemon

from .checks import Health, Report

log = logging.getLogger("appliance.health")


def watchdog_interval(env: Mapping[str, str] = os.environ) -> float | None:
    """Seconds between the pings systemd expects, or None if the watchdog is off for us."""
    try:
        usec = int(env.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    pid = env.get("WATCHDOG_PID")
    if usec <= 0 or (pid and pid != str(os.getpid())):
        return None
    return usec / 1_000_000


class Watchdog:
    """Feeds systemd's watchdog while the latest health report is fresh and alive, and sends
    ``STATUS=`` after every run of the checks."""

    def __init__(self, health: Health, status: Callable[[Report], str]) -> None:
        self.health = health
        self.status = status
        self.interval = watchdog_interval()
        self._stop = threading.Event()
        self._fed = True  # whether the last decision was to ping (logged when it changes)
        self._thread = threading.Thread(target=self._loop, name="watchdog", daemon=True)
        health.listeners.append(self._report_status)

    def start(self) -> None:
        if self.interval is not None:
            log.info("systemd watchdog: pinging every %.1f s while the checks pass",
                     self.interval / 2)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(5)

    def _loop(self) -> None:
        assert self.interval is not None
        while not self._stop.wait(self.interval / 2):
            self.feed()

    def feed(self) -> bool:
        """Ping if the checks are keeping up and no liveness check fails; True if pinged."""
        report = self.health.fresh()
        ok = report is not None and report.alive
        if ok != self._fed:
            self._fed = ok
            if ok:
                log.info("systemd watchdog: checks pass again, pinging")
            else:
                log.error("systemd watchdog: %s, no longer pinging",
                          "checks are not running" if report is None else "a check is failing")
        if ok:
            daemon.notify("WATCHDOG=1")
        return ok

    def _report_status(self, report: Report) -> None:
        daemon.notify("STATUS=" + self.status(report))
