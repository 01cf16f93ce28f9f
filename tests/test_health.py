"""Health checks, the systemd watchdog, /health, /metrics, the silent-modality alarm and the
fleet tool, against real appliance processes, a real NOTIFY_SOCKET and a real Prometheus."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from pynetdicom import AE
from pynetdicom.association import Association
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

import appliance

from .conftest import (
    ROOT,
    ApplianceProcess,
    dcmtk,
    free_port,
    make_series,
    storescu,
    wait_for,
)
from .peers import StoreSCP

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
    """Once a failing run was announced (and one more, so that a ping decided just before it
    has arrived), ``runs`` more failing runs of the checks, well over two ping periods, come
    without a ping in between."""
    wait_for(lambda: notify.seen()[-1].startswith("STATUS=failing"), 30, "a failing status")
    statuses = notify.count("STATUS=")
    wait_for(lambda: notify.count("STATUS=") > statuses, 30, "one more check run")
    pings = notify.count("WATCHDOG=1")
    before = len(notify.seen())
    wait_for(lambda: notify.count("STATUS=") >= statuses + 1 + runs, 60, "more check runs")
    window = notify.seen()[before:]
    assert all(m.startswith("STATUS=failing") for m in window if m.startswith("STATUS="))
    assert notify.count("WATCHDOG=1") == pings, window


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
    wait_for(lambda: check(app, "index_write")["status"] == "ok", 30, "index writes again")
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
    # (a short grace: the acceptor threads of the checks' own echoes can hold a slot a moment)
    app = watched(appliance_factory, notify, dicom={"max_associations": 3},
                  health={"busy_grace": 2})
    wait_for(lambda: notify.count("WATCHDOG=1") >= 2, 30, "watchdog pings")
    hogs = occupy(app, 3)
    try:
        wait_for(lambda: check(app, "dicom")["status"] == "failing", 30, "dicom failing")
        assert "association slot" in check(app, "dicom")["reason"]
        assert_pings_stop(notify)
    finally:
        for assoc in hogs:
            assoc.release()
    pings = notify.count("WATCHDOG=1")
    wait_for(lambda: notify.count("WATCHDOG=1") > pings, 60, "pings to resume")
    wait_for(lambda: check(app, "dicom")["status"] == "ok", 30, "the listener serving")


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


# --- /health, appliance health and the fleet, as conditions change ------------------------------

def health_of(app: ApplianceProcess) -> dict[str, Any]:
    return dict(app.get("/health").json())


def states(app: ApplianceProcess) -> dict[str, str]:
    return {c["name"]: c["status"] for c in health_of(app)["checks"]}


def cli_health(app: ApplianceProcess) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "appliance", "health", "--http-port",
                           str(app.http_port)], capture_output=True, text=True, timeout=60,
                          cwd=ROOT)


def fleet(boxes: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(ROOT / "tools" / "fleet.py"), str(boxes),
                           "--timeout", "5"], capture_output=True, text=True, timeout=60,
                          cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})


def test_health_follows_disk_thresholds_and_fleet_agrees(appliance_factory: Any,
                                                         tmp_path: Path) -> None:
    app = appliance_factory(config={"health": {**FAST_CHECKS, "disk_degraded_mb": 1e9}})
    app.start()
    other = appliance_factory("other", config={"health": FAST_CHECKS}).start()
    boxes = tmp_path / "boxes.txt"
    boxes.write_text(f"# two boxes\nbox-a {app.url}\nbox-b {other.url}\n")

    report = health_of(app)
    disk = next(c for c in report["checks"] if c["name"] == "disk")
    assert report["status"] == "degraded" and disk["status"] == "degraded"
    assert "MB free, below 1000000000 MB" in disk["reason"] and disk["value"] > 0
    assert app.get("/health").status_code == 200
    result = cli_health(app)
    assert result.returncode == 1 and result.stdout.startswith("DEGRADED")
    result = fleet(boxes)
    assert result.returncode == 1, result.stdout + result.stderr
    rows = {line.split()[0]: line.split()[1] for line in result.stdout.splitlines()[2:]}
    assert rows == {"box-a": "degraded", "box-b": "ok"}

    assert app.stop() == 0  # the same box, restarted with a failing mark above the free space
    app.config = {"health": {**FAST_CHECKS, "disk_failing_mb": 1e9}}
    app.start()
    assert app.get("/health").status_code == 503
    assert states(app)["disk"] == "failing"
    assert cli_health(app).returncode == 2
    assert fleet(boxes).returncode == 2

    assert app.stop() == 0  # and with the default marks, below the free space: all is well
    app.config = {"health": FAST_CHECKS}
    app.start()
    assert health_of(app)["status"] == "ok"
    result = cli_health(app)
    assert result.returncode == 0 and result.stdout.startswith("OK"), result.stdout
    assert fleet(boxes).returncode == 0

    assert other.stop() == 0  # unreachable is failing
    result = fleet(boxes)
    assert result.returncode == 2 and "unreachable" in result.stdout
    assert cli_health(other).returncode == 2


def test_silent_modality_and_failing_destination(appliance_factory: Any, tmp_path: Path) -> None:
    scp_port = free_port()
    app = appliance_factory(config={
        "health": {**FAST_CHECKS, "max_silence": {"PETCAM": 2}, "max_consecutive_failures": 1},
        "modalities": {"pacs": {"aet": "PACS", "host": "127.0.0.1", "port": scp_port}},
        "routes": {"all": {"destinations": ["pacs"], "calling_aet": ["PETCAM"]}},
        "queue": {"retry_initial": 0.2, "retry_max": 0.5},
    }).start()
    boxes = tmp_path / "boxes.json"
    boxes.write_text(json.dumps([{"name": "pet-box", "url": app.url}]))
    # never heard from since the start: silent once the limit has passed
    wait_for(lambda: states(app).get("source:PETCAM") == "degraded", 30, "PETCAM silent")
    reason = next(c for c in health_of(app)["checks"] if c["name"] == "source:PETCAM")["reason"]
    assert "silent for" in reason and "limit 2 s" in reason

    series = make_series(tmp_path / "in", 3)
    storescu(app, *series, options=("-aet", "PETCAM"))
    wait_for(lambda: states(app)["source:PETCAM"] == "ok", 30, "PETCAM heard from")
    # the destination is down: its entries wait, its failures count
    wait_for(lambda: states(app).get("destination:pacs") == "degraded", 30, "pacs degraded")
    pacs = next(c for c in health_of(app)["checks"] if c["name"] == "destination:pacs")
    assert pacs["value"]["pending"] == 3 and "failures in a row" in pacs["reason"]
    result = fleet(boxes)
    assert result.returncode == 1
    assert "pet-box" in result.stdout and " 3 " in result.stdout  # the queue column

    scp = StoreSCP(scp_port, tmp_path / "pacs", aet="PACS")
    try:
        wait_for(lambda: states(app).get("destination:pacs") == "ok", 60, "pacs delivered")
        pacs = next(c for c in health_of(app)["checks"] if c["name"] == "destination:pacs")
        assert pacs["value"]["pending"] == 0 and pacs["value"]["last_success"] is not None
    finally:
        scp.stop()
    # and silent again, once the limit has passed without news
    wait_for(lambda: states(app).get("source:PETCAM") == "degraded", 30, "PETCAM silent again")


def test_health_not_public_answers_loopback_only(appliance_factory: Any) -> None:
    app = appliance_factory(config={"health": {**FAST_CHECKS, "public": False},
                                    "http": {"host": "0.0.0.0"}}).start()
    assert app.get("/health").status_code == 200  # from this machine
    outside = outside_address()
    if outside is None:
        pytest.skip("no non-loopback address to ask from")
    r = requests.get(f"http://{outside}:{app.http_port}/metrics", timeout=30)
    assert r.status_code == 403 and "health.public" in r.json()["Message"]


def outside_address() -> str | None:
    """An address of this machine that is not loopback (the route to a public address)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("192.0.2.1", 9))  # TEST-NET-1: nothing is sent over UDP connect
        except OSError:
            return None
        address = str(s.getsockname()[0])
    return None if address.startswith("127.") else address


