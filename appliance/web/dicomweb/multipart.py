"""``multipart/related`` (RFC 2387) both ways, in bounded memory: parts of a request are
written to files as they arrive (each byte copied once, hashed on the way), parts of a response
are read from files as they are sent (stored files joined into one file that waitress sends)."""

from __future__ import annotations

import os
import re
import uuid
from bisect import bisect_right
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from email.message import Message
from itertools import accumulate
from pathlib import Path
from typing import TypeVar

from ...storage.spool import Spooled, SpoolFile

CHUNK = 1 << 20  # bytes read at a time: fewer, larger scans for the boundary
MAX_HEADERS = 16 * 1024
T = TypeVar("T")


class Malformed(ValueError):
    """The body is not the multipart message its Content-Type announces."""


def media_params(content_type: str) -> tuple[str, dict[str, str]]:
    """A Content-Type (or one Accept entry) as (media type, parameters)."""
    message = Message()
    message["Content-Type"] = content_type
    params = {k.lower(): v for k, v in (message.get_params() or [])[1:]}
    return message.get_content_type(), params


@dataclass
class Part:
    """One part of a request, its body written to ``path``."""

    media: str  # its media type, without parameters (RFC 2045 5.2: text/plain if none)
    path: Path
    spooled: Spooled  # its MD5, size and head (for a look at its UIDs, should it be refused)


