#!/usr/bin/env python3
"""The project benchmark: C-STORE throughput and memory of the appliance against Orthanc and
DCMTK's storescp, on loopback, or (--qr) Query/Retrieve latency and retrieve rates of the
appliance against Orthanc, or (--forward) store-and-forward rates of the appliance and of
Orthanc against storescu sending straight to the destination. It prints a report (and writes
it as JSON); it is not a test.

    tools/bench [--sets tiny,small,large] [--quick]
    tools/bench --qr [--quick] [--retrieve]
    tools/bench --forward [--sets tiny,small] [--quick]

Every server starts fresh, on free ports, with an empty store in a temporary folder; the sender
is DCMTK's storescu. Generated data sets are cached in /tmp/appliance-bench-data and reused.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import itertools
import json
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from types import FrameType
from typing import Any, TypeVar

import requests

ROOT = Path(__file__).resolve().parent.parent
VENV_BIN = ROOT / ".venv" / "bin"
CACHE = Path(tempfile.gettempdir()) / "appliance-bench-data"
RESULTS = ROOT / "bench-results"
ORTHANC = "/usr/sbin/Orthanc"
LOOPBACK = "127.0.0.1"
BENCH_AET = "BENCHSCU"

MIB = 1024 * 1024
MB = 1_000_000
PARTS = 4  # folders per data set, one per parallel association
CACHE_FORMAT = 1  # bump when the generated files change
START_TIMEOUT = 120.0
STOP_TIMEOUT = 60.0
SEND_TIMEOUT = 3600.0
VERIFY_TIMEOUT = 120.0
IDLE_SECONDS = 10.0
STORES_GIB = 16  # size of the journaled filesystem (sparse: it takes what the stores hold)
CLK_TCK = os.sysconf("SC_CLK_TCK")

# Debian's DCMTK (storescu, and storescp and Orthanc on the receiving side) leaves Nagle's
# algorithm on unless TCP_NODELAY=1 is in its environment; small C-STORE exchanges then stall on
# delayed ACKs (~40 ms each). Every server, and storescu, gets TCP_NODELAY=1, except the sender of
# the cell that measures a default storescu.
DEFAULT_ENV = {k: v for k, v in os.environ.items() if k != "TCP_NODELAY"}
NODELAY_ENV = {**DEFAULT_ENV, "TCP_NODELAY": "1"}

MF_GRAYSCALE_WORD_SC = "1.2.840.10008.5.1.4.1.1.7.3"
CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"
VERIFICATION = "1.2.840.10008.1.1"


# --- small helpers ----------------------------------------------------------------------------

def wait_for(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll ``predicate`` until it is true, at most ``timeout`` seconds."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return
        time.sleep(0.05)
    raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")


def free_ports(n: int) -> list[int]:
    """``n`` distinct free TCP ports on loopback."""
    with contextlib.ExitStack() as stack:
        socks = [stack.enter_context(socket.socket()) for _ in range(n)]
        for s in socks:
            s.bind((LOOPBACK, 0))
        return [int(s.getsockname()[1]) for s in socks]


def listening(port: int) -> bool:
    """Whether some socket listens on ``port`` (read from /proc: no connection is made)."""
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError), open(table) as f:
            for line in itertools.islice(f, 1, None):
                fields = line.split()
                if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                    return True
    return False


def proc_status(pid: int) -> dict[str, int]:
    """The kB fields of /proc/PID/status (VmRSS, VmHWM, ...)."""
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if value.strip().endswith("kB"):
                out[key] = int(value.split()[0])
    return out


def rss_mib(pid: int, field: str = "VmRSS") -> float:
    return proc_status(pid)[field] / 1024


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process, in seconds."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def first_line(cmd: list[str]) -> str:
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"unavailable ({exc})"
    return ((out.stdout or out.stderr).strip().splitlines() or ["?"])[0]


def tail(path: Path, lines: int = 15) -> str:
    if not path.exists():
        return ""
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


# --- data sets --------------------------------------------------------------------------------

@dataclass(frozen=True)
class SetSpec:
    """What to generate: ``count`` instances of ``size`` x ``size`` x ``frames`` 16-bit pixels,
    spread over ``studies`` studies of ``series`` series each."""

    name: str
    count: int
    studies: int
    series: int
    size: int
    frames: int = 1
    first_study: int | None = None  # Q/R sets: patients, names and dates vary with the study


    @property
    def key(self) -> str:
        first = "" if self.first_study is None else f"-s{self.first_study}"
        return (f"{self.name}-{self.count}x{self.size}x{self.size}x{self.frames}{first}"
                f"-v{CACHE_FORMAT}")

    @property
    def sop_class(self) -> str:
        return MF_GRAYSCALE_WORD_SC if self.frames > 1 else CT_IMAGE


def set_specs(quick: bool) -> dict[str, SetSpec]:
    """The data sets (``quick``: a tenth of the counts and one 100 MB large object)."""
    d = 10 if quick else 1
    return {
        "tiny": SetSpec("tiny", 5000 // d, 10, 5, 64),
        "small": SetSpec("small", 2000 // d, 4, 2, 512),
        "large": SetSpec("large", 1 if quick else 3, 1 if quick else 3, 1, 512,
                         200 if quick else 410),
        "prefill": SetSpec("prefill", 100_000 // d, 20, 10, 64),
    }


@dataclass(frozen=True)
class DataSet:
    """A generated set on disk: ``root/part0..part3`` hold the files."""

    name: str
    root: Path
    files: int
    bytes: int

    def parts(self) -> list[Path]:
        """The non-empty part folders (one per parallel association)."""
        return [p for p in sorted(self.root.iterdir()) if p.is_dir() and any(p.iterdir())]


def pixel_bytes(n: int) -> bytes:
    """``n`` bytes of a ramp pattern (not all zeros, cheap to build)."""
    ramp = bytes(range(256))
    return (ramp * (n // 256 + 1))[:n]


def make_instance(spec: SetSpec, index: int, study_uid: str, series_uid: str,
                  series_no: int, pixels: bytes) -> Any:
    """One instance of ``spec`` as a pydicom dataset (Explicit VR Little Endian)."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import UID, ExplicitVRLittleEndian, generate_uid

    sop_uid = generate_uid()
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(spec.sop_class)
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = spec.sop_class
    ds.SOPInstanceUID = sop_uid
    ds.PatientID = f"BENCH-{spec.name}-{study_uid[-6:]}"
    ds.PatientName = f"Bench^{spec.name.capitalize()}"
    ds.PatientBirthDate = "19700101"
    ds.PatientSex = "O"
    ds.StudyInstanceUID = study_uid
    ds.StudyID = study_uid[-8:]
    ds.StudyDate = ds.SeriesDate = "20260101"
    ds.StudyTime = ds.SeriesTime = "120000"
    ds.AccessionNumber = study_uid[-10:]
    ds.StudyDescription = f"Benchmark {spec.name}"
    ds.SeriesInstanceUID = series_uid
    ds.SeriesNumber = series_no
    ds.SeriesDescription = f"Series {series_no}"
    ds.Modality = "CT" if spec.frames == 1 else "OT"
    ds.InstanceNumber = index + 1
    ds.ImagePositionPatient = [0, 0, index]
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.PixelSpacing = [0.5, 0.5]
    ds.SliceThickness = 1
    ds.Rows = ds.Columns = spec.size
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    if spec.frames > 1:
        ds.NumberOfFrames = spec.frames
    ds.PixelData = pixels
    return ds


SURNAMES = (
    "SMITH", "JOHNSON", "WILLIAMS", "BROWN", "JONES", "GARCIA", "MILLER", "DAVIS", "RODRIGUEZ",
    "MARTINEZ", "HERNANDEZ", "LOPEZ", "GONZALEZ", "WILSON", "ANDERSON", "THOMAS", "TAYLOR",
    "MOORE", "JACKSON", "MARTIN", "LEE", "PEREZ", "THOMPSON", "WHITE", "HARRIS", "SANCHEZ",
    "CLARK", "RAMIREZ", "LEWIS", "ROBINSON", "WALKER", "YOUNG", "ALLEN", "KING", "WRIGHT",
    "SCOTT", "TORRES", "NGUYEN", "HILL", "FLORES", "GREEN", "ADAMS", "NELSON", "BAKER", "HALL",
    "RIVERA", "CAMPBELL", "MITCHELL", "CARTER", "ROBERTS",
)
GIVEN_NAMES = ("JOHN", "MARY", "PETER", "ANNA", "PAUL", "LINDA", "MARK", "SARA", "LUKE", "EMMA")
FIRST_DATE = datetime.date(2016, 1, 1)


def study_date(study: int) -> datetime.date:
    """The date of Q/R study number ``study``: spread over ten years, 37 days apart."""
    return FIRST_DATE + datetime.timedelta(days=study * 37 % 3650)


