"""The appliance OS image (image/build), booted under qemu with software emulation.

The image is built with ``--debug-shell``: a root shell on a virtio-serial port that only the host
running qemu reaches (production images have no such unit), through which the test inspects and
freezes the guest. DICOM and HTTP reach the guest through qemu's user network, forwarded to free
loopback ports. The built image is reused while the files it is made of do not change.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import requests

from appliance.index.ids import public_ids

from .conftest import (
    ARTIFACTS,
    DCMTK_ENV,
    ROOT,
    SUCCESS_LINE,
    dcmtk,
    free_port,
    make_series,
    wait_for,
)

pytestmark = [pytest.mark.image, pytest.mark.timeout(1800)]

OVMF = Path("/usr/share/ovmf/OVMF.fd")
AAVMF = Path("/usr/share/AAVMF")  # qemu-efi-aarch64: code and variables, as pflash units
CACHE = Path(os.environ.get("APPLIANCE_IMAGE_CACHE", "/var/cache/appliance-image"))
TEST_CONFIG = ROOT / "tests" / "image-config.json"
IMAGE_INPUTS = ("appliance", "systemd", "image", "pyproject.toml", "tests/image-config.json")
BOOT_TIMEOUT = 600.0  # software emulation on a shared 2-vCPU machine
AET = "APPLIANCE"
ADMIN = ("admin", "a first-run password")

# Run inside the guest: the first-run setup as a person does it, with the one-time link the
# appliance printed in its journal (the web server listens on loopback until it is used).
SETUP = """
import re, subprocess, urllib.parse, urllib.request, http.cookiejar
log = subprocess.run(["journalctl", "-u", "appliance", "-o", "cat"], capture_output=True,
                     text=True).stdout
token = log.split("/setup?token=")[-1].split()[0]
jar = urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar())
opener = urllib.request.build_opener(jar)
page = opener.open("http://127.0.0.1:8042/setup?token=" + token).read().decode()
csrf = re.search('name="csrf_token" value="([^"]+)"', page).group(1)
form = {"token": token, "username": "USER", "password": "PASSWORD", "password2": "PASSWORD",
        "csrf_token": csrf}
answer = opener.open("http://127.0.0.1:8042/setup", urllib.parse.urlencode(form).encode())
print(answer.status, answer.geturl())
""".replace("USER", ADMIN[0]).replace("PASSWORD", ADMIN[1])


@dataclass
class Platform:
    """What an architecture's image needs of qemu, and the numbers its test measured."""

    arch: str  # image/build --arch
    qemu: str
    installed_by: str  # for the skip message
    machine: tuple[str, ...]
    console: str  # the serial port the kernel logs to, with no getty on it
    prefix: str  # of its cached images and of its files in test-artifacts
    measurements: dict[str, float] = field(default_factory=dict)

    def firmware(self, workdir: Path) -> list[str]:
        """UEFI: OVMF as a BIOS image on x86; on arm64 two pflash units, the variables a copy
        of this VM's own (the firmware writes them)."""
        if self.arch == "amd64":
            return ["-bios", str(OVMF)]
        variables = workdir / "AAVMF_VARS.fd"
        if not variables.exists():
            shutil.copy(AAVMF / "AAVMF_VARS.fd", variables)
        return ["-drive", f"if=pflash,format=raw,unit=0,readonly=on,file={AAVMF}/AAVMF_CODE.fd",
                "-drive", f"if=pflash,format=raw,unit=1,file={variables}"]


AMD64 = Platform("amd64", "qemu-system-x86_64", "tools/test installs qemu-system-x86",
                 ("-machine", "q35", "-accel", "tcg,thread=multi", "-cpu", "max"), "ttyS0", "")
