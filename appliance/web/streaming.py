"""Upload bodies handed to their view as they arrive, through a bounded pipe.

waitress receives a whole request body (to a temporary file above ``inbuf_overflow``) before
the application sees a byte of it. An upload (STOW-RS, ``POST /instances``) was then written
twice to the disk it is stored on -- waitress's copy, the view's spool files -- and read back
once more, and the view could not start before the last byte had arrived. For the requests
``streamed`` names, this channel starts the view as soon as the headers are in and feeds it
the body (a length-delimited one through waitress's receiver, a chunked one through our
``Dechunker``) through a ``BodyPipe``: while the pipe holds ``PIPE_BYTES`` the network thread
stops reading the socket (TCP flow control holds the client back), so memory stays bounded
whatever the body's size.

A streamed body holds a worker thread while its client sends it (a slow client, a long
time): at most a fixed number are streamed at once, and the server has that many threads more
than ``http.threads``, so other requests keep theirs.

A view that answers before the end of the body (401, 413, ...) leaves the rest to be read and
dropped, so the client gets its answer; a body that breaks its framing (bad chunks, over
``max_request_body_size``) or a client that goes away ends the pipe with an error, and the
connection is closed once the answer is sent.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from functools import partial
from typing import Any

import bottle
from waitress.channel import HTTPChannel
from waitress.parser import HTTPRequestParser

PIPE_BYTES = 4 << 20  # held per upload at most (plus one socket read)

MAX_LINE = 8192  # a chunk size line (with extensions) or a trailer field
HEX_DIGITS = b"0123456789abcdefABCDEF"

Streamed = Callable[[str, str], bool]  # (method, path): is this request's body streamed?


class BodyPipe:
    """A request body between waitress's network thread, which appends to it as to the buffer
    its body receivers write, and the view's thread, which reads it as ``wsgi.input``."""

    def __init__(self, wake: Callable[[], None], timeout: float,
                 release: Callable[[], None]) -> None:
        self.chunks: deque[bytes] = deque()
        self.offset = 0  # of the first chunk, read already
        self.held = 0  # bytes appended, not yet read
        self.total = 0  # bytes appended (waitress's receivers ask len())
        self.cond = threading.Condition()
        self.ended = False
        self.error: bottle.HTTPError | None = None
        self.abandoned = False  # the view is done: what comes is dropped
        self.broken = False  # the framing is lost: the connection must close
        self.wake = wake  # makes the network thread look at ``full`` again
        self.timeout = timeout
        self.release = release  # gives the stream's slot back

    def __len__(self) -> int:
        return self.total

    @property
    def full(self) -> bool:
        return self.held >= PIPE_BYTES

    def append(self, data: bytes) -> None:
        with self.cond:
            self.total += len(data)
            if not self.abandoned:
                self.chunks.append(data)
                self.held += len(data)
                self.cond.notify()

    def end(self, error: bottle.HTTPError | None = None) -> None:
        with self.cond:
            self.ended = True
            self.error = error
            self.cond.notify()

    def getfile(self) -> BodyPipe:
        return self

    def close(self) -> None:
        """waitress closes the request's body once the view has answered."""
        with self.cond:
            released, self.abandoned = self.abandoned, True
            self.chunks.clear()
            self.held = self.offset = 0
        if not released:
            self.release()
        self.wake()

    def read(self, size: int = -1) -> bytes:
        """The next bytes, at most ``size`` (all that is left if negative); b"" at the end.
        Raises the pipe's error (an ``HTTPError``), or 408 after ``timeout`` with no data."""
        if size < 0:
            return b"".join(iter(lambda: self.read(PIPE_BYTES), b""))
        with self.cond:
            if not self.cond.wait_for(lambda: self.chunks or self.ended, self.timeout):
                raise bottle.HTTPError(408, f"no more of the body came for {self.timeout} s")
            if self.error is not None:
                raise self.error
            if not self.chunks:
                return b""
            was_full = self.full
            chunk = self.chunks[0]
            piece = chunk[self.offset:self.offset + size]  # the whole chunk: not a copy
            self.offset += len(piece)
            if self.offset == len(chunk):
                self.chunks.popleft()
                self.offset = 0
            self.held -= len(piece)
        if was_full and not self.full:
            self.wake()
        return piece