def vary_patient(ds: Any, study: int) -> None:
    """Give Q/R study number ``study`` its patient (two studies each, 50 surnames) and date."""
    patient = study // 2
    surname = SURNAMES[patient % len(SURNAMES)]
    given = GIVEN_NAMES[patient // len(SURNAMES) % len(GIVEN_NAMES)]
    ds.PatientID = f"QR{patient:06d}"
    ds.PatientName = f"{surname}^{given}"
    ds.StudyDate = ds.SeriesDate = study_date(study).strftime("%Y%m%d")
    ds.StudyDescription = f"Q/R study {study}"


def generate(spec: SetSpec) -> DataSet:
    """Generate ``spec`` under the cache (or reuse a complete earlier generation, read once so
    that the first server measured is not the only one whose sender reads it cold from disk)."""
    from pydicom.uid import generate_uid

    root = CACHE / spec.key
    manifest = CACHE / f"{spec.key}.json"
    if manifest.exists():
        info = json.loads(manifest.read_text())
        for path in root.rglob("*.dcm"):
            with open(path, "rb") as f:
                while f.read(1 << 20):
                    pass
        return DataSet(spec.name, root, info["files"], info["bytes"])
    print(f"generating {spec.name}: {spec.count} instances into {root} ...", flush=True)
    started = time.monotonic()
    shutil.rmtree(root, ignore_errors=True)
    for k in range(PARTS):
        (root / f"part{k}").mkdir(parents=True)
    pixels = pixel_bytes(spec.size * spec.size * 2 * spec.frames)
    groups = spec.studies * spec.series
    study_uids = [generate_uid() for _ in range(spec.studies)]
    series_uids = [generate_uid() for _ in range(groups)]
    total = 0
    for i in range(spec.count):
        group = i * groups // spec.count
        ds = make_instance(spec, i, study_uids[group // spec.series], series_uids[group],
                           group % spec.series + 1, pixels)
        if spec.first_study is not None:
            vary_patient(ds, spec.first_study + group // spec.series)
        path = root / f"part{i % PARTS}" / f"{i:06d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        total += path.stat().st_size
    manifest.write_text(json.dumps({"files": spec.count, "bytes": total}))
    print(f"  done in {time.monotonic() - started:.0f} s ({total / MB:.0f} MB)", flush=True)
    return DataSet(spec.name, root, spec.count, total)


# --- servers ----------------------------------------------------------------------------------

class Server:
    """A server process on free loopback ports with its own empty store under ``workdir``."""

    name = "server"
    aet = "SERVER"
    concurrent = True  # serves several associations at once
    env = NODELAY_ENV  # its environment: DCMTK's Nagle's algorithm off

    def __init__(self, workdir: Path, config: dict[str, Any] | None = None) -> None:
        self.workdir = workdir
        self.config = config or {}  # server-specific settings (appliance or Orthanc JSON)
        self.workdir.mkdir(parents=True)
        self.dicom_port, self.http_port = free_ports(2)
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = workdir / "server.log"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def command(self) -> list[str]:
        raise NotImplementedError

    def count(self) -> int:
        """How many instances the server has stored."""
        raise NotImplementedError

    def ready(self) -> bool:
        return listening(self.dicom_port)

    def start(self) -> None:
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, env=self.env,
                                         cwd=self.workdir)

        def up() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}:\n"
                                   f"{tail(self.log_path)}")
            return self.ready()

        wait_for(up, START_TIMEOUT, f"{self.name} to start")

    def stop(self) -> None:
        """SIGTERM, then SIGKILL if it does not exit in time."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            print(f"warning: {self.name} ignored SIGTERM for {STOP_TIMEOUT:.0f} s: killed",
                  file=sys.stderr)
            self.proc.kill()
            self.proc.wait(STOP_TIMEOUT)


class HttpStatisticsServer(Server):
    """A server with Orthanc's ``GET /statistics``."""

    headers: dict[str, str] = {}  # credentials, if the server wants some

    def statistics(self) -> dict[str, Any] | None:
        try:
            r = requests.get(f"http://{LOOPBACK}:{self.http_port}/statistics", timeout=10,
                             headers=self.headers)
        except requests.RequestException:
            return None
        return dict(r.json()) if r.status_code == 200 else None

    def ready(self) -> bool:
        return super().ready() and self.statistics() is not None

    def count(self) -> int:
        stats = self.statistics()
        return int(stats["CountInstances"]) if stats else -1


class Appliance(HttpStatisticsServer):
    name = "appliance"
    aet = "APPLIANCE"

    def start(self) -> None:
        """An administrator and an API token first: the REST API needs credentials."""
        cli = [str(VENV_BIN / "appliance"), "user", "--data", str(self.workdir / "data")]
        subprocess.run([*cli, "add", "bench", "--admin", "--password-stdin"], check=True,
                       input="bench password\n", text=True, capture_output=True)
        token = subprocess.run([*cli, "token", "bench"], check=True, text=True,
                               capture_output=True).stdout.strip()
        self.headers = {"Authorization": f"Bearer {token}"}
        super().start()

    def command(self) -> list[str]:
        cmd = [str(VENV_BIN / "appliance"), "serve", "--data", str(self.workdir / "data"),
               "--aet", self.aet, "--dicom-port", str(self.dicom_port),
               "--http-port", str(self.http_port)]
        if self.config:
            path = self.workdir / "appliance.json"
            path.write_text(json.dumps(self.config, indent=2))
            cmd += ["--config", str(path)]
        return cmd


class Orthanc(HttpStatisticsServer):
    name = "orthanc"
    aet = "ORTHANC"

    def command(self) -> list[str]:
        config = {
            "Name": "bench",
            "StorageDirectory": str(self.workdir / "storage"),
            "IndexDirectory": str(self.workdir / "index"),
            "DicomAet": self.aet,
            "DicomPort": self.dicom_port,
            "HttpPort": self.http_port,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "SyncStorageArea": True,  # Orthanc's default, stated for the record
            "Plugins": [],
            **self.config,
        }
        path = self.workdir / "orthanc.json"
        path.write_text(json.dumps(config, indent=2))
        return [ORTHANC, str(path)]


class Storescp(Server):
    name = "storescp"
    aet = "STORESCP"
    concurrent = False  # without --fork: one association at a time
    options: tuple[str, ...] = ()

    def command(self) -> list[str]:
        out = self.workdir / "received"
        out.mkdir()
        return ["storescp", "--aetitle", self.aet, *self.options, "-od", str(out),
                str(self.dicom_port)]

    def count(self) -> int:
        return sum(len(files) for _, _, files in os.walk(self.workdir / "received"))


SERVERS: list[type[Server]] = [Appliance, Orthanc, Storescp]


def keep_log(server: Server) -> None:
    """Copy a failed server's log to bench-results/logs/ (its folder is about to go)."""
    if server.log_path.exists():
        dest = RESULTS / "logs" / f"{time.strftime('%Y%m%d-%H%M%S')}-{server.workdir.name}.log"
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(server.log_path, dest)
        print(f"  {server.name} log kept as {dest}", file=sys.stderr)


class Lab:
    """Owns the run's temporary folder (in ``root``, or the temporary directory) and every
    server started in it."""

    def __init__(self, root: Path | None = None) -> None:
        self.tmp = Path(tempfile.mkdtemp(prefix="appliance-bench-run-", dir=root))
        self._serial = itertools.count()

    def folder(self, name: str) -> Path:
        """A new empty folder in the run's temporary folder."""
        path = self.tmp / f"{name}-{next(self._serial)}"
        path.mkdir(parents=True)
        return path

    @contextlib.contextmanager
    def running(self, kind: type[Server], config: dict[str, Any] | None = None
                ) -> Iterator[Server]:
        """A fresh server, stopped and its store removed on exit (whatever happens)."""
        server = kind(self.tmp / f"{kind.name}-{next(self._serial)}", config)
        try:
            server.start()
            # Nothing left dirty by the cell before (storescp writes without flushing, the boot
            # and image tests leave gigabytes): a server's flushes then pay for its own writes.
            os.sync()
            yield server
        except Exception:
            keep_log(server)
            raise
        finally:
            server.stop()
            shutil.rmtree(server.workdir, ignore_errors=True)

    def close(self) -> None:
        shutil.rmtree(self.tmp, ignore_errors=True)


@contextlib.contextmanager
def stores_root(kind: str) -> Iterator[Path | None]:
    """Where the servers' stores go: with ``kind`` "journaled", a new ext4 with its journal,
    loop-mounted for this run, as ``image/build`` makes the appliance's data partition.

    The stores are then apart from whatever else the machine writes, and on the filesystem the
    appliance runs on. This machine's own root filesystem is an ext4 without a journal, where
    creating a file scans every inode deleted in the last minutes (``recently_deleted`` in
    ext4's inode allocator, skipped when there is a journal): each cell's deleted store slowed
    down the file creations of the next (perf: 15-23 % of the appliance's CPU)."""
    if kind == "tmp":
        yield None
        return
    work = Path(tempfile.mkdtemp(prefix="appliance-bench-fs-"))
    image, mount = work / "stores.img", work / "stores"
    mount.mkdir()
    try:
        subprocess.run(["truncate", "-s", f"{STORES_GIB}G", str(image)], check=True)
        # inode tables and journal written now: lazily, the kernel would write them in the
        # background through the first cells
        subprocess.run(["mkfs.ext4", "-q", "-F", "-E", "lazy_itable_init=0,lazy_journal_init=0",
                        str(image)], check=True)
        subprocess.run(["mount", "-o", "loop,discard", str(image), str(mount)], check=True)
    except (OSError, subprocess.CalledProcessError) as exc:
        shutil.rmtree(work, ignore_errors=True)
        raise SystemExit(f"cannot make the journaled filesystem (root needed): {exc}") from exc
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=False)
        shutil.rmtree(work, ignore_errors=True)


# --- sending ----------------------------------------------------------------------------------

def storescu_command(server: Server, folder: Path) -> list[str]:
    """One association sending every file under ``folder``. The long ACSE/socket timeouts let
    a queued association wait for a serial server (storescp) to finish the one before."""
    return ["storescu", "-aet", BENCH_AET, "-aec", server.aet, "-ta", "600", "-ts", "600",
            "+sd", "+r", LOOPBACK, str(server.dicom_port), str(folder)]


def send(server: Server, folders: list[Path], nodelay: bool = True) -> float:
    """Send each folder over its own association, all at once; returns the wall time."""
    env = NODELAY_ENV if nodelay else DEFAULT_ENV
    logs = [server.workdir / f"storescu-{time.monotonic_ns()}-{k}.log" for k in range(len(folders))]
    procs: list[subprocess.Popen[bytes]] = []
    started = time.monotonic()
    try:
        for folder, log_path in zip(folders, logs, strict=True):
            with open(log_path, "wb") as log:
                procs.append(subprocess.Popen(storescu_command(server, folder), stdout=log,
                                              stderr=subprocess.STDOUT,
                                              stdin=subprocess.DEVNULL, env=env))
        deadline = started + SEND_TIMEOUT
        for proc in procs:
            proc.wait(max(1.0, deadline - time.monotonic()))
        elapsed = time.monotonic() - started
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    for proc, log_path in zip(procs, logs, strict=True):
        if proc.returncode != 0:
            raise RuntimeError(f"storescu to {server.name} exited with {proc.returncode}"
                               f" (the server holds {server.count()} instances):\n"
                               f"{tail(log_path)}\n--- server log:\n{tail(server.log_path)}")
    return elapsed


