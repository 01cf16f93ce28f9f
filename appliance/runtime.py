"""Builds everything once, and owns the start/stop order and the signals."""

from __future__ import annotations

import dataclasses
import faulthandler
import fcntl
import gc
import logging
import os
import signal
import threading
from pathlib import Path
from types import FrameType

from systemd import daemon

from . import pixels
from .accounts import Accounts, LocalToken
from .config import Config
from .configstore import ConfigStore
from .dicom.queryretrieve import QueryRetrieve
from .dicom.scp import DicomServer
from .health.probes import loopback
from .health.service import Monitor
from .hooks import Hooks
from .index import audit as audit_log
from .jobs import Jobs
from .routing.service import Routing
from .routing.worker import Dispatcher
from .storage.fsck import reconcile
from .store import Store
from .web import admin
from .web.api import health as health_api
from .web.api import jobs as jobs_api
from .web.api import remote as remote_api
from .web.api import routing as routing_api
from .web.app import HttpServer
from .web.auth import Security

log = logging.getLogger("appliance")

SHUTDOWN_GRACE = 30.0  # seconds in-flight associations get to finish
# An orderly stop that takes longer than this is stuck: every thread's stack goes to stderr (the
# journal) and the process ends with 1, before systemd's silent SIGKILL (TimeoutStopSec=45). An
# exit that skips the rest of the stop is safe: the store is built to survive kill -9.
STOP_LIMIT = 40.0


class DataLocked(RuntimeError):
    """Another process (a running appliance, an fsck) holds the data directory."""


class DataLock:
    """An exclusive lock on the data directory: one writer process at a time."""

    def __init__(self, data_dir: Path) -> None:
        data_dir.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(data_dir / "appliance.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            os.close(self._fd)
            raise DataLocked(f"{data_dir} is in use by another appliance process") from exc

    def release(self) -> None:
        os.close(self._fd)


class Appliance:
    def __init__(self, configs: ConfigStore) -> None:
        self.configs = configs
        self.config = configs.current
        self.lock = DataLock(self.config.data_dir)
        self.store = Store(self.config)
        configs.subscribe(self.store.reconfigure)
        self.dispatcher = Dispatcher(configs, self.store)
        self.monitor = Monitor(configs, self.store, self.dispatcher)
        self.dicom: DicomServer | None = None
        self.http: HttpServer | None = None
        self.hooks: Hooks | None = None
        self.jobs = Jobs(lambda: self.configs.current.dicom.jobs_history_size,
                         self.config.dicom.concurrent_jobs)

    def start(self) -> None:
        """Reconcile first, then resume the outbound queue, then open the ports, then tell
        systemd we are ready."""
        self.store.start()
        reconcile(self.store, repair=True)
        self.store.governor.start()
        self.dispatcher.start()
        self.dicom = DicomServer(self.configs, self.store, self.monitor.dicom)
        routing = Routing(self.configs, self.store, self.dispatcher)
        self.hooks = Hooks(self.configs, self.store, routing)
        self.hooks.start()
        security = self.security()
        services = admin.Services(self.configs, self.store, routing, security)
        queries = QueryRetrieve(self.configs, self.store)
        self.jobs.start()
        self.http = HttpServer(http_config(self.config, security), self.store,
                               [lambda app: routing_api.install(app, routing, self.jobs),
                                lambda app: remote_api.install(app, queries, self.jobs),
                                lambda app: jobs_api.install(app, self.jobs),
                                lambda app: health_api.install(app, self.monitor),
                                lambda app: admin.install(app, services)])
        self.dicom.start()
        threading.Thread(target=self.http.serve, name="http", daemon=True).start()
        self.monitor.start(self.dicom.port)
        if security.setup is not None and security.setup.value is not None:
            log.warning("no administrator yet: set the admin password at "
                        "http://127.0.0.1:%d/setup?token=%s (a one-time link)",
                        self.http.port, security.setup.value)
        daemon.notify("READY=1")
        log.info("ready: DICOM %s on port %d, HTTP on port %d, data in %s",
                 self.config.dicom.aet, self.dicom.port, self.http.port, self.config.data_dir)

    def security(self) -> Security:
        store = self.store

        def audit(user: str, address: str, action: str, detail: str, outcome: str) -> None:
            store.writer.run(lambda: audit_log.record(user, address, action, detail, outcome))

        return Security(Accounts(self.config.data_dir), lambda: self.configs.current.security,
                        audit, LocalToken(self.config.data_dir, local_url(self.config)))

    def stop(self) -> None:
        daemon.notify("STOPPING=1")
        log.info("stopping: no new associations, finishing those in flight")
        self.monitor.stop()
        if self.dicom is not None:
            self.dicom.stop(SHUTDOWN_GRACE)
        if self.http is not None:
            self.http.stop()
        if self.hooks is not None:
            self.hooks.stop()
        self.jobs.stop()
        self.dispatcher.stop()
        pixels.worker.stop()
        self.store.stop()
        self.lock.release()
        log.info("stopped")


LOOPBACK = {"127.0.0.1", "::1", "localhost"}


def local_url(config: Config) -> str:
    """Where a command run on this machine reaches our web server."""
    host = loopback(config.http.host)
    return f"http://{f'[{host}]' if ':' in host else host}:{config.http.port}"


def http_config(config: Config, security: Security) -> Config:
    """Until an administrator exists, the web server listens on loopback only: the setup link
    must not be usable from the network."""
    if security.setup is None or config.http.host in LOOPBACK:
        return config
    log.warning("http.host %s ignored until an administrator is set up: listening on "
                "127.0.0.1", config.http.host)
    return dataclasses.replace(config, http=dataclasses.replace(config.http, host="127.0.0.1"))


def serve(configs: ConfigStore) -> int:
    """Run until SIGTERM or SIGINT; exit 0 after an orderly stop."""
    # The modules were imported with the collector off (``__main__``): on again for start-up,
    # which may re-index a whole store, with the modules out of its sight.
    gc.freeze()
    gc.enable()
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    # ``kill -USR1``: every thread's stack on stderr (the journal), for a process that hangs
    faulthandler.register(signal.SIGUSR1, all_threads=True)
    appliance = Appliance(configs)
    try:
        appliance.start()
    except BaseException:
        appliance.stop()
        raise
    # what start-up allocated (modules, dictionaries, the index's caches) lives as long as the
    # process: out of the collector's sight, a full collection then walks only what requests make
    gc.freeze()
    while not stop.wait(1.0):  # a timed wait: Python runs a signal handler only when the main
        pass  # thread runs, and a signal taken by another thread does not wake an untimed wait
    faulthandler.dump_traceback_later(STOP_LIMIT, exit=True)  # also covers the interpreter's
    appliance.stop()  # own exit, which waits for every non-daemon thread
    return 0
