"""``/health`` (JSON, 200 ok or degraded, 503 failing) and ``/metrics`` (Prometheus text).

Both are readable without login when ``health.public`` is true (the default: monitoring systems
poll them); otherwise only from this machine (``appliance health``) until accounts exist.
Neither carries patient data: AE titles, counts, sizes and times only.
"""

from __future__ import annotations

import json
from typing import Any

import bottle

from ... import __version__
from ...health.metrics import CONTENT_TYPE
from ...health.service import Monitor

LOOPBACK = {"127.0.0.1", "::1"}


def install(app: bottle.Bottle, monitor: Monitor) -> None:
    def allowed() -> None:
        if not monitor.config.health.public and bottle.request.remote_addr not in LOOPBACK:
            raise bottle.HTTPError(403, "health and metrics are readable from this machine "
                                        "only (health.public is false)")

    @app.get("/health")
    def health() -> Any:
        allowed()
        report = monitor.report()
        bottle.response.content_type = "application/json"
        bottle.response.set_header("Cache-Control", "no-store")
        bottle.response.status = 503 if report.state == "failing" else 200
        return json.dumps({**report.to_json(), "version": __version__}, indent=2)

    @app.get("/metrics")
    def metrics() -> Any:
        allowed()
        bottle.response.content_type = CONTENT_TYPE
        return monitor.metrics()
