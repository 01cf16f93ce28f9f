"""Fast unit tests: identifiers, configuration validation, tag reading."""

from __future__ import annotations

import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from pathlib import Path

import pytest

from appliance.config import ConfigError, load
from appliance.index import rawscan, totals
from appliance.index.db import Unflushed, Writer, open_database
from appliance.index.delete import delete_instances
from appliance.index.ids import orthanc_hash, public_ids
from appliance.index.ingest import FileInfo, Origin, forget_parents, record_instance
from appliance.index.models import Instance, Patient, Series, Study, Unsynced
from appliance.index.tags import HEAD, WANTED_TAGS, BadInstance, read_instance_tags
from appliance.storage.flush import SyncfsFlush, flush_for, journaled_ext4

from .conftest import make_series, pydicom_file


def test_orthanc_hash_reference_value() -> None:
    assert orthanc_hash("The quick brown fox jumps over the lazy dog") == (
        "2fd4e1c6-7a2d28fc-ed849ee1-bb76e739-1b93eb12"
    )


def test_public_ids_chain_the_levels() -> None:
    ids = public_ids("P", "1.2", "1.2.3", "1.2.3.4")
    assert ids.patient == orthanc_hash("P")
    assert ids.study == orthanc_hash("P|1.2")
    assert ids.series == orthanc_hash("P|1.2|1.2.3")
    assert ids.instance == orthanc_hash("P|1.2|1.2.3|1.2.3.4")


def test_defaults_need_no_file() -> None:
    config = load()
    assert config.dicom.port == 4242 and config.http.port == 8042
    assert config.data_dir.name == "data"


@pytest.mark.parametrize(
    "body, message",
    [
        ('{"dicom": {"port": "x"}}', "dicom.port: 'x' is not a int"),
        ('{"dicom": {"port": 70000}}', "dicom.port: 70000 is above the maximum"),
        ('{"dicom": {"aet": "WAY_TOO_LONG_AE_TITLE"}}', "dicom.aet"),
        ('{"storage": {"duplicates": "maybe"}}', "storage.duplicates: 'maybe' is not one of"),
        ('{"nonsense": 1}', "nonsense: unknown setting"),
        ('{"modalities": {"pacs": {"port": 0}}}', "modalities.pacs.port: 0 is below"),
        ("{not json", "not valid JSON"),
    ],
)
def test_validation_names_key_and_value(tmp_path: Path, body: str, message: str) -> None:
    path = tmp_path / "config.json"
    path.write_text(body)
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(".", r"\.")):
        load(path)


def test_command_line_overrides_file(tmp_path: Path) -> None:
    path = tmp_path / "config.json"
    path.write_text('{"dicom": {"aet": "FROMFILE", "port": 104}}')
    config = load(path, {"dicom": {"port": 11112}})
    assert (config.dicom.aet, config.dicom.port) == ("FROMFILE", 11112)


def test_tags_of_a_ct() -> None:
    tags = read_instance_tags(pydicom_file("CT_small.dcm"))
    assert tags.patient["PatientID"] == "1CT1"
    assert tags.series["Modality"] == "CT"
    assert tags.transfer_syntax == "1.2.840.10008.1.2.1"


def test_truncated_pixel_data_is_refused(tmp_path: Path) -> None:
    (good,) = make_series(tmp_path, 1)
    cut = tmp_path / "cut.dcm"
    cut.write_bytes(good.read_bytes()[:-100])
    read_instance_tags(good)
    with pytest.raises(BadInstance, match="truncated"):
        read_instance_tags(cut)


@pytest.mark.parametrize("name", ["MR_truncated.dcm", "rtplan_truncated.dcm"])
def test_pydicom_truncated_samples_are_refused(name: str) -> None:
    with pytest.raises(BadInstance):
        read_instance_tags(pydicom_file(name))


def test_garbage_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "garbage.dcm"
    path.write_bytes(b"\x00" * 128 + b"DICM" + b"\xff" * 500)
    with pytest.raises(BadInstance):
        read_instance_tags(path)