def verify(server: Server, expected: int) -> None:
    """Wait until the server reports ``expected`` stored instances."""
    last = [-1]

    def complete() -> bool:
        last[0] = server.count()
        return last[0] >= expected

    try:
        wait_for(complete, VERIFY_TIMEOUT, f"{server.name} to hold {expected} instances")
    except TimeoutError as exc:
        raise RuntimeError(f"{server.name} holds {last[0]} instances, expected {expected}:\n"
                           f"{tail(server.log_path)}") from exc


# --- measurements -----------------------------------------------------------------------------

@dataclass
class Cell:
    """One measured transfer of a data set to a fresh server."""

    server: str
    set: str
    associations: int
    nodelay: bool
    instances: int
    bytes: int
    seconds: float
    idle_rss_mib: float
    peak_rss_mib: float
    cpu_seconds: float
    note: str = ""

    @property
    def rate(self) -> float:
        return self.instances / self.seconds

    @property
    def mbps(self) -> float:
        return self.bytes / MB / self.seconds


T = TypeVar("T")
FAILURES = (RuntimeError, OSError, subprocess.SubprocessError)


def attempt(errors: list[str], what: str, measure: Callable[..., T], *args: Any) -> T | None:
    """Run one measurement; a failure is reported and recorded, and the run goes on."""
    try:
        return measure(*args)
    except FAILURES as exc:
        message = f"{what}: {type(exc).__name__}: {exc}"
        print(f"  FAILED {message}", flush=True)
        errors.append(message)
        return None


def settle_rss(server: Server) -> float:
    """VmRSS shortly after start (once start-up work has quietened)."""
    time.sleep(1.0)
    return rss_mib(server.pid)


def measure_send(server: Server, data: DataSet, folders: list[Path], nodelay: bool,
                 already: int = 0, idle_rss: float = 0.0) -> Cell:
    """Send ``folders`` of ``data`` to a running server and verify it holds them all."""
    cpu0 = cpu_seconds(server.pid)
    seconds = send(server, folders, nodelay)
    verify(server, already + data.files)
    note = "serial server: associations queue" if len(folders) > 1 and not server.concurrent \
        else ""
    return Cell(server.name, data.name, len(folders), nodelay, data.files, data.bytes, seconds,
                idle_rss, rss_mib(server.pid, "VmHWM"), cpu_seconds(server.pid) - cpu0, note)


def run_cell(lab: Lab, kind: type[Server], data: DataSet, parallel: bool,
             nodelay: bool = True) -> Cell:
    """A fresh server receives ``data`` over one association or one per part folder."""
    folders = data.parts() if parallel else [data.root]
    with lab.running(kind) as server:
        idle = settle_rss(server)
        cell = measure_send(server, data, folders, nodelay, idle_rss=idle)
    print(f"  {cell.server:9} {cell.set:6} x{cell.associations}"
          f"{'' if nodelay else ' (Nagle)'}: {cell.rate:8.1f} inst/s {cell.mbps:7.1f} MB/s  "
          f"idle {cell.idle_rss_mib:6.1f} MiB  peak {cell.peak_rss_mib:7.1f} MiB", flush=True)
    return cell


@dataclass
class FullStore:
    """The appliance's tiny-set rate once the store already holds ``prefilled`` instances."""

    prefilled: int
    prefill_rate: float
    cell: Cell


def run_full_store(lab: Lab, prefill: DataSet, tiny: DataSet) -> FullStore:
    with lab.running(Appliance) as server:
        idle = settle_rss(server)
        print(f"  prefilling the appliance with {prefill.files} instances ...", flush=True)
        seconds = send(server, prefill.parts())
        verify(server, prefill.files)
        cell = measure_send(server, tiny, [tiny.root], True, already=prefill.files,
                            idle_rss=idle)
    cell.note = f"store pre-filled with {prefill.files} instances"
    print(f"  prefill {prefill.files / seconds:.1f} inst/s; tiny at a full store:"
          f" {cell.rate:.1f} inst/s", flush=True)
    return FullStore(prefill.files, prefill.files / seconds, cell)


@dataclass
class IdleCpu:
    server: str
    associations: int
    seconds: float
    cpu_percent: float


def open_associations(server: Server, n: int) -> list[Any]:
    """``n`` established Verification associations (pynetdicom) to ``server``."""
    from pynetdicom import AE

    ae = AE(ae_title=BENCH_AET)
    ae.add_requested_context(VERIFICATION)
    ae.acse_timeout = 30
    ae.network_timeout = 120
    assocs = []
    for _ in range(n):
        assoc = ae.associate(LOOPBACK, server.dicom_port, ae_title=server.aet)
        if not assoc.is_established:
            raise RuntimeError(f"association to {server.name} not established")
        assocs.append(assoc)
    return assocs


def run_idle_cpu(lab: Lab, kind: type[Server]) -> IdleCpu:
    """Server CPU while 4 associations (1 for a serial server) stay open doing nothing."""
    n = 4 if kind.concurrent else 1
    with lab.running(kind) as server:
        assocs = open_associations(server, n)
        try:
            time.sleep(0.5)
            cpu0, t0 = cpu_seconds(server.pid), time.monotonic()
            time.sleep(IDLE_SECONDS)
            cpu1, t1 = cpu_seconds(server.pid), time.monotonic()
        finally:
            for assoc in assocs:
                assoc.release()
    result = IdleCpu(kind.name, n, t1 - t0, 100 * (cpu1 - cpu0) / (t1 - t0))
    print(f"  {result.server:9} idle with {n} open associations: {result.cpu_percent:.2f} %"
          " of one core", flush=True)
    return result


# --- the run ----------------------------------------------------------------------------------

@dataclass
class RunInfo:
    """What heads every report: the machine, the versions, the mode and the data sets."""

    machine: dict[str, str]
    versions: dict[str, str]
    quick: bool
    sets: dict[str, dict[str, Any]]


@dataclass
class Results(RunInfo):
    cells: list[Cell]
    nagle: list[Cell]
    full_store: FullStore | None
    idle_cpu: list[IdleCpu]
    errors: list[str]


def machine_info(stores: Path) -> dict[str, str]:
    model = "?"
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        model = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")),
                     "?")
    mem = proc_meminfo_total()
    return {"nproc": str(os.cpu_count()), "cpu": model, "kernel": platform.release(),
            "memory": f"{mem / MIB / 1024:.1f} GiB" if mem else "?",
            "tmp_filesystem": filesystem_of(stores),
            "load_at_start": load_average()}


def filesystem_of(path: Path) -> str:
    """Type and device of the filesystem holding the servers' stores."""
    try:
        out = subprocess.run(["df", "--output=fstype,source", str(path)],
                             capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired):
        return "?"
    lines = out.strip().splitlines()
    return " ".join(lines[-1].split()) if len(lines) > 1 else "?"


def proc_meminfo_total() -> int:
    with contextlib.suppress(OSError), open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    return 0


