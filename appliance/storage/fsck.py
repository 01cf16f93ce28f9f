"""Reconcile the storage area with the index: after a crash, and on demand (``appliance fsck``).

A crash of the process can leave only temporary files and files without a row; a power cut
during a batch's flush can also keep rows of that batch (never acknowledged) whose files did not
reach the disk whole: the writer lists their files in ``unsynced``, and they are checked here
against their size and checksum. All of these are repaired here; rows whose file has vanished
anyway (a disk fault, a hand-deleted file) are reported, and dropped on repair.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from ..index.delete import trash
from ..index.models import Instance, Unsynced, tuples
from ..index.tags import BadInstance
from ..store import Store
from .area import md5_file

log = logging.getLogger(__name__)


@dataclass
class Report:
    temp_files: int = 0
    orphan_files: list[str] = field(default_factory=list)
    reindexed: int = 0
    duplicates_removed: int = 0
    quarantined: list[str] = field(default_factory=list)
    missing_files: list[str] = field(default_factory=list)  # instance public IDs
    corrupt_files: list[str] = field(default_factory=list)  # instance public IDs (checksum)

    @property
    def clean(self) -> bool:
        return not (self.temp_files or self.orphan_files or self.missing_files
                    or self.corrupt_files)

    def lines(self) -> list[str]:
        return [
            f"temporary files: {self.temp_files}",
            f"files without an index row: {len(self.orphan_files)}"
            f" (re-indexed {self.reindexed}, duplicates removed {self.duplicates_removed},"
            f" unreadable quarantined {len(self.quarantined)})",
            f"index rows whose file is missing: {len(self.missing_files)}",
            f"files whose checksum differs: {len(self.corrupt_files)}",
        ]


def reconcile(store: Store, repair: bool, verify: bool = False) -> Report:
    """Compare files and rows; with ``repair``, fix what a crash can leave behind.

    Must not run while instances are being received: a file renamed into place whose row is
    not yet committed would look orphaned. ``serve`` runs it before the listener starts.
    """
    report = Report()
    area = store.area
    if repair:
        store.empty_trash(trash())  # deletions a crash interrupted: finish them first
    report.temp_files = area.clean_tmp() if repair else len(area.temp_files())
    if repair:  # before a row is added for a file, or a file of the last batch is cleared
        area.sync_all()
    indexed = {
        name: (public_id, md5)
        for name, public_id, md5 in tuples(
            Instance.select(Instance.file, Instance.public_id, Instance.md5)
        )
    }
    on_disk = set(area.names())
    report.orphan_files = sorted(on_disk - indexed.keys())
    missing = [name for name in indexed if name not in on_disk]
    missing += torn_files(store, on_disk)
    report.missing_files = [indexed[name][0] for name in missing]
    if verify:
        report.corrupt_files = [
            public_id for name, (public_id, md5) in indexed.items()
            if name in on_disk and md5_file(area.path(name)) != md5
        ]
    if repair:
        _adopt_orphans(store, report)
        if missing:
            keys = [k for (k,) in tuples(
                Instance.select(Instance.id).where(Instance.file.in_(missing))
            )]
            store.delete(keys, reason="file missing at reconciliation")
        store.writer.run(lambda: Unsynced.delete().execute())
    for line in report.lines():
        log.log(logging.INFO if report.clean else logging.WARNING, "reconcile: %s", line)
    return report


def torn_files(store: Store, on_disk: set[str]) -> list[str]:
    """Files of the last batch before a stop whose content is not what their row recorded
    (a power cut during its flush): their rows were never acknowledged."""
    rows = tuples(Instance.select(Instance.file, Instance.size, Instance.md5)
                  .join(Unsynced, on=Unsynced.file == Instance.file))
    torn = []
    for name, size, md5 in rows:
        path = store.area.path(name)
        if name in on_disk and (path.stat().st_size != size or md5_file(path) != md5):
            log.warning("reconcile: %s differs from its row (cut during its flush)", name)
            torn.append(name)
    return torn


def _adopt_orphans(store: Store, report: Report) -> None:
    for name in report.orphan_files:
        try:
            recorded = store.adopt(name)
        except BadInstance as exc:
            store.area.quarantine(name)
            report.quarantined.append(name)
            log.warning("reconcile: unreadable file %s quarantined: %s", name, exc)
            continue
        if recorded.outcome == "kept-first":
            report.duplicates_removed += 1
        else:
            report.reindexed += 1