# --- /metrics and Prometheus ---------------------------------------------------------------------

def scrape(app: ApplianceProcess) -> list[Any]:
    """Every sample of ``/metrics``, after checking that each has its HELP and TYPE lines."""
    from prometheus_client.parser import text_string_to_metric_families

    response = app.get("/metrics")
    assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    text = response.text
    typed = set(re.findall(r"^# TYPE (\S+) ", text, re.M))
    assert typed == set(re.findall(r"^# HELP (\S+) ", text, re.M))
    samples = [s for f in text_string_to_metric_families(text) for s in f.samples]
    for s in samples:
        assert s.name in typed or re.sub(r"_(bucket|sum|count)$", "", s.name) in typed, s.name
    return samples


def sample(samples: list[Any], name: str, **labels: str) -> float:
    return float(next(s.value for s in samples
                      if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())))


def test_metrics_count_receptions_queries_and_associations(appliance_factory: Any,
                                                           tmp_path: Path) -> None:
    app = appliance_factory(config={
        "health": FAST_CHECKS,
        "dicom": {"store_from_unknown": False},
        "modalities": {"petcam": {"aet": "PETCAM", "host": "127.0.0.1", "port": free_port()}},
    }).start()
    series = make_series(tmp_path / "in", 4)
    storescu(app, *series, options=("-aet", "PETCAM"))
    dcmtk("findscu", "-S", "-aet", "PETCAM", "-aec", app.aet, "-k", "QueryRetrieveLevel=STUDY",
          "-k", "StudyInstanceUID", "127.0.0.1", str(app.dicom_port))
    refused = dcmtk("echoscu", "-aet", "STRANGER", "-aec", app.aet, "127.0.0.1",
                    str(app.dicom_port), check=False)
    assert refused.returncode != 0
    # our own C-ECHO is accepted although only known modalities may associate
    assert states(app)["dicom"] == "ok"

    samples = scrape(app)
    stored = int(app.statistics()["TotalDiskSize"])
    assert sample(samples, "appliance_received_instances_total", source="PETCAM") == 4
    assert sample(samples, "appliance_received_bytes_total", source="PETCAM") == stored
    assert sample(samples, "appliance_storage_used_bytes") == stored
    assert sample(samples, "appliance_storage_instances") == 4
    assert sample(samples, "appliance_source_last_reception_timestamp_seconds",
                  source="PETCAM") > 0
    latency = "appliance_dimse_duration_seconds_count"
    assert sample(samples, latency, operation="C-STORE") == 4
    assert sample(samples, latency, operation="C-FIND") == 1
    assert sample(samples, "appliance_associations_total", event="rejected") >= 1
    assert sample(samples, "appliance_associations_total", event="accepted") >= 2
    for name in ("appliance_storage_free_bytes", "process_resident_memory_bytes",
                 "process_open_fds", "process_cpu_seconds_total", "appliance_uptime_seconds"):
        assert sample(samples, name) > 0
    assert sample(samples, "appliance_build_info", version=appliance.__version__) == 1
    assert sample(samples, "appliance_health_status") == 0

    # the last reception survives a restart (read back from the index)
    assert app.stop() == 0
    app.start()
    assert sample(scrape(app), "appliance_source_last_reception_timestamp_seconds",
                  source="PETCAM") > 0


