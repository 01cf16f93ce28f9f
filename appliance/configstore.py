"""The configuration as it changes at run time (modalities, routes, and later every setting the
admin page edits).

The effective configuration is: defaults, then the configuration file, then the *saved*
settings (what was changed at run time), then command-line flags. Every change is validated
as a whole and written as a new numbered version under ``<data>/config/`` (atomically, fsynced)
before it takes effect, so a bad change can be rolled back and a crash never leaves half a file.
Readers take ``current``: one reference swap, no lock.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .atomic import write_json
from .config import Config, ConfigError, merge, read_file, to_dict, validated

log = logging.getLogger(__name__)

Listener = Callable[[Config], None]


class ConfigStore:
    def __init__(self, path: Path | None, overrides: dict[str, Any], data_dir: Path) -> None:
        self._file = read_file(path)
        self._overrides = overrides
        self.folder = data_dir / "config"
        self._lock = threading.RLock()
        self._listeners: list[Listener] = []
        self._saved = self._read_saved()
        self.current: Config = self._effective(self._saved)

    @classmethod
    def open(cls, path: Path | None, overrides: dict[str, Any]) -> ConfigStore:
        """The data directory itself may come from the file or the flags."""
        data_dir = validated(merge(read_file(path), overrides)).data_dir
        return cls(path, overrides, data_dir)

    def subscribe(self, listener: Listener) -> None:
        self._listeners.append(listener)

    def update(self, changes: dict[str, Any], who: str = "") -> Config:
        """Apply ``changes`` (a partial configuration; ``modalities`` and ``routes`` replace
        the whole section) if the result is valid; raise ``ConfigError`` otherwise."""
        with self._lock:
            return self.replace(merge(self._saved, changes), who)

    def _effective(self, saved: dict[str, Any]) -> Config:
        return validated(merge(merge(self._file, saved), self._overrides))

    def versions(self) -> list[int]:
        if not self.folder.is_dir():
            return []
        return sorted(int(p.stem) for p in self.folder.glob("*.json") if p.stem.isdigit())

    def _read_saved(self) -> dict[str, Any]:
        versions = self.versions()
        if not versions:
            return {}
        document = json.loads((self.folder / f"{versions[-1]:06d}.json").read_text("utf-8"))
        return dict(document["settings"])

    def _write(self, saved: dict[str, Any], who: str) -> int:
        version = (self.versions() or [0])[-1] + 1
        document = {"version": version, "saved": time.time(), "by": who, "settings": saved}
        write_json(self.folder / f"{version:06d}.json", document)
        return version

    def history(self) -> list[dict[str, Any]]:
        """Every saved version, newest first: number, when, by whom (settings left out)."""
        out = []
        for version in reversed(self.versions()):
            document = self._document(version)
            out.append({"version": version, "saved": document.get("saved", 0.0),
                        "by": document.get("by", "")})
        return out

    def _document(self, version: int) -> dict[str, Any]:
        path = self.folder / f"{version:06d}.json"
        if not path.exists():
            raise ConfigError(f"no saved configuration version {version}")
        return dict(json.loads(path.read_text("utf-8")))

    def rollback(self, version: int, who: str = "") -> Config:
        """Make the settings of ``version`` current again, as a new version (history is never
        rewritten)."""
        return self.replace(dict(self._document(version)["settings"]), who)

    def replace(self, saved: dict[str, Any], who: str = "") -> Config:
        """Replace every saved setting at once (an import, a rollback), validated first."""
        with self._lock:
            config = self._effective(saved)
            version = self._write(saved, who)
            self._saved, self.current = saved, config
        log.info("configuration version %d saved%s", version, f" by {who}" if who else "")
        for listener in self._listeners:
            listener(config)
        return config

    def export(self) -> dict[str, Any]:
        """The whole effective configuration (to provision another box the same way); the
        data directory is left out: it belongs to each box."""
        values = to_dict(self.current)
        values.pop("data", None)
        return values
