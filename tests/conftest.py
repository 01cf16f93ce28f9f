"""Shared fixtures: a real appliance process on free ports, DCMTK peers, and test data."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "test-artifacts"

# What ``storescu -v`` logs for each acknowledged file.
SUCCESS_LINE = "Received Store Response (Success)"
# Both receive paths: the fast path in the network thread (the default), and pynetdicom's own.
RECEIVE_PATHS = {"fast-store": {}, "pynetdicom-store": {"dicom": {"fast_store": False}}}

ADMIN, ADMIN_PASSWORD = "admin", "correct horse battery"

# Debian's DCMTK leaves Nagle's algorithm on unless told otherwise.
DCMTK_ENV = {**os.environ, "TCP_NODELAY": "1"}


EPHEMERAL_LOW = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
_GIVEN: set[int] = set()


def free_port() -> int:
    """A free port below the kernel's ephemeral range, not handed out before: a port from
    ``bind(0)`` may be taken by an outgoing connection before the server under test binds it
    ("Address already in use")."""
    while True:
        port = random.randrange(10000, EPHEMERAL_LOW)
        if port in _GIVEN:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        _GIVEN.add(port)
        return port


def wait_for(predicate: Any, timeout: float = 30.0, what: str = "condition") -> None:
    """Poll ``predicate`` until true (tests never sleep a fixed time)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return
        time.sleep(0.05)
    raise TimeoutError(f"timed out waiting for {what}")


def temp_files(data: Path) -> list[Path]:
    """What a data directory's ``tmp/`` holds, but the storage health check's own file, which
    lives there for the time of one fsync at every run of the checks."""
    from appliance.health.probes import STORAGE_PROBE

    tmp = data / "tmp"
    return sorted(p for p in tmp.iterdir()
                  if not p.name.startswith(STORAGE_PROBE)) if tmp.exists() else []


def port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


class ApplianceProcess:
    """``appliance serve`` in a subprocess, on free ports, with its own data directory."""

    def __init__(self, data: Path, aet: str = "APPLIANCE", config: dict[str, Any] | None = None,
                 env: dict[str, str] | None = None, accounts: bool = True):
        self.data = data
        self.aet = aet
        self.config = config or {}
        self.env = env or {}  # added to the environment (NOTIFY_SOCKET, WATCHDOG_USEC...)
        # An administrator and an API token, made before the first start (as ``appliance user
        # add`` would): the REST API needs credentials. ``session`` sends the token.
        self.accounts = accounts
        self.session = requests.Session()
        self.dicom_port = free_port()
        self.http_port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = data.parent / f"{data.name}-appliance.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def command(self) -> list[str]:
        cmd = [sys.executable, "-m", "appliance", "serve", "--data", str(self.data),
               "--aet", self.aet, "--dicom-port", str(self.dicom_port),
               "--http-port", str(self.http_port)]
        if self.config:
            path = self.data.parent / f"{self.data.name}-config.json"
            path.write_text(json.dumps(self.config))
            cmd += ["--config", str(path)]
        return cmd

    def provision(self) -> None:
        from appliance.accounts import Accounts

        accounts = Accounts(self.data)
        if not accounts.has_admin():
            accounts.add(ADMIN, "admin", ADMIN_PASSWORD)
            token = accounts.create_token(ADMIN, "tests")
            self.data.parent.joinpath(f"{self.data.name}-token").write_text(token)
        token = self.data.parent.joinpath(f"{self.data.name}-token").read_text()
        self.session.headers["Authorization"] = f"Bearer {token}"

    def start(self, timeout: float = 60.0) -> ApplianceProcess:
        if self.accounts:
            self.provision()
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT,
                                     cwd=ROOT, env={**os.environ, **self.env})
        def ready() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"appliance exited with {self.proc.returncode}:\n{self.log()}")
            return port_open(self.dicom_port) and self._http_ok()
        wait_for(ready, timeout, "the appliance to accept connections")
        return self

    def _http_ok(self) -> bool:
        try:
            return self.session.get(self.url + "/system", timeout=1).status_code in (200, 401)
        except requests.RequestException:
            return False

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60.0) -> int:
        """Send ``sig`` and return the exit code."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired as exc:
            self.proc.send_signal(signal.SIGUSR1)  # its threads' stacks, into its log
            time.sleep(1)
            self.kill()
            raise AssertionError(f"no exit {timeout:.0f} s after signal {sig}; its log, with "
                                 f"its threads' stacks at the end:\n{self.log()[-20000:]}") from exc
        if code != 0 and sig in (signal.SIGTERM, signal.SIGINT):  # a stop past STOP_LIMIT
            raise AssertionError(f"exit {code} after signal {sig}; its log:\n"
                                 f"{self.log()[-20000:]}")
        return code

    def kill(self) -> None:
        """``kill -9``: no chance to clean up."""
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(30)

    def get(self, path: str, **kw: Any) -> requests.Response:
        return self.session.get(self.url + path, timeout=30, **kw)

    def json(self, path: str) -> Any:
        r = self.get(path)
        r.raise_for_status()
        return r.json()

    def statistics(self) -> dict[str, Any]:
        return dict(self.json("/statistics"))

    def cli(self, command: str, *args: str) -> subprocess.CompletedProcess[str]:
        """``appliance COMMAND --data <its data> ARGS`` (beside it, or while it is stopped)."""
        return subprocess.run([sys.executable, "-m", "appliance", command, "--data",
                               str(self.data), *args], capture_output=True, text=True,
                              timeout=300, cwd=ROOT)

    def fsck(self, *args: str) -> subprocess.CompletedProcess[str]:
        return self.cli("fsck", *args)


@pytest.fixture
def appliance_factory(tmp_path: Path) -> Iterator[Any]:
    """Make and start appliances; all are stopped at the end of the test."""
    made: list[ApplianceProcess] = []

    def make(name: str = "data", **kw: Any) -> ApplianceProcess:
        app = ApplianceProcess(tmp_path / name, **kw)
        made.append(app)
        return app

    yield make
    for app in made:
        if app.proc is not None and app.proc.poll() is None:
            app.kill()


@pytest.fixture
def appliance(appliance_factory: Any) -> ApplianceProcess:
    return appliance_factory().start()


def dcmtk(tool: str, *args: str, timeout: float = 300, check: bool = True,
          env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run a DCMTK tool (with TCP_NODELAY=1 unless ``env`` says otherwise)."""
    if shutil.which(tool) is None:
        pytest.fail(f"{tool} is not installed (tools/test installs dcmtk)")
    return subprocess.run([tool, *args], capture_output=True, text=True, timeout=timeout,
                          check=check, env=env or DCMTK_ENV)


