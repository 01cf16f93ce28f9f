"""Asynchronous jobs for the REST API, as Orthanc's jobs engine shows them (``/jobs``): scripts
written for Orthanc start long work with ``"Asynchronous": true`` and poll ``/jobs/{id}``.

Jobs live in memory only (a restart forgets them, as it forgets held queries): what must
survive, the outbound queue, is durable on its own. Two kinds:

- *run* jobs: a function run by a small pool (``dicom.concurrent_jobs`` at a time, Orthanc's
  ``ConcurrentJobs``); a C-MOVE or C-GET;
- *tracked* jobs: work that happens elsewhere (entries of the outbound queue) and whose state
  is read when the job is read, so waiting for a node that is down takes no thread.

Finished jobs are kept, the oldest forgotten first, up to ``dicom.jobs_history_size``
(Orthanc's ``JobsHistorySize``). Cancelling, as Orthanc, ends a job in ``Failure`` with error
code 37: a pending job never starts, a running one is asked to stop (its work decides where).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger("appliance.jobs")

# Orthanc's error codes (OrthancFramework/Sources/Enumerations.h) that jobs here can end with.
SUCCESS, INTERNAL, NETWORK_PROTOCOL, CANCELED = 0, 1, 9, 37
ERRORS = {SUCCESS: "Success", INTERNAL: "Internal error",
          NETWORK_PROTOCOL: "Error in the network protocol",
          CANCELED: "This job was canceled"}
PENDING, RUNNING, DONE, FAILED = "Pending", "Running", "Success", "Failure"
STOP_GRACE = 30.0  # seconds running jobs get to stop at shutdown (the workers are daemons)


class UnknownJob(LookupError):
    """No job of that ID (or it was forgotten)."""


@dataclass(frozen=True)
class Outcome:
    """How a job ended: its final content, and an error code with details unless it
    succeeded."""

    content: dict[str, Any]
    code: int = SUCCESS
    details: str = ""


class Control:
    """What a running job's work sees: whether it was asked to stop, and where to report how
    far it got."""

    def __init__(self) -> None:
        self._cancel = threading.Event()
        self.progress = 0.0  # 0..1

    @property
    def cancelled(self) -> bool:
        return self._cancel.is_set()

    def cancel(self) -> None:
        self._cancel.set()


Work = Callable[[Control], Outcome]
# A tracked job's state: (progress 0..1, the outcome once settled, else None).
Poll = Callable[[], tuple[float, Outcome | None]]


def orthanc_time(ts: float) -> str:
    """Orthanc's job times: UTC, with microseconds."""
    return time.strftime("%Y%m%dT%H%M%S", time.gmtime(ts)) + f".{int(ts % 1 * 1e6):06d}"


@dataclass
class Job:
    id: str
    type: str  # Orthanc's job type: DicomMoveScu, DicomGetScu, DicomModalityStore
    content: dict[str, Any]
    created: float = field(default_factory=time.time)
    state: str = PENDING
    started: float | None = None
    completed: float | None = None
    code: int = SUCCESS
    details: str = ""
    control: Control = field(default_factory=Control)
    work: Work | None = None
    poll: Poll | None = None
    stop: Callable[[], object] | None = None  # how a tracked job's work is cancelled

    @property
    def finished(self) -> bool:
        return self.state in (DONE, FAILED)

    def finish(self, outcome: Outcome) -> None:
        self.content = outcome.content
        self.code, self.details = outcome.code, outcome.details
        self.state = DONE if outcome.code == SUCCESS else FAILED
        self.completed = time.time()
        if self.state == DONE:
            self.control.progress = 1.0

    def json(self) -> dict[str, Any]:
        """Orthanc's ``/jobs/{id}`` shape."""
        now = time.time()
        runtime = ((self.completed or now) - self.started) if self.started else 0.0
        answer = {
            "ID": self.id, "Type": self.type, "State": self.state, "Priority": 0,
            "Progress": int(self.control.progress * 100), "Content": self.content,
            "CreationTime": orthanc_time(self.created), "EffectiveRuntime": round(runtime, 3),
            "ErrorCode": self.code, "ErrorDescription": ERRORS[self.code],
            "ErrorDetails": self.details, "Timestamp": orthanc_time(now),
        }  # fmt: skip
        if self.completed is not None:
            answer["CompletionTime"] = orthanc_time(self.completed)
        return answer