def source_fingerprint() -> str:
    """Git commit plus a hash of the appliance's Python sources as they are on disk now (the
    checkout may change while the benchmark runs)."""
    import hashlib

    digest = hashlib.sha256()
    for path in sorted((ROOT / "appliance").rglob("*.py")):
        digest.update(str(path.relative_to(ROOT)).encode() + b"\0" + path.read_bytes())
    commit = first_line(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"])
    return f"{commit}+{digest.hexdigest()[:12]}"


def versions() -> dict[str, str]:
    return {
        "appliance": first_line([str(VENV_BIN / "appliance"), "--version"]),
        "appliance_source": source_fingerprint(),
        "orthanc": first_line([ORTHANC, "--version"]),
        "storescu": first_line(["storescu", "--version"]),
        "python": sys.version.split()[0],
    }


def run(sets: list[str], quick: bool, lab: Lab) -> Results:
    specs = set_specs(quick)
    data = {name: generate(specs[name]) for name in sets}
    results = Results(machine_info(lab.tmp), versions(), quick,
                      {n: {"files": d.files, "bytes": d.bytes} for n, d in data.items()},
                      [], [], None, [], [])
    errors = results.errors

    def cell(kind: type[Server], name: str, parallel: bool, nodelay: bool = True) -> list[Cell]:
        what = f"{kind.name} {name} {'parallel' if parallel else 'x1'}"
        got = attempt(errors, what, run_cell, lab, kind, data[name], parallel, nodelay)
        return [got] if got else []

    for name in sets:
        for parallel in (False, True):
            if parallel and len(data[name].parts()) < 2:
                print(f"  {name}: too few files for parallel associations: skipped")
                continue
            for kind in SERVERS:
                results.cells += cell(kind, name, parallel)
    if "tiny" in data:
        print("tiny set from a default storescu (no TCP_NODELAY):", flush=True)
        for kind in SERVERS:
            results.nagle += cell(kind, "tiny", False, nodelay=False)
        print("appliance at a full store:", flush=True)
        prefill = generate(specs["prefill"])
        results.full_store = attempt(errors, "full store", run_full_store, lab, prefill,
                                     data["tiny"])
    print("idle CPU with open associations:", flush=True)
    for kind in SERVERS:
        idle = attempt(errors, f"{kind.name} idle CPU", run_idle_cpu, lab, kind)
        results.idle_cpu += [idle] if idle else []
    return results


# --- the report -------------------------------------------------------------------------------

def find(cells: list[Cell], server: str, set_name: str, assocs: int) -> Cell | None:
    return next((c for c in cells if c.server == server and c.set == set_name
                 and (c.associations == assocs or (assocs > 1 and c.associations > 1))), None)


def rate_of(cell: Cell | None) -> float | None:
    return cell.rate if cell else None


def mbps_of(cell: Cell | None) -> float | None:
    return cell.mbps if cell else None


def fmt(value: float | None, spec: str = ".1f") -> str:
    return "n/a" if value is None else format(value, spec)


def ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def peak(cells: list[Cell], server: str, set_name: str) -> float | None:
    values = [c.peak_rss_mib for c in cells if c.server == server and c.set == set_name]
    return max(values) if values else None


@dataclass
class Target:
    name: str
    value: float | None
    limit: float
    unit: str
    at_least: bool
    strict: bool = False  # "<" rather than "<=" (for at-most targets)

    @property
    def verdict(self) -> str:
        if self.value is None:
            return "n/a"
        if self.at_least:
            ok = self.value >= self.limit
        else:
            ok = self.value < self.limit if self.strict else self.value <= self.limit
        return "PASS" if ok else "FAIL"

    def line(self) -> str:
        op = ">=" if self.at_least else "<" if self.strict else "<="
        return (f"  {self.verdict:4}  {self.name:52} {fmt(self.value, '.2f'):>9} {self.unit:5}"
                f" (target {op} {self.limit:g})")


def targets(r: Results) -> list[Target]:
    out = []
    for set_name, n in itertools.product(("tiny", "small"), (1, 4)):
        app, orth = find(r.cells, "appliance", set_name, n), find(r.cells, "orthanc", set_name, n)
        out.append(Target(f"appliance/Orthanc rate, {set_name} x{n}",
                          ratio(rate_of(app), rate_of(orth)), 1.0, "x", True))
    empty = find(r.cells, "appliance", "tiny", 1)
    full = r.full_store.cell.rate if r.full_store else None
    out.append(Target("tiny rate at a full store / at an empty store",
                      ratio(full, rate_of(empty)), 0.8, "x", True))
    out.append(Target("appliance/Orthanc peak RSS, small set",
                      ratio(peak(r.cells, "appliance", "small"), peak(r.cells, "orthanc", "small")),
                      0.5, "x", False))
    idle = [c.idle_rss_mib for c in r.cells + r.nagle if c.server == "appliance"]
    out.append(Target("appliance idle RSS (largest of its fresh starts)",
                      max(idle) if idle else None, 60, "MiB", False))
    out.append(Target("appliance VmHWM receiving the large set",
                      peak(r.cells, "appliance", "large"), 150, "MiB", False, True))
    cpu = next((i.cpu_percent for i in r.idle_cpu if i.server == "appliance"), None)
    out.append(Target("appliance CPU, 4 idle open associations", cpu, 1.0, "%", False, True))
    return out


def throughput_table(r: Results) -> list[str]:
    head = (f"{'set':6} {'assoc':>5} | {'appliance':>17} | {'orthanc':>17} | {'storescp':>17} |"
            f" {'app/orthanc':>11}")
    sub = f"{'':6} {'':>5} |" + f" {'inst/s':>8} {'MB/s':>8} |" * 3 + f" {'(rate)':>11}"
    lines = [head, sub, "-" * len(head)]
    for set_name in r.sets:
        for n in (1, 4):
            row = {s.name: find(r.cells, s.name, set_name, n) for s in SERVERS}
            if not any(row.values()):
                continue
            used = max(c.associations for c in row.values() if c)
            label = str(used) + ("*" if n == 4 and any(
                c and c.note for c in row.values()) else "")
            cols = "".join(f" {fmt(rate_of(c)):>8} {fmt(mbps_of(c)):>8} |"
                           for c in row.values())
            app, orth = row["appliance"], row["orthanc"]
            rel = ratio(rate_of(app), rate_of(orth))
            lines.append(f"{set_name:6} {label:>5} |{cols} {fmt(rel, '.2f') + 'x':>11}")
    return lines


def memory_table(r: Results) -> list[str]:
    sets = list(r.sets)
    lines = [f"{'server':10} {'idle RSS':>9} | " + " ".join(f"{'peak ' + s:>11}" for s in sets),
             "-" * (23 + 12 * len(sets))]
    for s in SERVERS:
        idle = [c.idle_rss_mib for c in r.cells if c.server == s.name]
        peaks = " ".join(f"{fmt(peak(r.cells, s.name, n)):>11}" for n in sets)
        lines.append(f"{s.name:10} {fmt(statistics.median(idle) if idle else None):>9} | {peaks}")
    app_small, orth_small = peak(r.cells, "appliance", "small"), peak(r.cells, "orthanc", "small")
    lines.append(f"(MiB; idle = median VmRSS after start, peak = largest VmHWM of the set's cells;"
                 f" appliance/Orthanc peak on small: {fmt(ratio(app_small, orth_small), '.2f')}x)")
    return lines


def load_average() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def header(title: str, machine: dict[str, str], versions: dict[str, str], quick: bool
           ) -> list[str]:
    """The report's title, machine (with the load average now) and versions."""
    out = ["", "=" * 96, f"{title}{' (--quick)' if quick else ''}", "=" * 96]
    out += [f"machine: {machine['nproc']} CPUs, {machine['cpu']}, kernel {machine['kernel']},"
            f" {machine['memory']} RAM, stores on {machine['tmp_filesystem']},"
            f" load average at start {machine['load_at_start']}, at end {load_average()}"]
    out += [f"{k}: {v}" for k, v in versions.items()]
    now = source_fingerprint()
    if now != versions["appliance_source"]:
        out.append(f"WARNING: the appliance's sources changed during the run (now {now}):"
                   " its cells may have run different code")
    return out


def report(r: Results) -> str:
    out = header("appliance benchmark", r.machine, r.versions, r.quick)
    out += ["sets: " + ", ".join(f"{n} {s['files']} files / {s['bytes'] / MB:.1f} MB"
                                 for n, s in r.sets.items())]
    out += ["", "C-STORE throughput on loopback (storescu with TCP_NODELAY=1; MB = 10^6 bytes of"
            " file data)"]
    out += throughput_table(r)
    out += ["* storescp (no --fork) serves one association at a time: its parallel cells run"
            " serially.", "  storescp only writes files (no fsync, no index); the appliance and"
            " Orthanc fsync and index.", "  For the large set the parallel cell uses one"
            " association per object."]
    out += ["", "Memory"] + memory_table(r)
    if r.nagle:
        out += ["", "Tiny set from a default storescu (Nagle on, as real modalities send), 1"
                " association"]
        for c in r.nagle:
            fast = find(r.cells, c.server, "tiny", 1)
            out.append(f"  {c.server:10} {c.rate:8.1f} inst/s {c.mbps:7.2f} MB/s"
                       f"   ({fmt(ratio(c.rate, rate_of(fast)), '.2f')}x its TCP_NODELAY"
                       " rate)")
    if r.full_store:
        f, empty = r.full_store, find(r.cells, "appliance", "tiny", 1)
        out += ["", f"Appliance at a full store: pre-filled {f.prefilled} instances"
                f" ({f.prefill_rate:.1f} inst/s over 4 associations), then the tiny set over 1:"
                f" {f.cell.rate:.1f} inst/s vs {fmt(rate_of(empty))} empty"
                f" = {fmt(ratio(f.cell.rate, rate_of(empty)), '.2f')}x"
                f"; VmHWM {f.cell.peak_rss_mib:.1f} MiB"]
    out += ["", f"Idle CPU with open associations ({IDLE_SECONDS:.0f} s, % of one core)"]
    out += [f"  {i.server:10} {i.cpu_percent:6.2f} %  ({i.associations} association"
            f"{'s' if i.associations > 1 else ' (serial server)'})" for i in r.idle_cpu]
    out += ["", "Targets"] + [t.line() for t in targets(r)]
    out += problems_and_failures([], r.errors)
    return "\n".join(out)


def problems_and_failures(log_problems: list[str], errors: list[str]) -> list[str]:
    """The report's closing sections: the servers' log problems and the failed measurements."""
    out = []
    if log_problems:
        out += ["", f"Warnings and errors in the servers' logs ({len(log_problems)} lines,"
                " first 20)"] + [f"  {ln}" for ln in log_problems[:20]]
    if errors:
        out += ["", "Failures (their cells show n/a)"] + [f"  {e}" for e in errors]
    return out


def save_json(body: dict[str, Any], prefix: str) -> Path:
    """Write ``body`` as bench-results/PREFIX-DATE-TIME.json."""
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{prefix}-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(body, indent=2))
    return path


def write_json(r: Results, text: str) -> Path:
    body = asdict(r)
    for cell in body["cells"] + body["nagle"] + ([body["full_store"]["cell"]]
                                                 if body["full_store"] else []):
        cell["rate"] = cell["instances"] / cell["seconds"]
        cell["mbps"] = cell["bytes"] / MB / cell["seconds"]
    body["targets"] = [{**asdict(t), "verdict": t.verdict} for t in targets(r)]
    body["report"] = text
    return save_json(body, "bench")


# --- query/retrieve (issue 3) -----------------------------------------------------------------

FIND_REPEATS = 20  # timed findscu runs per query and server
RETRIEVE_REPEATS = 3  # timed movescu/getscu runs per server
NAGLE_GET = "getscu without TCP_NODELAY"
TOOL_TIMEOUT = 600.0
DEST_AET = "BENCHDEST"
LEVEL_UID = {"STUDY": "StudyInstanceUID", "SERIES": "SeriesInstanceUID",
             "IMAGE": "SOPInstanceUID"}


class MoveDest(Storescp):
    """The C-MOVE destination: a storescp known to both servers as BENCHDEST."""

    name = "movedest"
    aet = DEST_AET
    options = ("+uf",)  # unique file names: every retrieve of the same study adds files


def qr_specs(quick: bool) -> list[SetSpec]:
    """The Q/R sets in storing order: the first 10 % of the fill (2 series of 50 per study),
    the 500-instance study to retrieve (5 series of 100), then the other 90 %."""
    first, rest = (5, 90) if quick else (95, 900)
    return [SetSpec("qr10", first * 100, first, 2, 16, first_study=0),
            SetSpec("qrmove", 500, 1, 5, 16, first_study=first),
            SetSpec("qr90", rest * 100, rest, 2, 16, first_study=first + 1)]


