"""Real DICOM peers for the tests: DCMTK's storescp and a real Orthanc, on free ports."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import requests

from .conftest import DCMTK_ENV, free_port, port_open, wait_for


class StoreSCP:
    """A DCMTK storescp (``-v``: its log names every association)."""

    def __init__(self, port: int, out: Path, *options: str, aet: str = "DEST",
                 start: bool = True) -> None:
        self.port, self.out, self.aet = port, out, aet
        out.mkdir(parents=True, exist_ok=True)
        self.options = options
        self.log_path = out.parent / f"{out.name}.log"
        self.log_path.touch()
        self.proc: subprocess.Popen[bytes] | None = None
        if start:
            self.start()

    def start(self) -> StoreSCP:
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                ["storescp", "-v", "-aet", self.aet, *self.options, "-od", str(self.out),
                 str(self.port)],
                env=DCMTK_ENV, stdout=log, stderr=subprocess.STDOUT,
            )
        wait_for(lambda: port_open(self.port), 30, "storescp to listen")
        return self

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def files(self) -> list[Path]:
        return sorted(p for p in self.out.iterdir() if p.is_file())

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(30)


class Orthanc:
    """A real Orthanc (Debian package) with its own storage, on free ports."""

    def __init__(self, root: Path, aet: str = "ORTHANC", dicom_port: int | None = None,
                 modalities: dict[str, list[Any]] | None = None,
                 extra: dict[str, Any] | None = None) -> None:
        if shutil.which("Orthanc") is None and not Path("/usr/sbin/Orthanc").exists():
            pytest.fail("Orthanc is not installed (tools/test installs it)")
        root.mkdir(parents=True, exist_ok=True)
        self.root, self.aet = root, aet
        self.dicom_port = dicom_port or free_port()
        self.http_port = free_port()
        self.url = f"http://127.0.0.1:{self.http_port}"
        config = {
            "Name": "test", "StorageDirectory": str(root / "storage"),
            "IndexDirectory": str(root / "index"), "DicomAet": aet,
            "DicomPort": self.dicom_port, "HttpPort": self.http_port,
            "RemoteAccessAllowed": False, "AuthenticationEnabled": False, "Plugins": [],
            "DicomModalities": modalities or {}, **(extra or {}),
        }  # fmt: skip
        (root / "orthanc.json").write_text(json.dumps(config))
        self.log_path = root / "orthanc.log"
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(["/usr/sbin/Orthanc", str(root / "orthanc.json")],
                                         stdout=log, stderr=subprocess.STDOUT)
        wait_for(self._up, 60, "Orthanc to start")

    def _up(self) -> bool:
        if self.proc.poll() is not None:
            raise RuntimeError(self.log_path.read_text(errors="replace"))
        try:
            return requests.get(self.url + "/system", timeout=1).ok
        except requests.RequestException:
            return False

    def json(self, path: str) -> Any:
        r = requests.get(self.url + path, timeout=30)
        r.raise_for_status()
        return r.json()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(30)