class Jobs:
    """The registry and its pool; ``history`` and ``workers`` read the configuration."""

    def __init__(self, history: Callable[[], int], workers: int) -> None:
        self.history = history
        self.workers = workers
        self._jobs: OrderedDict[str, Job] = OrderedDict()
        self._lock = threading.Lock()
        self._queue: queue.Queue[Job | None] = queue.Queue()
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        for n in range(self.workers):
            thread = threading.Thread(target=self._run, name=f"job-{n}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self) -> None:
        """Cancel pending jobs, ask running ones to stop, and wait for the workers."""
        with self._lock:
            for job in self._jobs.values():
                job.control.cancel()
                if job.state == PENDING:
                    job.finish(Outcome(job.content, CANCELED))
        for _ in self._threads:
            self._queue.put(None)
        for thread in self._threads:
            thread.join(STOP_GRACE)
        self._threads.clear()

    def submit(self, kind: str, content: dict[str, Any], work: Work) -> str:
        """Queue ``work`` for the pool; the job's ID."""
        job = self._add(Job(str(uuid.uuid4()), kind, content, work=work))
        self._queue.put(job)
        return job.id

    def track(self, kind: str, content: dict[str, Any], poll: Poll,
              stop: Callable[[], object]) -> str:
        """Register work that runs elsewhere, read through ``poll``; ``stop`` cancels it."""
        job = Job(str(uuid.uuid4()), kind, content, poll=poll, stop=stop, state=RUNNING)
        job.started = job.created
        return self._add(job).id

    def ids(self) -> list[str]:
        """The jobs' IDs, oldest first."""
        self._refresh_all()
        with self._lock:
            return list(self._jobs)

    def all(self) -> list[dict[str, Any]]:
        self._refresh_all()
        with self._lock:
            return [job.json() for job in self._jobs.values()]

    def get(self, job_id: str) -> dict[str, Any]:
        job = self._find(job_id)
        self._refresh(job)
        with self._lock:
            return job.json()

    def cancel(self, job_id: str) -> None:
        """Cancel a job: at once if pending or tracked, at the work's next check if running;
        a finished job is left as it is (as Orthanc)."""
        job = self._find(job_id)
        with self._lock:
            if job.finished:
                return
            job.control.cancel()
            pending = job.state == PENDING
            if pending:
                job.finish(Outcome(job.content, CANCELED))
        if job.stop is not None:
            job.stop()
            self._settle(job, Outcome(job.content, CANCELED))
        if pending:
            self._trim()

    def _add(self, job: Job) -> Job:
        with self._lock:
            self._jobs[job.id] = job
        return job

    def _find(self, job_id: str) -> Job:
        with self._lock:
            job = self._jobs.get(job_id)
        if job is None:
            raise UnknownJob(f"unknown job: {job_id}")
        return job

    def _refresh_all(self) -> None:
        with self._lock:
            jobs = list(self._jobs.values())
        for job in jobs:
            self._refresh(job)

    def _refresh(self, job: Job) -> None:
        """A tracked job's state, read from where its work happens."""
        if job.poll is None or job.finished:
            return
        progress, outcome = job.poll()
        job.control.progress = progress
        if outcome is not None:
            self._settle(job, outcome)

    def _settle(self, job: Job, outcome: Outcome) -> None:
        with self._lock:
            if job.finished:
                return
            job.finish(outcome)
        self._trim()

    def _trim(self) -> None:
        """Forget the oldest finished jobs beyond the history size; unfinished ones stay."""
        with self._lock:
            finished = [j for j in self._jobs.values() if j.finished]
            finished.sort(key=lambda j: j.completed or 0.0)
            for job in finished[:max(0, len(finished) - self.history())]:
                del self._jobs[job.id]

    def _run(self) -> None:
        while (job := self._queue.get()) is not None:
            with self._lock:
                if job.state != PENDING:
                    continue  # cancelled while it waited
                job.state, job.started = RUNNING, time.time()
            self._settle(job, self._outcome(job))

    def _outcome(self, job: Job) -> Outcome:
        assert job.work is not None
        try:
            outcome = job.work(job.control)
        except Exception as exc:
            log.exception("job %s (%s) failed", job.id, job.type)
            return Outcome(job.content, INTERNAL, str(exc))
        if job.control.cancelled and outcome.code != SUCCESS:
            return Outcome(outcome.content, CANCELED, outcome.details)
        return outcome