@dataclass(frozen=True)
class Query:
    """One C-FIND: a label and findscu's ``-k`` keys (the first one names the level)."""

    name: str
    keys: tuple[str, ...]

    @property
    def uid_key(self) -> str:
        """The unique key of the query's level, whose values identify the answers."""
        return LEVEL_UID[self.keys[0].split("=", 1)[1]]


def first_instance(data: DataSet) -> Any:
    """The header of a set's first file (its first study and series)."""
    from pydicom import dcmread

    return dcmread(data.root / "part0" / "000000.dcm", stop_before_pixels=True)


def qr_queries(ref: Any) -> list[Query]:
    """The timed C-FINDs, around the reference instance ``ref`` (in the first 10 %)."""
    start = datetime.datetime.strptime(ref.StudyDate, "%Y%m%d").date()
    end = start + datetime.timedelta(days=59)
    study, series = f"StudyInstanceUID={ref.StudyInstanceUID}", ref.SeriesInstanceUID
    return [
        Query("study, PatientName=SMITH*", ("QueryRetrieveLevel=STUDY", "PatientName=SMITH*",
                                            "StudyInstanceUID")),
        Query("study, StudyDate 60-day range",
              ("QueryRetrieveLevel=STUDY", f"StudyDate={start:%Y%m%d}-{end:%Y%m%d}",
               "PatientName", "StudyInstanceUID")),
        Query("series of a study", ("QueryRetrieveLevel=SERIES", study, "SeriesInstanceUID",
                                    "Modality", "SeriesNumber")),
        Query("images of a 50-instance series",
              ("QueryRetrieveLevel=IMAGE", study, f"SeriesInstanceUID={series}",
               "SOPInstanceUID", "InstanceNumber")),
        Query("study by exact StudyInstanceUID", ("QueryRetrieveLevel=STUDY", study,
                                                  "PatientName", "StudyDate")),
    ]


def dcmtk(cmd: list[str], nodelay: bool = True) -> float:
    """Run a DCMTK tool (with TCP_NODELAY=1 unless told otherwise); its wall time, process
    start included."""
    started = time.monotonic()
    out = subprocess.run(cmd, capture_output=True, text=True,
                         env=NODELAY_ENV if nodelay else DEFAULT_ENV,
                         stdin=subprocess.DEVNULL, timeout=TOOL_TIMEOUT)
    elapsed = time.monotonic() - started
    errors = [ln for ln in out.stderr.splitlines() if ln.startswith(("E:", "F:"))]
    if out.returncode != 0 or errors:
        raise RuntimeError(f"{' '.join(cmd[:6])} ... exited with {out.returncode}:\n"
                           + "\n".join(out.stderr.splitlines()[-10:]))
    return elapsed


def scu(tool: str, server: Server, *args: str) -> list[str]:
    """A DCMTK SCU command (study root) from BENCHSCU to ``server``."""
    return [tool, "-S", "-aet", BENCH_AET, "-aec", server.aet, *args,
            LOOPBACK, str(server.dicom_port)]


def findscu(server: Server, query: Query, *args: str) -> list[str]:
    return scu("findscu", server, *args, *itertools.chain.from_iterable(
        ("-k", key) for key in query.keys))


def answer_uids(lab: Lab, server: Server, query: Query) -> list[str]:
    """The sorted unique keys of the server's answers (findscu -X: one file per answer)."""
    from pydicom import dcmread

    out = lab.folder("find")
    try:
        dcmtk(findscu(server, query, "-X", "-od", str(out)))
        return sorted(str(dcmread(p).get(query.uid_key, "")) for p in out.glob("rsp*.dcm"))
    finally:
        shutil.rmtree(out, ignore_errors=True)


@dataclass
class FindTiming:
    """Repeated runs of one C-FIND against one server at one fill."""

    fill: int
    query: str
    server: str
    answers: int
    median_ms: float
    samples_ms: list[float]


def check_answers(lab: Lab, servers: list[Server], query: Query) -> int:
    """The number of answers, once checked non-empty and the same on every server."""
    answers = {s.name: answer_uids(lab, s, query) for s in servers}
    first = next(iter(answers.values()))
    if not first or any(a != first for a in answers.values()):
        counts = ", ".join(f"{name} {len(a)}" for name, a in answers.items())
        raise RuntimeError(f"{query.name}: empty or different answers ({counts})")
    return len(first)


def measure_find(lab: Lab, servers: list[Server], query: Query, fill: int
                 ) -> list[FindTiming]:
    """Check the answers, then time FIND_REPEATS findscu runs per server, alternating servers
    so that background load hits both alike."""
    answers = check_answers(lab, servers, query)
    samples: dict[str, list[float]] = {s.name: [] for s in servers}
    for _ in range(FIND_REPEATS):
        for server in servers:
            samples[server.name].append(1000 * dcmtk(findscu(server, query)))
    timings = [FindTiming(fill, query.name, name, answers, statistics.median(ms), ms)
               for name, ms in samples.items()]
    print(f"  {query.name:34} {answers:5} answers: " + "  ".join(
        f"{t.server} {t.median_ms:7.1f} ms" for t in timings), flush=True)
    return timings


@dataclass
class RetrieveTiming:
    """Repeated retrieves of the 500-instance study from one server."""

    tool: str
    server: str
    instances: int
    seconds: list[float]
    rate: float  # instances/s at the median time


def study_keys(study_uid: str) -> list[str]:
    return ["-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={study_uid}"]


def timed_move(server: Server, dest: Server, study_uid: str, expected: int) -> float:
    """movescu of the study to BENCHDEST; checks that it received every instance."""
    before = dest.count()
    seconds = dcmtk(scu("movescu", server, "-aem", DEST_AET, *study_keys(study_uid)))
    got = dest.count() - before
    if got != expected:
        raise RuntimeError(f"movescu from {server.name}: {got} instances moved, expected"
                           f" {expected}")
    return seconds


def timed_get(lab: Lab, server: Server, study_uid: str, expected: int,
              nodelay: bool = True) -> float:
    """getscu of the study into a fresh folder; checks that every instance arrived."""
    out = lab.folder("get")
    try:
        seconds = dcmtk(scu("getscu", server, "-od", str(out), *study_keys(study_uid)),
                        nodelay)
        got = sum(1 for _ in out.iterdir())
    finally:
        shutil.rmtree(out, ignore_errors=True)
    if got != expected:
        raise RuntimeError(f"getscu from {server.name}: {got} instances, expected {expected}")
    return seconds


def measure_retrieve(tool: str, servers: list[Server], retrieve: Callable[[Server], float],
                     instances: int, repeats: int = RETRIEVE_REPEATS) -> list[RetrieveTiming]:
    """``repeats`` timed retrieves per server, alternating servers."""
    samples: dict[str, list[float]] = {s.name: [] for s in servers}
    for _ in range(repeats):
        for server in servers:
            samples[server.name].append(retrieve(server))
    timings = [RetrieveTiming(tool, name, instances, secs, instances / statistics.median(secs))
               for name, secs in samples.items()]
    print(f"  {tool:8} {instances} instances: " + "  ".join(
        f"{t.server} {t.rate:7.1f} inst/s" for t in timings), flush=True)
    return timings


@dataclass
class Prefill:
    server: str
    instances: int  # stored by this step
    total: int  # held afterwards
    rate: float


def fill(server: Server, sets: list[DataSet], already: int) -> Prefill:
    """Store ``sets`` into ``server``, 4 parallel storescu per set, and verify the count."""
    files = sum(d.files for d in sets)
    started = time.monotonic()
    for data in sets:
        send(server, data.parts())
    verify(server, already + files)
    step = Prefill(server.name, files, already + files, files / (time.monotonic() - started))
    print(f"  {server.name:9} filled to {step.total} instances ({step.rate:.1f} inst/s)",
          flush=True)
    return step


