"""Prometheus metrics (``/metrics``), in a registry of the appliance's own (never the process-wide
default one, so that two appliances in one test process never share counters).

Counters and histograms the network threads update (``DicomMetrics``: one observe or increment
per message, ~1 us) and collectors that read the state of a component at scrape time
(``Gauges``: a list of callables yielding metric families, where services such as the outbound
queue plug theirs in). Names follow Prometheus' conventions: ``appliance_`` prefix, base units,
``_total`` for counters.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    ProcessCollector,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector
from pynetdicom.events import Event

from .. import __version__

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
                   300.0, 1800.0)
# DIMSE requests timed around pynetdicom's service (C-STORE is timed by the store path itself)
TIMED_REQUESTS = {"C_ECHO": "C-ECHO", "C_FIND": "C-FIND", "C_MOVE": "C-MOVE", "C_GET": "C-GET"}

# what ``generate_latest`` writes: the classic text format, which every Prometheus version reads
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

FamilySource = Callable[[], Iterable[Metric]]


class Gauges(Collector):
    """Metric families computed at scrape time by the registered sources."""

    def __init__(self) -> None:
        self.sources: list[FamilySource] = []

    def collect(self) -> Iterator[Metric]:
        for source in self.sources:
            yield from source()

    def describe(self) -> list[Metric]:
        return []  # registered without a trial collect (the sources may query the index)


class DicomMetrics:
    """What the DICOM server counts: associations, request latencies, receptions per source."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.associations = Counter(
            "appliance_associations", "DICOM associations by outcome (accepted, rejected, "
            "released, aborted)", ["event"], registry=registry)
        self.latency = Histogram(
            "appliance_dimse_duration_seconds", "Time to serve a DIMSE request, by operation "
            "(C-STORE: until stored durably and indexed)", ["operation"],
            buckets=LATENCY_BUCKETS, registry=registry)
        self.instances = Counter(
            "appliance_received_instances", "Instances received and stored, by calling AE title",
            ["source"], registry=registry)
        self.bytes = Counter(
            "appliance_received_bytes", "Bytes of instances received and stored, by calling AE "
            "title", ["source"], registry=registry)
        self.active = Gauge("appliance_associations_active",
                            "DICOM associations established now", registry=registry)
        self.last_seen: dict[str, float] = {}  # calling AE -> epoch of its last stored instance
        self._store_latency = self.latency.labels("C-STORE")
        self._per_source: dict[str, tuple[Any, Any]] = {}  # children: no label lookup per call

    def handlers(self) -> list[tuple[Any, ...]]:
        """pynetdicom notification handlers counting the associations' outcomes."""
        from pynetdicom import evt

        return [(event, self.count_association, [name]) for event, name in (
            (evt.EVT_ACCEPTED, "accepted"), (evt.EVT_REJECTED, "rejected"),
            (evt.EVT_RELEASED, "released"), (evt.EVT_ABORTED, "aborted"))]

    def count_association(self, event: Event, name: str) -> None:
        self.associations.labels(name).inc()

    def served(self, message: str, seconds: float) -> None:
        """A DIMSE request served by pynetdicom (``message``: its primitive's class, C_FIND...)."""
        operation = TIMED_REQUESTS.get(message)
        if operation is not None:
            self.latency.labels(operation).observe(seconds)

    def stored(self, source: str, size: int, seconds: float) -> None:
        """An instance received and stored (the hot path: a few dictionary operations)."""
        self._store_latency.observe(seconds)
        children = self._per_source.get(source)
        if children is None:
            children = self._per_source.setdefault(
                source, (self.instances.labels(source), self.bytes.labels(source)))
        children[0].inc()
        children[1].inc(size)
        self.last_seen[source] = time.time()


def new_registry() -> CollectorRegistry:
    """A registry with the process (RSS, CPU, open files, start time) and build metrics."""
    disable_created_metrics()  # no ``_created`` series beside each counter: noise for us
    registry = CollectorRegistry(auto_describe=True)
    ProcessCollector(registry=registry)
    Info("appliance_build", "The software running", registry=registry).info(
        {"version": __version__})
    started = time.time()
    Gauge("appliance_uptime_seconds", "Seconds since the process started",
          registry=registry).set_function(lambda: time.time() - started)
    return registry


def exposition(registry: CollectorRegistry) -> bytes:
    """The registry in the Prometheus text format (version 0.0.4)."""
    return generate_latest(registry)
