"""``GET /instances/{id}/preview``: a PNG of the image (minimal, for the admin page; issue 7
owns the complete route)."""

from __future__ import annotations

from typing import Any

import bottle

from ...pixels import PixelError
from ...store import Store


def install(app: bottle.Bottle, store: Store) -> None:
    @app.get("/instances/<public_id>/preview")
    def preview(public_id: str) -> Any:
        try:
            png = store.preview(public_id)
        except (PixelError, TimeoutError) as exc:
            raise bottle.HTTPError(415, str(exc)) from exc
        if png is None:
            raise bottle.HTTPError(404, f"unknown resource: instances/{public_id}")
        bottle.response.content_type = "image/png"
        bottle.response.set_header("Cache-Control", "private, max-age=3600")
        return png
