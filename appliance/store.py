"""The store: the one facade that receives, records and removes instances (Orthanc's
``ServerContext``). DICOM handlers and web views call it; it alone joins the storage area and
the index.

The durability contract of ``receive``: the file is renamed into place, flushed to the device
with its folder (by the writer, once per batch) and its row committed before it returns. Only
then may a caller report success.
"""

from __future__ import annotations

import io
import logging
import os
import tempfile
import typing
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from peewee import SqliteDatabase
from pydicom import config as pydicom_config
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.tag import BaseTag, Tag

from . import pixels
from .config import Config
from .dicom import render
from .index import resources
from .index.db import Unflushed, Writer, open_database
from .index.delete import delete_instances, emptied
from .index.ingest import FileInfo, Origin, Queued, Recorded, forget_parents, record_instance
from .index.models import Instance, tuples
from .index.quota import set_protected
from .index.tags import BadInstance, InstanceTags, read_instance_tags
from .routing.rules import Planned, Rules
from .storage.area import StorageArea, md5_file
from .storage.governor import Governor
from .storage.spool import Spooled

log = logging.getLogger(__name__)

LOOKUP_BATCH = 500  # IDs per query (SQLite allows 32,766 parameters, older builds 999)


@dataclass(frozen=True)
class Expected:
    """What the C-STORE command announced, checked against the dataset."""

    sop_class_uid: str
    sop_instance_uid: str


