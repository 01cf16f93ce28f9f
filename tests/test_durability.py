"""Durability: a crash (kill -9) mid-send loses no acknowledged instance, and the storage area and
the index are reconciled (at start-up, by ``appliance fsck`` and by ``appliance reindex``).

Also: one appliance per data directory, and a large object received with flat memory.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import sqlite3
import struct
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    ExplicitVRLittleEndian,
    MultiFrameGrayscaleWordSecondaryCaptureImageStorage,
    generate_uid,
)
from pynetdicom.dsutils import split_dataset

from .conftest import (
    DCMTK_ENV,
    RECEIVE_PATHS,
    ROOT,
    SUCCESS_LINE,
    ApplianceProcess,
    dcmtk,
    make_series,
    storescu,
    temp_files,
    wait_for,
)

pytestmark = pytest.mark.integration

FSCK_LABELS = {
    "temporary files": "temp",
    "files without an index row": "orphans",
    "index rows whose file is missing": "missing",
    "files whose checksum differs": "corrupt",
}


# --- helpers ---------------------------------------------------------------------------------

def appliance_cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "appliance", *args], capture_output=True,
                          text=True, timeout=timeout, cwd=ROOT)


def fsck_counts(result: subprocess.CompletedProcess[str]) -> dict[str, int]:
    """The four counters of an ``appliance fsck`` report (all must be present)."""
    counts = {}
    for line in result.stdout.splitlines():
        m = re.match(r"^([a-z ]+): (\d+)", line)
        if m and m.group(1) in FSCK_LABELS:
            counts[FSCK_LABELS[m.group(1)]] = int(m.group(2))
    assert set(counts) == set(FSCK_LABELS.values()), f"unexpected fsck output:\n{result.stdout}"
    return counts


def assert_fsck_clean(app: ApplianceProcess, *args: str) -> None:
    result = app.fsck(*args)
    assert result.returncode == 0, result.stdout + result.stderr
    assert fsck_counts(result) == dict.fromkeys(FSCK_LABELS.values(), 0), result.stdout


def blobs(data: Path) -> list[Path]:
    return sorted(p for p in (data / "files").rglob("*") if p.is_file())


def sop_uid(path: Path) -> str:
    return str(dcmread(path, stop_before_pixels=True, specific_tags=["SOPInstanceUID"])
               .SOPInstanceUID)


def dataset_bytes(data: bytes, path_for_offset: Path) -> bytes:
    """The dataset part of Part 10 bytes (everything after the file meta group)."""
    return data[split_dataset(path_for_offset)[1]:]


def dataset_md5(path: Path) -> tuple[int, str]:
    """(size, md5) of the dataset part of a Part 10 file, read in chunks."""
    offset = split_dataset(path)[1]
    h = hashlib.md5()
    with open(path, "rb") as f:
        f.seek(offset)
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return path.stat().st_size - offset, h.hexdigest()


def instances_by_sop(app: ApplianceProcess) -> dict[str, str]:
    """SOPInstanceUID -> instance ID, from ``/instances?expand``."""
    out = {}
    for item in app.json("/instances?expand"):
        uid = item["MainDicomTags"]["SOPInstanceUID"]
        assert uid not in out, f"{uid} indexed twice"
        out[uid] = item["ID"]
    return out


def free_name_like(data: Path, existing: Path) -> Path:
    """A path for a new blob in the area's own layout (a name the area would generate)."""
    from appliance.storage.area import StorageArea

    area = StorageArea(data)
    name = existing.name[:-32] + uuid.uuid4().hex
    return area.path(name)


def vm_hwm_kb(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    m = re.search(r"^VmHWM:\s+(\d+) kB", status, re.M)
    assert m, status
    return int(m.group(1))


# --- 1. kill -9 in the middle of a send ------------------------------------------------------

class StorescuWatcher:
    """Runs ``storescu -v`` and records, as they come, the files whose response was Success."""

    def __init__(self, app: ApplianceProcess, files: list[Path]) -> None:
        self.acked: list[str] = []
        self.failed: list[str] = []
        self.lines: list[str] = []
        self._current: str | None = None
        self.proc = subprocess.Popen(
            ["storescu", "-v", "-aec", app.aet, "127.0.0.1", str(app.dicom_port),
             *[str(f) for f in files]],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=DCMTK_ENV,
        )
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line)
            m = re.search(r"Sending file: (\S+)", line)
            if m:
                self._current = m.group(1)
            elif "Received Store Response" in line:
                assert self._current is not None
                (self.acked if SUCCESS_LINE in line else self.failed).append(self._current)
                self._current = None

    def finish(self, timeout: float = 120) -> int:
        rc = self.proc.wait(timeout)
        self._thread.join(timeout)
        assert not self._thread.is_alive()
        return rc


