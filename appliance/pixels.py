"""Pixel work — decompression for peers that refuse a stored syntax, previews — in a separate
process, started on demand and stopped when idle.

The serving process never imports numpy (see ``__main__``): idle memory stays low, and a decoder
that crashes on a malformed image takes down only this helper, not the appliance.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")
IDLE_SECONDS = 60.0  # the helper process exits after this long without work
TIMEOUT = 120.0  # most seconds one job may take
PARENT_CHECK = 1.0  # seconds between the helper's checks that the appliance still runs


class PixelError(RuntimeError):
    """The pixel data could not be decoded or converted (the reason is the message)."""


class PixelWorker:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pool: ProcessPoolExecutor | None = None
        self._timer: threading.Timer | None = None
        self._busy = 0

    def run(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` in the helper process (``fn`` must be a module-level function)."""
        with self._lock:
            if self._pool is None:
                self._pool = ProcessPoolExecutor(
                    1, mp_context=multiprocessing.get_context("spawn"),
                    initializer=exit_with_parent, initargs=(os.getpid(),))
            pool = self._pool
            self._busy += 1
        try:
            return pool.submit(fn, *args).result(TIMEOUT)
        except BrokenProcessPool as exc:
            with self._lock:
                self._pool = None
            raise PixelError("the pixel helper process died (a decoder crashed?)") from exc
        finally:
            with self._lock:
                self._busy -= 1
                self._arm_idle_stop()

    def _arm_idle_stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = threading.Timer(IDLE_SECONDS, self._stop_if_idle)
        self._timer.daemon = True
        self._timer.start()

    def _stop_if_idle(self) -> None:
        with self._lock:
            if self._busy or self._pool is None:
                return
            pool, self._pool = self._pool, None
        pool.shutdown(wait=False)

    def stop(self) -> None:
        with self._lock:
            pool, self._pool = self._pool, None
            if self._timer is not None:
                self._timer.cancel()
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)


worker = PixelWorker()


# --- what runs in the helper process -----------------------------------------------------------

def exit_with_parent(parent: int) -> None:
    """Leave when the appliance is gone (``kill -9`` gives it no chance to stop us): a helper
    that outlived it would keep its memory, numpy and decoders, for nothing."""

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(PARENT_CHECK)
        os._exit(0)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def decompress_file(src: str, dst: str) -> str:
    """Write ``src`` in Explicit VR Little Endian at ``dst`` (decompressed, or re-encoded from
    another uncompressed syntax); return "" or why it could not be done."""
    from pydicom import dcmread
    from pydicom.uid import ExplicitVRLittleEndian

    try:
        ds = dcmread(src)
        if ds.file_meta.TransferSyntaxUID.is_compressed:
            ds.decompress(generate_instance_uid=False)  # a syntax change, the same instance
        else:
            ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.save_as(dst, enforce_file_format=True)
    except Exception as exc:  # pydicom raises many kinds when a decoder is missing
        Path(dst).unlink(missing_ok=True)
        return f"{type(exc).__name__}: {exc}"
    return ""
