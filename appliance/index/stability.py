"""Series and studies that became stable (no new instance for ``storage.stable_age``),
recorded in the change log as Orthanc records them (``StableSeries``, ``StableStudy``).

A resource is stable once its ``last_update`` is older than the cutoff ``now - stable_age``;
each pass reports those whose ``last_update`` falls between the previous cutoff and this one,
so each is reported once per quiet period (again if it grows and settles again). The last
recorded change tells a restarted box where it stopped.
"""

from __future__ import annotations

from peewee import fn

from .models import Change, Series, Study, tuples

STABLE_TYPES = {"Series": "StableSeries", "Study": "StableStudy"}


def last_cutoff(stable_age: float, now: float) -> float:
    """Where the previous run stopped (the newest stable change), or ``now`` minus the
    stable age on a store that never recorded one (the past is not replayed)."""
    last = (Change.select(fn.MAX(Change.date))
            .where(Change.change_type.in_(list(STABLE_TYPES.values()))).scalar())
    return float(last) - stable_age if last else now - stable_age


def record_stable(after: float, upto: float, now: float) -> list[tuple[str, str]]:
    """Writer job: log the series and studies whose last update is in (after, upto]; return
    them as (resource type, public ID), series first."""
    found = []
    for resource, model in (("Series", Series), ("Study", Study)):
        query = (model.select(model.public_id)
                 .where((model.last_update > after) & (model.last_update <= upto))
                 .order_by(model.last_update))
        for (public_id,) in tuples(query):
            found.append((resource, public_id))
            Change.create(change_type=STABLE_TYPES[resource], resource_type=resource,
                          public_id=public_id, date=now, reason="")
    return found
