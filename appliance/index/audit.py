"""The audit log: written through the index writer, read by the admin page."""

from __future__ import annotations

import time
from typing import Any

from .models import Audit

MAX_DETAIL = 2000


def record(user: str, address: str, action: str, detail: str = "", outcome: str = "ok") -> None:
    """One entry (run it in the writer)."""
    Audit.create(date=time.time(), user=user, address=address, action=action,
                 detail=detail[:MAX_DETAIL], outcome=outcome)


def recent(limit: int = 200, action: str = "") -> list[dict[str, Any]]:
    query = Audit.select().order_by(Audit.seq.desc()).limit(limit)
    if action:
        query = query.where(Audit.action.startswith(action))
    return [{"seq": a.seq, "date": a.date, "user": a.user, "address": a.address,
             "action": a.action, "detail": a.detail, "outcome": a.outcome} for a in query]
