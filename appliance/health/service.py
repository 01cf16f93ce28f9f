"""The monitor: builds the checks, the metrics and the watchdog of one appliance, and starts and
stops them with it (``runtime.Appliance``)."""

from __future__ import annotations

import time
from collections.abc import Iterator

from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric

from ..config import Config
from ..configstore import ConfigStore
from ..index import health as index_health
from ..index import resources as index_resources
from ..index.models import database
from ..routing import queue
from ..routing.worker import Dispatcher
from ..storage.governor import free_bytes
from ..store import Store
from . import probes
from .checks import SEVERITY, Health, Report
from .metrics import DicomMetrics, Gauges, exposition, new_registry
from .watchdog import Watchdog

MB = 1024 * 1024


class Monitor:
    def __init__(self, configs: ConfigStore, store: Store, dispatcher: Dispatcher) -> None:
        self.configs = configs
        self.store = store
        self.dispatcher = dispatcher
        self.started = time.time()
        self.registry = new_registry()
        self.dicom = DicomMetrics(self.registry)
        self.gauges = Gauges()
        self.gauges.sources += [self._storage, self._sources, self._destinations, self._health]
        self.registry.register(self.gauges)
        self.health = Health(lambda: self.config.health.interval,
                             lambda: self.config.health.timeout)
        self.watchdog = Watchdog(self.health, self.status_line)

    @property
    def config(self) -> Config:
        return self.configs.current

    def start(self, dicom_port: int) -> None:
        """Register the checks (the DICOM listener is up on ``dicom_port``), then run them in
        the background and feed the watchdog."""
        with database.connection_context():
            for aet, received in index_health.last_receptions().items():
                self.dicom.last_seen.setdefault(aet, received)
        health, area = self.health, self.store.area
        health.add("dicom", probes.DicomEcho(lambda: self.config, dicom_port), liveness=True)
        health.add("index_read", probes.index_read, liveness=True)
        health.add("index_write",
                   lambda: probes.index_write(self.store, self.config.health.timeout),
                   liveness=True)
        health.add("storage", lambda: probes.storage_write(area.tmp))
        health.add("disk", lambda: probes.disk(area.root, self.config.health))
        health.add("quota", lambda: probes.quota(self.store.governor))
        health.add("sources", lambda: probes.sources(self.dicom.last_seen, self.config.health,
                                                     self.started))
        health.add("destinations", lambda: probes.destinations(self.dispatcher,
                                                               self.config.health))
        health.start()
        self.watchdog.start()

    def stop(self) -> None:
        self.watchdog.stop()
        self.health.stop()

    def report(self) -> Report:
        """Fresh results (``/health``, ``appliance health``): the checks run now, unless they
        ran less than a second ago."""
        return self.health.run(reuse_within=1.0)

    def metrics(self) -> bytes:
        return exposition(self.registry)

    def status_line(self, report: Report) -> str:
        """systemd's one-line status: state, counts, disk, queue, last reception."""
        with database.connection_context():
            stats = index_resources.statistics()
        free = free_bytes(self.store.area.root) / MB
        backlog = sum(_pending(c.value) for c in report.checks
                      if c.name.startswith("destination:"))
        last = max(self.dicom.last_seen.values(), default=None)
        ago = f"{time.time() - last:.0f} s ago" if last is not None else "never"
        problems = [c.name for c in report.checks if c.state != "ok"]
        return (f"{report.state}{' (' + ', '.join(problems) + ')' if problems else ''}: "
                f"{stats['CountStudies']} studies, {stats['TotalDiskSizeMB']} MB stored, "
                f"{free:.0f} MB free, queue {backlog}, last reception {ago}")

    # --- metrics read at scrape time ----------------------------------------------------------

    def _storage(self) -> Iterator[Metric]:
        with database.connection_context():
            stats = index_resources.statistics()
        quota = self.config.quota
        yield _gauge("appliance_storage_used_bytes", "Bytes of stored instance files",
                     int(stats["TotalDiskSize"]))
        yield _gauge("appliance_storage_instances", "Instances stored", stats["CountInstances"])
        yield _gauge("appliance_storage_studies", "Studies stored", stats["CountStudies"])
        yield _gauge("appliance_storage_patients", "Patients stored", stats["CountPatients"])
        yield _gauge("appliance_storage_free_bytes", "Free bytes on the data filesystem",
                     free_bytes(self.store.area.root))
        yield _gauge("appliance_storage_limit_bytes", "Storage quota in bytes (0: none)",
                     quota.max_storage_mb * MB)
        yield _gauge("appliance_storage_free_low_bytes", "Free space below which recycling "
                     "starts (0: none)", quota.free_low_mb * MB)
        recycled = CounterMetricFamily("appliance_storage_recycled",
                                       "Studies or patients recycled to respect the quota")
        recycled.add_metric([], self.store.governor.recycled_total)
        yield recycled

    def _sources(self) -> Iterator[Metric]:
        last = GaugeMetricFamily("appliance_source_last_reception_timestamp_seconds",
                                 "When an instance from this calling AE title was last stored",
                                 labels=["source"])
        limit = GaugeMetricFamily("appliance_source_max_silence_seconds",
                                  "Longest silence allowed for this source (health.max_silence)",
                                  labels=["source"])
        silent = GaugeMetricFamily("appliance_source_silent",
                                   "1 when the source has been silent for longer than allowed",
                                   labels=["source"])
        settings, now = self.config.health, time.time()
        seen = dict(self.dicom.last_seen)
        for aet, received in sorted(seen.items()):
            last.add_metric([aet], received)
        for aet, seconds in sorted(settings.max_silence.items()):
            limit.add_metric([aet], seconds)
            quiet = probes.silent(seen.get(aet), self.started, seconds, now)
            silent.add_metric([aet], 0 if quiet is None else 1)
        yield from (last, limit, silent)

    def _destinations(self) -> Iterator[Metric]:
        with database.connection_context():
            stats = queue.stats()
        families: dict[str, GaugeMetricFamily | CounterMetricFamily] = {
            "depth": GaugeMetricFamily("appliance_queue_depth", "Entries waiting to be sent "
                                       "(pending and held)", labels=["destination"]),
            "failed": GaugeMetricFamily("appliance_queue_failed", "Entries given up (kept, "
                                        "retryable by hand)", labels=["destination"]),
            "oldest": GaugeMetricFamily("appliance_queue_oldest_pending_seconds", "Age of the "
                                        "oldest pending entry", labels=["destination"]),
            "failures": GaugeMetricFamily("appliance_destination_consecutive_failures",
                                          "Failed attempts in a row", labels=["destination"]),
            "success": GaugeMetricFamily("appliance_destination_last_success_timestamp_seconds",
                                         "When an instance was last delivered",
                                         labels=["destination"]),
            "sent": CounterMetricFamily("appliance_destination_sent", "Instances delivered "
                                        "since the start", labels=["destination"]),
        }
        now = time.time()
        for name in sorted(set(stats) | set(self.dispatcher.destinations)):
            counts = stats.get(name, queue.DestinationStats())
            families["depth"].add_metric([name], counts.pending + counts.held)
            families["failed"].add_metric([name], counts.failed)
            oldest = counts.oldest_pending
            families["oldest"].add_metric([name], now - oldest if oldest is not None else 0)
            dest = self.dispatcher.destinations.get(name)
            if dest is not None:
                families["failures"].add_metric([name], dest.state.consecutive_failures)
                families["sent"].add_metric([name], dest.state.sent_total)
                if dest.state.last_success is not None:
                    families["success"].add_metric([name], dest.state.last_success)
        yield from families.values()

    def _health(self) -> Iterator[Metric]:
        report = self.health.latest
        overall = GaugeMetricFamily("appliance_health_status", "Overall health of the latest "
                                    "check run: 0 ok, 1 degraded, 2 failing")
        checks = GaugeMetricFamily("appliance_health_check_status", "Each check of the latest "
                                   "run: 0 ok, 1 degraded, 2 failing", labels=["check"])
        if report is not None:
            overall.add_metric([], SEVERITY[report.state])
            for check in report.checks:
                checks.add_metric([check.name], SEVERITY[check.state])
        yield from (overall, checks)


def _gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, value=value)


def _pending(value: object) -> int:
    return int(value.get("pending", 0)) if isinstance(value, dict) else 0