# cortex-a72 (a Raspberry Pi 4's core), not max: emulating max's pointer authentication is slow.
ARM64 = Platform("arm64", "qemu-system-aarch64",
                 "APPLIANCE_TEST_ARM64=1 tools/test installs qemu-system-arm qemu-efi-aarch64",
                 ("-machine", "virt", "-accel", "tcg,thread=multi", "-cpu", "cortex-a72"),
                 "ttyAMA0", "arm64-")
MEASUREMENTS = AMD64.measurements


def image_key() -> str:
    """Hash of every file the image is made of: a changed file means a new image."""
    digest = hashlib.sha256()
    for name in IMAGE_INPUTS:
        top = ROOT / name
        files = [top] if top.is_file() else sorted(
            p for p in top.rglob("*")
            if p.is_file() and not {"__pycache__", "out"} & set(p.relative_to(top).parts)
        )
        for path in files:
            digest.update(str(path.relative_to(ROOT)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:16]


@pytest.fixture(scope="session")
def image() -> Path:
    """The test image of this tree: built once, then reused from the cache."""
    return cached_image("test", ["--debug-shell"])


@pytest.fixture(scope="session")
def ssh_image() -> tuple[Path, Path]:
    """An image built as a customer would with ``--ssh-key`` (no debug shell), and the private
    key it trusts (made with the image, kept beside it in the root-only cache)."""
    key = CACHE / f"ssh-{image_key()}" / "id_ed25519"

    def make_key() -> list[str]:
        key.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)],
                       check=True)
        return ["--ssh-key", f"{key}.pub"]

    return cached_image("ssh", make_key), key


def cached_image(kind: str, options: list[str] | Callable[[], list[str]],
                 platform: Platform = AMD64) -> Path:
    """``image/build OPTIONS`` of this tree, built once and then reused from the cache."""
    if shutil.which(platform.qemu) is None:
        pytest.skip(f"{platform.qemu} is not installed ({platform.installed_by})")
    kind = platform.prefix + kind
    out = CACHE / f"{kind}-{image_key()}"
    raw = out / f"appliance-{platform.arch}.raw"
    CACHE.mkdir(parents=True, exist_ok=True)
    with open(CACHE / f"{out.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another checkout of the same tree may be building it
        if not raw.exists():
            build_image(out, kind, options() if callable(options) else options, platform)
    return raw


def build_image(out: Path, kind: str, options: list[str], platform: Platform) -> None:
    """image/build OPTIONS with the test configuration, logged to test-artifacts."""
    for old in CACHE.glob(f"{kind}-*"):  # images of other trees, unless still in use today
        if old.is_dir() and old != out and time.time() - old.stat().st_mtime > 86400:
            shutil.rmtree(old, ignore_errors=True)
    command = [str(ROOT / "image" / "build"), "--arch", platform.arch, *options,
               "--config", str(TEST_CONFIG), "--out", str(out)]
    if os.getuid() != 0:
        command = ["sudo", *command]
    ARTIFACTS.mkdir(exist_ok=True)
    started = time.monotonic()
    with open(ARTIFACTS / f"image-build-{kind}.log", "w") as log:
        # arm64's base runs its package scripts and initramfs under qemu-user: ~4x slower
        subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, check=True, timeout=3600)
    platform.measurements[f"build_seconds_{kind}"] = round(time.monotonic() - started, 1)
    compressed = (out / f"appliance-{platform.arch}.raw.zst").stat().st_size
    platform.measurements[f"compressed_mb_{kind}"] = round(compressed / 1e6, 1)