class Splitter:
    """Reads a multipart body from ``read`` and writes each part's body to a new file. The
    input is scanned where it lies (a chunk is copied only when a part's headers straddle two),
    so each byte of a part is copied once, into its file."""

    def __init__(self, boundary: str, read: Callable[[int], bytes],
                 new_file: Callable[[], Path]) -> None:
        self.delimiter = b"--" + boundary.encode("latin-1")
        self.separator = b"\r\n" + self.delimiter
        self.read = read
        self.new_file = new_file
        self.buf = b""
        self.pos = 0  # self.buf[self.pos:] is not consumed yet

    def parts(self) -> Iterator[Part]:
        """Each part once its file is whole (the caller owns the file from then on; a part
        cut short by an error is removed)."""
        self._skip_preamble()
        while self._more():
            media = self._media()
            path = self.new_file()
            try:
                out = SpoolFile(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
                try:
                    self._body(out)
                finally:
                    spooled = out.close()
            except BaseException:
                path.unlink(missing_ok=True)
                raise
            yield Part(media, path, spooled)

    def _chunk(self) -> bytes:
        chunk = self.read(CHUNK)
        if not chunk:
            raise Malformed("the body ends before the closing boundary")
        return chunk

    def _extend(self) -> None:
        """More input after what is left, in one buffer (a copy: only where a delimiter or a
        part's headers straddle two reads)."""
        self.buf = self.buf[self.pos:] + self._chunk()
        self.pos = 0

    def _skip_preamble(self) -> None:
        while (at := self.buf.find(self.delimiter, self.pos)) < 0:
            self.pos = max(self.pos, len(self.buf) - len(self.delimiter))
            self._extend()
        self.pos = at + len(self.delimiter)

    def _more(self) -> bool:
        """After a delimiter: ``--`` closes the message, CRLF opens a part."""
        while len(self.buf) - self.pos < 2:
            self._extend()
        if self.buf.startswith(b"--", self.pos):
            return False
        while True:
            window = self.buf[self.pos:self.pos + MAX_HEADERS]
            rest = window.lstrip(b" \t")
            if rest.startswith(b"\r\n"):
                self.pos += len(window) - len(rest) + 2
                return True
            if len(rest) >= 2 or len(window) >= MAX_HEADERS:
                raise Malformed("a boundary is not followed by a line end")
            self._extend()

    def _media(self) -> str:
        """The media type of the part whose headers come next (parsed here: the email
        package's parser cost as much as the rest of the split)."""
        while len(self.buf) - self.pos < 2:
            self._extend()
        if self.buf.startswith(b"\r\n", self.pos):
            self.pos += 2  # no headers at all
            return "text/plain"
        while (end := self.buf.find(b"\r\n\r\n", self.pos)) < 0:
            if len(self.buf) - self.pos > MAX_HEADERS:
                raise Malformed("a part's headers are too long")
            self._extend()
        lines = self.buf[self.pos:end].split(b"\r\n")
        self.pos = end + 4
        for line in lines:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-type":
                return value.split(b";")[0].strip().lower().decode("latin-1")
        return "text/plain"

    def _body(self, out: SpoolFile) -> None:
        """Write up to the next separator; a separator may straddle two chunks."""
        separator, reach = self.separator, len(self.separator) - 1
        while (at := self.buf.find(separator, self.pos)) < 0:
            keep = max(self.pos, len(self.buf) - reach)  # may start a separator
            out.write(memoryview(self.buf)[self.pos:keep])
            tail, chunk = self.buf[keep:], self._chunk()
            if len(chunk) < reach:  # too short to tell: look again with more
                self.buf, self.pos = tail + chunk, 0
                continue
            self.buf, self.pos = chunk, 0
            straddling = (tail + chunk[:reach]).find(separator)
            if 0 <= straddling < len(tail):
                out.write(tail[:straddling])
                self.pos = straddling + len(separator) - len(tail)
                return
            out.write(tail)
        out.write(memoryview(self.buf)[self.pos:at])
        self.pos = at + len(separator)


class JoinedFile:
    """A multipart body made of byte strings and stored files, read as one seekable file.

    Returned as ``wsgi.file_wrapper``, waitress sends it from its network thread, in reads as
    large as the socket's send buffer, with a Content-Length: the stored bytes are copied once
    from the page cache and once into the socket, where an iterable is copied through waitress's
    response buffers (and its temporary file above ``outbuf_overflow``) and chunked. A file
    removed before it is read is an ``OSError``: waitress closes the connection."""

    def __init__(self, pieces: Iterable[bytes | tuple[Path, int]]) -> None:
        self.pieces: list[bytes | tuple[Path, int]] = []
        for piece in pieces:  # a part's end and the next one's start go out in one send
            if isinstance(piece, bytes) and self.pieces and isinstance(self.pieces[-1], bytes):
                self.pieces[-1] += piece
            else:
                self.pieces.append(piece)
        sizes = (len(p) if isinstance(p, bytes) else p[1] for p in self.pieces)
        self.starts = list(accumulate(sizes, initial=0))
        self.size = self.starts.pop()
        self.pos = 0
        self.opened: tuple[int, int] | None = None  # (piece, descriptor): one file at a time

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.pos

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        base = {os.SEEK_SET: 0, os.SEEK_CUR: self.pos, os.SEEK_END: self.size}[whence]
        self.pos = min(max(base + offset, 0), self.size)
        return self.pos

    def read(self, size: int = -1) -> bytes:
        """At most ``size`` bytes, from one piece only (a short read: joining pieces would copy
        them once more); b"" at the end."""
        if self.pos >= self.size or size == 0:
            return b""
        index = bisect_right(self.starts, self.pos) - 1
        piece, offset = self.pieces[index], self.pos - self.starts[index]
        length = len(piece) if isinstance(piece, bytes) else piece[1]
        wanted = length - offset if size < 0 else min(size, length - offset)
        if isinstance(piece, bytes):
            data = piece[offset:offset + wanted]
        else:
            data = os.pread(self._descriptor(index, piece[0]), wanted, offset)
            if not data:
                raise OSError(f"{piece[0]} is shorter than when the answer began")
        self.pos += len(data)
        return data

    def _descriptor(self, index: int, path: Path) -> int:
        if self.opened is None or self.opened[0] != index:
            self.close()
            self.opened = (index, os.open(path, os.O_RDONLY))
        return self.opened[1]

    def close(self) -> None:
        if self.opened is not None:
            os.close(self.opened[1])
            self.opened = None


def new_boundary() -> str:
    return uuid.uuid4().hex


def related_type(media: str, boundary: str) -> str:
    return f'multipart/related; type="{media}"; boundary={boundary}'


def framed(parts: Iterable[tuple[str, T]], boundary: str) -> Iterator[bytes | T]:
    """A multipart/related body in order: each part's delimiter and media type, its content,
    its line end; then the closing delimiter."""
    for media, content in parts:
        yield f"--{boundary}\r\nContent-Type: {media}\r\n\r\n".encode()
        yield content
        yield b"\r\n"
    yield f"--{boundary}--\r\n".encode()


def join(parts: Iterable[tuple[str, Iterable[bytes]]], boundary: str) -> Iterator[bytes]:
    """The body of a multipart/related response: each part's media type and chunks."""
    for piece in framed(parts, boundary):
        if isinstance(piece, bytes):
            yield piece
        else:
            yield from piece


def accepts(accept: str, media: str) -> dict[str, str] | None:
    """The parameters of the Accept entry that allows ``media`` (None: not accepted). A
    ``multipart/related`` entry is matched on its ``type``."""
    if not accept.strip():
        return {}
    for entry in re.split(r",(?=(?:[^\"]*\"[^\"]*\")*[^\"]*$)", accept):
        kind, params = media_params(entry.strip())
        inner = params.get("type", "").lower() if kind == "multipart/related" else kind
        if inner in (media, "*/*", "") or kind == "*/*":
            return params
    return None
