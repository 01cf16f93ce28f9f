"""What the REST API, the admin page and the CLI ask of routing: modalities and routes as
editable configuration, the queue (state, retry, cancel, sends by hand) and the export log."""

from __future__ import annotations

import dataclasses
import time
from typing import Any

from ..config import ConfigError, Modality, Route, build, to_dict, validated
from ..configstore import ConfigStore
from ..dicom import remote
from ..index import browse, resources
from ..jobs import NETWORK_PROTOCOL, Jobs, Outcome
from ..store import Store
from . import queue
from .rules import Rules
from .worker import Dispatcher


class UnknownResource(LookupError):
    """No such modality, route or resource."""


class Routing:
    def __init__(self, configs: ConfigStore, store: Store, dispatcher: Dispatcher) -> None:
        self.configs = configs
        self.store = store
        self.dispatcher = dispatcher

    # --- modalities and routes: whole sections of the saved configuration -------------------

    def modalities(self) -> dict[str, Modality]:
        return dict(self.configs.current.modalities)

    def put_modality(self, name: str, values: dict[str, Any], who: str = "") -> Modality:
        """Create or replace a modality (validated with the whole configuration)."""
        return self._put("modalities", name, values, who, Modality)

    def delete_modality(self, name: str, who: str = "") -> None:
        used = [r for r, route in self.configs.current.routes.items()
                if name in route.destinations]
        if used:
            raise ConfigError(f"modality {name!r} is a destination of route(s) {', '.join(used)}")
        self._delete("modalities", name, who)

    def routes(self) -> dict[str, Route]:
        return dict(self.configs.current.routes)

    def put_route(self, name: str, values: dict[str, Any], who: str = "") -> Route:
        return self._put("routes", name, values, who, Route)

    def delete_route(self, name: str, who: str = "") -> None:
        self._delete("routes", name, who)

    def _put(self, section: str, name: str, values: dict[str, Any], who: str, kind: type) -> Any:
        if not name or "/" in name:
            raise ConfigError(f"{section}: {name!r} is not a valid name")
        current = to_dict(self.configs.current)[section]
        config = self.configs.update({section: {**current, name: values}}, who)
        return getattr(config, section)[name]

    def _delete(self, section: str, name: str, who: str) -> None:
        current = to_dict(self.configs.current)[section]
        if name not in current:
            raise UnknownResource(f"no {section[:-1] if section != 'modalities' else 'modality'}"
                                  f" named {name!r}")
        del current[name]
        self.configs.update({section: current}, who)

    def echo(self, values: dict[str, Any]) -> str:
        """C-ECHO a modality described by ``values`` (before it is saved): "" on success."""
        modality = build(Modality, values, "modality")
        result = remote.echo(self.configs.current.dicom, modality)
        return "" if result.ok else result.error or "C-ECHO failed"

    def dry_run(self, name: str, values: dict[str, Any], limit: int = 2000
                ) -> dict[str, int]:
        """Which studies among the last ``limit`` instances the route ``values`` would have
        sent (study public ID -> instances matched), as if it were enabled."""
        current = to_dict(self.configs.current)
        config = validated({**current, "routes": {name: {**values, "enabled": True}}})
        rules = Rules(config)
        matched: dict[str, int] = {}
        for study_id, tags, origin, file in browse.recent_instances(limit):
            if rules.match(tags, origin, self.store.area.path(file)):
                matched[study_id] = matched.get(study_id, 0) + 1
        return matched

    def progress(self, study_id: str, destination: str, since: float) -> dict[str, int]:
        study = resources.find("studies", study_id)
        if study is None:
            raise UnknownResource(f"unknown resource: studies/{study_id}")
        return queue.study_progress(study.study_uid, destination, since)

    # --- the queue ---------------------------------------------------------------------------

    def queue_state(self) -> dict[str, dict[str, Any]]:
        """Per destination: entries by state, oldest pending age, and the worker's view."""
        now = time.time()
        out: dict[str, dict[str, Any]] = {}
        stats = queue.stats()
        for name in sorted(set(stats) | set(self.dispatcher.destinations)):
            s = stats.get(name, queue.DestinationStats())
            dest = self.dispatcher.destinations.get(name)
            state = dest.state if dest else None
            out[name] = {
                "Pending": s.pending, "Held": s.held, "Failed": s.failed,
                "OldestPendingAge": (now - s.oldest_pending) if s.oldest_pending else None,
                "Sent": state.sent_total if state else 0,
                "ConsecutiveFailures": state.consecutive_failures if state else 0,
                "LastSuccess": state.last_success if state else None,
                "LastError": state.last_error if state else "",
            }
        return out

    def entries(self, destination: str, state: str | None = None,
                limit: int = 100) -> list[dict[str, Any]]:
        keys = ("ID", "Route", "State", "Attempts", "Created", "NextAttempt", "LastError",
                "Instance")
        return [dict(zip(keys, row, strict=True))
                for row in queue.entries(destination, state, limit)]

    def retry(self, destination: str) -> int:
        count = self.store.writer.run(lambda: queue.retry(destination, now=time.time()))
        self.dispatcher.retry_now(destination)
        return int(count)

    def cancel(self, destination: str, ids: list[int] | None = None) -> int:
        """Cancel a destination's entries (or only ``ids`` of them)."""
        return int(self.store.writer.run(lambda: queue.cancel(destination, ids,
                                                              now=time.time())))

    def send(self, level: str, public_id: str, destination: str) -> int:
        """Queue a resource for ``destination`` (durable: delivered even if it is down now);
        returns how many instances were queued."""
        return len(self.queue_resources([(level, public_id)], destination))

    def queue_resources(self, items: list[tuple[str, str]], destination: str) -> list[int]:
        """Queue every instance of these (level, public ID) resources; the entries' IDs."""
        if destination not in self.configs.current.modalities:
            raise UnknownResource(f"no modality named {destination!r}")
        keys: list[int] = []
        for level, public_id in items:
            found = resources.instance_keys(level, public_id)
            if found is None:
                raise UnknownResource(f"unknown resource: {level}/{public_id}")
            keys += found
        ids = self.store.writer.run(lambda: queue.enqueue(keys, destination, time.time()))
        self.dispatcher.wake({destination})
        return ids

    def wait(self, entry_ids: list[int], timeout: float) -> tuple[int, int, int]:
        """Wait until every entry was delivered or refused once, or ``timeout`` seconds:
        (delivered, refused, still waiting). Waiting entries stay queued either way."""
        end = time.monotonic() + timeout
        while True:
            delivered, refused, waiting, _ = queue.progress(entry_ids)
            if not waiting or time.monotonic() >= end:
                return delivered, refused, waiting
            time.sleep(0.1)

    def track(self, jobs: Jobs, destination: str, entry_ids: list[int],
              content: dict[str, Any]) -> str:
        """A job that follows queued entries to delivery (Orthanc's DicomModalityStore):
        Success once every one was delivered, Failure as soon as one failed for good;
        cancelling it cancels those still queued. The entries stay durable either way."""
        total = len(entry_ids)

        def poll() -> tuple[float, Outcome | None]:
            now = queue.progress(entry_ids)
            state = {**content, "FailedInstancesCount": now.failed}
            if now.failed:
                return now.delivered / total, Outcome(state, NETWORK_PROTOCOL, (
                    f"{now.failed} of {total} instances failed: see "
                    f"/queue/{destination}?state=failed"))
            if now.delivered == total:
                return 1.0, Outcome(state)
            return now.delivered / total, None

        return jobs.track("DicomModalityStore", content, poll,
                          lambda: self.cancel(destination, entry_ids))

    def recent_failures(self, limit: int = 10) -> list[Any]:
        return queue.recent_failures(limit)

    def exports(self, since: int = 0, limit: int = 100) -> dict[str, Any]:
        """The export log, in Orthanc's ``/exports`` shape (plus our outcome and status)."""
        rows = queue.exports(since, limit + 1)
        last = queue.last_export()
        done = len(rows) <= limit
        return {
            "Exports": [{
                "Seq": r.seq, "Date": resources.orthanc_time(r.date), "ResourceType": "Instance",
                "ID": r.instance_id, "SOPInstanceUID": r.sop_uid,
                "SeriesInstanceUID": r.series_uid, "StudyInstanceUID": r.study_uid,
                "PatientID": r.patient_id, "RemoteModality": r.destination,
                "RemoteAet": r.remote_aet, "Route": r.route, "Status": r.status,
                "Outcome": r.outcome, "Error": r.error,
            } for r in rows[:limit]],
            "Done": done,
            "Last": last,
        }


def modality_json(name: str, modality: Modality) -> dict[str, Any]:
    """Orthanc's ``/modalities?expand`` shape, with our permissions."""
    values = dataclasses.asdict(modality)
    return {"AET": values["aet"], "Host": values["host"], "Port": values["port"],
            "Allow": values["allow"], "Concurrency": values["concurrency"], "Name": name}