def storescu(app: ApplianceProcess, *files: str | Path, options: tuple[str, ...] = (),
             check: bool = True, **kw: Any) -> subprocess.CompletedProcess[str]:
    return dcmtk("storescu", "-aec", app.aet, *options, "127.0.0.1", str(app.dicom_port),
                 *[str(f) for f in files], check=check, **kw)


# --- test data -------------------------------------------------------------------------------

def identifier(level: str, **keys: object) -> Any:
    """A query/retrieve identifier: QueryRetrieveLevel and the given keys."""
    from pydicom.dataset import Dataset

    ds = Dataset()
    ds.QueryRetrieveLevel = level
    for keyword, value in keys.items():
        setattr(ds, keyword, value)
    return ds


def pydicom_file(name: str) -> Path:
    from pydicom.data import get_testdata_file

    path = get_testdata_file(name)
    assert path is not None, f"pydicom test file {name} is missing"
    return Path(path)


def pynetdicom_file(name: str) -> Path:
    import pynetdicom

    return Path(pynetdicom.__file__).parent / "tests" / "dicom_files" / name


def make_series(folder: Path, count: int, patient_id: str = "PAT1", study_uid: str | None = None,
                series_uid: str | None = None, modality: str = "CT", size: int = 64,
                patient_name: str = "Test^Patient") -> list[Path]:
    """Generate ``count`` CT-like instances of one series (``size`` x ``size`` 16-bit pixels)."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    folder.mkdir(parents=True, exist_ok=True)
    study_uid = study_uid or generate_uid()
    series_uid = series_uid or generate_uid()
    paths = []
    pixels = bytes(size * size * 2)
    for i in range(count):
        sop_uid = generate_uid()
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = sop_uid
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID = CTImageStorage
        ds.SOPInstanceUID = sop_uid
        ds.PatientID = patient_id
        ds.PatientName = patient_name
        ds.StudyInstanceUID = study_uid
        ds.SeriesInstanceUID = series_uid
        ds.StudyDate = "20260101"
        ds.Modality = modality
        ds.InstanceNumber = i + 1
        ds.Rows = ds.Columns = size
        ds.BitsAllocated = ds.BitsStored = 16
        ds.HighBit = 15
        ds.PixelRepresentation = 0
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.PixelData = pixels
        path = folder / f"{i:05d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths
