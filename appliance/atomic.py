"""Small files written so that a crash leaves either the old or the new content, never half."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


def write_json(target: Path, value: Any, mode: int = 0o644) -> None:
    """Write to a temporary file, fsync it, rename it over ``target``, fsync the folder."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with open(fd, "w", encoding="utf-8") as f:
        json.dump(value, f, indent=2)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, target)
    dir_fd = os.open(target.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
