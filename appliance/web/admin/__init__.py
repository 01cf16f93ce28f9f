"""The admin web page: server-rendered Bottle templates, a little plain JavaScript, every
asset served by the box itself (the hospital network has no internet)."""

from __future__ import annotations

from typing import Any

import bottle

from ..app import ERROR_CODES, json_error
from ..auth import AuthPlugin, is_page_request, security_headers
from . import manage, pages
from .common import Services, render


def install(app: bottle.Bottle, services: Services) -> None:
    """The pages, and the plugin that guards every route of ``app`` (the REST API too)."""
    app.install(AuthPlugin(services.security))
    app.add_hook("after_request", security_headers)
    pages.install(app, services)
    manage.install(app, services)
    for code in ERROR_CODES:
        app.error(code)(error_page)


def error_page(error: bottle.HTTPError) -> Any:
    """Pages get an HTML error, the API keeps its JSON one."""
    if not is_page_request():
        return json_error(error)
    return render("message.tpl", title=f"Error {error.status_code}",
                  message=str(error.body or error.status_line))
