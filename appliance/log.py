"""Logging: to journald under systemd (structured fields), to stderr otherwise."""

from __future__ import annotations

import logging
import os
import sys


def setup(level: str) -> None:
    root = logging.getLogger()
    root.handlers.clear()
    root.setLevel(level)
    handler: logging.Handler
    if os.environ.get("JOURNAL_STREAM") or os.environ.get("INVOCATION_ID"):
        from systemd.journal import JournalHandler

        handler = JournalHandler(SYSLOG_IDENTIFIER="appliance")
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(
            logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
        )
    root.addHandler(handler)
    logging.getLogger("pynetdicom").setLevel(max(logging.WARNING, root.level))