@pytest.mark.slow
@pytest.mark.timeout(900)
@pytest.mark.parametrize("receive_path", list(RECEIVE_PATHS))
def test_kill_9_during_send_loses_no_acknowledged_instance(appliance_factory: Any,
                                                            tmp_path: Path,
                                                            receive_path: str) -> None:
    files = make_series(tmp_path / "series", 2000, size=32)
    uid_of = {str(f): sop_uid(f) for f in files}
    file_of = {uid: Path(f) for f, uid in uid_of.items()}
    config = RECEIVE_PATHS[receive_path]
    app = appliance_factory("data", config=config).start()
    watcher = StorescuWatcher(app, files)
    try:
        wait_for(lambda: len(watcher.acked) >= 500 or watcher.proc.poll() is not None, 300,
                 "500 acknowledged instances")
        assert len(watcher.acked) >= 500, "".join(watcher.lines[-20:])
        app.kill()
    finally:
        if app.proc is not None and app.proc.poll() is None:
            app.kill()
        rc = watcher.finish()
    acked = [uid_of[f] for f in watcher.acked]
    assert not watcher.failed, f"refused before the kill: {watcher.failed[:5]}"
    assert rc != 0 and len(acked) < len(files), "the kill did not interrupt the send"
    assert len(set(acked)) == len(acked)

    # What the crash left, before any repair: temporary files and files without a row may
    # remain, but never a row without its file, and no stored file is damaged.
    before = app.fsck("--verify")
    counts = fsck_counts(before)
    assert counts["missing"] == 0 and counts["corrupt"] == 0, before.stdout

    # the same data directory, reconciled at start-up
    app2 = appliance_factory("data", config=config).start()
    indexed = instances_by_sop(app2)
    lost = [uid for uid in acked if uid not in indexed]
    assert not lost, f"{len(lost)} acknowledged instances lost, e.g. {lost[:3]}"
    assert set(indexed) <= set(file_of), "an instance that was never sent is indexed"
    assert app2.statistics()["CountInstances"] == len(indexed)
    # Every indexed instance (acknowledged or not) is complete: same dataset bytes as sent.
    for uid, instance_id in indexed.items():
        r = app2.get(f"/instances/{instance_id}/file")
        assert r.status_code == 200, uid
        stored = tmp_path / "stored.dcm"
        stored.write_bytes(r.content)
        sent = file_of[uid]
        assert dataset_bytes(r.content, stored) == dataset_bytes(sent.read_bytes(), sent), uid
    wait_for(lambda: not temp_files(app2.data), 30, "an empty tmp/")

    assert app2.stop() == 0, app2.log()[-3000:]
    assert_fsck_clean(app2, "--verify")
    assert len(blobs(app2.data)) == len(indexed), blobs(app2.data)
    assert not temp_files(app2.data)


# --- 2. orphans, missing files, temporary files, corrupt files --------------------------------

