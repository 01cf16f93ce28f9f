"""The SQLite index: connection settings, schema migrations, and the single writer.

Every write goes through one ``Writer`` thread fed by a queue (as Datasette does). It takes all
the work waiting at once and runs it in one ``BEGIN IMMEDIATE`` transaction (group commit): each
commit costs one device flush, shared by every instance of the batch, so durability does not cost
throughput. Each job runs in its own savepoint, so one failing job never takes its neighbours
down. Readers use their own per-thread WAL connections.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from peewee import SqliteDatabase
from playhouse.migrate import SqliteMigrator
from playhouse.migrate import migrate as migrate_ops

from . import totals
from .models import MODELS, database

log = logging.getLogger(__name__)

T = TypeVar("T")

PRAGMAS = {
    "journal_mode": "wal",
    "synchronous": "full",  # a commit survives power loss, not only a crash of the process
    "foreign_keys": 1,
    "busy_timeout": 10000,
    "cache_size": -16384,  # KiB: enough for the hot index pages of ~100k instances
    "temp_store": "memory",
    "wal_autocheckpoint": 4000,
}

# 2: routing, quota; 3: heartbeat; 4: audit log; 5: reception per AE index; 6: unsynced files;
# 7: running totals
SCHEMA_VERSION = 7


def open_database(path: Path) -> SqliteDatabase:
    """Open (and create or migrate) the index at ``path`` and bind the models to it."""
    db = SqliteDatabase(str(path), pragmas=PRAGMAS, check_same_thread=False)
    database.initialize(db)
    db.connect(reuse_if_open=True)
    migrate(db)
    return db


def migrate(db: SqliteDatabase) -> None:
    """Bring the schema to ``SCHEMA_VERSION`` (``PRAGMA user_version`` records where it is)."""
    version = db.execute_sql("PRAGMA user_version").fetchone()[0]
    if version > SCHEMA_VERSION:
        raise RuntimeError(
            f"index schema {version} is newer than this software ({SCHEMA_VERSION})"
        )
    if version < SCHEMA_VERSION:
        with db.atomic():
            db.create_tables(MODELS)  # safe=True: only the tables a version added are new
            add_missing_columns(db)
            if version < 7:
                totals.install(db)
            db.execute_sql(f"PRAGMA user_version = {SCHEMA_VERSION}")
        log.info("index schema %d -> %d", version, SCHEMA_VERSION)


def add_missing_columns(db: SqliteDatabase) -> None:
    """Columns a later schema added to an existing table (nullable or with a default)."""
    migrator = SqliteMigrator(db)
    for model in MODELS:
        table = model._meta.table_name
        have = {c.name for c in db.get_columns(table)}
        for field in model._meta.sorted_fields:
            if field.column_name not in have:
                migrate_ops(migrator.add_column(table, field.column_name, field))


Job = Callable[[], Any]
MARK_UNSYNCED = "INSERT OR IGNORE INTO unsynced (file) VALUES (?)"
UNLIST_UNSYNCED = "DELETE FROM unsynced WHERE file = ?"


class Unflushed(OSError):
    """The batch committed, but the flush that makes it durable failed: its rows stay (their
    files listed in ``unsynced``), so their files must stay too."""


@dataclass
class Pending:
    """A job waiting for the writer, and its result."""

    job: Job
    future: Future[Any]
    new_file: str = ""  # the storage name of the new file its row points to
    durable: bool = True  # its commit is flushed before the future resolves
    batch: int = 0  # set at commit when ``new_file``: the number of its file batch


class Writer:
    """The one thread that writes the index; ``submit`` returns a future of the job's result.

    A job whose row points to a new file goes through ``write_durably``. Its batch commits
    with ``synchronous=NORMAL`` (the WAL is written, not flushed); then a flush
    (``flush_files``, one journal commit or a ``syncfs``: ``storage.flush``) makes the batch's
    files, their folders *and* that commit durable at once, where flushing the files before
    the commit costs a second flush per batch. The flush is run by the waiting caller, not by
    the writer: the writer commits the next batch meanwhile, and one flush serves every batch
    committed before it started (the first caller to get the flush lock flushes; those behind
    it find their batch flushed). No caller returns before a flush that started after its
    commit, so nothing is acknowledged early.

    A power cut during a flush can keep a committed row whose file did not reach the disk
    (never an acknowledged one): the batch lists its files in ``unsynced``, for reconciliation
    to check, and the first batch after a flush that succeeded unlists what that flush made
    durable. A batch with any other job that must be durable commits with ``synchronous=FULL``.
    """

    def __init__(
        self,
        db: SqliteDatabase,
        flush_files: Callable[[], None],
        max_batch: int = 256,
        on_rollback: Callable[[], None] = lambda: None,
    ) -> None:
        self.db = db
        self.flush_files = flush_files
        self.on_rollback = on_rollback  # caches of the writer's own must forget rolled-back rows
        self.max_batch = max_batch
        # the C queue: a put costs a fraction of ``queue.Queue``'s (one per received instance)
        self._queue: queue.SimpleQueue[Pending | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="index-writer", daemon=True)
        self._synchronous = PRAGMAS["synchronous"]
        self._batches = 0  # file batches committed, numbered from 1
        self._listed: list[tuple[int, list[str]]] = []  # (batch, its files) still in ``unsynced``
        self._flush_lock = threading.Lock()
        self._durable_up_to = 0  # every file batch up to this one has been flushed

    def start(self) -> None:
        self._thread.start()

    def submit(self, job: Callable[[], T], durable: bool = True) -> Future[T]:
        """Queue ``job``; its future resolves once its batch is committed. ``durable=False``
        spares the commit its device flush: a power cut (not a crash of the process) may undo
        it until a later flush, for records whose loss only repeats work (a delivery's
        outcome: the instance is sent again)."""
        return self._queue_job(job, durable=durable).future

    def run(self, job: Callable[[], T], timeout: float | None = None) -> T:
        """Run ``job`` in the writer and wait for its committed result."""
        return self.submit(job).result(timeout)

    def write_durably(self, job: Callable[[], T], new_file: str) -> T:
        """Run ``job``, whose row points to the new file ``new_file``, and return its result
        once that row and that file are durable; raises ``Unflushed`` if the flush fails."""
        pending = self._queue_job(job, new_file)
        value: T = pending.future.result()
        with self._flush_lock:
            if self._durable_up_to < pending.batch:
                covered = self._batches  # every batch committed before this flush
                try:
                    self.flush_files()
                except OSError as exc:
                    log.exception("the flush after a commit failed")
                    raise Unflushed(f"the flush after a commit failed: {exc}") from exc
                self._durable_up_to = covered
        return value

    def stop(self) -> None:
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join()

    def _queue_job(self, job: Job, new_file: str = "", durable: bool = True) -> Pending:
        pending = Pending(job, Future(), new_file, durable)
        self._queue.put(pending)
        return pending

    def _take_batch(self) -> tuple[list[Pending], bool]:
        first = self._queue.get()
        if first is None:
            return [], True
        batch = [first]
        while len(batch) < self.max_batch:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if item is None:
                return batch, True
            batch.append(item)
        return batch, False

    def _run(self) -> None:
        self.db.connect(reuse_if_open=True)
        while True:
            batch, stop = self._take_batch()
            if batch:
                self._commit(batch)
            if stop:
                break
        self.db.close()

    def _commit(self, batch: list[Pending]) -> None:
        results: list[tuple[Future[Any], Any, BaseException | None]] = []
        files = [item.new_file for item in batch if item.new_file]
        # a job with a new file gets its flush from ``write_durably``; other durable jobs
        # need the commit's own
        full = any(item.durable and not item.new_file for item in batch)
        try:
            self._set_synchronous("full" if full else "normal")
            with self.db.atomic("IMMEDIATE"):
                unlisted = self._list_unsynced(files) if files else 0
                for item in batch:
                    try:
                        results.append((item.future, self._run_job(item.job), None))
                    except Exception as exc:  # the job's own failure, reported to its caller
                        self.on_rollback()
                        results.append((item.future, None, exc))
        except Exception as exc:  # the commit failed: nothing of the batch is recorded
            self.on_rollback()
            log.exception("index commit failed for a batch of %d", len(batch))
            for item in batch:
                item.future.set_exception(exc)
            return
        if files:
            del self._listed[:unlisted]
            self._batches += 1
            self._listed.append((self._batches, files))
            for item in batch:
                item.batch = self._batches
        for fut, value, error in results:
            if error is not None:
                fut.set_exception(error)
            else:
                fut.set_result(value)

    def _run_job(self, job: Job) -> Any:
        """Run ``job`` in a savepoint, so that its failure undoes its own writes only (plain
        SQL: peewee's savepoints cost a UUID and several objects each)."""
        self.db.execute_sql("SAVEPOINT job")
        try:
            value = job()
        except BaseException:
            self.db.execute_sql("ROLLBACK TO job")
            self.db.execute_sql("RELEASE job")
            raise
        self.db.execute_sql("RELEASE job")
        return value

    def _set_synchronous(self, mode: str) -> None:
        if mode != self._synchronous:
            self.db.execute_sql(f"PRAGMA synchronous = {mode}")
            self._synchronous = mode

    def _list_unsynced(self, files: list[str]) -> int:
        """List this batch's files in ``unsynced`` (inside its transaction), and unlist those
        of earlier batches that a flush has made durable since; returns how many of the
        batches ``_listed`` holds were unlisted."""
        durable_up_to = self._durable_up_to
        done = [batch_files for batch, batch_files in self._listed if batch <= durable_up_to]
        cursor = self.db.cursor()
        if done:
            cursor.executemany(UNLIST_UNSYNCED, [(name,) for names in done for name in names])
        cursor.executemany(MARK_UNSYNCED, [(name,) for name in files])
        return len(done)