def qr_configs(dest_port: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """Appliance and Orthanc settings making BENCHDEST (storescp) and BENCHSCU (the querying
    SCU; C-GET answers on its own association, so nothing listens on its port) known."""
    scu_port = free_ports(1)[0]
    appliance = {"modalities": {
        "dest": {"aet": DEST_AET, "host": LOOPBACK, "port": dest_port},
        "scu": {"aet": BENCH_AET, "host": LOOPBACK, "port": scu_port}}}
    orthanc = {"DicomModalities": {"dest": [DEST_AET, LOOPBACK, dest_port],
                                   "scu": [BENCH_AET, LOOPBACK, scu_port]}}
    return appliance, orthanc


# the appliance's levels; Orthanc's E and F lines; DCMTK's (storescp) W, E and F lines
LOG_PROBLEM = re.compile(r" (WARNING|ERROR|CRITICAL) |Traceback|^[EF]\d{4} |^[WEF]: ")


def log_problems(server: Server) -> list[str]:
    """The warning and error lines of a server's log (kept under bench-results/logs if any)."""
    if not server.log_path.exists():
        return []
    lines = [f"{server.name}: {ln}" for ln in server.log_path.read_text(
        errors="replace").splitlines() if LOG_PROBLEM.search(ln)]
    if lines:
        keep_log(server)
    return lines


@dataclass
class QrResults(RunInfo):
    fills: list[int]
    loads: dict[str, str]
    prefills: list[Prefill]
    finds: list[FindTiming]
    retrieves: list[RetrieveTiming]
    log_problems: list[str]
    errors: list[str]


def measure_fill(lab: Lab, servers: list[Server], stage: list[DataSet], queries: list[Query],
                 r: QrResults) -> None:
    """Fill every server with ``stage``, then time every query at this fill."""
    already = r.fills[-1] if r.fills else 0
    r.prefills += [fill(server, stage, already) for server in servers]
    r.fills.append(already + sum(d.files for d in stage))
    r.loads[f"after filling {r.fills[-1]}"] = load_average()
    print(f"C-FIND at {r.fills[-1]} instances (median of {FIND_REPEATS} runs):", flush=True)
    for query in queries:
        r.finds += attempt(r.errors, f"{query.name} at {r.fills[-1]}", measure_find, lab,
                           servers, query, r.fills[-1]) or []


def measure_retrieves(lab: Lab, servers: list[Server], dest: Server, study: DataSet,
                      r: QrResults) -> None:
    """movescu and getscu of the 500-instance study from every server."""
    uid = str(first_instance(study).StudyInstanceUID)
    print(f"retrieve of a {study.files}-instance study (median of {RETRIEVE_REPEATS} runs):",
          flush=True)
    r.retrieves += attempt(r.errors, "movescu", measure_retrieve, "movescu", servers,
                           lambda s: timed_move(s, dest, uid, study.files), study.files) or []
    r.retrieves += attempt(r.errors, "getscu", measure_retrieve, "getscu", servers,
                           lambda s: timed_get(lab, s, uid, study.files), study.files) or []
    # a getscu with Nagle's algorithm on, as DCMTK runs by default: once (~22/s if stalled)
    r.retrieves += attempt(r.errors, NAGLE_GET, measure_retrieve, NAGLE_GET, servers,
                           lambda s: timed_get(lab, s, uid, study.files, nodelay=False),
                           study.files, 1) or []


def run_qr(quick: bool, lab: Lab, retrieve_only: bool = False) -> QrResults:
    """Fill the appliance and Orthanc to 10 %, time the C-FINDs, fill to 100 %, time them
    again, then time the retrieves. ``retrieve_only``: store just the study to retrieve and
    time its retrieves (a look in a minute while working on the retrieve path)."""
    specs = qr_specs(quick)
    data = [generate(spec) for spec in (specs[1:2] if retrieve_only else specs)]
    move = data[0] if retrieve_only else data[1]
    stages = [[move]] if retrieve_only else [data[:2], data[2:]]
    r = QrResults(machine_info(lab.tmp), versions(), quick,
                  {d.name: {"files": d.files, "bytes": d.bytes} for d in data},
                  [], {}, [], [], [], [], [])
    queries = [] if retrieve_only else qr_queries(first_instance(data[0]))
    with contextlib.ExitStack() as stack:
        dest = stack.enter_context(lab.running(MoveDest))
        app_config, orthanc_config = qr_configs(dest.dicom_port)
        servers = [stack.enter_context(lab.running(Appliance, app_config)),
                   stack.enter_context(lab.running(Orthanc, orthanc_config))]
        try:
            for stage in stages:
                print(f"filling with {', '.join(d.name for d in stage)} ...", flush=True)
                measure_fill(lab, servers, stage, queries, r)
            measure_retrieves(lab, servers, dest, move, r)
        except FAILURES as exc:
            r.errors.append(f"{type(exc).__name__}: {exc}")
            print(f"  FAILED {r.errors[-1]}", flush=True)
        for server in [*servers, dest]:
            r.log_problems += log_problems(server)
    return r


# --- the query/retrieve report ----------------------------------------------------------------

def find_ms(r: QrResults, fill: int, query: str, server: str) -> float | None:
    return next((t.median_ms for t in r.finds
                 if (t.fill, t.query, t.server) == (fill, query, server)), None)


def retrieve_rate(r: QrResults, tool: str, server: str) -> float | None:
    return next((t.rate for t in r.retrieves if (t.tool, t.server) == (tool, server)), None)


def query_names(r: QrResults) -> list[str]:
    return list(dict.fromkeys(t.query for t in r.finds))


def qr_targets(r: QrResults) -> list[Target]:
    full = r.fills[-1] if r.fills else 0
    out = [Target(f"C-FIND {q} (app/orth)",
                  ratio(find_ms(r, full, q, "appliance"), find_ms(r, full, q, "orthanc")),
                  1.0, "x", False) for q in query_names(r)]
    out += [Target(f"{tool} rate (app/orth)",
                   ratio(retrieve_rate(r, tool, "appliance"), retrieve_rate(r, tool, "orthanc")),
                   1.0, "x", True) for tool in ("movescu", "getscu")]
    return out


def find_table(r: QrResults) -> list[str]:
    """One row per query: answers, both medians and their ratio, at each fill."""
    head = f"{'query':34} |" + "".join(
        f" {f'at {n} instances':^37} |" for n in r.fills)
    sub = f"{'':34} |" + f" {'answers':>7} {'appliance':>9} {'orthanc':>9} {'app/orth':>8} |" \
        * len(r.fills)
    lines = [head, sub, "-" * len(sub)]
    for q in query_names(r):
        cols = ""
        for n in r.fills:
            app, orth = find_ms(r, n, q, "appliance"), find_ms(r, n, q, "orthanc")
            answers = next((t.answers for t in r.finds if (t.fill, t.query) == (n, q)), None)
            cols += (f" {fmt(answers, 'd'):>7} {fmt(app):>9} {fmt(orth):>9}"
                     f" {fmt(ratio(app, orth), '.2f') + 'x':>8} |")
        lines.append(f"{q:34} |{cols}")
    return lines


def scaling_lines(r: QrResults) -> list[str]:
    """How each server's exact-UID lookup latency changed from the first fill to the last."""
    if len(r.fills) < 2:
        return []
    q = "study by exact StudyInstanceUID"
    growth = {s: ratio(find_ms(r, r.fills[-1], q, s), find_ms(r, r.fills[0], q, s))
              for s in ("appliance", "orthanc")}
    parts = [f"{s} {fmt(g, '.2f')}x" for s, g in growth.items()]
    return [f"exact-UID study lookup at {r.fills[-1]} / at {r.fills[0]} instances: "
            + ", ".join(parts)]


def qr_report(r: QrResults) -> str:
    out = header("appliance Query/Retrieve benchmark", r.machine, r.versions, r.quick)
    out += ["sets: " + ", ".join(f"{n} {s['files']} files / {s['bytes'] / MB:.1f} MB"
                                 for n, s in r.sets.items())]
    out += ["load average: " + "; ".join(f"{k} {v}" for k, v in r.loads.items())
            + f"; at end {load_average()}"]
    out += ["pre-fill (4 parallel storescu per set): " + "; ".join(
        f"{p.server} to {p.total} at {p.rate:.1f} inst/s" for p in r.prefills)]
    if r.finds:
        out += ["", f"C-FIND latency: median of {FIND_REPEATS} runs of DCMTK findscu -S (study"
                " root, TCP_NODELAY=1), process start included, ms;", "  answers checked with"
                " findscu -X: non-empty and the same unique keys from both servers"]
        out += find_table(r) + scaling_lines(r)
    out += ["", f"Retrieve of one study, instances/s at the median of {RETRIEVE_REPEATS} runs"
            " (movescu to a DCMTK storescp; getscu -od into a folder)"]
    for tool in ("movescu", "getscu", NAGLE_GET):
        app, orth = retrieve_rate(r, tool, "appliance"), retrieve_rate(r, tool, "orthanc")
        out.append(f"  {tool:26} appliance {fmt(app):>8}  orthanc {fmt(orth):>8}"
                   f"  app/orth {fmt(ratio(app, orth), '.2f')}x")
    out += ["", "Targets"] + [t.line() for t in qr_targets(r)]
    out += problems_and_failures(r.log_problems, r.errors)
    return "\n".join(out)


def write_qr_json(r: QrResults, text: str) -> Path:
    body = asdict(r)
    body["targets"] = [{**asdict(t), "verdict": t.verdict} for t in qr_targets(r)]
    body["report"] = text
    return save_json(body, "bench-qr")


# --- forwarding (issue 4) --------------------------------------------------------------------

FORWARD_STALL = 120.0  # seconds without a new arrival at the destination before giving up
STALL_PROBE = 10.0  # seconds without a new arrival before both sides' state is recorded (once)
FORWARD_MODES = ("direct", "appliance", "orthanc")
LUA_ROUTE = """function OnStoredInstance(instanceId, tags, metadata, origin)
  SendToModality(instanceId, 'dest')
end
"""


class ForwardDest(Storescp):
    """The forwarding destination: a fresh storescp per measurement, known as ``dest``."""

    name = "destination"
    aet = "FWDDEST"


class NagleDest(ForwardDest):
    """A destination as DCMTK-based nodes run by default: Nagle's algorithm on. Its responses
    wait for the sender's ACK, which Linux delays (~40 ms) unless asked not to."""

    env = DEFAULT_ENV


@dataclass
class ForwardCell:
    """One set fed by ``feeds`` storescu either straight to the destination (``direct``) or
    to a server that forwards every instance to it."""

    mode: str  # direct, appliance, orthanc
    set: str
    feeds: int
    instances: int
    bytes: int
    feed_seconds: float  # from the feed's start until every storescu exited
    seconds: float  # from the feed's start until the destination held every instance
    delivered_at_feed_end: int  # instances at the destination when the feed ended
    cpu_seconds: float  # of the fed server (the destination itself for direct)
    load: str  # load average when the cell ended

    @property
    def rate(self) -> float:
        return self.instances / self.seconds

    @property
    def feed_rate(self) -> float:
        return self.instances / self.feed_seconds


def forward_config(lab: Lab, mode: str, dest: Server) -> dict[str, Any]:
    """The appliance's or Orthanc's settings routing every arriving instance to ``dest``."""
    if mode == "appliance":
        return {"modalities": {"dest": {"aet": dest.aet, "host": LOOPBACK,
                                        "port": dest.dicom_port}},
                "routes": {"forward": {"destinations": ["dest"]}}}
    script = lab.folder("lua") / "route.lua"
    script.write_text(LUA_ROUTE)
    return {"DicomModalities": {"dest": [dest.aet, LOOPBACK, dest.dicom_port]},
            "LuaScripts": [str(script)]}


def queue_pending(server: Server) -> int:
    """Entries the appliance still has to deliver (``GET /queue``); 0 for other servers."""
    if not isinstance(server, Appliance):
        return 0
    r = requests.get(f"http://{LOOPBACK}:{server.http_port}/queue", timeout=10,
                     headers=server.headers)
    r.raise_for_status()
    return sum(int(d["Pending"]) + int(d["Failed"]) for d in r.json().values())


def wait_delivered(dest: Server, fed: Server, expected: int, problems: list[str]) -> None:
    """Until ``dest`` holds ``expected`` instances and ``fed`` has nothing left to send;
    fails when nothing new arrives for FORWARD_STALL seconds. A pause of STALL_PROBE seconds
    goes to ``problems``, with what each side was doing."""
    progress = [-1, time.monotonic()]
    probed: list[int] = []

    def delivered() -> bool:
        got = dest.count()
        still = time.monotonic() - progress[1]
        if got != progress[0]:
            progress[:] = [got, time.monotonic()]
        elif still > FORWARD_STALL:
            raise RuntimeError(f"{dest.name} stalled at {got} of {expected} instances (queue"
                               f" pending {queue_pending(fed)}):\n{tail(fed.log_path)}")
        elif still > STALL_PROBE and got < expected and not probed:
            probed.append(got)
            problems.append(probe_stall(dest, fed, got, expected))
        return got >= expected and queue_pending(fed) == 0

    wait_for(delivered, SEND_TIMEOUT, f"{dest.name} to hold {expected} instances")


def probe_stall(dest: Server, fed: Server, got: int, expected: int) -> str:
    """What each side does while delivery stands still: the destination's kernel wait
    channel and stack, and the forwarding appliance's threads (``kill -USR1`` writes them to
    its log, which is kept)."""
    def proc(name: str) -> str:
        try:
            return Path(f"/proc/{dest.pid}/{name}").read_text().strip()
        except OSError as exc:
            return f"({exc.strerror})"

    stack = " < ".join(line.split()[-1] for line in proc("stack").splitlines()[:5])
    if isinstance(fed, Appliance):
        os.kill(fed.pid, signal.SIGUSR1)
        time.sleep(0.5)
    for server in {dest, fed}:
        keep_log(server)
    return (f"{fed.name}: no new instance at {dest.name} for {STALL_PROBE:.0f} s ({got} of"
            f" {expected}); {dest.name} waits in {proc('wchan') or 'nothing (running)'}"
            f" [{stack}]; {fed.name}'s threads at the end of its kept log")


def run_forward_cell(lab: Lab, mode: str, data: DataSet, feeds: int, problems: list[str],
                     destination: type[ForwardDest] = ForwardDest) -> ForwardCell:
    """A fresh destination and (unless direct) a fresh forwarding server; ``feeds`` storescu
    send ``data``, timed until the destination holds every instance. The servers' log
    problems go to ``problems``."""
    folders = data.parts() if feeds > 1 else [data.root]
    with contextlib.ExitStack() as stack:
        dest = stack.enter_context(lab.running(destination))
        fed = dest if mode == "direct" else stack.enter_context(
            lab.running(Orthanc if mode == "orthanc" else Appliance,
                        forward_config(lab, mode, dest)))
        cpu0 = cpu_seconds(fed.pid)
        started = time.monotonic()
        feed_seconds = send(fed, folders)
        at_feed_end = dest.count()
        verify(fed, data.files)
        wait_delivered(dest, fed, data.files, problems)
        seconds = time.monotonic() - started
        cell = ForwardCell(mode, data.name, len(folders), data.files, data.bytes, feed_seconds,
                           seconds, at_feed_end, cpu_seconds(fed.pid) - cpu0, load_average())
        for server in {dest, fed}:
            problems += log_problems(server)
    print(f"  {cell.mode:9} {cell.set:6} x{cell.feeds}: {cell.rate:8.1f} inst/s delivered"
          f"  (feed {cell.feed_rate:7.1f} inst/s, {cell.delivered_at_feed_end} delivered by"
          f" then; CPU {1000 * cell.cpu_seconds / cell.instances:5.2f} ms/inst; load"
          f" {cell.load})", flush=True)
    return cell


@dataclass
class ForwardResults(RunInfo):
    cells: list[ForwardCell]
    log_problems: list[str]
    errors: list[str]
    nagle: list[ForwardCell] = field(default_factory=list)  # to a default storescp
    ceiling: dict[str, float] = field(default_factory=dict)  # set -> fsync_ceiling


def run_forward(sets: list[str], quick: bool, lab: Lab) -> ForwardResults:
    """Per set and feed count (1, then 4 parallel storescu): direct, appliance, Orthanc."""
    specs = set_specs(quick)
    data = {name: generate(specs[name]) for name in sets}
    r = ForwardResults(machine_info(lab.tmp), versions(), quick,
                       {n: {"files": d.files, "bytes": d.bytes} for n, d in data.items()},
                       [], [], [])
    r.ceiling = {name: fsync_ceiling(lab, d) for name, d in data.items()}
    print("forwarding to a storescp destination:", flush=True)
    for name, feeds, mode in itertools.product(sets, (1, PARTS), FORWARD_MODES):
        cell = attempt(r.errors, f"{mode} {name} x{feeds}", run_forward_cell, lab, mode,
                       data[name], feeds, r.log_problems)
        r.cells += [cell] if cell else []
    if "tiny" in data:
        part = first_part(data["tiny"])
        print(f"forwarding to a default storescp (Nagle's algorithm on), {part.files} tiny"
              " instances:", flush=True)
        for mode in FORWARD_MODES[1:]:
            cell = attempt(r.errors, f"{mode} to a default storescp", run_forward_cell, lab,
                           mode, part, 1, r.log_problems, NagleDest)
            r.nagle += [cell] if cell else []
    return r


def fsync_ceiling(lab: Lab, data: DataSet, count: int = 500) -> float:
    """Files/s when the set's first ``count`` files are written to the stores' filesystem and
    each fsynced before the next: the best a receiver that acknowledges only durable files can
    do over one association, before any network or index work."""
    blobs = [p.read_bytes() for p in sorted(data.parts()[0].rglob("*")) if p.is_file()][:count]
    folder = lab.folder("fsync")
    os.sync()
    started = time.monotonic()
    for k, blob in enumerate(blobs):
        fd = os.open(folder / str(k), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, blob)
            os.fsync(fd)
        finally:
            os.close(fd)
    return len(blobs) / (time.monotonic() - started)


def first_part(data: DataSet) -> DataSet:
    """The set's first part folder (one association's share) as a set of its own."""
    files = [p for p in data.parts()[0].rglob("*") if p.is_file()]
    return DataSet(data.name, data.parts()[0], len(files), sum(p.stat().st_size for p in files))


def forward_rate(r: ForwardResults, mode: str, set_name: str, feeds: int) -> float | None:
    return next((c.rate for c in r.cells if (c.mode, c.set, c.feeds) == (mode, set_name, feeds)),
                None)


def forward_targets(r: ForwardResults) -> list[Target]:
    out = []
    for set_name, feeds in itertools.product(r.sets, (1, PARTS)):
        app = forward_rate(r, "appliance", set_name, feeds)
        out.append(Target(f"forwarding appliance/Orthanc, {set_name} x{feeds}",
                          ratio(app, forward_rate(r, "orthanc", set_name, feeds)), 1.0, "x",
                          True))
        out.append(Target(f"forwarding appliance/direct, {set_name} x{feeds}",
                          ratio(app, forward_rate(r, "direct", set_name, feeds)), 0.5, "x",
                          True))
    return out


def forward_table(r: ForwardResults) -> list[str]:
    """One row per set and feed count: delivered rates, feed rates, CPU and the ratios."""
    head = (f"{'set':6} {'feeds':>5} | {'direct':>8} | {'appliance':>8} {'(feed)':>8}"
            f" {'ms/inst':>7} | {'orthanc':>8} {'(feed)':>8} {'ms/inst':>7} |"
            f" {'app/orth':>8} {'app/dir':>8}")
    lines = [head, "-" * len(head)]
    for set_name, feeds in itertools.product(r.sets, (1, PARTS)):
        row = {c.mode: c for c in r.cells if (c.set, c.feeds) == (set_name, feeds)}
        if not row:
            continue
        cols = [f" {fmt(rate_of_forward(row.get('direct'))):>8} |"]
        for mode in ("appliance", "orthanc"):
            c = row.get(mode)
            cols.append(f" {fmt(rate_of_forward(c)):>8} {fmt(c.feed_rate if c else None):>8}"
                        f" {fmt(1000 * c.cpu_seconds / c.instances if c else None, '.2f'):>7} |")
        app = rate_of_forward(row.get("appliance"))
        lines.append(f"{set_name:6} {feeds:>5} |{''.join(cols)}"
                     f" {fmt(ratio(app, rate_of_forward(row.get('orthanc'))), '.2f') + 'x':>8}"
                     f" {fmt(ratio(app, rate_of_forward(row.get('direct'))), '.2f') + 'x':>8}")
    return lines


def rate_of_forward(cell: ForwardCell | None) -> float | None:
    return cell.rate if cell else None


def forward_report(r: ForwardResults) -> str:
    out = header("appliance forwarding benchmark", r.machine, r.versions, r.quick)
    out += ["sets: " + ", ".join(f"{n} {s['files']} files / {s['bytes'] / MB:.1f} MB"
                                 for n, s in r.sets.items())]
    out += ["", "Store and forward to a DCMTK storescp (fresh per cell), instances/s from the"
            " start of the feed until", "the destination holds every instance; storescu feeds"
            " with TCP_NODELAY=1 over 1 or 4 associations;", "(feed) = rate until storescu"
            " finished; ms/inst = CPU of the forwarding server per instance"]
    out += forward_table(r)
    out += ["direct: storescu straight to the destination (the limit; storescp serves one"
            " association at a time).", "appliance: modality 'dest' and route"
            " {\"destinations\": [\"dest\"]} (trigger instance), done when GET /queue has"
            " nothing pending.", "orthanc: Lua OnStoredInstance -> SendToModality(instanceId,"
            " 'dest')."]
    out += ["load average per cell: " + "; ".join(f"{c.mode} {c.set} x{c.feeds} {c.load}"
                                                   for c in r.cells)]
    if r.nagle:
        out += ["", f"To a default storescp (Nagle's algorithm on, as DCMTK-based nodes run),"
                f" {r.nagle[0].instances} tiny instances, one feed:"]
        out += [f"  {c.mode:9} {c.rate:8.1f} instances/s delivered (feed {c.feed_rate:.1f})"
                for c in r.nagle]
    if r.ceiling:
        out += ["", "A durable receiver's ceiling over one association: files written to the"
                " stores' filesystem, each", "fsynced before the next (no network, no index):"]
        out += [f"  {name:6} {rate:8.1f} files/s"
                f" ({fmt(ratio(rate, forward_rate(r, 'direct', name, 1)), '.2f')}x direct x1)"
                for name, rate in r.ceiling.items()]
    out += ["", "Targets"] + [t.line() for t in forward_targets(r)]
    out += problems_and_failures(r.log_problems, r.errors)
    return "\n".join(out)


def write_forward_json(r: ForwardResults, text: str) -> Path:
    body = asdict(r)
    for cell, raw in zip(r.cells, body["cells"], strict=True):
        raw["rate"], raw["feed_rate"] = cell.rate, cell.feed_rate
    body["targets"] = [{**asdict(t), "verdict": t.verdict} for t in forward_targets(r)]
    body["report"] = text
    return save_json(body, "bench-forward")


# --- quota (issue 5) ------------------------------------------------------------------------

@dataclass
class DeleteStall:
    """C-STORE round trips of a feed over one association while a big study is deleted."""

    instances: int  # in the deleted study
    seconds: float  # the DELETE request, end to end
    median_ms: float  # before the deletion
    worst_ms: float  # while it ran


@dataclass
class QuotaResults(RunInfo):
    cells: list[Cell]  # into an empty store, then into the same store full and recycling
    recycled_studies: int
    errors: list[str]
    stall: DeleteStall | None = None


def measure_delete_stall(lab: Lab, data: DataSet, feed_file: Path) -> DeleteStall:
    """Store one study of ``data.files`` instances, then DELETE it through the REST API while
    pynetdicom feeds copies of ``feed_file`` (new SOP Instance UIDs) over one association."""
    import threading

    import pydicom
    from pydicom.uid import generate_uid
    from pynetdicom import AE

    template = pydicom.dcmread(feed_file)
    latencies: list[tuple[float, float]] = []  # (end, seconds)
    stop = threading.Event()
    with lab.running(Appliance) as server:
        assert isinstance(server, Appliance)
        send(server, data.parts())
        (study,) = requests.get(f"http://{LOOPBACK}:{server.http_port}/studies", timeout=30,
                                headers=server.headers).json()
        ae = AE(ae_title="BENCHFEED")
        ae.add_requested_context(template.SOPClassUID, template.file_meta.TransferSyntaxUID)
        assoc = ae.associate(LOOPBACK, server.dicom_port, ae_title=server.aet)

        def feed() -> None:
            while not stop.is_set():
                template.SOPInstanceUID = generate_uid()
                started = time.perf_counter()
                assoc.send_c_store(template)
                latencies.append((time.perf_counter(), time.perf_counter() - started))

        feeder = threading.Thread(target=feed)
        feeder.start()
        time.sleep(2)
        started = time.perf_counter()
        requests.delete(f"http://{LOOPBACK}:{server.http_port}/studies/{study}", timeout=600,
                        headers=server.headers).raise_for_status()
        ended = time.perf_counter()
        time.sleep(1)
        stop.set()
        feeder.join()
        assoc.release()
    before = [s for at, s in latencies if at < started]
    during = [s for at, s in latencies if started <= at <= ended + 0.5]
    return DeleteStall(data.files, ended - started, statistics.median(before) * 1000,
                       max(during) * 1000)


def run_quota(quick: bool, lab: Lab) -> QuotaResults:
    """The tiny set into an appliance whose quota holds as many studies as the set has, then a
    second tiny set (new UIDs): each of its studies recycles one of the first set's."""
    spec = set_specs(quick)["tiny"]
    first = generate(spec)
    second = generate(replace(spec, name="tiny-b", first_study=0))
    r = QuotaResults(machine_info(lab.tmp), versions(), quick,
                     {"tiny": {"files": first.files, "bytes": first.bytes}}, [], 0, [])
    config = {"quota": {"max_studies": spec.studies}}
    with lab.running(Appliance, config) as server:
        idle = settle_rss(server)
        empty = measure_send(server, first, [first.root], True, idle_rss=idle)
        empty.note = "empty store (fills it to the quota)"
        print(f"  empty store: {empty.rate:.1f} inst/s", flush=True)
        full = measure_send(server, second, [second.root], True, idle_rss=idle,
                            already=second.files - first.files)
        full.note = f"full store: every new study recycles one ({spec.studies} studies)"
        print(f"  full store, recycling: {full.rate:.1f} inst/s", flush=True)
        stats = server.statistics() if isinstance(server, Appliance) else None
        r.recycled_studies = spec.studies * 2 - int((stats or {}).get("CountStudies", 0))
        r.cells = [empty, full]
    big = generate(replace(spec, name="one-study", studies=1, series=1))
    r.stall = attempt(r.errors, "delete stall", measure_delete_stall, lab, big,
                      next(first.parts()[0].iterdir()))
    return r


def quota_report(r: QuotaResults) -> str:
    out = header("appliance quota benchmark", r.machine, r.versions, r.quick)
    empty, full = (r.cells + [None, None])[:2]
    out += ["", "The tiny set (storescu, one association, TCP_NODELAY=1) into an appliance with"
            " quota.max_studies = the set's study count:", "first into the empty store, then a"
            " second tiny set (new UIDs) into the full store, recycling a study per new one."]
    for cell in r.cells:
        out.append(f"  {cell.note:60} {cell.rate:8.1f} inst/s  peak {cell.peak_rss_mib:.1f} MiB")
    out.append(f"  studies recycled: {r.recycled_studies}")
    if r.stall:
        st = r.stall
        out += ["", f"Deleting a study of {st.instances} instances (REST DELETE,"
                f" {st.seconds:.2f} s) while pynetdicom feeds tiny instances over one"
                " association:",
                f"  C-STORE round trip: median {st.median_ms:.1f} ms before, longest"
                f" {st.worst_ms:.1f} ms during the deletion"]
    target = Target("full, recycling / empty (tiny x1)",
                    ratio(rate_of(full), rate_of(empty)), 0.8, "x", True)
    out += ["", "Targets", target.line()]
    out += problems_and_failures([], r.errors)
    return "\n".join(out)


# --- entry point ------------------------------------------------------------------------------

def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sets", default=None,
                   help="comma-separated data sets (tiny, small, large; default: all three,"
                        " with --forward tiny and small)")
    p.add_argument("--quick", action="store_true",
                   help="a tenth of the counts and one 100 MB large object (with --qr: 10,000"
                        " instances instead of 100,000)")
    p.add_argument("--qr", action="store_true",
                   help="run only the Query/Retrieve part (issue 3): C-FIND latency and"
                        " movescu/getscu rates against Orthanc, at 10 %% and 100 %% fill")
    p.add_argument("--retrieve", action="store_true",
                   help="with --qr: store only the 500-instance study and time its retrieves"
                        " (no C-FIND, no 100,000-instance fill)")
    p.add_argument("--forward", action="store_true",
                   help="run only the store-and-forward part (issue 4): rates delivered to a"
                        " storescp through the appliance and through Orthanc (Lua"
                        " auto-routing), against storescu sending straight to it")
    p.add_argument("--quota", action="store_true",
                   help="run only the quota part (issue 5): the tiny set into an empty store,"
                        " then into the same store full and recycling a study per new one")
    p.add_argument("--stores", choices=("journaled", "tmp"),
                   default="journaled" if os.geteuid() == 0 else "tmp",
                   help="where the servers' stores go: a new ext4 with a journal, loop-mounted"
                        " for the run, as the appliance's data partition (default as root), or"
                        " the temporary directory")
    args = p.parse_args(argv)
    if args.qr + args.forward + args.quota > 1:
        p.error("--qr, --forward and --quota are separate runs")
    if args.retrieve and not args.qr:
        p.error("--retrieve goes with --qr")
    sets = args.sets or ("tiny,small" if args.forward else "tiny,small,large")
    args.sets = [s.strip() for s in sets.split(",") if s.strip()]
    unknown = set(args.sets) - {"tiny", "small", "large"}
    if unknown:
        p.error(f"unknown sets: {', '.join(sorted(unknown))}")
    return args