@pytest.mark.timeout(300)
def test_fsck_reports_and_repairs(appliance_factory: Any, tmp_path: Path) -> None:
    files = make_series(tmp_path / "series", 4, size=32)
    app = appliance_factory("data").start()
    storescu(app, *files)
    ids = instances_by_sop(app)
    assert len(ids) == 4
    assert app.stop() == 0
    assert_fsck_clean(app, "--verify")

    stored = {sop_uid(p): p for p in blobs(app.data)}
    assert set(stored) == set(ids)
    uids = [sop_uid(f) for f in files]
    # a row without its file
    gone_uid = uids[0]
    stored[gone_uid].unlink()
    # a file without a row: a valid instance that was never indexed
    extra = make_series(tmp_path / "extra", 1, size=32)[0]
    extra_uid = sop_uid(extra)
    orphan = free_name_like(app.data, stored[uids[1]])
    orphan.parent.mkdir(parents=True, exist_ok=True)
    orphan.write_bytes(extra.read_bytes())
    # a leftover of an interrupted reception
    (app.data / "tmp" / "leftover.dcm").write_bytes(b"\0" * 128 + b"DICM" + b"partial")

    report = app.fsck()
    assert report.returncode != 0, report.stdout
    assert fsck_counts(report) == {"temp": 1, "orphans": 1, "missing": 1, "corrupt": 0}
    assert f"missing file: instance {ids[gone_uid]}" in report.stdout
    # a check without --repair changes nothing
    assert orphan.exists() and (app.data / "tmp" / "leftover.dcm").exists()
    assert fsck_counts(app.fsck()) == {"temp": 1, "orphans": 1, "missing": 1, "corrupt": 0}

    repaired = app.fsck("--repair")
    assert repaired.returncode == 0, repaired.stdout + repaired.stderr
    assert "re-indexed 1" in repaired.stdout, repaired.stdout
    assert_fsck_clean(app, "--verify")
    assert not temp_files(app.data)

    app.start()
    now = instances_by_sop(app)
    assert set(now) == (set(uids) - {gone_uid}) | {extra_uid}
    assert app.get(f"/instances/{ids[gone_uid]}").status_code == 404
    r = app.get(f"/instances/{now[extra_uid]}/file")
    assert r.status_code == 200 and r.content == extra.read_bytes()
    assert app.statistics()["CountInstances"] == 4
    assert not temp_files(app.data)
    assert app.stop() == 0

    # --verify finds a file whose bytes changed (same size, one byte flipped)
    victim_uid = uids[2]
    victim = {sop_uid(p): p for p in blobs(app.data)}[victim_uid]
    data = bytearray(victim.read_bytes())
    data[-10] ^= 0xFF
    victim.write_bytes(bytes(data))
    assert_fsck_clean(app)  # without --verify, checksums are not read
    verify = app.fsck("--verify")
    assert verify.returncode != 0, verify.stdout
    assert fsck_counts(verify) == {"temp": 0, "orphans": 0, "missing": 0, "corrupt": 1}
    assert f"checksum mismatch: instance {now[victim_uid]}" in verify.stdout


def test_rows_of_a_cut_flush_are_dropped(appliance_factory: Any, tmp_path: Path) -> None:
    """A batch commits before the one flush that makes its files and its commit durable; a
    power cut during that flush can keep its rows (never acknowledged) with files cut short.
    Such a file is found from ``unsynced`` and its row dropped, so the sender's retry is stored."""
    files = make_series(tmp_path / "series", 3, size=32)
    app = appliance_factory("data").start()
    storescu(app, *files)
    ids = instances_by_sop(app)
    assert app.stop() == 0
    with sqlite3.connect(app.data / "index.sqlite") as db:
        unsynced = [name for (name,) in db.execute("SELECT file FROM unsynced")]
    assert len(unsynced) == 1, unsynced  # one association: the last instance's own batch
    cut = next(p for p in blobs(app.data) if p.name == unsynced[0])
    cut_uid = sop_uid(cut)
    assert cut_uid == sop_uid(files[-1])
    cut.write_bytes(cut.read_bytes()[:200])  # what a power cut may leave of it

    report = app.fsck()
    assert fsck_counts(report) == {"temp": 0, "orphans": 0, "missing": 1, "corrupt": 0}
    assert f"missing file: instance {ids[cut_uid]}" in report.stdout, report.stdout

    app.start()  # reconciliation drops the row and the file
    assert set(instances_by_sop(app)) == {sop_uid(f) for f in files[:-1]}
    storescu(app, files[-1])  # the sender's retry (it never saw a success)
    assert instances_by_sop(app) == ids
    assert app.stop() == 0
    assert_fsck_clean(app, "--verify")


