"""A ZIP of stored files, streamed as it is written (no temporary file, constant memory)."""

from __future__ import annotations

import zipfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, cast

CHUNK = 1 << 16


class _Sink:
    """An unseekable file for ``zipfile``: what is written is collected, then handed out."""

    def __init__(self) -> None:
        self.parts: list[bytes] = []
        self.offset = 0

    def write(self, data: bytes) -> int:
        self.parts.append(bytes(data))
        self.offset += len(data)
        return len(data)

    def tell(self) -> int:
        return self.offset

    def flush(self) -> None:
        pass

    def take(self) -> bytes:
        out = b"".join(self.parts)
        self.parts.clear()
        return out


def zip_stream(files: Iterable[tuple[str, Path]]) -> Iterator[bytes]:
    """``(name in the archive, path)`` pairs as a ZIP (stored: DICOM pixels rarely shrink)."""
    sink = _Sink()
    target = cast(IO[bytes], sink)
    with zipfile.ZipFile(target, "w", zipfile.ZIP_STORED, allowZip64=True) as archive:
        for name, path in files:
            with open(path, "rb") as src, archive.open(name, "w", force_zip64=True) as dst:
                while chunk := src.read(CHUNK):
                    dst.write(chunk)
                    yield sink.take()
            yield sink.take()
    yield sink.take()


