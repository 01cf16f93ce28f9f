"""The fleet view: every box's ``/health`` and ``/statistics``, asked concurrently, in one table.

    tools/fleet boxes.json            # [{"name": "pet-1", "url": "http://10.0.0.21:8042"}, ...]
    tools/fleet boxes.txt             # one "name url" per line ("#" starts a comment)

Columns: name, status, free disk, queue (pending entries of every destination, when the box
routes), last reception (the newest of its sources), instances stored, version. The exit code is
the worst state (Nagios style): 0 ok, 1 degraded, 2 failing or unreachable.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from appliance.health.client import EXIT_CODES, Answer, fetch_health, get_json

COLUMNS = ("name", "status", "disk free", "queue", "last reception", "instances", "version")


@dataclass(frozen=True)
class Box:
    name: str
    url: str


def read_boxes(path: Path) -> list[Box]:
    text = path.read_text(encoding="utf-8")
    if text.lstrip().startswith("["):
        return [Box(str(b["name"]), str(b["url"])) for b in json.loads(text)]
    boxes = []
    for number, line in enumerate(text.splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        parts = line.split()
        if len(parts) != 2:
            raise ValueError(f"{path}:{number}: expected 'name url', got {line!r}")
        boxes.append(Box(*parts))
    return boxes


def checks_of(answer: Answer) -> list[dict[str, Any]]:
    return list(answer.report.get("checks", [])) if answer.report else []


def row(box: Box, answer: Answer, statistics: Any, now: float) -> tuple[str, ...]:
    checks = checks_of(answer)
    disk = next((c["value"] for c in checks if c["name"] == "disk"), None)
    queues = [c["value"] for c in checks if c["name"].startswith("destination:")
              and isinstance(c["value"], dict)]
    queue = str(sum(int(q.get("pending", 0)) for q in queues)) if queues else "-"
    received = [c["value"] for c in checks if c["name"].startswith("source:")
                and isinstance(c["value"], (int, float))]
    last = ago(now - max(received)) if received else "never"
    instances = statistics.get("CountInstances", "-") if isinstance(statistics, dict) else "-"
    version = answer.report.get("version", "-") if answer.report else "-"
    status = answer.state if answer.report else f"failing ({answer.error})"
    return (box.name, status, f"{disk:.0f} MB" if isinstance(disk, (int, float)) else "-",
            queue, last, str(instances), str(version))


def ago(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds / size:.1f} {unit} ago"
    return f"{seconds:.0f} s ago"


def survey(box: Box, timeout: float) -> tuple[Answer, Any]:
    answer = fetch_health(box.url, timeout)
    statistics = None
    if answer.report is not None:
        try:
            statistics = get_json(box.url.rstrip("/") + "/statistics", timeout)
        except (OSError, ValueError):
            statistics = None
    return answer, statistics


def table(rows: list[tuple[str, ...]]) -> str:
    widths = [max(len(r[i]) for r in [COLUMNS, *rows]) for i in range(len(COLUMNS))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip()
             for r in [COLUMNS, *rows]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("boxes", type=Path, help="JSON list or text file of boxes")
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds per request")
    args = parser.parse_args(argv)
    try:
        boxes = read_boxes(args.boxes)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        print(f"fleet: cannot read the boxes: {exc}", file=sys.stderr)
        return 2
    with ThreadPoolExecutor(max_workers=min(32, len(boxes) or 1)) as pool:
        results = list(pool.map(lambda b: survey(b, args.timeout), boxes))
    now = time.time()
    print(table([row(box, answer, stats, now)
                 for box, (answer, stats) in zip(boxes, results, strict=True)]))
    return max((EXIT_CODES[answer.state] for answer, _ in results), default=0)


if __name__ == "__main__":
    sys.exit(main())
