"""Bottle's router, with each method's combined pattern compiled once instead of at every route.

Bottle joins the patterns of all dynamic routes of a method into one regular expression and
compiles it again each time a route is added: quadratic work, about 110 routes here, and seconds
of the start-up on a small or emulated CPU. Here it is compiled when the application is complete
(``compile``), or at the first request that finds it stale.
"""

from __future__ import annotations

import threading
from typing import Any

import bottle


class Router(bottle.Router):  # type: ignore[misc]
    def __init__(self, strict: bool = False) -> None:
        super().__init__(strict)
        self._stale: set[str] = set()
        self._lock = threading.Lock()

    def _compile(self, method: str) -> None:
        with self._lock:
            self._stale.add(method)

    def compile(self) -> None:
        """Compile the patterns of the methods whose routes changed."""
        with self._lock:
            for method in self._stale:
                super()._compile(method)
            self._stale.clear()

    def match(self, environ: dict[str, Any]) -> Any:
        if self._stale:
            self.compile()
        return super().match(environ)
