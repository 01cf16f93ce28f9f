"""Fast unit tests: identifiers, configuration validation, tag reading."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from appliance.config import ConfigError, load
from appliance.index.db import Unflushed, Writer, open_database
from appliance.index.ids import orthanc_hash, public_ids
from appliance.index.models import Unsynced
from appliance.index.tags import BadInstance, read_instance_tags

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
            writer.submit(lambda: None, "a").result(10)
        failing = False
        writer.submit(lambda: None, "b").result(10)
        listed = writer.run(lambda: sorted(u.file for u in Unsynced.select()), 10)
        assert listed == ["a", "b"]  # "a" stays: no flush had succeeded before this batch
        writer.submit(lambda: None, "c").result(10)
        assert writer.run(lambda: [u.file for u in Unsynced.select()], 10) == ["c"]
    finally:
        writer.stop()
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
