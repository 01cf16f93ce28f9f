"""Python hooks: a file of callbacks (``hooks.path``) the box calls on its events.

Callbacks, all optional, each given the event and an ``Api``:

- ``filter_incoming(instance, api) -> bool | int``: before an instance is stored; False
  refuses it (C-STORE status 0xC000, HTTP 400), a non-zero int refuses it with that status.
- ``on_stored_instance(instance, api)``: after an instance is committed.
- ``on_stable_series(series, api)``, ``on_stable_study(study, api)``: the resource (Orthanc's
  JSON) once no instance arrived for ``storage.stable_age`` seconds.
- ``on_change(change, api)``: every entry of the change log (``/changes``).

Each call runs in a thread of its own, limited to ``hooks.timeout`` seconds: a callback that
raises or hangs is logged and abandoned. The filter decides nothing then (the instance is
stored: a broken hook never loses an image); the others run one after the other in a worker
thread, after the fact, never in the ingest path.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

from pydicom import dcmread
from pydicom.dataset import Dataset

from .config import Config, ConfigError
from .configstore import ConfigStore
from .dicom import orthanc_json
from .index import resources
from .index.ingest import Origin, Recorded
from .index.models import Change
from .index.stability import last_cutoff, record_stable
from .index.tags import BadInstance, InstanceTags
from .routing.service import Routing
from .routing.worker import stability_period
from .store import Store

log = logging.getLogger("appliance.hooks")

CALLBACKS = ("filter_incoming", "on_stored_instance", "on_stable_series", "on_stable_study",
             "on_change")
REFUSED = 0xC000
BACKLOG = 10000  # events waiting for the worker; beyond, new ones are dropped (logged)
MAX_STUCK = 16  # hook threads still running past their time: beyond, hooks are skipped
ABANDONED = "hook-abandoned-"
LEVEL_PATHS = {"Series": "series", "Study": "studies"}


class HookError(ConfigError):
    """The hooks file cannot be loaded."""


@dataclass
class HookInstance:
    """An instance as the callbacks see it: its main tags, where it came from, and (after
    storage) its Orthanc IDs."""

    tags: dict[str, str]
    origin: Origin
    ids: dict[str, str] = field(default_factory=dict)  # ID, ParentSeries, ParentStudy, ...
    _read: Callable[[], Dataset] | None = field(default=None, repr=False)

    @property
    def id(self) -> str:
        return self.ids.get("ID", "")

    def dataset(self) -> Dataset:
        """Every element but the pixel data (read from the file on demand)."""
        if self._read is None:
            raise LookupError("the instance's file is no longer available")
        return self._read()


def instance_tags(tags: InstanceTags) -> dict[str, str]:
    return {**tags.patient, **tags.study, **tags.series, **tags.instance,
            "SOPClassUID": tags.sop_class_uid, "TransferSyntaxUID": tags.transfer_syntax}


class Api:
    """What a callback may do: read, send through the durable queue, protect, delete."""

    def __init__(self, store: Store, routing: Routing, stable_age: float) -> None:
        self._store, self._routing, self._stable_age = store, routing, stable_age

    def resource(self, level: str, public_id: str) -> dict[str, Any] | None:
        """Orthanc's JSON of ``/{level}/{id}`` (level: patients, studies, series, instances)."""
        row = resources.find(level, public_id)
        return None if row is None else resources.to_json(level, row, self._stable_age)

    def tags(self, instance_id: str) -> dict[str, Any] | None:
        """The simplified tags of a stored instance."""
        ds = self._store.read_instance(instance_id, 4096)
        return None if ds is None else orthanc_json.simplified(ds)

    def send(self, level: str, public_id: str, modality: str) -> int:
        """Queue a resource for a known modality (delivered even if it is down now)."""
        return self._routing.send(level, public_id, modality)

    def protect(self, level: str, public_id: str, until: float | None = None) -> bool:
        """Pin a patient or study (``until``: a POSIX time) against recycling."""
        return self._store.protect(level, public_id, True, until)

    def delete(self, level: str, public_id: str, reason: str = "deleted by a hook") -> int:
        return self._store.delete_resource(level, public_id, reason) or 0


