"""What the DICOMweb services share: the base URL and DICOM JSON output."""

from __future__ import annotations

import json
from typing import Any

import bottle

PREFIX = "/dicom-web"


def base_url() -> str:
    """This service's root as the client reached it (for RetrieveURL)."""
    parts = bottle.request.urlparts
    return f"{parts.scheme}://{parts.netloc}{PREFIX}"


def dicom_json(value: Any) -> str:
    """The DICOM JSON model (PS3.18 F.2) as the response body."""
    bottle.response.content_type = "application/dicom+json"
    return json.dumps(value)