@contextlib.contextmanager
def journaled_ext4(image: Path, mount: Path, size_mib: int = 256,
                   options: str = "") -> Iterator[str]:
    """A new ext4 with a journal (as ``image/build`` makes the data partition) on a loop device,
    mounted at ``mount``; yields the device's path."""
    if not image.exists():
        subprocess.run(["truncate", "-s", f"{size_mib}M", str(image)], check=True)
        subprocess.run(["mkfs.ext4", "-q", "-F", "-E", "lazy_itable_init=0,lazy_journal_init=0",
                        str(image)], check=True)
    device = subprocess.run(["losetup", "--find", "--show", str(image)], check=True,
                            capture_output=True, text=True).stdout.strip()
    try:
        mount.mkdir(exist_ok=True)
        subprocess.run(["mount", *(["-o", options] if options else []), device, str(mount)],
                       check=True)
        try:
            yield device
        finally:
            subprocess.run(["umount", str(mount)], check=True)
    finally:
        subprocess.run(["losetup", "-d", device], check=True)


@pytest.mark.skipif(os.geteuid() != 0, reason="loop devices and mounts need root")
@pytest.mark.timeout(300)
@pytest.mark.parametrize("receive_path", list(RECEIVE_PATHS))
def test_the_device_holds_every_acknowledged_instance(tmp_path: Path, receive_path: str) -> None:
    """A power cut on the filesystem the image gives the store (ext4 with a journal), where the
    appliance flushes a batch with one journal commit: right after the last acknowledgement,
    the device is read past every cache (``O_DIRECT``) while the appliance still runs, and that
    copy, mounted (the journal replayed), holds every acknowledged instance, indexed and whole.
    The journal's own commits are held off (``commit=600``) and the send lasts seconds, far
    below the 30 s after which the kernel writes dirty pages on its own: only the appliance's
    flushes put anything on the device."""
    files = make_series(tmp_path / "series", 150, size=32)
    uid_of = {str(f): sop_uid(f) for f in files}
    copy = tmp_path / "cut.img"
    with journaled_ext4(tmp_path / "fs.img", tmp_path / "mnt", options="commit=600") as device:
        app = ApplianceProcess(tmp_path / "mnt" / "data", config=RECEIVE_PATHS[receive_path])
        app.log_path = tmp_path / "appliance.log"
        app.start()
        try:
            assert "durability: one ext4 journal commit per batch" in app.log(), app.log()
            watcher = StorescuWatcher(app, files)
            assert watcher.finish() == 0, "".join(watcher.lines[-20:])
            subprocess.run(["dd", f"if={device}", f"of={copy}", "bs=1M", "iflag=direct",
                            "status=none"], check=True)
        finally:
            app.kill()
    assert len(watcher.acked) == len(files) and not watcher.failed

    with journaled_ext4(copy, tmp_path / "after"):
        data = tmp_path / "after" / "data"
        with contextlib.closing(sqlite3.connect(data / "index.sqlite")) as db:
            indexed = {uid for (uid,) in db.execute("SELECT sop_uid FROM instance")}
        lost = [uid_of[f] for f in watcher.acked if uid_of[f] not in indexed]
        assert not lost, f"{len(lost)} of {len(files)} acknowledged instances lost"
        report = appliance_cli("fsck", "--verify", "--data", str(data))
        counts = fsck_counts(report)
        assert counts["missing"] == 0 and counts["corrupt"] == 0, report.stdout


