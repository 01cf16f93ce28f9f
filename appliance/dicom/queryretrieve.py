"""Query/retrieve on remote modalities for the REST API (Orthanc's ``/modalities/{id}/echo|
query|move|get`` and ``/queries``): runs the SCU services of ``remote.py`` and holds the
answers of the last ``dicom.query_retrieve_size`` queries in memory (Orthanc's
``QueryRetrieveSize``), so a client can read and retrieve them afterwards. The web layer only
translates HTTP.
"""

from __future__ import annotations

import dataclasses
import threading
import uuid
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pydicom.datadict import keyword_for_tag
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from ..config import DicomSettings, Modality
from ..configstore import ConfigStore
from ..index.ingest import Origin
from ..jobs import CANCELED, NETWORK_PROTOCOL, Control, Outcome
from ..store import Store
from . import orthanc_json, remote
from .handlers import receiver
from .query import LEVEL_OF, NEUTRAL_KEYS, UNIQUE_KEYS, Level, QueryError, tag_of
from .scu import AssociationFailed

# Orthanc's level names -> the QueryRetrieveLevel values (PS3.4 C.6.1.1.2, C.6.2.1.2).
LEVELS = {"patient": "PATIENT", "study": "STUDY", "series": "SERIES", "instance": "IMAGE"}
ORTHANC_LEVELS = {dicom: name.capitalize() for name, dicom in LEVELS.items()}
# The keys that identify an answer for a retrieve, as Orthanc picks them (PS3.4 C.4.2.2.1).
RETRIEVE_KEYS = {
    "PATIENT": ("PatientID",),
    "STUDY": ("StudyInstanceUID",),
    "SERIES": ("StudyInstanceUID", "SeriesInstanceUID"),
    "IMAGE": ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"),
}


class UnknownQuery(LookupError):
    """No held query of that ID, or no answer of that index."""


@dataclass(frozen=True)
class HeldQuery:
    """A query as it was asked, and the remote's answers."""

    id: str
    modality: str  # the modality's name
    level: str  # QueryRetrieveLevel
    asked: Dataset  # the keys as the client gave them (Orthanc's ``/queries/{id}/query``)
    normalize: bool
    timeout: float | None
    answers: list[Dataset]


@dataclass(frozen=True)
class Retrieval:
    """A C-MOVE or C-GET whose modality, level, keys and target were checked before anything
    was sent, so a bad request fails at once even when the work runs later, as a job."""

    settings: DicomSettings
    modality: Modality
    level: str  # QueryRetrieveLevel
    identifiers: list[Dataset]
    target_aet: str  # "" for C-GET
    into_store: remote.OnInstance | None  # C-GET only

    @property
    def job_type(self) -> str:
        """Orthanc's name for the job."""
        return "DicomGetScu" if self.into_store else "DicomMoveScu"

    def content(self) -> dict[str, Any]:
        """Orthanc's job content (``Description``, ``LocalAet``, ``RemoteAet``, ``Query``,
        ``TargetAet``)."""
        content = {"Description": "REST API", "LocalAet": self.settings.aet,
                   "RemoteAet": self.modality.aet,
                   "Query": [orthanc_json.short(i) for i in self.identifiers]}
        if self.target_aet:
            content["TargetAet"] = self.target_aet
        return content

    def run(self, control: Control | None = None) -> Retrieved:
        """One request per identifier, in order; ``control`` sees the progress and stops the
        work (C-CANCEL of the request under way, none of the following)."""
        results: list[remote.RetrieveResult] = []
        for n, ident in enumerate(self.identifiers):
            if control is not None and control.cancelled:
                break
            watch = None if control is None else self._watch(control, n)
            results.append(self._one(ident, watch))
        return Retrieved(self, results)

    def _one(self, ident: Dataset, watch: remote.Watch | None) -> remote.RetrieveResult:
        model = model_of(self.level)
        if self.into_store is not None:
            return remote.get(self.settings, self.modality, self.level, ident, self.into_store,
                              model, watch=watch)
        return remote.move(self.settings, self.modality, self.level, ident, self.target_aet,
                           model, watch)

    def _watch(self, control: Control, index: int) -> remote.Watch:
        def watch(counts: remote.RetrieveResult) -> bool:
            done = counts.completed + counts.failed + counts.warning
            total = done + counts.remaining
            control.progress = (index + (done / total if total else 0)) / len(self.identifiers)
            return control.cancelled
        return watch

    def work(self, control: Control) -> Outcome:
        """The retrieval as a job: Failure with Orthanc's network error code when the node is
        down, refuses, or some sub-operation failed."""
        try:
            done = self.run(control)
        except (AssociationFailed, remote.RemoteError) as exc:
            return Outcome(self.content(), NETWORK_PROTOCOL, str(exc))
        if len(done.results) < len(self.identifiers):
            return Outcome(done.content(), CANCELED)
        if not done.ok:
            return Outcome(done.content(), NETWORK_PROTOCOL, done.summary())
        return Outcome(done.content())