def load(path: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location("appliance_hooks", path)
    if spec is None or spec.loader is None:
        raise HookError(f"hooks.path: cannot load {path!r}")
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        raise HookError(f"hooks.path: {path} fails to load: {exc!r}") from exc
    return module


def call_limited(fn: Callable[..., Any], args: tuple[Any, ...], timeout: float) -> Any:
    """``fn(*args)`` in a thread of its own; its result, or None when it raised or ran over
    ``timeout`` seconds (logged; a hung thread is abandoned). While ``MAX_STUCK`` abandoned
    calls still run, hooks are skipped: a hook that always hangs cannot exhaust threads."""
    stuck = sum(t.name.startswith(ABANDONED) for t in threading.enumerate())
    if stuck >= MAX_STUCK:
        log.error("hook %s skipped: %d hook calls are still running", fn.__name__, stuck)
        return None
    box: dict[str, Any] = {}
    done = threading.Event()

    def run() -> None:
        try:
            box["result"] = fn(*args)
        except BaseException as exc:  # a hook's failure is logged, never propagated
            box["error"] = exc
        finally:
            done.set()

    thread = threading.Thread(target=run, name=f"hook-{fn.__name__}", daemon=True)
    thread.start()
    if not done.wait(timeout):
        thread.name = f"{ABANDONED}{fn.__name__}"
        log.error("hook %s still running after %.1f s: abandoned", fn.__name__, timeout)
        return None
    if "error" in box:
        error = box["error"]
        log.error("hook %s raised %r", fn.__name__, error, exc_info=error)
        return None
    return box.get("result")


class Hooks:
    """Loads the callbacks, plugs the filter and the stored-instance event into the store,
    and runs the worker that reports stored instances, stability and changes."""

    def __init__(self, configs: ConfigStore, store: Store, routing: Routing) -> None:
        self.config: Config = configs.current
        self.store = store
        path = self.config.hooks.path
        module = load(path) if path else None
        self.callbacks = {name: getattr(module, name) for name in CALLBACKS
                          if callable(getattr(module, name, None))}
        self.api = Api(store, routing, self.config.storage.stable_age)
        self.events: queue.Queue[tuple[str, Any]] = queue.Queue(BACKLOG)
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, name="hooks", daemon=True)
        if path:
            log.info("hooks from %s: %s", path, ", ".join(self.callbacks) or "none defined")

    def start(self) -> None:
        if "filter_incoming" in self.callbacks:
            self.store.admission = self.admit
        if "on_stored_instance" in self.callbacks:
            self.store.on_stored = self.stored
        self.thread.start()

    def stop(self) -> None:
        self.stopping.set()
        with contextlib.suppress(queue.Full):  # wakes the worker now, not at its next pass
            self.events.put_nowait(("stopping", None))
        self.thread.join(self.config.hooks.timeout + 5)

    # --- in the ingest path --------------------------------------------------------------

    def admit(self, tags: InstanceTags, origin: Origin, path: Path) -> None:
        """The filter: raise ``BadInstance`` when it refuses the instance."""
        instance = HookInstance(instance_tags(tags), origin,
                                _read=lambda: dcmread(path, stop_before_pixels=True))
        verdict = call_limited(self.callbacks["filter_incoming"], (instance, self.api),
                               self.config.hooks.timeout)
        if verdict is False or (type(verdict) is int and verdict != 0):
            status = REFUSED if verdict is False else int(verdict)
            raise BadInstance(f"refused by the incoming filter (0x{status:04X})", status)

    def stored(self, recorded: Recorded, tags: InstanceTags, origin: Origin) -> None:
        if recorded.outcome == "kept-first":
            return
        ids = recorded.ids
        instance = HookInstance(
            instance_tags(tags), origin,
            {"ID": ids.instance, "ParentSeries": ids.series, "ParentStudy": ids.study,
             "ParentPatient": ids.patient},
            _read=lambda: self._stored_dataset(ids.instance))
        self._post("on_stored_instance", instance)

    def _stored_dataset(self, public_id: str) -> Dataset:
        ds = self.store.read_instance(public_id, 4096)
        if ds is None:
            raise LookupError(f"instance {public_id} is no longer stored")
        return ds

    def _post(self, name: str, event: Any) -> None:
        try:
            self.events.put_nowait((name, event))
        except queue.Full:
            log.error("hooks: %d events waiting, %s of %r dropped", BACKLOG, name, event)

    # --- the worker --------------------------------------------------------------------------

    def _run(self) -> None:
        now = time.time()
        age = self.config.storage.stable_age
        cutoff = self.store.writer.run(lambda: last_cutoff(age, now))
        seq = int(Change.select(Change.seq).order_by(Change.seq.desc()).scalar() or 0)
        period = stability_period(self.config)
        next_pass = 0.0
        while not self.stopping.is_set():
            if time.monotonic() >= next_pass:
                cutoff, seq = self._pass(cutoff, seq, age)
                next_pass = time.monotonic() + period
            try:
                name, event = self.events.get(timeout=max(0.01, next_pass - time.monotonic()))
            except queue.Empty:
                continue
            self._call(name, event)

    def _pass(self, cutoff: float, seq: int, age: float) -> tuple[float, int]:
        """One look for newly stable resources and new changes (the worker must not die:
        later events would be lost)."""
        try:
            cutoff = self._stability(cutoff, age)
        except Exception:
            log.exception("hooks: stability pass failed")
        try:
            seq = self._changes(seq)
        except Exception:
            log.exception("hooks: change pass failed")
        return cutoff, seq

    def _call(self, name: str, event: Any) -> None:
        fn = self.callbacks.get(name)
        if fn is not None:
            call_limited(fn, (event, self.api), self.config.hooks.timeout)

    def _stability(self, after: float, age: float) -> float:
        now = time.time()
        upto = now - age
        for resource, public_id in self.store.writer.run(lambda: record_stable(after, upto,
                                                                               now)):
            name = f"on_stable_{resource.lower()}"
            if name in self.callbacks:
                found = self.api.resource(LEVEL_PATHS[resource], public_id)
                if found is not None:
                    self._post(name, found)
        return upto

    def _changes(self, seq: int) -> int:
        if "on_change" not in self.callbacks:
            return int(Change.select(Change.seq).order_by(Change.seq.desc()).scalar() or seq)
        page = resources.changes(seq, 1000)
        for change in page["Changes"]:
            self._post("on_change", change)
        return int(page["Changes"][-1]["Seq"]) if page["Changes"] else seq
