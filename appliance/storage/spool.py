"""Files written as they arrive (a C-STORE's dataset, a STOW-RS part), hashed, counted and
their first bytes kept on the way: the store then need not read them back for their MD5, size
or header."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass

HEAD = 64 * 1024  # bytes kept in memory: the whole of a small file, the header of most others


@dataclass(frozen=True)
class Spooled:
    """What was learnt of a file while it was written."""

    md5: str
    size: int
    head: bytes  # its first ``HEAD`` bytes: the whole file when ``size <= HEAD``

    @property
    def whole(self) -> bool:
        return len(self.head) == self.size


class SpoolFile:
    """A file on its way to disk, written with plain ``os.write`` calls (no buffer object: the
    pieces come whole, a PDV or a chunk at a time)."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.md5 = hashlib.md5()
        self.size = 0
        self.head = bytearray()

    def write(self, data: bytes | memoryview) -> None:
        if len(self.head) < HEAD:
            self.head += data[:HEAD - len(self.head)]
        view = memoryview(data)
        while view:
            view = view[os.write(self.fd, view):]
        self.md5.update(data)
        self.size += len(data)

    def close(self) -> Spooled:
        os.close(self.fd)
        return Spooled(self.md5.hexdigest(), self.size, bytes(self.head))
