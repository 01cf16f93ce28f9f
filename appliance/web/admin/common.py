"""What every admin page shares: the services it calls, template rendering, form reading."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import bottle

from ...configstore import ConfigStore
from ...routing.service import Routing
from ...store import Store
from ..auth import Security, audit_note, current

HERE = Path(__file__).resolve().parent
TEMPLATES = str(HERE / "templates")
STATIC = HERE / "static"


@dataclass(frozen=True)
class Services:
    configs: ConfigStore
    store: Store
    routing: Routing
    security: Security


def render(template: str, **values: Any) -> str:
    """A page; templates escape every ``{{value}}`` (never ``{{!...}}`` on DICOM data)."""
    principal = bottle.request.environ.get("appliance.principal")
    session = principal.session if principal else None
    return str(bottle.template(
        template, template_lookup=[TEMPLATES], user=principal.user if principal else "",
        is_admin=bool(principal and principal.role == "admin"),
        csrf=session.csrf if session else "", path=bottle.request.path,
        when=when, size=size, **values))


def when(ts: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts)) if ts else "never"


def size(n: int | float) -> str:
    value = float(n)
    for unit in ("B", "KB", "MB", "GB"):
        if value < 1024:
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TB"


def form(name: str, default: str = "") -> str:
    """A form field as text (``getunicode``: Bottle's ``forms`` are latin-1 otherwise)."""
    value = bottle.request.forms.getunicode(name)
    return value.strip() if value is not None else default


def who() -> str:
    return current().user


def answer_status(status: int, error: str) -> None:
    """A page shown again with an error: its status, and the error for the audit log."""
    bottle.response.status = status
    if error:
        audit_note(error)


def flash_redirect(target: str, message: str = "", error: str = "") -> Any:
    """Back to a page, with a message in the query string (shown once, escaped)."""
    query = {k: v for k, v in (("msg", message), ("err", error)) if v}
    sep = "&" if "?" in target else "?"
    return bottle.redirect(target + (sep + urlencode(query) if query else ""))
