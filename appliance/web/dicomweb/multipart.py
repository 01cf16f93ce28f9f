"""``multipart/related`` (RFC 2387) both ways, in bounded memory: parts of a request are
written to files as they arrive, parts of a response are read from files as they are sent."""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable, Iterable, Iterator
from email.message import Message
from email.parser import HeaderParser
from pathlib import Path
from typing import BinaryIO

CHUNK = 1 << 20  # bytes read at a time: fewer, larger scans for the boundary
MAX_HEADERS = 16 * 1024


class Malformed(ValueError):
    """The body is not the multipart message its Content-Type announces."""


def media_params(content_type: str) -> tuple[str, dict[str, str]]:
    """A Content-Type (or one Accept entry) as (media type, parameters)."""
    message = Message()
    message["Content-Type"] = content_type
    params = {k.lower(): v for k, v in (message.get_params() or [])[1:]}
    return message.get_content_type(), params


class Splitter:
    """Feeds a multipart body through; each part's body goes to a new file."""

    def __init__(self, boundary: str, new_file: Callable[[], Path]) -> None:
        self.delimiter = b"--" + boundary.encode("latin-1")
        self.new_file = new_file
        self.buf = b""
        self.parts: list[tuple[Message, Path]] = []

    def split(self, read: Callable[[int], bytes]) -> list[tuple[Message, Path]]:
        """Every part, as (headers, file). Files already made stay listed if it raises."""
        self._skip_preamble(read)
        while self._more(read):
            headers = self._headers(read)
            path = self.new_file()
            self.parts.append((headers, path))
            with open(path, "wb") as out:
                self._body(read, out)
        return self.parts

    def _fill(self, read: Callable[[int], bytes]) -> None:
        chunk = read(CHUNK)
        if not chunk:
            raise Malformed("the body ends before the closing boundary")
        self.buf += chunk

    def _skip_preamble(self, read: Callable[[int], bytes]) -> None:
        while (at := self.buf.find(self.delimiter)) < 0:
            self.buf = self.buf[-len(self.delimiter):]
            self._fill(read)
        self.buf = self.buf[at + len(self.delimiter):]

    def _more(self, read: Callable[[int], bytes]) -> bool:
        """After a delimiter: ``--`` closes the message, CRLF opens a part."""
        while len(self.buf) < 2:
            self._fill(read)
        if self.buf.startswith(b"--"):
            return False
        self.buf = self.buf.lstrip(b" \t")
        while not self.buf.startswith(b"\r\n"):
            if len(self.buf) >= 2:
                raise Malformed("a boundary is not followed by a line end")
            self._fill(read)
        self.buf = self.buf[2:]
        return True

    def _headers(self, read: Callable[[int], bytes]) -> Message:
        while (end := self.buf.find(b"\r\n\r\n")) < 0 and not self.buf.startswith(b"\r\n"):
            if len(self.buf) > MAX_HEADERS:
                raise Malformed("a part's headers are too long")
            self._fill(read)
        if self.buf.startswith(b"\r\n"):
            end = -2  # no headers at all
        text = self.buf[:max(end, 0)].decode("latin-1")
        self.buf = self.buf[end + 4:]
        return HeaderParser().parsestr(text)

    def _body(self, read: Callable[[int], bytes], out: BinaryIO) -> None:
        separator = b"\r\n" + self.delimiter
        while (at := self.buf.find(separator)) < 0:
            keep = len(separator) - 1
            if len(self.buf) > keep:
                out.write(memoryview(self.buf)[:-keep])
                self.buf = self.buf[-keep:]
            self._fill(read)
        out.write(memoryview(self.buf)[:at])
        self.buf = self.buf[at + len(separator):]


def new_boundary() -> str:
    return uuid.uuid4().hex


def related_type(media: str, boundary: str) -> str:
    return f'multipart/related; type="{media}"; boundary={boundary}'


def join(parts: Iterable[tuple[str, Iterable[bytes]]], boundary: str) -> Iterator[bytes]:
    """The body of a multipart/related response: each part's media type and chunks."""
    for media, chunks in parts:
        yield f"--{boundary}\r\nContent-Type: {media}\r\n\r\n".encode()
        yield from chunks
        yield b"\r\n"
    yield f"--{boundary}--\r\n".encode()


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
