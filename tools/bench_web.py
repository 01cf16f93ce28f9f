#!/usr/bin/env python3
"""The DICOMweb benchmark of issue 7 (a report, not a test): STOW-RS upload rate and WADO-RS
retrieve rate of the small set, beside C-STORE into the same server, for the appliance and
(when the Debian ``orthanc-dicomweb`` plugin is installed) Orthanc.

    tools/bench --web [--quick] [--batch 50]

Each measure starts a fresh server with an empty store. STOW-RS sends the set's four parts
at once (one thread per part, like the four storescu associations of C-STORE), ``--batch``
instances per request; WADO-RS retrieves every study, one request per study, four at once
(the median of three rounds).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench  # noqa: E402  (the C-STORE benchmark's data sets and servers)

PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")
CHUNK = 1 << 20
WADO_ROUNDS = 3  # the set is sent in well under a second: the median of three rounds


def servers() -> dict[str, Callable[[Path], bench.Server]]:
    """The servers to compare; Orthanc with its DICOMweb plugin under our ``/dicom-web``."""
    made: dict[str, Callable[[Path], bench.Server]] = {"appliance": bench.Appliance}
    if PLUGIN.exists():
        made["orthanc"] = lambda w: bench.Orthanc(w, {
            "Plugins": [str(PLUGIN)], "DicomWeb": {"Enable": True, "Root": "/dicom-web/"}})
    return made


def multipart(files: list[Path], boundary: str) -> Iterator[bytes]:
    """A STOW-RS body streamed from the files."""
    for path in files:
        yield f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode()
        with open(path, "rb") as f:
            while chunk := f.read(CHUNK):
                yield chunk
        yield b"\r\n"
    yield f"--{boundary}--\r\n".encode()


def stow(url: str, files: list[Path], batch: int, auth: dict[str, str]) -> None:
    for start in range(0, len(files), batch):
        boundary = uuid.uuid4().hex
        r = requests.post(f"{url}/dicom-web/studies", data=multipart(files[start:start + batch],
                                                                     boundary),
                          headers={"Content-Type": f'multipart/related; type="application/dicom";'
                                                   f" boundary={boundary}",
                                   "Accept": "application/dicom+json", **auth}, timeout=600)
        if r.status_code != 200:
            raise RuntimeError(f"STOW-RS answered {r.status_code}: {r.text[:300]}")


def wado(url: str, study: str, auth: dict[str, str]) -> int:
    """Retrieve a study; the bytes received."""
    with requests.get(f"{url}/dicom-web/studies/{study}", stream=True, timeout=600, headers={
            "Accept": 'multipart/related; type="application/dicom"; transfer-syntax=*',
            **auth}) as r:
        r.raise_for_status()
        return sum(len(c) for c in r.iter_content(CHUNK))


def wado_round(url: str, studies: list[str], auth: dict[str, str]) -> tuple[int, float]:
    """Every study at once, four at a time: (bytes received, seconds)."""
    with ThreadPoolExecutor(4) as pool:
        received: list[int] = []
        elapsed = timed(lambda: received.extend(pool.map(lambda s: wado(url, s, auth),
                                                         studies)))
    return sum(received), elapsed


def timed(action: Callable[[], object]) -> float:
    started = time.monotonic()
    action()
    return time.monotonic() - started


def measure(make: Callable[[Path], bench.Server], data: bench.DataSet, batch: int,
            root: Path) -> dict[str, float]:
    out: dict[str, float] = {}
    server = make(root / f"cstore-{uuid.uuid4().hex[:6]}")
    server.start()
    try:
        out["c_store_per_s"] = data.files / bench.send(server, data.parts())
    finally:
        server.stop()
    server = make(root / f"web-{uuid.uuid4().hex[:6]}")
    server.start()
    try:
        url = f"http://{bench.LOOPBACK}:{server.http_port}"
        auth = getattr(server, "headers", {})  # the appliance's credentials
        parts = [sorted(p.iterdir()) for p in data.parts()]
        with ThreadPoolExecutor(len(parts)) as pool:
            elapsed = timed(lambda: list(pool.map(lambda f: stow(url, f, batch, auth), parts)))
        bench.verify(server, data.files)
        out["stow_rs_per_s"] = data.files / elapsed
        studies = [s["0020000D"]["Value"][0] for s in
                   requests.get(f"{url}/dicom-web/studies", timeout=60, headers=auth).json()]
        rounds = sorted((wado_round(url, studies, auth) for _ in range(WADO_ROUNDS)),
                        key=lambda r: r[1])
        size, elapsed = rounds[len(rounds) // 2]  # the median time
        out["wado_rs_per_s"] = data.files / elapsed
        out["wado_rs_mb_per_s"] = size / bench.MB / elapsed
    finally:
        server.stop()
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a tenth of the small set")
    parser.add_argument("--batch", type=int, default=50, help="instances per STOW-RS request")
    args = parser.parse_args()
    data = bench.generate(bench.set_specs(args.quick)["small"])
    root = Path(tempfile.mkdtemp(prefix="bench-web-"))
    results = {}
    load = {"start": os.getloadavg()}  # other work on the machine moves the rates
    try:
        for name, make in servers().items():
            print(f"{name}: C-STORE, STOW-RS and WADO-RS of {data.files} instances ...",
                  flush=True)
            results[name] = measure(make, data, args.batch, root)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    load["end"] = os.getloadavg()
    print(json.dumps({"set": data.name, "files": data.files, "bytes": data.bytes,
                      "batch": args.batch, "load_average": load, "results": results}, indent=2))
    ours = results["appliance"]
    print(f"appliance STOW-RS / C-STORE: {ours['stow_rs_per_s'] / ours['c_store_per_s']:.2f}")
    if "orthanc" in results:
        for key in ("stow_rs_per_s", "wado_rs_per_s"):
            print(f"appliance / Orthanc {key}: {ours[key] / results['orthanc'][key]:.2f}")
    else:
        print(f"(Orthanc's DICOMweb plugin is not installed: {PLUGIN} missing)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