def check_tools(qr: bool) -> None:
    tools = ["storescu", "storescp", ORTHANC, str(VENV_BIN / "appliance")]
    tools += ["findscu", "movescu", "getscu"] if qr else []
    missing = [t for t in tools if shutil.which(t) is None]
    if missing:
        raise SystemExit(f"missing: {', '.join(missing)}")


def on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def run_and_report(args: argparse.Namespace, lab: Lab) -> tuple[str, Path]:
    """Run the part asked for; its report, and the JSON file that keeps it."""
    if args.qr:
        qr = run_qr(args.quick, lab, args.retrieve)
        text = qr_report(qr)
        return text, write_qr_json(qr, text)
    if args.quota:
        quota = run_quota(args.quick, lab)
        text = quota_report(quota)
        return text, save_json({**asdict(quota), "report": text}, "bench-quota")
    if args.forward:
        forward = run_forward(args.sets, args.quick, lab)
        text = forward_report(forward)
        return text, write_forward_json(forward, text)
    results = run(args.sets, args.quick, lab)
    text = report(results)
    return text, write_json(results, text)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    check_tools(args.qr)
    signal.signal(signal.SIGTERM, on_sigterm)
    with stores_root(args.stores) as root:
        lab = Lab(root)
        try:
            text, path = run_and_report(args, lab)
        except KeyboardInterrupt:
            print("interrupted: servers stopped, temporary files removed", file=sys.stderr)
            return 130
        finally:
            lab.close()
    print(text)
    print(f"\nresults: {path}")
    return 0

if __name__ == "__main__":
    sys.exit(main())