@pytest.mark.skipif(os.geteuid() != 0, reason="loop devices and mounts need root")
@pytest.mark.timeout(300)
def test_reconciliation_puts_the_files_it_indexes_on_the_device(tmp_path: Path) -> None:
    """Files renamed into place by a process that then crashed may be in the page cache only.
    Start-up reconciliation indexes them: a power cut right after must not leave rows whose
    files never reached the device. Same set-up as above: the device is read past every cache
    once the appliance is ready, and only the appliance's flushes put anything there."""
    files = make_series(tmp_path / "series", 20, size=32)
    copy = tmp_path / "cut.img"
    with journaled_ext4(tmp_path / "fs.img", tmp_path / "mnt", options="commit=600") as device:
        app = ApplianceProcess(tmp_path / "mnt" / "data")
        app.log_path = tmp_path / "appliance.log"
        app.start()  # an empty store, stopped cleanly
        assert app.stop() == 0
        for f in files:  # as a crash leaves them: in place, without a row, not flushed
            name = "2026010112" + uuid.uuid4().hex
            blob = app.data / "files" / name[:8] / name[8:10] / name
            blob.parent.mkdir(parents=True, exist_ok=True)
            blob.write_bytes(f.read_bytes())
        app.start()
        try:
            assert "files without an index row: 20 (re-indexed 20" in app.log(), app.log()
            subprocess.run(["dd", f"if={device}", f"of={copy}", "bs=1M", "iflag=direct",
                            "status=none"], check=True)
        finally:
            app.kill()

    with journaled_ext4(copy, tmp_path / "after"):
        data = tmp_path / "after" / "data"
        with contextlib.closing(sqlite3.connect(data / "index.sqlite")) as db:
            indexed = {uid for (uid,) in db.execute("SELECT sop_uid FROM instance")}
        assert indexed == {sop_uid(f) for f in files}
        report = appliance_cli("fsck", "--verify", "--data", str(data))
        counts = fsck_counts(report)
        assert counts["missing"] == 0 and counts["corrupt"] == 0, report.stdout


# --- 3. reindex ------------------------------------------------------------------------------

@pytest.mark.timeout(300)
def test_reindex_rebuilds_the_same_index(appliance_factory: Any, tmp_path: Path) -> None:
    a = make_series(tmp_path / "a", 6, patient_id="PA", size=32)
    b = make_series(tmp_path / "b", 3, patient_id="PB", modality="MR", size=32)
    c = make_series(tmp_path / "c", 2, patient_id="PA", size=32)  # a second study of PA
    app = appliance_factory("data").start()
    storescu(app, *a, *b, *c)
    levels = ("patients", "studies", "series", "instances")
    before = {level: sorted(app.json(f"/{level}")) for level in levels}
    stats = app.statistics()
    assert stats["CountInstances"] == 11 and stats["CountPatients"] == 2
    assert stats["CountStudies"] == 3 and stats["CountSeries"] == 3
    tags_before = {i["ID"]: i["MainDicomTags"] for i in app.json("/instances?expand")}
    assert app.stop() == 0

    result = appliance_cli("reindex", "--data", str(app.data))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "re-indexed 11 instances" in result.stdout, result.stdout
    assert list(app.data.glob("index.sqlite.*.old")), "the previous index was not kept aside"

    app.start()
    assert {level: sorted(app.json(f"/{level}")) for level in levels} == before
    assert app.statistics() == stats
    assert {i["ID"]: i["MainDicomTags"] for i in app.json("/instances?expand")} == tags_before
    assert app.stop() == 0
    assert_fsck_clean(app, "--verify")


# --- 4. one appliance per data directory -----------------------------------------------------

def test_serve_waits_for_its_data_mount_and_never_runs_beneath(tmp_path: Path) -> None:
    """``serve --wait-mount``: a data directory that is not a mount point (the partition never
    came) makes it fail with a clear message, and nothing is written into the directory."""
    data = tmp_path / "mountpoint"
    data.mkdir()
    result = appliance_cli("serve", "--data", str(data), "--wait-mount", "0.3",
                           "--dicom-port", "0", "--http-port", "0", timeout=60)
    assert result.returncode != 0
    assert f"{data} is not a mount point after 0.3 s" in result.stderr, result.stderr
    assert list(data.iterdir()) == []
    without_data = appliance_cli("serve", "--wait-mount", "1", timeout=60)
    assert without_data.returncode != 0 and "--wait-mount needs --data" in without_data.stderr


@pytest.mark.timeout(300)
def test_second_appliance_on_same_data_refuses(appliance_factory: Any, tmp_path: Path) -> None:
    app = appliance_factory("data").start()
    storescu(app, *make_series(tmp_path / "s", 2, size=32))
    second = ApplianceProcess(app.data)
    result = subprocess.run(second.command(), capture_output=True, text=True, timeout=60,
                            cwd=ROOT)
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert "in use" in output, output

    # the writers that need the directory to themselves are refused too, and harmless
    index_before = (app.data / "index.sqlite").stat().st_ino
    reindex = appliance_cli("reindex", "--data", str(app.data), timeout=60)
    assert reindex.returncode != 0 and "in use" in reindex.stdout + reindex.stderr
    assert (app.data / "index.sqlite").stat().st_ino == index_before
    repair = app.fsck("--repair")
    assert repair.returncode != 0 and "in use" in repair.stdout + repair.stderr

    # the first one is unaffected
    dcmtk("echoscu", "-aec", app.aet, "127.0.0.1", str(app.dicom_port))
    storescu(app, *make_series(tmp_path / "t", 1, size=32))
    assert app.statistics()["CountInstances"] == 3
    assert app.stop() == 0
    assert_fsck_clean(app)