class Vm:
    """One qemu machine on a copy-on-write overlay of the image (the image stays pristine)."""

    def __init__(self, image: Path, workdir: Path, platform: Platform = AMD64):
        self.workdir = workdir
        self.platform = platform
        self.disk = workdir / "disk.qcow2"
        # Larger than the image: the data partition grows to fill it at first boot.
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", str(image), "-F", "raw",
                        str(self.disk), "6G"], check=True)
        self.dicom_port = free_port()
        self.http_port = free_port()
        self.ssh_port = free_port()
        self.boots = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self.shell: socket.socket | None = None
        self.started = 0.0

    def command(self) -> list[str]:
        forwards = (f"hostfwd=tcp:127.0.0.1:{self.dicom_port}-:4242,"
                    f"hostfwd=tcp:127.0.0.1:{self.http_port}-:8042,"
                    f"hostfwd=tcp:127.0.0.1:{self.ssh_port}-:22")
        return [
            self.platform.qemu, *self.platform.machine, "-smp", "2", "-m", "1024",
            *self.platform.firmware(self.workdir), "-display", "none", "-monitor", "none",
            "-drive", f"if=virtio,format=qcow2,file={self.disk}",
            "-netdev", f"user,id=net0,{forwards}", "-device", "virtio-net-pci,netdev=net0",
            "-device", "virtio-rng-pci", "-device", "i6300esb",
            "-device", "virtio-serial-pci",
            "-chardev", f"socket,id=debug,path={self.socket_path},server=on,wait=off",
            "-device", "virtserialport,chardev=debug,name=org.appliance.debug",
            "-serial", f"file:{self.workdir / f'console-{self.boots}.log'}",
        ]

    @property
    def socket_path(self) -> Path:
        return self.workdir / f"debug-{self.boots}.sock"

    def boot(self) -> float:
        """Power on; return the seconds until the appliance answers C-ECHO from the host."""
        self.boots += 1
        self.started = time.monotonic()
        with open(self.workdir / f"qemu-{self.boots}.log", "wb") as log:
            self.proc = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT)
        # Connected from the start: with nobody on the host side the guest's debug shell reads
        # end-of-file and is restarted every second, work a production image does not do.
        wait_for(self.socket_path.exists, timeout=60, what="qemu's debug socket")
        self.shell = socket.socket(socket.AF_UNIX)
        self.shell.connect(str(self.socket_path))
        try:
            wait_for(self.echo_ok, timeout=BOOT_TIMEOUT,
                     what="C-ECHO from the appliance in the VM")
        except TimeoutError as exc:
            raise TimeoutError(f"{exc}; {self.diagnose()}") from exc
        return time.monotonic() - self.started

    def diagnose(self) -> str:
        """What the guest says of a boot that never answered (its units, the appliance's
        status and the boot's journal), kept in ``boot-N.log`` beside qemu's own log."""
        path = self.workdir / f"boot-{self.boots}.log"
        try:
            _, out = self.sh("systemctl --failed --no-pager; systemctl status appliance"
                             " --no-pager; journalctl -b --no-pager | tail -n 400", timeout=60)
        except (OSError, RuntimeError) as exc:  # socket.timeout is an OSError
            out = f"no answer from the guest's debug shell ({exc!r}): it did not boot that far"
        path.write_text(out)
        return f"the guest's account is in {path.name} (test-artifacts)"

    def echo_ok(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise RuntimeError(f"qemu exited with {self.proc.returncode}: see {self.workdir}")
        # Before the guest listens, qemu accepts the connection and holds it: short timeouts.
        try:
            return dcmtk("echoscu", "-to", "2", "-ta", "2", "-td", "2", "-aec", AET, "127.0.0.1",
                         str(self.dicom_port), check=False, timeout=30).returncode == 0
        except subprocess.TimeoutExpired:
            return False

    def seconds_to_ready(self) -> float:
        """From power-on to the appliance's READY=1: exact, where the first C-ECHO also waits
        for DHCP and for the polling's timeouts."""
        return self.seconds_to_kernel() + self.ready_monotonic()

    def seconds_to_kernel(self) -> float:
        """From power-on to the kernel's start (firmware and boot loader): the guest's monotonic
        clock starts with its kernel, which the host places by reading the guest's uptime."""
        elapsed = time.monotonic() - self.started
        return elapsed - float(self.check("cat /proc/uptime").split()[0])

    def ready_monotonic(self) -> float:
        """When the appliance last became active, on the guest's clock (from its kernel's start)."""
        ready = self.check("systemctl show -p ActiveEnterTimestampMonotonic --value appliance")
        return int(ready) / 1e6

    def sh(self, command: str, timeout: float = 120.0) -> tuple[int, str]:
        """Run a shell command as root in the guest; return its status and output."""
        assert self.shell is not None
        marker = f"__done_{secrets.token_hex(4)}__"
        self.shell.sendall(f"({command}) 2>&1; echo {marker}$?\n".encode())
        self.shell.settimeout(timeout)
        data = b""
        while not re.search(rf"{marker}\d+\n".encode(), data):
            chunk = self.shell.recv(65536)
            if not chunk:
                raise RuntimeError("the debug shell closed")
            data += chunk
        out, _, status = data.decode().rpartition(marker)
        return int(status.strip()), out

    def check(self, command: str) -> str:
        status, out = self.sh(command)
        assert status == 0, f"{command!r} exited {status}: {out}"
        return out.strip()

    def power_cut(self) -> None:
        """Kill qemu: what the guest did not flush to the virtual disk is lost."""
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait()
        if self.shell is not None:
            self.shell.close()
            self.shell = None

    def get(self, path: str) -> requests.Response:
        return requests.get(f"http://127.0.0.1:{self.http_port}{path}", timeout=30, auth=ADMIN)

    def first_run_setup(self) -> None:
        """Set the admin password through the printed link, then restart the service: with an
        administrator it listens beyond loopback (``tests/image-config.json``)."""
        import base64

        script = base64.b64encode(SETUP.encode()).decode()
        out = self.check(f"echo {script} | base64 -d > /tmp/setup.py && "
                         "/opt/appliance/venv/bin/python3 /tmp/setup.py")
        assert out.endswith("/admin/"), out
        self.check("systemctl restart appliance")
        wait_for(self.echo_ok, timeout=BOOT_TIMEOUT, what="the restarted appliance")
        wait_for(lambda: self.get("/system").status_code == 200, 120, "the web API, logged in")


@pytest.fixture(scope="module")
def vm(image: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Vm]:
    with booted(Vm(image, tmp_path_factory.mktemp("vm"))) as machine:
        yield machine


@contextmanager
def booted(machine: Vm) -> Iterator[Vm]:
    """The machine booted and set up as a person would; powered off after, its logs and the
    platform's measurements kept in test-artifacts whatever the tests found."""
    numbers = machine.platform.measurements
    artifacts = f"image-{machine.platform.prefix}"
    try:
        numbers["boot_to_echo_seconds"] = round(machine.boot(), 1)
        numbers["boot_to_ready_seconds"] = round(machine.seconds_to_ready(), 1)
        numbers["kernel_to_ready_seconds"] = round(machine.ready_monotonic(), 1)
        machine.first_run_setup()
        yield machine
    finally:
        if machine.proc is not None and machine.proc.poll() is None:
            machine.power_cut()
        ARTIFACTS.mkdir(exist_ok=True)
        for log in machine.workdir.glob("*.log"):
            shutil.copy(log, ARTIFACTS / f"{artifacts}{log.name}")
        (ARTIFACTS / f"{artifacts}measurements.json").write_text(json.dumps(numbers, indent=2))


def test_service_ready_and_system_as_designed(vm: Vm) -> None:
    """READY=1 reached; read-only root; no password; the data partition grew; watchdogs armed."""
    assert vm.check("systemctl show -p ActiveState,SubState appliance") == \
        "ActiveState=active\nSubState=running"
    assert vm.check("systemctl is-system-running --wait") == "running"
    assert vm.check("findmnt -no OPTIONS /").split(",")[0] == "ro"
    assert vm.sh("touch /probe")[0] != 0
    assert vm.check("awk -F: '$2 !~ /^[!*]/ {print $1}' /etc/shadow") == ""
    assert vm.check("test ! -e /usr/sbin/sshd && echo no-ssh") == "no-ssh"
    gettys = f"serial-getty@{vm.platform.console}.service getty@tty1.service"
    assert vm.check(f"systemctl is-enabled {gettys} || true") == "masked\nmasked"
    data_bytes = int(vm.check("findmnt -bno SIZE /var/lib/appliance"))
    assert data_bytes > 4 << 30, "the data partition did not grow to fill the 6 GB disk"
    assert vm.check("systemctl show -p RuntimeWatchdogUSec --value") == "30s"
    assert "Using hardware watchdog" in vm.check("journalctl -b _PID=1 --no-pager")
    meminfo = dict(line.split(":") for line in vm.check("cat /proc/meminfo").splitlines())
    kib = {k: int(v.split()[0]) for k, v in meminfo.items()}
    numbers = vm.platform.measurements
    numbers["idle_memory_mib"] = round((kib["MemTotal"] - kib["MemAvailable"]) / 1024, 1)
    numbers["idle_memory_used_mib"] = round(
        (kib["MemTotal"] - kib["MemFree"] - kib["Buffers"] - kib["Cached"] - kib["SReclaimable"])
        / 1024, 1)


def test_units_verify_in_the_image(vm: Vm) -> None:
    """systemd-analyze verify, where the units run (their programs and users exist there)."""
    units = vm.check("ls /etc/systemd/system/appliance*.service").split()
    assert "/etc/systemd/system/appliance.service" in units
    assert vm.sh(f"systemd-analyze verify {' '.join(units)}") == (0, "")


def test_the_appliance_files_were_read_ahead(vm: Vm) -> None:
    """appliance-readahead.service ran at this boot and succeeded, from a list the build made of
    what ``serve`` reads (every file in it exists in the image)."""
    def show(prop: str) -> str:
        return vm.check(f"systemctl show -p {prop} --value appliance-readahead")

    assert (show("Result"), show("ExecMainStatus")) == ("success", "0")
    assert int(show("ExecMainStartTimestampMonotonic")) > 0
    listed = vm.check("cat /opt/appliance/readahead.list").split()
    assert any(path.endswith("/appliance/__pycache__/store.cpython-311.pyc") for path in listed)
    assert vm.check("while read -r f; do [ -f \"$f\" ] || echo \"$f\"; done "
                    "< /opt/appliance/readahead.list") == ""


def test_ssh_image_lets_in_its_key_and_nothing_else(ssh_image: tuple[Path, Path],
                                                   tmp_path_factory: pytest.TempPathFactory
                                                   ) -> None:
    """``--ssh-key``: root logs in with that key (host keys made at first boot), without it
    nobody does; the appliance runs as in any image."""
    raw, key = ssh_image
    machine = Vm(raw, tmp_path_factory.mktemp("ssh-vm"))
    try:
        machine.boot()

        def ssh(*options: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run(
                ["ssh", "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
                 "-o", "BatchMode=yes", "-o", "ConnectTimeout=30", *options,
                 "-p", str(machine.ssh_port), "root@127.0.0.1",
                 "systemctl is-active appliance; systemctl is-system-running --wait"],
                capture_output=True, text=True, timeout=120)

        wait_for(lambda: ssh("-i", str(key)).returncode == 0, 300, "an SSH login with the key")
        assert ssh("-i", str(key)).stdout.split() == ["active", "running"]
        refused = ssh("-o", "PubkeyAuthentication=no", "-o", "PasswordAuthentication=yes")
        assert refused.returncode == 255 and "Permission denied (publickey)" in refused.stderr
    finally:
        machine.power_cut()


def test_ssh_key_unit_verifies() -> None:
    """The unit of --ssh-key images (not in the test image): verified on the host."""
    if shutil.which("ssh-keygen") is None:
        pytest.fail("ssh-keygen is not installed (tools/test installs openssh-client)")
    result = subprocess.run(["systemd-analyze", "verify",
                             str(ROOT / "systemd" / "appliance-ssh-keys.service")],
                            capture_output=True, text=True)
    assert (result.returncode, result.stderr) == (0, "")


def store(vm: Vm, files: list[Path], *options: str) -> subprocess.CompletedProcess[str]:
    return dcmtk("storescu", *options, "-aec", AET, "127.0.0.1", str(vm.dicom_port),
                 *[str(f) for f in files], timeout=600)


def instance_id(path: Path) -> str:
    import pydicom

    ds = pydicom.dcmread(path, stop_before_pixels=True)
    return public_ids(ds.PatientID, ds.StudyInstanceUID, ds.SeriesInstanceUID,
                      ds.SOPInstanceUID).instance


def test_store_and_web_from_the_host(vm: Vm, tmp_path: Path) -> None:
    """echoscu and storescu from the host; the web API answers and lists what was stored."""
    files = make_series(tmp_path / "series", 5, patient_id="IMG1")
    result = store(vm, files, "-v")
    assert result.stdout.count(SUCCESS_LINE) + result.stderr.count(SUCCESS_LINE) == 5
    system = vm.get("/system").json()
    assert system["DicomAet"] == AET and system["DicomPort"] == 4242
    listed = set(vm.get("/instances").json())
    assert {instance_id(f) for f in files} <= listed


def test_the_appliance_writes_on_its_data_partition(vm: Vm) -> None:
    """It starts before the partition is mounted: what it sees (in its own mount namespace) must
    be that partition, read-write, and what it wrote must be on it, not on the tmpfs beneath."""
    pid = vm.check("systemctl show -p MainPID --value appliance")
    index = "/var/lib/appliance/index.sqlite"
    source, fstype, options = vm.check(f"nsenter -t {pid} -m findmnt -no SOURCE,FSTYPE,OPTIONS "
                                       f"-T {index}").split()
    assert (source, fstype) == (vm.check("findmnt -no SOURCE /var/lib/appliance"), "ext4")
    assert options.split(",")[0] == "rw", options
    assert vm.check(f"nsenter -t {pid} -m stat -c %d:%i {index}") == \
        vm.check(f"stat -c %d:%i {index}")


def test_unmounting_the_data_partition_stops_the_appliance_first(vm: Vm) -> None:
    """The appliance is not ordered after its data mount (it starts while the partition mounts):
    appliance-unmount.service stops it before the unmount, and starting it mounts the data."""
    before = vm.get("/statistics").json()
    vm.check("systemctl stop var-lib-appliance.mount")
    assert vm.check("systemctl is-active appliance appliance-unmount var-lib-appliance.mount "
                    "|| true") == "inactive\ninactive\ninactive"
    log = vm.check("journalctl -b -o cat --no-pager -u appliance -u var-lib-appliance.mount "
                   "| grep -E '^stopped$|Unmounted' | tail -2")
    assert log.splitlines() == ["stopped",
                                "Unmounted var-lib-appliance.mount - /var/lib/appliance."]
    vm.check("systemctl start appliance")
    wait_for(vm.echo_ok, timeout=BOOT_TIMEOUT, what="the appliance started again")
    assert vm.check("systemctl is-active var-lib-appliance.mount appliance-unmount") == \
        "active\nactive"
    wait_for(lambda: vm.get("/statistics").status_code == 200, 120, "the web API")
    assert vm.get("/statistics").json() == before


def test_health(vm: Vm) -> None:
    response = vm.get("/health")
    assert response.status_code == 200, response.text
    checks = {check["name"]: check["status"] for check in response.json()["checks"]}
    assert checks["disk"] == "ok", response.text  # the grown data partition has room


def test_watchdog_restarts_a_frozen_appliance(vm: Vm) -> None:
    """SIGSTOP the service: systemd's watchdog kills and restarts it; the store is intact."""
    watchdog = vm.check("systemctl show -p WatchdogUSec --value appliance")
    assert watchdog not in ("0", "infinity"), "appliance.service must set WatchdogSec="
    before = vm.get("/statistics").json()
    pid = vm.check("systemctl show -p MainPID --value appliance")
    frozen = time.monotonic()
    vm.check(f"kill -STOP {pid}")

    def restarted() -> bool:
        state = vm.check("systemctl show -p MainPID,ActiveState --value appliance").split()
        return state[0] not in ("0", pid) and state[1] == "active"

    # A stopped process ignores SIGABRT: systemd sends SIGKILL after TimeoutAbortSec.
    abort = vm.check("systemctl show -p TimeoutAbortUSec --value appliance")
    limit = _seconds(watchdog) + _seconds(abort) + 180
    wait_for(restarted, timeout=limit, what="systemd to restart the appliance")
    MEASUREMENTS["freeze_to_restarted_seconds"] = round(time.monotonic() - frozen, 1)
    assert "watchdog timeout" in vm.check("journalctl -b -u appliance --no-pager").lower()
    wait_for(vm.echo_ok, timeout=60, what="C-ECHO after the restart")
    assert vm.get("/statistics").json() == before


def _seconds(systemd_span: str) -> float:
    """'30s', '1min 30s' as systemctl prints them."""
    units = {"ms": 0.001, "s": 1, "min": 60, "h": 3600}
    return sum(float(n) * units[u] for n, u in re.findall(r"([\d.]+)(ms|s|min|h)", systemd_span))


def test_power_cut_during_a_store_keeps_every_acknowledged_instance(vm: Vm, tmp_path: Path) -> None:
    """Kill qemu while storescu streams; after the next boot every acknowledged instance is there
    and the store is consistent (fsck --verify finds nothing)."""
    files = make_series(tmp_path / "cut", 600, patient_id="CUT", size=128)
    proc = subprocess.Popen(
        ["storescu", "-v", "-aec", AET, "127.0.0.1", str(vm.dicom_port), *map(str, files)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=DCMTK_ENV)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(iter(proc.stdout.readline, "")))  # type: ignore[union-attr]
    reader.start()
    wait_for(lambda: sum(SUCCESS_LINE in line for line in lines) >= 50, timeout=300,
             what="50 acknowledged instances")
    vm.power_cut()
    proc.wait(timeout=120)
    reader.join(timeout=60)
    acknowledged = acknowledged_files(lines)
    assert 50 <= len(acknowledged) < len(files), "the cut did not happen during the stream"
    MEASUREMENTS["acknowledged_before_power_cut"] = len(acknowledged)

    MEASUREMENTS["boot_to_echo_after_power_cut_seconds"] = round(vm.boot(), 1)
    MEASUREMENTS["boot_to_ready_after_power_cut_seconds"] = round(vm.seconds_to_ready(), 1)
    listed = set(vm.get("/instances").json())
    missing = [f for f in acknowledged if instance_id(f) not in listed]
    assert not missing, f"{len(missing)} acknowledged instances lost, e.g. {missing[:3]}"
    journal = vm.check("journalctl -b -u appliance --no-pager | grep 'reconcile:\\|durability:'")
    assert "durability: one ext4 journal commit per batch" in journal, journal
    assert "index rows whose file is missing: 0" in journal, journal
    assert "unreadable quarantined 0" in journal, journal
    status, report = vm.sh(
        "systemctl stop appliance && runuser -u appliance -- /opt/appliance/venv/bin/appliance"
        " fsck --verify --data /var/lib/appliance; s=$?; systemctl start appliance; exit $s")
    assert status == 0, report


def acknowledged_files(storescu_log: list[str]) -> list[Path]:
    """The files storescu -v saw a success response for (each follows its 'Sending file' line)."""
    sent: Path | None = None
    done = []
    for line in storescu_log:
        if "Sending file:" in line:
            sent = Path(line.split("Sending file:", 1)[1].strip())
        elif SUCCESS_LINE in line and sent is not None:
            done.append(sent)
            sent = None
    return done