PROMETHEUS_DIR = ROOT / "tools" / "prometheus"


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    if shutil.which("promtool") is None:
        pytest.fail("promtool is not installed (tools/test installs prometheus)")
    return subprocess.run(["promtool", *args], capture_output=True, text=True, timeout=120,
                          cwd=PROMETHEUS_DIR)


def test_shipped_prometheus_configuration_and_rules_are_valid() -> None:
    for args in (("check", "config", "prometheus.yml"), ("check", "rules", "alerts.yml"),
                 ("test", "rules", "alerts_test.yml")):
        result = promtool(*args)
        assert result.returncode == 0, result.stdout + result.stderr
        assert "SUCCESS" in result.stdout


class Prometheus:
    """A real Prometheus server with the shipped configuration and rules, fast intervals."""

    def __init__(self, folder: Path, targets: list[str]) -> None:
        folder.mkdir()
        config = (PROMETHEUS_DIR / "prometheus.yml").read_text()
        fast = config.replace("scrape_interval: 30s", "scrape_interval: 1s") \
            .replace("scrape_timeout: 10s", "scrape_timeout: 1s") \
            .replace("evaluation_interval: 30s", "evaluation_interval: 1s")
        assert fast.count(": 1s") == 3
        (folder / "prometheus.yml").write_text(fast)
        rules = (PROMETHEUS_DIR / "alerts.yml").read_text()
        (folder / "alerts.yml").write_text(re.sub(r"for: \d+m", "for: 2s", rules))
        (folder / "boxes").mkdir()
        (folder / "boxes" / "test.json").write_text(json.dumps([{"targets": targets}]))
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = open(folder / "prometheus.log", "wb")
        self.proc = subprocess.Popen(
            ["prometheus", f"--config.file={folder / 'prometheus.yml'}",
             f"--storage.tsdb.path={folder / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{self.port}"],
            stdout=self.log, stderr=subprocess.STDOUT)
        wait_for(self._ready, 60, "Prometheus to be ready")

    def _ready(self) -> bool:
        if self.proc.poll() is not None:
            raise RuntimeError(f"prometheus exited with {self.proc.returncode}")
        try:
            return requests.get(self.url + "/-/ready", timeout=1).status_code == 200
        except requests.RequestException:
            return False

    def api(self, path: str, **params: str) -> Any:
        r = requests.get(f"{self.url}/api/v1/{path}", params=params, timeout=30)
        r.raise_for_status()
        return r.json()["data"]

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(60)
        self.log.close()