class Dechunker:
    """The chunked transfer coding (RFC 9112 7.1) undone where the data lies, into a pipe.
    waitress's own receiver re-slices the rest of its input at every chunk boundary: with
    large reads those copies cost more than storing the upload."""

    completed = False
    error: str | None = None

    def __init__(self, pipe: BodyPipe) -> None:
        self.pipe = pipe
        self.left = 0  # bytes of the current chunk's data still to come
        self.line = b""  # the start of a size or trailer line
        self.line_end = b""  # what is still expected of the CRLF after a chunk's data
        self.last = False  # the zero-size chunk came: trailer lines follow

    def getfile(self) -> BodyPipe:  # waitress asks its receivers for the body so
        return self.pipe

    def getbuf(self) -> BodyPipe:
        return self.pipe

    def received(self, data: bytes) -> int:
        """Take what belongs to the body; the number of bytes taken."""
        pos, end = 0, len(data)
        while pos < end and not self.completed and self.error is None:
            if self.left:
                take = min(self.left, end - pos)
                self.pipe.append(data[pos:pos + take])
                pos += take
                self.left -= take
                self.line_end = b"" if self.left else b"\r\n"
            elif self.line_end:
                if data[pos] != self.line_end[0]:
                    self.error = "a chunk is longer than its size says"
                self.line_end = self.line_end[1:]
                pos += 1
            else:
                pos = self._line(data, pos)
        return pos

    def _line(self, data: bytes, pos: int) -> int:
        at = data.find(b"\n", pos)
        line = self.line + data[pos:at + 1 if at >= 0 else len(data)]
        if len(line) > MAX_LINE:
            self.error = "a chunk size or trailer line is too long"
        elif at < 0:
            self.line = line
        else:
            self.line = b""
            self._read_line(line)
        return len(data) if at < 0 else at + 1

    def _read_line(self, line: bytes) -> None:
        if not line.endswith(b"\r\n"):
            self.error = "a line does not end with CRLF"
        elif self.last:
            self.completed = line == b"\r\n"  # other trailer fields are ignored
        else:
            size = line[:-2].split(b";")[0].strip()
            if not size or size.strip(HEX_DIGITS):
                self.error = f"bad chunk size {size[:20]!r}"
            else:
                self.left = int(size, 16)
                self.last = not self.left


class StreamingParser(HTTPRequestParser):  # type: ignore[misc]
    """waitress's parser, which declares a streamed request complete with its headers."""

    completed: bool

    def __init__(self, adj: Any, channel: StreamingChannel) -> None:
        super().__init__(adj)
        self.channel = channel

    def received(self, data: bytes) -> int:
        if self.headers_finished:
            return int(super().received(data))
        consumed = int(super().received(data))
        if (self.headers_finished and not self.completed and self.body_rcv is not None
                and self.channel.streamed(self.command, self.path)
                and self.channel.streams.acquire(blocking=False)):
            self.completed = True  # the channel starts the task, then feeds it the body
            consumed += self.channel.stream_body(self, data[consumed:])
        return consumed


class StreamingChannel(HTTPChannel):  # type: ignore[misc]
    """waitress's channel, which feeds the bodies of ``streamed`` requests to their task."""

    def __init__(self, server: Any, sock: Any, addr: Any, adj: Any, map: Any = None, *,
                 streamed: Streamed, streams: threading.Semaphore) -> None:
        self.streamed = streamed
        self.streams = streams  # one taken per body being streamed, over every channel
        self.body: tuple[Any, BodyPipe] | None = None  # (waitress's receiver, its pipe)
        super().__init__(server, sock, addr, adj, map)
        self.parser_class = partial(StreamingParser, channel=self)

    def stream_body(self, request: StreamingParser, data: bytes) -> int:
        """Put a pipe under the request's body receiver; feed it what came with the headers."""
        pipe = BodyPipe(self.server.pull_trigger, self.adj.channel_timeout, self.streams.release)
        if request.chunked:
            request.body_rcv = Dechunker(pipe)
        else:
            request.body_rcv.buf = pipe
        self.body = (request.body_rcv, pipe)
        return self._feed(data) if data else 0

    def _feed(self, data: bytes) -> int:
        """Network thread: give body bytes to the receiver; the number it took."""
        assert self.body is not None
        receiver, pipe = self.body
        consumed = int(receiver.received(data))
        if receiver.error is not None:
            self._break(pipe, bottle.HTTPError(400, f"malformed chunked body: {receiver.error}"))
        elif pipe.total >= self.adj.max_request_body_size:
            self._break(pipe, bottle.HTTPError(
                413, f"the body is over the limit of {self.adj.max_request_body_size} bytes"))
        elif receiver.completed:
            pipe.end()
            self.body = None
        return consumed

    def _break(self, pipe: BodyPipe, error: bottle.HTTPError) -> None:
        """The body cannot be read to its end: the view gets ``error``, the connection closes
        once the answer is sent (by the view's thread if it has not answered yet)."""
        with pipe.cond:
            pipe.broken = True
            answered = pipe.abandoned
        pipe.end(error)
        if answered:
            self.close_when_flushed = True

    def received(self, data: bytes) -> bool:
        if self.body is not None and not (self.will_close or self.close_when_flushed):
            data = data[self._feed(data):]
        return bool(super().received(data)) if data and self.body is None else True

    def readable(self) -> bool:
        if self.body is None:
            return bool(super().readable())
        pipe = self.body[1]
        return not (self.will_close or self.close_when_flushed or pipe.broken or pipe.full)

    def send_continue(self) -> None:
        """waitress marks the request incomplete after a 100 Continue: a streamed one stays
        complete (its task is started)."""
        completed = self.request.completed
        super().send_continue()
        self.request.completed = completed

    def service(self) -> None:
        body = self.body
        super().service()
        if body is not None:
            with body[1].cond:
                broken = body[1].broken
            if broken:
                with self.requests_lock:
                    self.close_when_flushed = True

    def handle_close(self) -> None:
        if self.body is not None:
            self._break(self.body[1], bottle.HTTPError(
                400, "the client closed the connection before the end of the body"))
        super().handle_close()


def channel_class(streamed: Streamed, streams: int) -> Callable[..., StreamingChannel]:
    """What waitress's server makes its channels with (``server.channel_class``): at most
    ``streams`` bodies streamed at once (each holds a worker thread while its client sends it);
    the next ones are received whole first, as waitress does."""
    return partial(StreamingChannel, streamed=streamed, streams=threading.Semaphore(streams))
