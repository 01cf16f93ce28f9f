"""Remove instances from the index, and the parents they leave empty (inside the writer)."""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

from peewee import fn

from .ingest import forget_parents
from .models import Change, Instance, Patient, Series, Study, Trash, tuples


def delete_instances(keys: Iterable[int], reason: str) -> list[str]:
    """Delete the instance rows ``keys`` and any series, study or patient left empty.

    Returns the storage names of the deleted instances' files: the caller removes them after
    the commit, then calls ``emptied`` (rows first, then files: a crash in between leaves files
    listed in the trash, which reconciliation removes).
    """
    now = time.time()
    keys = list(keys)
    rows = tuples(
        Instance.select(Instance.id, Instance.public_id, Instance.file, Instance.series)
        .where(Instance.id.in_(keys))
    )
    if not rows:
        return []
    forget_parents()
    Instance.delete().where(Instance.id.in_([r[0] for r in rows])).execute()
    names = [{"file": r[2]} for r in rows]
    for start in range(0, len(names), 500):
        Trash.insert_many(names[start:start + 500]).on_conflict_ignore().execute()
    _log("Instance", [r[1] for r in rows], now, reason)
    series_keys = {r[3] for r in rows}
    _prune(Series, Instance.series, series_keys, "Series", now, reason)
    return [r[2] for r in rows]


def trash() -> list[str]:
    """Files of deleted rows that may still be on disk."""
    return [name for (name,) in tuples(Trash.select(Trash.file))]


def emptied(names: list[str]) -> None:
    """Writer job: these files are gone."""
    for start in range(0, len(names), 500):
        Trash.delete().where(Trash.file.in_(names[start:start + 500])).execute()


def _prune(model: Any, child_fk: Any, keys: set[int], resource: str, now: float,
           reason: str) -> None:
    """Delete the rows of ``model`` among ``keys`` that have no child left, then their parents."""
    child_model = child_fk.model  # type: ignore[attr-defined]
    alive = {
        k for (k,) in child_model.select(fn.DISTINCT(child_fk)).where(child_fk.in_(keys)).tuples()
    }
    empty = keys - alive
    if not empty:
        return
    parent_field = {Series: Series.study, Study: Study.patient}.get(model)
    parents = (
        {p for (p,) in model.select(parent_field).where(model.id.in_(empty)).tuples()}
        if parent_field is not None
        else set()
    )
    _log(resource, [pid for (pid,) in tuples(model.select(model.public_id)
                                             .where(model.id.in_(empty)))], now, reason)
    model.delete().where(model.id.in_(empty)).execute()
    if model is Series:
        _prune(Study, Series.study, parents, "Study", now, reason)
    elif model is Study:
        _prune(Patient, Study.patient, parents, "Patient", now, reason)


def _log(resource: str, public_ids: list[str], now: float, reason: str) -> None:
    rows = [{"change_type": "Deleted", "resource_type": resource, "public_id": public_id,
             "date": now, "reason": reason} for public_id in public_ids]
    for start in range(0, len(rows), 500):
        Change.insert_many(rows[start:start + 500]).execute()