# --- 5. a large object -----------------------------------------------------------------------

def write_multiframe(path: Path, rows: int, columns: int, frames: int) -> None:
    """A 16-bit multi-frame instance, the pixel data appended frame by frame (never in memory)."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = MultiFrameGrayscaleWordSecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.PatientID = "BIG"
    ds.PatientName = "Big^Object"
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.Modality = "OT"
    ds.InstanceNumber = 1
    ds.NumberOfFrames = frames
    ds.Rows, ds.Columns = rows, columns
    ds.BitsAllocated = ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.save_as(path, enforce_file_format=True)
    frame_size = rows * columns * 2
    pattern = bytes(range(256)) * (frame_size // 256)
    with open(path, "ab") as f:
        f.write(struct.pack("<HH2sHI", 0x7FE0, 0x0010, b"OW", 0, frame_size * frames))
        for i in range(frames):
            f.write(struct.pack("<I", i) + pattern[4:])  # frames differ: order is checked


def pynetdicom_send_file(app: ApplianceProcess, path: Path, sop_class: str,
                         monkeypatch: pytest.MonkeyPatch) -> int:
    """C-STORE of a file's bytes as they are (pynetdicom reads it in chunks, never whole)."""
    from pynetdicom import AE, _config

    monkeypatch.setattr(_config, "STORE_SEND_CHUNKED_DATASET", True)
    ae = AE(ae_title="PYNETDICOM")
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 300
    ae.add_requested_context(sop_class, ExplicitVRLittleEndian)
    assoc = ae.associate("127.0.0.1", app.dicom_port, ae_title=app.aet)
    assert assoc.is_established
    try:
        rsp = assoc.send_c_store(path)
    finally:
        if assoc.is_established:
            assoc.release()
    assert rsp and "Status" in rsp, "no C-STORE response"
    return int(rsp.Status)


@pytest.mark.slow
@pytest.mark.timeout(900)
@pytest.mark.parametrize("receive_path", list(RECEIVE_PATHS))
@pytest.mark.parametrize("sender", ["storescu", "pynetdicom"])
def test_large_object_with_flat_memory(appliance_factory: Any, tmp_path: Path, sender: str,
                                       receive_path: str,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """A 315 MB object. storescu sends PDUs of at most 128 KB; pynetdicom sends PDUs as large
    as the appliance's maximum PDU allows (the whole dataset if it announces no limit)."""
    big = tmp_path / "big.dcm"
    app = appliance_factory("data", config=RECEIVE_PATHS[receive_path]).start()
    try:
        write_multiframe(big, 512, 512, 600)
        assert big.stat().st_size > 300 * 10**6
        sent = dataset_md5(big)
        assert app.proc is not None
        if sender == "storescu":
            result = storescu(app, big, options=("-v",), timeout=600)
            assert SUCCESS_LINE in result.stderr, result.stderr
        else:
            sop_class = MultiFrameGrayscaleWordSecondaryCaptureImageStorage
            assert pynetdicom_send_file(app, big, sop_class, monkeypatch) == 0x0000
        hwm_mb = vm_hwm_kb(app.proc.pid) / 1024
        stored = blobs(app.data)
        assert len(stored) == 1
        assert dataset_md5(stored[0]) == sent  # same size and bytes of the dataset as sent
        assert app.statistics()["CountInstances"] == 1
        assert not temp_files(app.data)
        assert hwm_mb < 150, f"the appliance peaked at {hwm_mb:.0f} MB for a 300 MB object"
    finally:
        big.unlink(missing_ok=True)
        if app.proc is not None and app.proc.poll() is None:
            app.kill()
        for path in blobs(app.data) + temp_files(app.data):
            path.unlink()
