"""Readahead of the files ``appliance serve`` reads while it starts, for the OS image's boot.

Read cold by the interpreter, one small file after the other, the interpreter, its libraries and
~400 compiled modules cost the appliance's start ~3 s of waiting for the disk under software
emulation (the imports take 6.0 s cold, 2.8 s warm). The image's build lists them
(``python -m appliance.readahead --list``, in the order the imports need them); at boot,
appliance-readahead.service asks the kernel to read them (``posix_fadvise(WILLNEED)``: the reads
are queued, several files at a time, and nothing is copied) while systemd starts the system and
the appliance imports. This module imports nothing heavy itself: it runs first.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
from importlib.util import source_from_cache

READERS = 4  # files opened at once: the device gets several requests to serve at a time


def module_files() -> list[str]:
    """The file of every loaded module: its compiled file (.pyc) or extension (.so)."""
    files = []
    for module in list(sys.modules.values()):
        spec = getattr(module, "__spec__", None)
        if module is sys.modules["__main__"] or getattr(spec, "origin", None) == "frozen":
            continue  # the running script (also __mp_main__); a module inside the interpreter
        for path in (getattr(module, "__cached__", None), getattr(module, "__file__", None)):
            if path and os.path.isfile(path):
                files.append(os.path.realpath(path))
                break
    return files


def linked(binaries: list[str]) -> list[str]:
    """The shared libraries the dynamic loader maps for ``binaries`` (ldd; a file it cannot
    list only leaves its libraries out: they are a small part of the reading)."""
    listing = subprocess.run(["ldd", *binaries], capture_output=True, text=True).stdout
    return [os.path.realpath(path) for path in re.findall(r"=> (/\S+)", listing)]


def serving_files() -> list[str]:
    """What ``serve`` reads before it is ready, in order: the interpreter, the shared libraries
    it and the extension modules link, then each imported module's file, in import order."""
    from .__main__ import import_for_serving

    import_for_serving()
    from . import runtime  # noqa: F401  (what ``serve`` imports next)

    modules = module_files()
    binaries = [os.path.realpath(sys.executable)] + [f for f in modules if f.endswith(".so")]
    return list(dict.fromkeys(binaries + linked(binaries) + modules))


def read_ahead(paths: list[str]) -> None:
    """Queue the reading of ``paths`` into the page cache, ``READERS`` files at a time. The
    source next to each compiled module is looked up too: the interpreter checks its time."""
    def reader(share: list[str]) -> None:
        for path in share:
            try:
                fd = os.open(path, os.O_RDONLY)
            except OSError:
                continue  # gone since the build (a hand-made change): its reader finds out
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_WILLNEED)
            finally:
                os.close(fd)
            if path.endswith(".pyc"):
                try:
                    os.stat(source_from_cache(path))
                except (OSError, ValueError):
                    pass

    threads = [threading.Thread(target=reader, args=(paths[i::READERS],))
               for i in range(READERS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def main(argv: list[str]) -> int:
    if argv == ["--list"]:
        print("\n".join(serving_files()))
        return 0
    if len(argv) != 1:
        print("usage: python -m appliance.readahead --list | LIST-FILE", file=sys.stderr)
        return 2
    with open(argv[0]) as listing:
        read_ahead(listing.read().split())
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
