"""The durable outbound queue (the ``outbound`` table) and the export log: reads for the
workers and the APIs, and the writes, which run in the index writer.

Attempts count only C-STORE answers: a destination that cannot be reached costs its entries
nothing but time (the worker backs off the whole destination), and its entries are failed only
once older than ``queue.max_age``. An entry the destination refuses is retried with an
exponential backoff and failed after ``queue.max_attempts``. Failed entries stay until retried
or cancelled by hand.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

from peewee import fn

from ..config import QueueSettings
from ..index.models import (
    Export,
    Instance,
    Outbound,
    Patient,
    Series,
    Study,
    database,
    tuples,
)

SUCCESS, WARNINGS = 0x0000, {0x0001, 0xB000, 0xB006, 0xB007}


@dataclass(frozen=True)
class Entry:
    """A pending queue entry with what sending it needs."""

    id: int
    route: str
    attempts: int
    created: float
    instance_id: str  # public ID
    sop_uid: str
    sop_class_uid: str
    transfer_syntax: str
    file: str
    series_uid: str  # copied into the export log, which outlives the instance
    study_uid: str
    patient_id: str


# The hot path (a claim and a record per batch, batches of one or two instances when they
# trickle in) uses plain SQL: peewee's query building cost more than SQLite itself.
ENTRY_COLUMNS = (
    "o.id, o.route, o.attempts, o.created, i.public_id, i.sop_uid, i.sop_class_uid,"
    " i.transfer_syntax, i.file, s.series_uid, st.study_uid, p.patient_id"
    " FROM outbound o JOIN instance i ON i.id = o.instance_id"
    " JOIN series s ON s.id = i.series_id JOIN study st ON st.id = s.study_id"
    " JOIN patient p ON p.id = st.patient_id"
)
DUE = (
    f"SELECT {ENTRY_COLUMNS} WHERE o.destination = ? AND o.state = 'pending'"
    " AND o.next_attempt <= ? ORDER BY o.next_attempt, o.id LIMIT ?"
)
NEXT_DUE = (
    "SELECT id, next_attempt FROM outbound WHERE destination = ? AND state = 'pending'"
    " ORDER BY next_attempt LIMIT ?"
)
DELETE_ENTRY = "DELETE FROM outbound WHERE id = ?"
INSERT_EXPORT = (
    "INSERT INTO export (date, destination, remote_aet, instance_id, sop_uid, series_uid,"
    " study_uid, patient_id, route, status, outcome, error)"
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)


@dataclass(frozen=True)
class Result:
    entry: Entry
    status: int  # the C-STORE status, or 0xA700 when nothing could be sent
    error: str = ""


def outcome_of(status: int) -> str:
    if status == SUCCESS:
        return "success"
    return "warning" if status in WARNINGS else "failure"


def due(destination: str, now: float, limit: int, exclude: Collection[int] = ()) -> list[Entry]:
    """The oldest pending entries of ``destination`` whose retry time has come (those in
    ``exclude``, claimed by another worker, left out)."""
    rows = database.execute_sql(DUE, (destination, now, limit + len(exclude))).fetchall()
    return [Entry(*row) for row in rows if row[0] not in exclude][:limit]


def next_due(destination: str, exclude: Collection[int] = ()) -> float | None:
    """When the next pending entry of ``destination`` is due (None: nothing pending)."""
    rows = database.execute_sql(NEXT_DUE, (destination, len(exclude) + 1)).fetchall()
    return next((float(when) for key, when in rows if key not in exclude), None)


def backoff(settings: QueueSettings, failures: int) -> float:
    """Seconds to wait after the ``failures``-th consecutive failure (1-based)."""
    return float(min(settings.retry_max, settings.retry_initial * 2 ** min(failures - 1, 30)))


def record(destination: str, remote_aet: str, results: Sequence[Result],
           settings: QueueSettings, now: float) -> None:
    """Writer job: the outcome of sent entries. Delivered (success or warning) entries leave
    the queue; refused ones wait their backoff or become failed. Every answer is logged.
    Its commit may go without a flush (``Writer.submit(durable=False)``): an outcome a power
    cut undoes sends its entry again, as an unanswered send would."""
    delivered = [(r.entry.id,) for r in results if outcome_of(r.status) != "failure"]
    database.cursor().executemany(DELETE_ENTRY, delivered)
    for r in results:
        if outcome_of(r.status) != "failure":
            continue
        attempts = r.entry.attempts + 1
        failed = attempts >= settings.max_attempts or now - r.entry.created >= settings.max_age
        (Outbound.update(attempts=attempts, last_error=r.error[:200],
                         state="failed" if failed else "pending",
                         next_attempt=now + backoff(settings, attempts))
         .where(Outbound.id == r.entry.id).execute())
    _log(destination, remote_aet, [(r.entry, r.status, outcome_of(r.status), r.error)
                                   for r in results], now)


def expire(destination: str, settings: QueueSettings, now: float) -> int:
    """Writer job: fail the pending entries of an unreachable destination older than max_age."""
    rows = tuples(
        Outbound.select(Outbound.id).where(
            (Outbound.destination == destination) & (Outbound.state == "pending")
            & (Outbound.created <= now - settings.max_age))
    )
    ids = [r[0] for r in rows]
    if ids:
        (Outbound.update(state="failed", last_error="undelivered for longer than queue.max_age")
         .where(Outbound.id.in_(ids)).execute())
    return len(ids)


def release_stable(cutoff: float, now: float) -> set[str]:
    """Writer job: held entries of series/studies without a new instance since ``cutoff``
    become pending; returns their destinations."""
    stable_series = Series.select(Series.id).where(Series.last_update < cutoff)
    stable_studies = Study.select(Study.id).where(Study.last_update < cutoff)
    condition = (Outbound.state == "held") & (
        ((Outbound.trigger == "series") & Outbound.group_key.in_(stable_series))
        | ((Outbound.trigger == "study") & Outbound.group_key.in_(stable_studies))
    )
    destinations = {d for (d,) in tuples(Outbound.select(fn.DISTINCT(Outbound.destination))
                                         .where(condition))}
    if destinations:
        Outbound.update(state="pending", next_attempt=now).where(condition).execute()
    return destinations


def any_held() -> bool:
    return Outbound.select().where(Outbound.state == "held").exists()


def enqueue(instance_keys: Sequence[int], destination: str, now: float,
            route: str = "") -> list[int]:
    """Writer job: queue instances for ``destination`` by hand (a send asked by a user);
    returns the new entries' IDs."""
    rows = [{"instance": k, "destination": destination, "route": route, "state": "pending",
             "next_attempt": now, "created": now} for k in instance_keys]
    ids: list[int] = []
    with database.atomic():
        for start in range(0, len(rows), 500):
            query = Outbound.insert_many(rows[start:start + 500]).returning(Outbound.id)
            ids += [row.id for row in query.execute()]
    return ids


