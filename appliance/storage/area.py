"""The storage area: durable blobs named by random UUIDs under ``ab/cd/<uuid>``.

It knows nothing of DICOM (as Orthanc's ``FilesystemStorage``): the index maps instances to
UUIDs. No path is ever built from received data, only from UUIDs we generate.

Durability (the store's contract): a blob is written under ``tmp/``, fsynced, renamed into place,
and its directory fsynced before the index row that points to it is committed.
"""

from __future__ import annotations

import hashlib
import os
import re
import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path

UUID_NAME = re.compile(r"^[0-9a-f]{32}$")
HASH_CHUNK = 1 << 20


class StorageArea:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.files = root / "files"
        self.tmp = root / "tmp"
        self.files.mkdir(parents=True, exist_ok=True)
        self.tmp.mkdir(parents=True, exist_ok=True)

    def path(self, name: str) -> Path:
        if not UUID_NAME.match(name):
            raise ValueError(f"not a storage name: {name!r}")
        return self.files / name[0:2] / name[2:4] / name

    def adopt(self, tmp_path: Path) -> tuple[str, Path]:
        """Make a received temporary file durable under a new name; returns (name, its folder).

        The folder still has to be fsynced (``sync_dirs``) before the name is committed: the
        writer does that once per batch for all the folders it touched.
        """
        fsync_file(tmp_path)
        name = uuid.uuid4().hex
        final = self.path(name)
        try:
            os.rename(tmp_path, final)
        except FileNotFoundError:
            final.parent.mkdir(parents=True, exist_ok=True)
            fsync_dir(final.parent.parent)
            fsync_dir(final.parent.parent.parent)
            os.rename(tmp_path, final)
        return name, final.parent

    def remove(self, name: str) -> None:
        try:
            self.path(name).unlink()
        except FileNotFoundError:
            pass

    def quarantine(self, name: str) -> None:
        """Move an unreadable blob aside (kept for a human, out of the store's way)."""
        folder = self.root / "quarantine"
        folder.mkdir(exist_ok=True)
        os.rename(self.path(name), folder / name)

    def names(self) -> Iterator[str]:
        """Every blob in the area (for reconciliation)."""
        for first in self.files.iterdir():
            if not first.is_dir():
                continue
            for second in first.iterdir():
                if second.is_dir():
                    for blob in second.iterdir():
                        if UUID_NAME.match(blob.name):
                            yield blob.name

    def temp_files(self) -> list[Path]:
        return [p for p in self.tmp.iterdir() if p.is_file()]

    def clean_tmp(self) -> int:
        """Remove leftovers of interrupted receptions; returns how many."""
        leftovers = self.temp_files()
        for p in leftovers:
            p.unlink(missing_ok=True)
        return len(leftovers)

    def usage(self) -> tuple[int, int]:
        """(free bytes, total bytes) of the filesystem holding the area."""
        st = os.statvfs(self.files)
        return st.f_bavail * st.f_frsize, st.f_blocks * st.f_frsize


def fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def sync_dirs(dirs: Iterable[Path]) -> None:
    for d in set(dirs):
        fsync_dir(d)


def md5_file(path: Path) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        while chunk := f.read(HASH_CHUNK):
            h.update(chunk)
    return h.hexdigest()
