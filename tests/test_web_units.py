"""Fast unit tests of the web layer's pure parts: multipart splitting, Orthanc's tag JSON."""

from __future__ import annotations

import hashlib
import io
import itertools
import os
from collections.abc import Callable
from pathlib import Path

import bottle
import pytest
from pydicom import dcmread

from appliance.dicom import orthanc_json
from appliance.web.dicomweb.multipart import JoinedFile, Malformed, Splitter, accepts, join
from appliance.web.router import Router
from appliance.web.streaming import BodyPipe, Dechunker

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
    splitter = Splitter("b0undary", reader(BODY, size).read,
                        lambda: tmp_path / f"{size}-{next(counter)}")
    parts = list(splitter.parts())
    assert [p.media for p in parts] == ["application/dicom", "text/plain"]
    assert [p.path.read_bytes() for p in parts] == [b"first\r\n--b0und", b""]
    assert [p.spooled.md5 for p in parts] == [hashlib.md5(b"first\r\n--b0und").hexdigest(),
                                              hashlib.md5(b"").hexdigest()]
    assert [p.spooled.size for p in parts] == [len(b"first\r\n--b0und"), 0]
    assert parts[0].spooled.head == b"first\r\n--b0und" and parts[0].spooled.whole


def uneven(data: bytes, first: int, rest: int) -> Callable[[int], bytes]:
    """A read function that returns ``first`` bytes, then ``rest`` at a time."""
    stream, sizes = io.BytesIO(data), itertools.chain([first], itertools.repeat(rest))
    return lambda n: stream.read(min(n, next(sizes)))


def test_separator_across_reads(tmp_path: Path) -> None:
    """A separator cut anywhere between two reads, the second long or short."""
    body = b"--b\r\n\r\n" + b"x" * 50 + b"\r\n--b\r\n\r\ny\r\n--b--"
    names = (tmp_path / str(n) for n in itertools.count())
    for cut in range(1, len(body)):
        for rest in (1, 4, 1 << 16):
            parts = Splitter("b", uneven(body, cut, rest), lambda: next(names)).parts()
            assert [p.path.read_bytes() for p in parts] == [b"x" * 50, b"y"], (cut, rest)


def test_joined_file_reads_as_its_pieces(tmp_path: Path) -> None:
    (tmp_path / "a").write_bytes(b"0123456789")
    pieces: list[bytes | tuple[Path, int]] = [b"head", (tmp_path / "a", 10), b"", b"tail"]
    whole = b"head0123456789tail"
    joined = JoinedFile(pieces)
    assert joined.seek(0, os.SEEK_END) == len(whole)
    for start in range(len(whole)):
        for size in (1, 3, 100):
            joined.seek(start)
            got = b""
            while chunk := joined.read(size):
                assert len(chunk) <= size
                got += chunk
            assert got == whole[start:], (start, size)
    joined.close()


@pytest.mark.parametrize("size", [1, 2, 5, 1 << 16])
def test_dechunker(size: int) -> None:
    pipe = BodyPipe(lambda: None, 1, lambda: None)
    body = b"5;ext=1\r\nhello\r\nA\r\n0123456789\r\n0\r\nX-Trailer: 1\r\n\r\nNEXT"
    dechunker, taken = Dechunker(pipe), 0
    while not dechunker.completed:
        taken += dechunker.received(body[taken:taken + size])
    assert body[taken:] == b"NEXT" and dechunker.error is None
    assert b"".join(pipe.chunks) == b"hello0123456789"
    for bad in (b"5\r\nhello!!\r\n", b"z\r\n", b"5\nhello"):
        broken = Dechunker(BodyPipe(lambda: None, 1, lambda: None))
        broken.received(bad)
        assert broken.error, bad


def test_join_is_split_back(tmp_path: Path) -> None:
    body = b"".join(join([("application/dicom", [b"ab", b"c"]), ("application/dicom", [b""])],
                         "xyz"))
    counter = itertools.count()
    parts = Splitter("xyz", io.BytesIO(body).read, lambda: tmp_path / str(next(counter))).parts()
    assert [p.path.read_bytes() for p in parts] == [b"abc", b""]


def test_truncated_body_is_malformed(tmp_path: Path) -> None:
    parts = Splitter("b0undary", io.BytesIO(BODY[:60]).read, lambda: tmp_path / "part").parts()
    with pytest.raises(Malformed):
        list(parts)
    assert list(tmp_path.iterdir()) == [], "the part cut short is removed"


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


def test_router_compiled_once_matches_as_bottle_does() -> None:
    """The router that compiles each method's pattern once answers like Bottle's own, for
    static, dynamic and wrong-method requests, and for a route added after it was compiled."""
    ours = Router()
    theirs = bottle.Router()
    rules = [("/patients", "GET"), ("/patients/<id>", "GET"), ("/patients/<id>", "DELETE"),
             ("/studies/<id>/series", "GET"), ("/instances/<id>/frames/<n:int>", "GET")]
    for router in (ours, theirs):
        for rule, method in rules:
            router.add(rule, method, f"{method} {rule}")
    ours.compile()
    for router in (ours, theirs):
        router.add("/late/<name>", "GET", "GET /late/<name>")

    def answer(router: bottle.Router, method: str, path: str) -> object:
        try:
            return router.match({"REQUEST_METHOD": method, "PATH_INFO": path})
        except bottle.HTTPError as error:
            return error.status_code, error.headers.get("Allow")

    requests = [("GET", "/patients"), ("GET", "/patients/abc"), ("DELETE", "/patients/abc"),
                ("PUT", "/patients/abc"), ("GET", "/studies/x/series"),
                ("GET", "/instances/i/frames/3"), ("GET", "/instances/i/frames/x"),
                ("HEAD", "/patients/abc"), ("GET", "/nowhere"), ("GET", "/late/x")]
    for method, path in requests:
        assert answer(ours, method, path) == answer(theirs, method, path), (method, path)
    assert answer(ours, "GET", "/late/x")[0] == "GET /late/<name>"