def _scanned_and_parsed(path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[object, object]:
    """``read_instance_tags`` as the scan gives it, and as pydicom alone does (or the error)."""
    def read() -> object:
        try:
            return read_instance_tags(path)
        except BadInstance as exc:
            return ("refused", str(exc), exc.status)

    scanned = read()
    with monkeypatch.context() as m:
        m.setattr(rawscan, "scan", lambda *args: None)
        parsed = read()
    return scanned, parsed


def _every_sample() -> list[Path]:
    import pynetdicom
    from pydicom.data import get_testdata_files

    samples = [Path(p) for p in get_testdata_files("*.dcm")]
    samples += sorted((Path(pynetdicom.__file__).parent / "tests" / "dicom_files").glob("*.dcm"))
    return samples


def test_the_header_scan_reads_what_pydicom_reads(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """Every sample pydicom and pynetdicom ship: the same tags (or the same refusal) whether
    the header is walked by ``rawscan`` or parsed by pydicom."""
    samples = _every_sample() + make_series(tmp_path, 1)
    assert len(samples) > 60
    for path in samples:
        scanned, parsed = _scanned_and_parsed(path, monkeypatch)
        assert scanned == parsed, path.name


@pytest.mark.parametrize("name", [
    "CT_small.dcm", "MR_small_implicit.dcm", "MR_small_bigendian.dcm", "JPEG2000.dcm",
    "SC_rgb_rle.dcm", "rtplan.dcm", "rtdose.dcm",
])
def test_the_header_scan_walks_every_common_encoding(name: str) -> None:
    """Implicit and explicit VR, big endian, encapsulated pixel data, undefined-length
    sequences: walked, not left to pydicom."""
    data = pydicom_file(name).read_bytes()
    header = rawscan.scan(data[:HEAD], len(data) <= HEAD, WANTED_TAGS)
    assert header is not None
    assert header.values[0x00080018][1]  # SOPInstanceUID


def test_the_header_scan_skips_nested_undefined_lengths(tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """Sequences and items of undefined length inside each other, with wanted tags after them
    and a same-numbered tag inside them: the top-level value is the one read."""
    from pydicom import dcmread
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence

    (path,) = make_series(tmp_path, 1)
    ds = dcmread(path)
    inner = Dataset()
    inner.PatientID = "NOT-THIS-ONE"
    inner.is_undefined_length_sequence_item = True
    outer = Dataset()
    outer.ReferencedSeriesSequence = Sequence([inner])
    outer["ReferencedSeriesSequence"].is_undefined_length = True
    outer.is_undefined_length_sequence_item = True
    ds.ReferencedStudySequence = Sequence([outer, Dataset()])
    ds["ReferencedStudySequence"].is_undefined_length = True
    ds.save_as(path, enforce_file_format=True)
    data = path.read_bytes()
    assert data.count(b"\xfe\xff\xdd\xe0") == 2  # two sequence delimiters
    assert rawscan.scan(data, True, WANTED_TAGS) is not None
    scanned, parsed = _scanned_and_parsed(path, monkeypatch)
    assert scanned == parsed
    assert read_instance_tags(path).patient["PatientID"] == "PAT1"


def test_tags_from_what_was_spooled_match_the_file(tmp_path: Path) -> None:
    """A spooled file's head stands in for reading it: a small one whole, a large one (past
    ``HEAD``) for its header, its tail still checked on disk."""
    import hashlib

    from appliance.storage.spool import Spooled

    small, large = make_series(tmp_path / "s", 1)[0], make_series(tmp_path / "l", 1, size=512)[0]
    for path in (small, large):
        data = path.read_bytes()
        spooled = Spooled(hashlib.md5(data).hexdigest(), len(data), data[:HEAD])
        assert spooled.whole == (path == small)
        assert read_instance_tags(path, spooled) == read_instance_tags(path)
    data = large.read_bytes()
    large.write_bytes(data[:-100])  # the disk holds less than the head promised: refused
    with pytest.raises(BadInstance, match="truncated"):
        read_instance_tags(large, Spooled("", len(data), data[:HEAD]))


def test_the_header_scan_leaves_odd_files_to_pydicom() -> None:
    """Deflated, no file meta, no transfer syntax: pydicom reads them."""
    for name in ("image_dfl.dcm", "no_meta.dcm", "meta_missing_tsyntax.dcm"):
        data = pydicom_file(name).read_bytes()
        assert rawscan.scan(data[:HEAD], len(data) <= HEAD, WANTED_TAGS) is None, name


def test_writer_lists_unflushed_files_until_a_flush_succeeds(tmp_path: Path) -> None:
    """A batch with new files commits, then flushes; its files stay listed in ``unsynced``
    until a later batch follows a flush that succeeded. A failed flush is ``Unflushed``."""
    db = open_database(tmp_path / "index.sqlite")
    failing = True

    def flush() -> None:
        if failing:
            raise OSError(5, "EIO")

    writer = Writer(db, flush)
    writer.start()
    try:
        with pytest.raises(Unflushed):
            writer.write_durably(lambda: None, "a")
        failing = False
        writer.write_durably(lambda: None, "b")
        listed = writer.run(lambda: sorted(u.file for u in Unsynced.select()), 10)
        assert listed == ["a", "b"]  # "a" stays: no flush had succeeded before this batch
        writer.write_durably(lambda: None, "c")
        assert writer.run(lambda: [u.file for u in Unsynced.select()], 10) == ["c"]
    finally:
        writer.stop()
        db.close()


def test_writer_commits_while_a_flush_runs_and_one_flush_serves_those_waiting(
        tmp_path: Path) -> None:
    """``write_durably`` returns only after a flush that started after its commit. While one
    caller flushes, the writer goes on committing, and one later flush serves every caller that
    committed meanwhile."""
    from concurrent.futures import ThreadPoolExecutor

    db = open_database(tmp_path / "index.sqlite")
    flushing, release = threading.Event(), threading.Event()
    flushes: list[int] = []

    def flush() -> None:
        flushes.append(len(flushes))
        flushing.set()
        assert release.wait(10)

    writer = Writer(db, flush)
    writer.start()
    try:
        with ThreadPoolExecutor(4) as pool:
            first = pool.submit(writer.write_durably, lambda: "a", "a")
            assert flushing.wait(10)
            later = [pool.submit(writer.write_durably, lambda n=n: n, n) for n in "bcd"]
            assert writer.run(lambda: "committed", 10) == "committed"  # not held by the flush
            time.sleep(0.2)
            assert not first.done() and not any(f.done() for f in later)
            release.set()
            assert first.result(10) == "a"
            assert [f.result(10) for f in later] == ["b", "c", "d"]
        assert len(flushes) == 2  # b, c and d committed during the first: one more serves them
    finally:
        release.set()
        writer.stop()
        db.close()


def test_only_a_journaled_ext4_gets_the_journal_commit_flush(tmp_path: Path) -> None:
    """A filesystem with no ext4 journal (tmpfs here) keeps ``syncfs``; a journaled ext4 is
    covered where it matters, by ``test_the_device_holds_every_acknowledged_instance``."""
    shm = Path("/dev/shm")
    if not shm.is_dir():
        pytest.skip("no /dev/shm")
    with tempfile.TemporaryDirectory(dir=shm) as root:
        assert journaled_ext4(Path(root)) is None
        flush = flush_for(Path(root))
        assert isinstance(flush, SyncfsFlush)
        (Path(root) / "f").write_bytes(b"x")
        flush.prepare(Path(root) / "f", 1)
        flush()


def test_writer_flushes_the_commits_that_must_be_durable(tmp_path: Path) -> None:
    """A batch whose jobs may wait for a later flush (``durable=False``, or a new file that
    ``write_durably`` flushes) commits with ``synchronous=NORMAL``; one durable job in a batch
    makes it ``FULL``."""
    db = open_database(tmp_path / "index.sqlite")

    def mode() -> int:
        return int(db.execute_sql("PRAGMA synchronous").fetchone()[0])  # 1 NORMAL, 2 FULL

    writer = Writer(db, lambda: None)
    writer.start()
    try:
        assert writer.submit(mode, durable=False).result(10) == 1
        assert writer.write_durably(mode, "a") == 1
        assert writer.run(mode, 10) == 2
        gate = threading.Event()
        writer.submit(lambda: gate.wait(10))
        lazy, durable = writer.submit(mode, durable=False), writer.submit(mode)
        gate.set()
        assert lazy.result(10) == durable.result(10) == 2  # one batch
        assert writer.submit(mode, durable=False).result(10) == 1
    finally:
        writer.stop()
        db.close()


def test_running_totals_follow_every_change_to_the_index(tmp_path: Path) -> None:
    """New instances, an overwrite with another size, a deleted instance, a whole patient gone
    through the cascade, and an index that already held rows when it was migrated: the totals
    row always says what counting the tables says."""
    db = open_database(tmp_path / "index.sqlite")

    def counted() -> tuple[int, int, int, int, int]:
        size = sum(size for (size,) in Instance.select(Instance.size).tuples())
        return (Instance.select().count(), size, Series.select().count(),
                Study.select().count(), Patient.select().count())

    def kept() -> tuple[int, int, int, int, int]:
        now = totals.current()
        return now.instances, now.size, now.series, now.studies, now.patients

    def store(path: Path, size: int, overwrite: bool = False) -> None:
        with db.atomic():
            record_instance(read_instance_tags(path), FileInfo(path.name, size, "0"), Origin(),
                            overwrite)

    a = make_series(tmp_path / "a", 3, patient_id="PA", size=8)
    b = make_series(tmp_path / "b", 2, patient_id="PB", size=8)
    for k, path in enumerate(a + b):
        store(path, 1000 + k)
    assert kept() == counted() == (5, 5010, 2, 2, 2)
    store(a[0], 5000, overwrite=True)
    assert kept() == counted() == (5, 9010, 2, 2, 2)
    with db.atomic():
        delete_instances([Instance.get(Instance.size == 1001).id], "test")
    assert kept() == counted() == (4, 8009, 2, 2, 2)
    with db.atomic():
        Patient.delete().where(Patient.patient_id == "PB").execute()  # cascades
    forget_parents()
    assert kept() == counted() == (2, 6002, 1, 1, 1)
    db.execute_sql("PRAGMA user_version = 6")  # as an index made before the totals
    db.execute_sql("DELETE FROM totals")
    db.close()
    db = open_database(tmp_path / "index.sqlite")
    assert kept() == counted() == (2, 6002, 1, 1, 1)
    db.close()


def test_serve_keeps_numpy_out_and_the_rest_importable_afterwards() -> None:
    """``appliance serve`` loads pydicom without numpy, requests, Pillow and pydicom.examples;
    all but numpy can still be imported afterwards (by a hook, say)."""
    probe = textwrap.dedent("""
        import sys
        sys.argv = ["appliance", "serve", "--help"]
        from appliance.__main__ import main
        try:
            main()
        except SystemExit:
            pass
        loaded = [m for m in ("numpy", "requests", "PIL", "pydicom.examples")
                  if sys.modules.get(m) is not None]
        import pydicom.examples, requests, PIL
        try:
            import numpy
            numpy_importable = True
        except ImportError:
            numpy_importable = False
        print(loaded, numpy_importable, pydicom.examples.get_path("ct").name)
    """)
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                            timeout=120, check=True)
    assert result.stdout.split("\n")[-2] == "[] False CT_small.dcm", result.stdout + result.stderr


def test_readahead_lists_what_serve_reads_and_reads_it(tmp_path: Path) -> None:
    """The OS image's readahead list (``--list``): the interpreter first, then the libraries and
    the modules ``serve`` imports, numpy not among them, every one an existing file. Reading a
    list whose files have gone since succeeds (a stale list must not fail the boot)."""
    listed = subprocess.run([sys.executable, "-m", "appliance.readahead", "--list"],
                            capture_output=True, text=True, timeout=120, check=True).stdout.split()
    assert listed[0] == str(Path(sys.executable).resolve())
    assert all(Path(path).is_file() for path in listed)
    names = {Path(path).name.split(".")[0] for path in listed}
    assert {"store", "faststore", "scp", "association", "dataset", "bottle", "server"} <= names
    assert not any("/numpy/" in path for path in listed)
    assert any(path.endswith(".so") for path in listed)  # extension modules and libraries
    listing = tmp_path / "readahead.list"
    listing.write_text("\n".join([str(tmp_path / "gone.pyc"), *listed]))
    subprocess.run([sys.executable, "-m", "appliance.readahead", str(listing)], timeout=60,
                   check=True)