class Delivery(NamedTuple):
    """Where a set of entries stands."""

    delivered: int  # left the queue: delivered (or cancelled)
    refused: int  # refused at least once, or failed
    waiting: int  # never attempted yet
    failed: int  # of the refused: failed for good (until retried by hand)


def progress(ids: Sequence[int]) -> Delivery:
    """Where these entries stand (an entry that left the queue was delivered or
    cancelled)."""
    refused = waiting = failed = 0
    for start in range(0, len(ids), 500):
        chunk = list(ids[start:start + 500])
        for state, attempts in tuples(Outbound.select(Outbound.state, Outbound.attempts)
                                      .where(Outbound.id.in_(chunk))):
            failed += state == "failed"
            if state == "failed" or attempts > 0:
                refused += 1
            else:
                waiting += 1
    return Delivery(len(ids) - refused - waiting, refused, waiting, failed)


def retry(destination: str | None = None, ids: Sequence[int] | None = None,
          now: float = 0.0) -> int:
    """Writer job: failed (and waiting) entries become due now, with their attempts reset."""
    query = Outbound.update(state="pending", attempts=0, next_attempt=now, last_error="")
    return int(query.where(_selection(destination, ids) & (Outbound.state != "held")).execute())


def cancel(destination: str | None = None, ids: Sequence[int] | None = None,
           now: float = 0.0) -> int:
    """Writer job: remove entries (logged as cancelled)."""
    selection = _selection(destination, ids)
    rows = _entries(selection)
    by_destination: dict[str, list[Any]] = {}
    for dest, entry in rows:
        by_destination.setdefault(dest, []).append((entry, 0xFE00, "cancelled", ""))
    for dest, items in by_destination.items():
        _log(dest, "", items, now)
    Outbound.delete().where(selection).execute()
    return len(rows)