@dataclass(frozen=True)
class Retrieved:
    """The outcome of a C-MOVE or C-GET per identifier, in the order they were sent."""

    plan: Retrieval
    results: list[remote.RetrieveResult]

    @property
    def ok(self) -> bool:
        return all(r.ok for r in self.results)

    def count(self, what: str) -> int:
        return sum(int(getattr(r, what)) for r in self.results)

    def summary(self) -> str:
        return "; ".join(r.summary() for r in self.results)

    def content(self) -> dict[str, Any]:
        """The job's content with the sub-operation counts."""
        return {**self.plan.content(), "Completed": self.count("completed"),
                "Failed": self.count("failed"), "Warning": self.count("warning")}


def dicom_level(name: str) -> str:
    """Orthanc's level name (any case) as a QueryRetrieveLevel."""
    level = LEVELS.get(name.lower())
    if level is None:
        raise remote.BadQuery(f"level {name!r} is not one of Patient, Study, Series, Instance")
    return level


def model_of(level: str) -> remote.InfoModel:
    """The patient root for patient-level requests, the study root otherwise (as Orthanc)."""
    return "patient" if level == "PATIENT" else "study"


def keywords(keys: Mapping[str, str]) -> dict[str, str]:
    """Keys named by keyword, whether given as keywords or ``gggg,eeee`` tags."""
    out: dict[str, str] = {}
    for key, value in keys.items():
        try:
            tag = tag_of(key)
        except QueryError as exc:
            raise remote.BadQuery(exc.comment) from None
        out[keyword_for_tag(tag) or f"{tag.group:04X},{tag.element:04X}"] = value
    return out


def normalized(level: str, keys: dict[str, str]) -> dict[str, str]:
    """Orthanc's ``Normalize``: drop the keys below the level (PS3.4 C.4.1.2.1 forbids them)
    and ask for the identifying keys of the level and of those above."""
    depth = Level[level]
    kept = {k: v for k, v in keys.items()
            if k in NEUTRAL_KEYS or LEVEL_OF.get(k, depth) <= depth}
    for above in Level:
        if above <= depth:
            kept.setdefault(UNIQUE_KEYS[above], "")
    if depth >= Level.STUDY:
        kept.setdefault("AccessionNumber", "")
    return kept


def identifying(answer: Dataset, level: str) -> dict[str, str]:
    """The keys that name an answer in a retrieve request; an answer without them cannot be
    retrieved (an empty key would match, and move, everything)."""
    keys = {k: str(answer.get(k, "") or "") for k in RETRIEVE_KEYS[level]}
    missing = [k for k, v in keys.items() if not v]
    if missing:
        raise remote.BadQuery(f"an answer without {', '.join(missing)} cannot be retrieved "
                              "(ask for it in the query, or keep Normalize)")
    return keys


