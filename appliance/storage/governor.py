"""The rotating storage quota: keep the newest images, recycle the oldest, lose nothing.

Limits (``quota`` settings): bytes stored, patients, studies, and free space on the data
filesystem measured for real (statvfs) with a low and a high watermark; retention by age,
optionally per modality. What may be recycled: the oldest studies (or patients) by last
reception that are not pinned and have nothing in the outbound queue (pending, held or failed),
never the study an arriving instance belongs to.

In the ingest path ``admit`` makes room before an instance is recorded (or refuses it with
0xA700 when nothing can be recycled: nothing acknowledged is ever deleted to make room); in the
background, retention and the free-space watermarks are enforced. Both hold one lock, so they
never recycle the same study twice; deletion itself goes through the index writer (rows first,
then files).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..config import QuotaSettings
from ..index import quota
from ..index.ids import public_ids
from ..index.tags import BadInstance, InstanceTags

log = logging.getLogger(__name__)

MB = 1024 * 1024
OUT_OF_RESOURCES = 0xA700
Delete = Callable[[list[int], str], int]
SINGULAR = {"studies": "study", "patients": "patient"}


class StoreFull(BadInstance):
    """No room for the instance, and nothing may be recycled to make some."""

    def __init__(self, message: str) -> None:
        super().__init__(message, OUT_OF_RESOURCES)


def free_bytes(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


class Governor:
    def __init__(self, root: Path, settings: Callable[[], QuotaSettings], delete: Delete
                 ) -> None:
        self.root = root
        self.settings = settings
        self.delete = delete
        self.lock = threading.Lock()
        self.totals = quota.Totals(0, 0, 0)
        self.reserved = 0  # bytes admitted but not yet recorded
        self.full_reason = ""  # why the last instance was refused ("" once one is admitted)
        self.recycled_total = 0
        self.stopping = threading.Event()
        self._thread = threading.Thread(target=self._background, name="quota", daemon=True)

    def start(self) -> None:
        self.totals = quota.totals()
        self._thread.start()

    def stop(self) -> None:
        self.stopping.set()
        if self._thread.is_alive():
            self._thread.join(30)

    def limited(self) -> bool:
        q = self.settings()
        return bool(q.max_storage_mb or q.max_patients or q.max_studies or q.free_low_mb)

    def recount(self) -> None:
        """After a deletion the governor did not make: its room counts at once."""
        if self.limited():
            with self.lock:
                self.totals = quota.totals()

    # --- the ingest path -----------------------------------------------------------------------

    def admit(self, size: int, tags: InstanceTags) -> bool:
        """Make room for an instance of ``size`` bytes, recycling what must be; raise
        ``StoreFull`` when nothing can be. Returns whether a reservation was made (then
        ``settle`` must follow)."""
        if not self.limited():
            return False
        ids = public_ids(tags.patient_id, tags.study_uid, tags.series_uid, tags.sop_uid)
        study, patient = ids.study, ids.patient
        with self.lock:
            new_study = not quota.study_exists(study)
            new_patient = new_study and not quota.patient_exists(patient)
            try:
                self._make_room(size, new_study, new_patient, study, patient)
            except StoreFull as exc:
                if self.full_reason != str(exc):
                    log.error("refusing new instances: %s", exc)
                self.full_reason = str(exc)
                raise
            self.full_reason = ""
            self.reserved += size
            self.totals = quota.Totals(self.totals.bytes, self.totals.patients + new_patient,
                                       self.totals.studies + new_study)
        return True

    def settle(self, size: int, stored: bool) -> None:
        """The admitted instance was recorded (or not): its reservation becomes usage."""
        with self.lock:
            self.reserved -= size
            if stored:
                self.totals = quota.Totals(self.totals.bytes + size, self.totals.patients,
                                           self.totals.studies)

    def _make_room(self, size: int, new_study: bool, new_patient: bool, study: str,
                   patient: str) -> None:
        q = self.settings()
        recycling_for_space = False
        while True:
            reason = self._over(q, size, new_study, new_patient, recycling_for_space)
            if not reason:
                return
            recycling_for_space = recycling_for_space or reason == "free space"
            if not self._recycle_one(q, reason, study, patient):
                raise StoreFull(f"store full ({reason}) and nothing can be recycled")

    def _over(self, q: QuotaSettings, size: int, new_study: bool, new_patient: bool,
              recycling_for_space: bool) -> str:
        """The limit an instance would cross, or ""."""
        t = self.totals
        if q.max_storage_mb and t.bytes + self.reserved + size > q.max_storage_mb * MB:
            return "max_storage_mb"
        if q.max_studies and t.studies + new_study > q.max_studies:
            return "max_studies"
        if q.max_patients and t.patients + new_patient > q.max_patients:
            return "max_patients"
        if q.free_low_mb:
            mark = max(q.free_high_mb, q.free_low_mb) if recycling_for_space else q.free_low_mb
            if free_bytes(self.root) - size < mark * MB:
                return "free space"
        return ""

    def _recycle_one(self, q: QuotaSettings, reason: str, study: str = "",
                     patient: str = "", older_than: float | None = None,
                     modalities: list[str] | None = None) -> bool:
        found = quota.recyclable(q.granularity, time.time(), study, patient, older_than,
                                 modalities)
        if not found:
            return False
        level, key = found[0]
        keys = quota.instances_of(level, key)
        count = self.delete(keys, f"recycled: {reason}")
        self.recycled_total += 1
        self.totals = quota.totals()
        log.info("recycled the oldest %s (%d instances): %s", SINGULAR[level], count, reason)
        return True

    # --- the background ------------------------------------------------------------------------

    def _background(self) -> None:
        while not self.stopping.wait(self.settings().check_interval):
            try:
                self.enforce()
            except Exception:  # keep checking: a failed round must not end the quota
                log.exception("quota check failed")

    def enforce(self) -> None:
        """Retention, then limits and watermarks (a configuration may have lowered them)."""
        q = self.settings()
        with self.lock:
            self.totals = quota.totals()
            now = time.time()
            if q.retention_days:
                while self._recycle_one(q, f"retention {q.retention_days:g} days",
                                        older_than=now - q.retention_days * 86400):
                    pass
            for modality, days in q.retention_days_by_modality.items():
                while self._recycle_one(q, f"retention {days:g} days ({modality})",
                                        older_than=now - days * 86400, modalities=[modality]):
                    pass
            recycling_for_space = False
            while reason := self._over(q, 0, False, False, recycling_for_space):
                recycling_for_space = recycling_for_space or reason == "free space"
                if not self._recycle_one(q, reason):
                    break


@dataclass(frozen=True)
class DiskUsage:
    """For the dashboard: what the store holds against its quota and the filesystem."""

    stored: int
    quota: int  # 0: no size limit
    free: int
    total: int


def disk_usage(governor: Governor, stored: int) -> DiskUsage:
    """``stored``: bytes the index counts (the governor's own totals are kept only while a
    limit is set)."""
    st = os.statvfs(governor.root)
    return DiskUsage(stored, int(governor.settings().max_storage_mb * MB),
                     st.f_bavail * st.f_frsize, st.f_blocks * st.f_frsize)