class Store:
    def __init__(self, config: Config) -> None:
        self.config = config
        # Values are indexed as sent: validating each one on read costs ~20% of the tag parse,
        # and refusing an instance for a malformed date is not the store's call.
        pydicom_config.settings.reading_validation_mode = pydicom_config.IGNORE
        root = config.data_dir
        root.mkdir(parents=True, exist_ok=True)
        index = root / "index.sqlite"
        self.area = StorageArea(root, also_flushed=[index.with_name(index.name + "-wal")])
        log.info("durability: %s", self.area.flush.description)
        self.db: SqliteDatabase = open_database(index)
        self.writer = Writer(
            self.db, self.area.flush, config.storage.commit_batch, on_rollback=forget_parents
        )
        self.log_patients = config.log.patient_data
        self.rules = Rules(config)  # replaced when the configuration changes
        self.governor = Governor(root, lambda: self.config.quota, self.delete)
        # told which destinations have new pending entries (after their commit)
        self.on_queued: Callable[[set[str]], None] = lambda destinations: None
        # asked before a file is adopted: raise BadInstance to refuse it (the hooks' filter)
        self.admission: Callable[[InstanceTags, Origin, Path], None] = lambda *args: None
        # told of every instance once committed (must return at once: the hooks queue it)
        self.on_stored: Callable[[Recorded, InstanceTags, Origin], None] = lambda *args: None

    def start(self) -> None:
        self.writer.start()

    def reconfigure(self, config: Config) -> None:
        """A new configuration: the routes and store settings apply to the next instance."""
        self.config = config
        self.rules = Rules(config)

    def stop(self) -> None:
        self.governor.stop()
        self.writer.stop()
        self.db.close()

    def receive(self, tmp_path: Path, origin: Origin, expected: Expected | None = None,
                spooled: Spooled | None = None) -> Recorded:
        """Make the received file ``tmp_path`` a durable, indexed instance (or raise
        ``BadInstance``), queued for the destinations its routes name. The file is consumed
        either way. ``spooled``: see ``receive_tagged``."""
        return self.receive_tagged(tmp_path, origin, expected, spooled)[0]

    def receive_tagged(self, tmp_path: Path, origin: Origin, expected: Expected | None = None,
                       spooled: Spooled | None = None) -> tuple[Recorded, InstanceTags]:
        """``receive``, also giving the tags read from the file (for answers that name the
        instance's UIDs without asking the index). ``spooled``: what the caller learnt of the
        file while writing it (its MD5 and size, and its head: the file is not read again)."""
        try:
            tags = read_instance_tags(tmp_path, spooled)
            if expected is not None:
                check_expected(tags, expected)
            self.admission(tags, origin, tmp_path)
            info = (FileInfo("", spooled.size, spooled.md5) if spooled
                    else FileInfo("", tmp_path.stat().st_size, md5_file(tmp_path)))
            planned = self.rules.match(tags, origin, tmp_path)
            reserved = self.governor.admit(info.size, tags)
        except BaseException:
            tmp_path.unlink(missing_ok=True)
            raise
        recorded = None
        try:
            recorded = self._store_file(tmp_path, tags, info, origin, planned)
        finally:
            if reserved:
                self.governor.settle(info.size, recorded is not None
                                     and recorded.outcome == "stored")
        now = {p.destination for p in planned if p.trigger == "instance"}
        if now and recorded.outcome != "kept-first":
            self.on_queued(now)
        self.on_stored(recorded, tags, origin)
        return recorded, tags

    def _store_file(self, tmp_path: Path, tags: InstanceTags, info: FileInfo, origin: Origin,
                    planned: list[Planned]) -> Recorded:
        name = self.area.adopt(tmp_path, info.size)
        overwrite = self.config.storage.duplicates == "overwrite"
        queued = [(p.route, p.destination, p.trigger) for p in planned]
        try:
            return self._record(tags, FileInfo(name, info.size, info.md5), origin, overwrite,
                                name, queued)
        except Unflushed:
            raise  # its row is committed: the file stays (reconciliation checks it)
        except BaseException:
            self.area.remove(name)  # never acknowledged: the file must not stay
            raise

    def adopt(self, name: str) -> Recorded:
        """Index a blob already in the area that has no row (reconciliation, re-indexing)."""
        path = self.area.path(name)
        tags = read_instance_tags(path)
        info = FileInfo(name, path.stat().st_size, md5_file(path))
        return self._record(tags, info, Origin(kind="Reindex"), False, "")

    def _record(self, tags: InstanceTags, info: FileInfo, origin: Origin, overwrite: bool,
                new_file: str, queued: Sequence[Queued] = ()) -> Recorded:
        """Commit the row (``new_file``: the name of a file not yet flushed, or "")."""
        def record() -> Recorded:
            return record_instance(tags, info, origin, overwrite, queued)

        recorded = (self.writer.write_durably(record, new_file) if new_file
                    else self.writer.run(record))
        for obsolete in (recorded.unused_file, recorded.replaced_file):
            if obsolete:
                self.area.remove(obsolete)
        self._log_recorded(recorded, tags, origin)
        return recorded

    def delete_resource(self, level: str, public_id: str, reason: str) -> int | None:
        """Delete a patient, study, series or instance with everything under it (None: no
        such resource); recorded in the change log with ``reason``."""
        keys = resources.instance_keys(level, public_id)
        if keys is None:
            return None
        deleted = self.delete(keys, reason)
        self.governor.recount()
        return deleted

    def protect(self, level: str, public_id: str, protected: bool,
                until: float | None = None) -> bool:
        """Pin a patient or study against recycling (until ``until``, if given)."""
        return bool(self.writer.run(
            lambda: set_protected(level, public_id, protected, until)))

    def delete(self, instance_keys: list[int], reason: str) -> int:
        files = self.writer.run(lambda: delete_instances(instance_keys, reason))
        self.empty_trash(files)
        return len(files)

    def empty_trash(self, files: list[str]) -> None:
        """Remove the files of deleted rows, then forget them (not waited for: a crash before
        that commit only makes reconciliation remove files that are already gone)."""
        for name in files:
            self.area.remove(name)
        if files:
            self.writer.submit(lambda: emptied(files))

    def file_of(self, public_id: str) -> Path | None:
        """The stored file of an instance, or None if there is no such instance."""
        row = Instance.select(Instance.file).where(Instance.public_id == public_id).first()
        return self.area.path(row.file) if row else None

    def open_instance(self, public_id: str) -> BinaryIO | None:
        """The stored bytes of an instance, or None if there is no such instance."""
        path = self.file_of(public_id)
        return open(path, "rb") if path else None

    def instance_files(self, public_ids: Sequence[str]) -> dict[str, Path]:
        """The stored files of instances, by public ID (one query per ``LOOKUP_BATCH``, where
        ``open_instance`` costs one each); those no longer stored are left out."""
        files: dict[str, Path] = {}
        for start in range(0, len(public_ids), LOOKUP_BATCH):
            batch = public_ids[start:start + LOOKUP_BATCH]
            rows = tuples(Instance.select(Instance.public_id, Instance.file)
                          .where(Instance.public_id.in_(batch)))
            files.update((public_id, self.area.path(name)) for public_id, name in rows)
        return files

    def read_instance(self, public_id: str, defer_size: int | None = None) -> Dataset | None:
        """A stored instance as a dataset (values above ``defer_size`` bytes read only when
        used, so a header walk never loads the pixel data); None if there is no such instance."""
        path = self.file_of(public_id)
        return dcmread(path, defer_size=defer_size) if path else None

    def render(self, public_id: str, index: int, fmt: str = "PNG") -> bytes | None:
        """Frame ``index`` of an instance as PNG or JPEG (None: no such instance); raises
        ``Undecodable``. Decoded in the pixel helper process."""
        return self._pixel_job(public_id, render.render_file, index, fmt)

    def frame(self, public_id: str, index: int) -> bytes | None:
        """Frame ``index`` of an instance, uncompressed (None: no such instance)."""
        return self._pixel_job(public_id, render.frame_file, index)

    def open_explicit_le(self, public_id: str) -> BinaryIO | None:
        """The instance in Explicit VR Little Endian (decompressed, or re-encoded), as a file
        already unlinked from ``tmp`` (None: no such instance); ``Undecodable`` when it cannot
        be converted here. Converted in the pixel helper process."""
        path = self.file_of(public_id)
        if path is None:
            return None
        fd, name = tempfile.mkstemp(dir=self.area.tmp, prefix="transcode-")
        os.close(fd)
        try:
            error = pixels.worker.run(pixels.decompress_file, str(path), name)
            if error:
                raise render.Undecodable(error)
            return open(name, "rb")
        except (pixels.PixelError, TimeoutError) as exc:
            raise render.Undecodable(str(exc) or "conversion timed out") from exc
        finally:
            Path(name).unlink(missing_ok=True)

    def _pixel_job(self, public_id: str, fn: Callable[..., bytes], *args: object) -> bytes | None:
        path = self.file_of(public_id)
        if path is None:
            return None
        try:
            return pixels.worker.run(fn, str(path), *args)
        except (pixels.PixelError, TimeoutError) as exc:
            raise render.Undecodable(str(exc) or "pixel decoding timed out") from exc

    def files_of(self, level: str, public_id: str) -> list[tuple[str, Path]] | None:
        """The stored files under a resource, named ``patient/study/series/MO000001.dcm`` for
        an archive (None: no such resource)."""
        row = resources.find(level, public_id)
        if row is None:
            return None
        return [(entry, self.area.path(name))
                for entry, name in resources.archive_entries(level, row)]

    def read_header(self, name: str, tags: Sequence[BaseTag]) -> Dataset:
        """Some elements of a stored file (with its character set), never its pixel data."""
        wanted = [*tags, Tag(0x00080005)]
        return dcmread(self.area.path(name), stop_before_pixels=True, specific_tags=wanted)

    def _log_recorded(self, recorded: Recorded, tags: InstanceTags, origin: Origin) -> None:
        who = f"{origin.calling_aet or origin.kind}@{origin.remote_address}"
        patient = f" patient {tags.patient_id!r}" if self.log_patients else ""
        fields = {"PEER_AE": origin.calling_aet, "STUDY_UID": tags.study_uid,
                  "SOP_INSTANCE_UID": tags.sop_uid}  # journald fields
        if recorded.outcome == "kept-first":
            log.warning(
                "duplicate SOP instance %s from %s: the stored copy is kept, the new one dropped",
                tags.sop_uid, who, extra=fields,
            )
        elif recorded.outcome == "overwritten":
            log.warning("duplicate SOP instance %s from %s: overwritten", tags.sop_uid, who,
                        extra=fields)
        elif log.isEnabledFor(logging.DEBUG):
            log.debug("stored %s from %s%s", tags.sop_uid, who, patient, extra=fields)


def chain(head: bytes, rest: BinaryIO) -> BinaryIO:
    """A stream whose first bytes were already read."""
    return typing.cast(BinaryIO, io.BufferedReader(_Chained(head, rest)))


class _Chained(io.RawIOBase):
    def __init__(self, head: bytes, rest: BinaryIO) -> None:
        self.head, self.rest = head, rest

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        data = self.head[:len(buffer)] if self.head else self.rest.read(len(buffer))
        self.head = self.head[len(data):] if self.head else b""
        buffer[:len(data)] = data
        return len(data)


def check_expected(tags: InstanceTags, expected: Expected) -> None:
    """PS3.4 B.2.3: the dataset must be the instance the command announces."""
    if tags.sop_uid != expected.sop_instance_uid:
        raise BadInstance(
            f"SOPInstanceUID {tags.sop_uid} differs from the command's "
            f"{expected.sop_instance_uid}",
            0xA900,
        )
    if tags.sop_class_uid != expected.sop_class_uid:
        raise BadInstance(
            f"SOPClassUID {tags.sop_class_uid} differs from the command's "
            f"{expected.sop_class_uid}",
            0xA900,
        )
