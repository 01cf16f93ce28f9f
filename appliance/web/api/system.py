"""``/system`` and ``/statistics``."""

from __future__ import annotations

import json
from typing import Any

import bottle

from ... import __version__
from ...config import Config
from ...index import resources as index
from ...index.db import SCHEMA_VERSION
from ...store import Store


def install(app: bottle.Bottle, config: Config, store: Store) -> None:
    @app.get("/system")
    def system() -> Any:
        bottle.response.content_type = "application/json"
        return json.dumps({
            "Name": config.dicom.aet,
            "DicomAet": config.dicom.aet,
            "DicomPort": config.dicom.port,
            "HttpPort": config.http.port,
            "Version": __version__,
            "ApiVersion": 1,
            "DatabaseVersion": SCHEMA_VERSION,
            "DatabaseBackendPlugin": None,
            "StorageAreaPlugin": None,
            "PluginsEnabled": False,
            "IsHttpServerSecure": False,
        }, indent=2)

    @app.get("/statistics")
    def statistics() -> Any:
        bottle.response.content_type = "application/json"
        return json.dumps(index.statistics(), indent=2)
