"""The storage area: durable blobs named by their UTC hour of arrival and a random UUID, stored
under ``files/YYYYMMDD/HH/<name>``.

It knows nothing of DICOM (as Orthanc's ``FilesystemStorage``): the index maps instances to
names. No path is ever built from received data, only from names we generate. Unlike Orthanc's
``ab/cd/<uuid>`` spread, an hour's arrivals share one folder: a batch of instances needs one
folder fsync instead of one per file, and new folders are rare (not one per file on a young
store); the oldest data also sits together, where recycling looks for it.

Durability (the store's contract): a blob is written under ``tmp/`` and renamed into place; one
``flush`` per batch then makes the files, their folders and the batch's index commit durable
together, before any of them is acknowledged (see ``index.db.Writer``, and ``storage.flush``
for how).
"""

from __future__ import annotations

import hashlib
import os
import re
import time
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path

from .flush import Flush, flush_for, sync_filesystem

NAME = re.compile(r"^[0-9]{10}[0-9a-f]{32}$")
HASH_CHUNK = 1 << 20


class StorageArea:
    def __init__(self, root: Path, also_flushed: Sequence[Path] = ()) -> None:
        """``also_flushed``: files beside the area that each batch also writes (the index's
        WAL), made durable by the same ``flush``."""
        self.root = root
        self.files = root / "files"
        self.tmp = root / "tmp"
        self.files.mkdir(parents=True, exist_ok=True)
        self.tmp.mkdir(parents=True, exist_ok=True)
        self.flush: Flush = flush_for(root, also_flushed)

    def path(self, name: str) -> Path:
        if not NAME.match(name):
            raise ValueError(f"not a storage name: {name!r}")
        return self.files / name[0:8] / name[8:10] / name

    def adopt(self, tmp_path: Path, size: int) -> str:
        """Move a received file into place under a new name, and return the name.

        Not yet durable: ``flush`` makes it so, once for a whole batch, after what its
        ``prepare`` does here, in the receiving thread.
        """
        self.flush.prepare(tmp_path, size)
        name = time.strftime("%Y%m%d%H", time.gmtime()) + uuid.uuid4().hex
        final = self.path(name)
        try:
            os.rename(tmp_path, final)
        except FileNotFoundError:
            final.parent.mkdir(parents=True, exist_ok=True)
            os.rename(tmp_path, final)
        return name

    def sync_all(self) -> None:
        """Every file in the area on the device, whoever wrote it: after a crash of the
        process, files it renamed into place may still be only in the page cache."""
        sync_filesystem(self.root)

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
                        if NAME.match(blob.name):
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


def md5_file(path: Path) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        while chunk := f.read(HASH_CHUNK):
            h.update(chunk)
    return h.hexdigest()
