"""Health checks, the systemd watchdog, /health, /metrics, the silent-modality alarm and the
fleet tool, against real appliance processes, a real NOTIFY_SOCKET and a real Prometheus."""

from __future__ import annotations

import socket
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pynetdicom import AE
from pynetdicom.association import Association
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from .conftest import ApplianceProcess, wait_for

pytestmark = pytest.mark.integration

FAST_CHECKS = {"interval": 0.3, "timeout": 3.0, "disk_degraded_mb": 0, "disk_failing_mb": 0}


class NotifySocket:
    """A systemd-style notification socket (AF_UNIX datagrams) collecting what is sent."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.messages: list[str] = []
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._receive, daemon=True)
        self._thread.start()

    def _receive(self) -> None:
        while True:
            try:
                data = self.sock.recv(4096)
            except OSError:
                return
            with self._lock:
                self.messages.extend(data.decode().splitlines())

    def seen(self) -> list[str]:
        with self._lock:
            return list(self.messages)

    def count(self, prefix: str) -> int:
        return sum(m.startswith(prefix) for m in self.seen())

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def notify(tmp_path: Path) -> Iterator[NotifySocket]:
    listener = NotifySocket(tmp_path / "notify")
    yield listener
    listener.close()


def watched(appliance_factory: Any, notify: NotifySocket, **config: Any) -> ApplianceProcess:
    """An appliance under a (simulated) systemd watchdog of 2 s."""
    env = {"NOTIFY_SOCKET": str(notify.path), "WATCHDOG_USEC": "2000000"}
    health = {**FAST_CHECKS, **config.pop("health", {})}
    return appliance_factory(config={"health": health, **config}, env=env).start()


def check(app: ApplianceProcess, name: str) -> dict[str, Any]:
    report = app.get("/health").json()
    return next(c for c in report["checks"] if c["name"] == name)


def assert_pings_stop(notify: NotifySocket, runs: int = 4) -> None:
    """Once a failing run was announced, ``runs`` more status lines (one per run of the
    checks, well over two ping periods) come without a ping in between."""
    wait_for(lambda: notify.seen()[-1].startswith("STATUS=failing"), 30, "a failing status")
    pings = notify.count("WATCHDOG=1")
    statuses = notify.count("STATUS=")
    wait_for(lambda: notify.count("STATUS=") >= statuses + runs, 60, "more check runs")
    assert notify.count("WATCHDOG=1") == pings


def test_watchdog_stops_while_the_index_is_locked_and_resumes(appliance_factory: Any,
                                                              notify: NotifySocket) -> None:
    app = watched(appliance_factory, notify)
    wait_for(lambda: "READY=1" in notify.seen(), 30, "READY=1")
    wait_for(lambda: notify.count("WATCHDOG=1") >= 3, 30, "watchdog pings")
    status = next(m for m in notify.seen() if m.startswith("STATUS="))
    assert status.startswith("STATUS=ok: ") and "MB free" in status

    # another process takes the database's write lock and keeps it: writes cannot commit
    locker = sqlite3.connect(app.data / "index.sqlite", isolation_level=None, timeout=30)
    locker.execute("BEGIN EXCLUSIVE")
    try:
        wait_for(lambda: check(app, "index_write")["status"] == "failing", 30, "index failing")
        assert app.get("/health").status_code == 503
        assert_pings_stop(notify)
    finally:
        locker.execute("ROLLBACK")
        locker.close()
    pings = notify.count("WATCHDOG=1")
    wait_for(lambda: notify.count("WATCHDOG=1") > pings, 60, "pings to resume")
    assert app.get("/health").json()["status"] == "ok"
    assert app.stop() == 0
    assert "STOPPING=1" in notify.seen()


def occupy(app: ApplianceProcess, count: int) -> list[Association]:
    """Take ``count`` association slots (retrying while the health check's C-ECHO holds one)."""
    ae = AE(ae_title="HOG")
    ae.add_requested_context(Verification)
    assocs: list[Association] = []

    def one_more() -> bool:
        assoc = ae.associate("127.0.0.1", app.dicom_port, ae_title=app.aet)
        if assoc.is_established:
            assocs.append(assoc)
        return len(assocs) == count

    wait_for(one_more, 30, f"{count} associations")
    return assocs


def test_watchdog_stops_while_the_dicom_listener_accepts_nothing(appliance_factory: Any,
                                                                 notify: NotifySocket) -> None:
    app = watched(appliance_factory, notify, dicom={"max_associations": 2},
                  health={"busy_grace": 0})
    wait_for(lambda: notify.count("WATCHDOG=1") >= 2, 30, "watchdog pings")
    hogs = occupy(app, 2)
    try:
        wait_for(lambda: check(app, "dicom")["status"] == "failing", 30, "dicom failing")
        assert "association slot" in check(app, "dicom")["reason"]
        assert_pings_stop(notify)
    finally:
        for assoc in hogs:
            assoc.release()
    pings = notify.count("WATCHDOG=1")
    wait_for(lambda: notify.count("WATCHDOG=1") > pings, 60, "pings to resume")
    assert check(app, "dicom")["status"] == "ok"


def test_busy_listener_is_degraded_within_its_grace(appliance_factory: Any,
                                                    notify: NotifySocket) -> None:
    app = watched(appliance_factory, notify, dicom={"max_associations": 1})
    wait_for(lambda: notify.count("WATCHDOG=1") >= 1, 30, "watchdog pings")
    hogs = occupy(app, 1)
    try:
        wait_for(lambda: check(app, "dicom")["status"] == "degraded", 30, "dicom busy")
        response = app.get("/health")
        assert response.status_code == 200 and response.json()["status"] == "degraded"
        pings = notify.count("WATCHDOG=1")
        wait_for(lambda: notify.count("WATCHDOG=1") > pings, 30, "pings while busy")
    finally:
        hogs[0].release()
