"""Reading a box's ``/health`` from outside (``appliance health``, ``tools/fleet``), with
Nagios-style exit codes: 0 ok, 1 degraded, 2 failing or unreachable."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any

from .checks import SEVERITY, State

EXIT_CODES: dict[State, int] = dict(SEVERITY)


@dataclass(frozen=True)
class Answer:
    """What a box answered: its report (None if unreachable) or why there is none."""

    state: State
    report: dict[str, Any] | None
    error: str = ""


def get_json(url: str, timeout: float) -> Any:
    """GET ``url`` and decode its JSON body, whatever the HTTP status (503 carries a report)."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return json.load(response)
    except urllib.error.HTTPError as exc:
        with exc:
            return json.load(exc)


def fetch_health(base_url: str, timeout: float = 10.0) -> Answer:
    try:
        report = get_json(base_url.rstrip("/") + "/health", timeout)
    except (OSError, ValueError) as exc:  # refused, timed out, not JSON
        return Answer("failing", None, f"unreachable: {exc}")
    state = report.get("status") if isinstance(report, dict) else None
    if state not in SEVERITY:
        return Answer("failing", None, "not a health report")
    return Answer(state, report)


def lines(answer: Answer) -> list[str]:
    """The report as text: the overall state, then one line per check."""
    if answer.report is None:
        return [f"FAILING: {answer.error}"]
    out = [answer.state.upper()]
    for check in answer.report.get("checks", []):
        value = check.get("value")
        shown = json.dumps(value, separators=(",", ":")) if value is not None else "-"
        reason = f"  {check['reason']}" if check.get("reason") else ""
        out.append(f"  {check['status']:<9} {check['name']:<28} {shown}{reason}")
    return out
