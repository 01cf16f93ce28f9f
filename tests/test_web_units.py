"""Fast unit tests of the web layer's pure parts: multipart splitting, Orthanc's tag JSON."""

from __future__ import annotations

import io
import itertools
from pathlib import Path

import pytest
from pydicom import dcmread

from appliance.dicom import orthanc_json
from appliance.web.dicomweb.multipart import Malformed, Splitter, accepts, join

from .conftest import pydicom_file

BODY = (b"preamble\r\n--b0undary\r\nContent-Type: application/dicom\r\n\r\nfirst\r\n--b0und"
        b"\r\n--b0undary\r\nContent-Type: text/plain\r\n\r\n\r\n--b0undary--\r\nepilogue")


def reader(data: bytes, size: int) -> io.BytesIO:
    stream = io.BytesIO(data)
    original = stream.read
    stream.read = lambda n=-1: original(min(n, size))  # type: ignore[method-assign]
    return stream


@pytest.mark.parametrize("size", [1, 3, 7, 1 << 16])
def test_parts_survive_any_chunking(tmp_path: Path, size: int) -> None:
    counter = itertools.count()
    splitter = Splitter("b0undary", lambda: tmp_path / f"{size}-{next(counter)}")
    parts = splitter.split(reader(BODY, size).read)
    assert [h.get_content_type() for h, _ in parts] == ["application/dicom", "text/plain"]
    assert [p.read_bytes() for _, p in parts] == [b"first\r\n--b0und", b""]


def test_join_is_split_back(tmp_path: Path) -> None:
    body = b"".join(join([("application/dicom", [b"ab", b"c"]), ("application/dicom", [b""])],
                         "xyz"))
    counter = itertools.count()
    parts = Splitter("xyz", lambda: tmp_path / str(next(counter))).split(io.BytesIO(body).read)
    assert [p.read_bytes() for _, p in parts] == [b"abc", b""]


def test_truncated_body_is_malformed(tmp_path: Path) -> None:
    splitter = Splitter("b0undary", lambda: tmp_path / "part")
    with pytest.raises(Malformed):
        splitter.split(io.BytesIO(BODY[:60]).read)
    assert len(splitter.parts) == 1, "files made are listed, for the caller to remove"


def test_accept_headers() -> None:
    dicom = 'multipart/related; type="application/dicom"; transfer-syntax=*'
    assert accepts(dicom, "application/dicom") == {"type": "application/dicom",
                                                   "transfer-syntax": "*"}
    assert accepts("image/png, image/jpeg;q=0.5", "image/jpeg") is not None
    assert accepts("image/png", "image/jpeg") is None
    assert accepts("", "image/jpeg") == {}


def test_orthanc_tag_formats() -> None:
    ds = dcmread(pydicom_file("rtplan.dcm"))
    full = orthanc_json.full(ds)
    assert full["0010,0010"] == {"Name": "PatientName", "Type": "String",
                                 "Value": str(ds.PatientName)}
    assert full["300a,0070"]["Type"] == "Sequence"
    simple = orthanc_json.simplified(ds)
    assert simple["FractionGroupSequence"][0]["FractionGroupNumber"] == "1"
    ct = orthanc_json.full(dcmread(pydicom_file("CT_small.dcm")))
    assert ct["7fe0,0010"] == {"Name": "PixelData", "Type": "Null", "Value": None}
    assert ct["0009,1001"]["PrivateCreator"] == "GEMS_IDEN_01"