def _selection(destination: str | None, ids: Sequence[int] | None) -> Any:
    condition = Outbound.id.is_null(False)
    if destination is not None:
        condition &= Outbound.destination == destination
    if ids is not None:
        condition &= Outbound.id.in_(list(ids))
    return condition


def _entries(condition: Any) -> list[tuple[str, Entry]]:
    query = (Outbound.select(Outbound.destination, Outbound.id, Outbound.route,
                             Outbound.attempts, Outbound.created, Instance.public_id,
                             Instance.sop_uid, Instance.sop_class_uid, Instance.transfer_syntax,
                             Instance.file, Series.series_uid, Study.study_uid,
                             Patient.patient_id)
             .join(Instance).join(Series).join(Study).join(Patient).where(condition))
    return [(row[0], Entry(*row[1:])) for row in tuples(query)]


def _log(destination: str, remote_aet: str, items: Sequence[tuple[Entry, int, str, str]],
         now: float) -> None:
    """Export log rows, with the UIDs copied (the log outlives the instances)."""
    database.cursor().executemany(INSERT_EXPORT, [
        (now, destination, remote_aet, entry.instance_id, entry.sop_uid, entry.series_uid,
         entry.study_uid, entry.patient_id, entry.route, status, outcome, error[:200])
        for entry, status, outcome, error in items
    ])


@dataclass(frozen=True)
class DestinationStats:
    pending: int = 0
    held: int = 0
    failed: int = 0
    oldest_pending: float | None = None  # creation time of the oldest pending entry


def stats() -> dict[str, DestinationStats]:
    """Per destination: how many entries in each state, and the oldest pending one."""
    counts: dict[str, dict[str, Any]] = {}
    query = (Outbound.select(Outbound.destination, Outbound.state, fn.COUNT(Outbound.id),
                             fn.MIN(Outbound.created))
             .group_by(Outbound.destination, Outbound.state))
    for dest, state, count, oldest in tuples(query):
        entry = counts.setdefault(dest, {})
        entry[state] = count
        if state == "pending":
            entry["oldest_pending"] = oldest
    return {dest: DestinationStats(**values) for dest, values in counts.items()}


def entries(destination: str, state: str | None, limit: int) -> list[tuple[Any, ...]]:
    """Entries of a destination: id, route, state, attempts, created, next attempt, last error,
    instance public ID."""
    query = (Outbound.select(Outbound.id, Outbound.route, Outbound.state, Outbound.attempts,
                             Outbound.created, Outbound.next_attempt, Outbound.last_error,
                             Instance.public_id)
             .join(Instance).where(Outbound.destination == destination)
             .order_by(Outbound.id).limit(limit))
    if state is not None:
        query = query.where(Outbound.state == state)
    return tuples(query)


def exports(since: int, limit: int) -> list[Any]:
    return list(Export.select().where(Export.seq > since).order_by(Export.seq).limit(limit))


def last_export() -> int:
    return int(Export.select(fn.MAX(Export.seq)).scalar() or 0)


def study_progress(study_uid: str, destination: str, since: float) -> dict[str, int]:
    """A send of a study to ``destination`` asked at ``since``: entries still waiting or
    failed, and outcomes logged since then."""
    waiting = dict(tuples(
        Outbound.select(Outbound.state, fn.COUNT(Outbound.id)).join(Instance).join(Series)
        .join(Study).where(Study.study_uid == study_uid, Outbound.destination == destination)
        .group_by(Outbound.state)))
    logged = dict(tuples(
        Export.select(Export.outcome, fn.COUNT(Export.seq))
        .where(Export.study_uid == study_uid, Export.destination == destination,
               Export.date >= since).group_by(Export.outcome)))
    return {"pending": int(waiting.get("pending", 0) + waiting.get("held", 0)),
            "failed": int(waiting.get("failed", 0)),
            "sent": int(logged.get("success", 0) + logged.get("warning", 0)),
            "refused": int(logged.get("failure", 0))}


def recent_failures(limit: int) -> list[Any]:
    """The latest export attempts that did not succeed."""
    return list(Export.select().where(Export.outcome.not_in(["success", "warning"]))
                .order_by(Export.seq.desc()).limit(limit))