def test_prometheus_scrapes_three_appliances_and_alerts_on_one_down(appliance_factory: Any,
                                                                   tmp_path: Path) -> None:
    if shutil.which("prometheus") is None:
        pytest.fail("prometheus is not installed (tools/test installs it)")
    apps = [appliance_factory(f"box{i}", config={"health": FAST_CHECKS}).start()
            for i in range(3)]
    targets = [f"127.0.0.1:{app.http_port}" for app in apps]
    prometheus = Prometheus(tmp_path / "prometheus", targets)
    try:
        def all_up() -> bool:
            active = prometheus.api("targets")["activeTargets"]
            return sorted(t["labels"]["instance"] for t in active if t["health"] == "up") \
                == sorted(targets)

        wait_for(all_up, 60, "three targets up")
        for metric in ("appliance_build_info", "appliance_storage_free_bytes",
                       "process_resident_memory_bytes", "appliance_health_status",
                       "appliance_associations_active"):
            wait_for(lambda m=metric: len(prometheus.api("query", query=m)["result"]) == 3, 30,
                     f"{metric} of three boxes")
        assert not prometheus.api("alerts")["alerts"]

        assert apps[1].stop() == 0

        def box_down() -> bool:
            return any(a["labels"]["alertname"] == "ApplianceDown" and a["state"] == "firing"
                       and a["labels"]["instance"] == targets[1]
                       for a in prometheus.api("alerts")["alerts"])

        wait_for(box_down, 60, "the ApplianceDown alert")
        firing = [a["labels"]["instance"] for a in prometheus.api("alerts")["alerts"]]
        assert firing == [targets[1]]
    finally:
        prometheus.stop()