class QueryRetrieve:
    def __init__(self, configs: ConfigStore, store: Store) -> None:
        self.configs = configs
        self.store = store
        self._queries: OrderedDict[str, HeldQuery] = OrderedDict()
        self._lock = threading.Lock()

    def modality(self, name: str) -> Modality:
        return remote.resolve(self.configs.current, name)

    def settings(self, timeout: float | None) -> DicomSettings:
        """Our DICOM settings, with every timeout set to ``timeout`` seconds if given."""
        current = self.configs.current.dicom
        if not timeout:
            return current
        return dataclasses.replace(current, acse_timeout=timeout, dimse_timeout=timeout,
                                   network_timeout=timeout)

    # --- C-ECHO and C-FIND ---------------------------------------------------------------------

    def echo(self, name: str, timeout: float | None = None, check_find: bool = False) -> str:
        """C-ECHO (and with ``check_find`` a C-FIND of an unknown study, as Orthanc's
        ``CheckFind``: does the node accept our queries?); "" on success, else why not."""
        modality = self.modality(name)
        settings = self.settings(timeout)
        result = remote.echo(settings, modality)
        if not result.ok:
            return result.error or "C-ECHO failed"
        if check_find:
            try:
                remote.find(settings, modality, "STUDY", {"StudyInstanceUID": generate_uid()})
            except (remote.AssociationFailed, remote.RemoteError) as exc:
                return f"C-ECHO succeeded, C-FIND failed: {exc}"
        return ""

    def query(self, name: str, level: str, keys: Mapping[str, str], normalize: bool = True,
              timeout: float | None = None) -> HeldQuery:
        """C-FIND ``keys`` at ``level`` (Orthanc's name) and hold the answers."""
        modality = self.modality(name)
        dicom = dicom_level(level)
        given = keywords(keys)
        asked = remote.identifier(dicom, given, model_of(dicom))
        del asked.QueryRetrieveLevel
        sent = normalized(dicom, given) if normalize else given
        answers = remote.find(self.settings(timeout), modality, dicom, sent, model_of(dicom))
        return self._hold(HeldQuery(str(uuid.uuid4()), name, dicom, asked, normalize, timeout,
                                    answers))

    def query_children(self, query_id: str, index: int, level: str, keys: Mapping[str, str],
                       timeout: float | None = None) -> HeldQuery:
        """A query one or more levels below an answer (Orthanc's ``query-studies|series|
        instances``): the same modality, ``keys`` and the answer's identifying keys."""
        parent = self.held(query_id)
        answer = self.answer(query_id, index)
        if Level[dicom_level(level)] <= Level[parent.level]:
            raise UnknownQuery(f"a {ORTHANC_LEVELS[parent.level]} answer has no {level} "
                               "below it")
        inherited = identifying(answer, parent.level)
        return self.query(parent.modality, level, {**keywords(keys), **inherited},
                          parent.normalize, timeout or parent.timeout)

    def _hold(self, query: HeldQuery) -> HeldQuery:
        with self._lock:
            self._queries[query.id] = query
            while len(self._queries) > self.configs.current.dicom.query_retrieve_size:
                self._queries.popitem(last=False)
        return query

    def queries(self) -> list[str]:
        with self._lock:
            return list(self._queries)

    def held(self, query_id: str) -> HeldQuery:
        with self._lock:
            found = self._queries.get(query_id)
        if found is None:
            raise UnknownQuery(f"unknown query: {query_id}")
        return found

    def answer(self, query_id: str, index: int) -> Dataset:
        answers = self.held(query_id).answers
        if not 0 <= index < len(answers):
            raise UnknownQuery(f"query {query_id} has no answer {index} "
                               f"({len(answers)} answers)")
        return answers[index]

    def forget(self, query_id: str) -> None:
        with self._lock:
            if self._queries.pop(query_id, None) is None:
                raise UnknownQuery(f"unknown query: {query_id}")

    # --- C-MOVE and C-GET ----------------------------------------------------------------------

    def retrieve(self, query_id: str, index: int | None, target_aet: str = "",
                 use_get: bool = False, timeout: float | None = None) -> Retrieval:
        """Retrieve one answer (or all: ``index`` None) of a held query: C-MOVE to
        ``target_aet`` (default: us), or C-GET into the store."""
        query = self.held(query_id)
        answers = query.answers if index is None else [self.answer(query_id, index)]
        resources = [identifying(a, query.level) for a in answers]
        level = ORTHANC_LEVELS[query.level]
        timeout = timeout or query.timeout
        if use_get:
            return self.get(query.modality, level, resources, timeout)
        return self.move(query.modality, level, resources, target_aet, timeout)

    def move(self, name: str, level: str, resources: list[dict[str, str]],
             target_aet: str = "", timeout: float | None = None) -> Retrieval:
        """C-MOVE each identifier of ``resources`` from ``name`` to ``target_aet`` (default:
        our own AE title, i.e. into the store)."""
        target = remote.checked_aet(target_aet or self.configs.current.dicom.aet)
        return self._plan(name, level, resources, target, timeout, get=False)

    def get(self, name: str, level: str, resources: list[dict[str, str]],
            timeout: float | None = None) -> Retrieval:
        """C-GET each identifier of ``resources`` from ``name`` into the store."""
        return self._plan(name, level, resources, "", timeout, get=True)

    def _plan(self, name: str, level: str, resources: list[dict[str, str]], target: str,
              timeout: float | None, get: bool) -> Retrieval:
        modality = self.modality(name)
        dicom = dicom_level(level)
        settings = self.settings(timeout)
        identifiers = [remote.identifier(dicom, keywords(r), model_of(dicom)) for r in resources]
        origin = Origin(calling_aet=modality.aet, called_aet=settings.aet,
                        remote_address=modality.host)
        into_store = receiver(self.store, origin, remote.describe(modality)) if get else None
        return Retrieval(settings, modality, dicom, identifiers, target, into_store)
