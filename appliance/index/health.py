"""What the health checks ask of the index: a real write (run by the writer) read back, the
newest instance key, and the last reception per calling AE title."""

from __future__ import annotations

from peewee import fn

from .models import Heartbeat, Instance


def beat(name: str, now: float) -> None:
    """Record a heartbeat (a writer job: it commits like any instance row)."""
    Heartbeat.insert(name=name, beat=now).on_conflict_replace().execute()


def last_beat(name: str) -> float | None:
    return Heartbeat.select(Heartbeat.beat).where(Heartbeat.name == name).scalar()


def newest_instance() -> int:
    """The highest instance key (0 for an empty index): a read of the largest table."""
    return int(Instance.select(fn.MAX(Instance.id)).scalar() or 0)


def last_receptions() -> dict[str, float]:
    """Per calling AE title, when its newest stored instance arrived (seeds the silence
    tracking at start-up). A loose index scan: two probes of the (calling_aet, received) index
    per AE title, whatever the size of the table."""
    found: dict[str, float] = {}
    aet = ""
    while True:
        aet = Instance.select(fn.MIN(Instance.calling_aet)).where(
            Instance.calling_aet > aet).scalar()
        if aet is None:
            return found
        found[str(aet)] = float(Instance.select(fn.MAX(Instance.received)).where(
            Instance.calling_aet == aet).scalar())
