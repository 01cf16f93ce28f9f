"""``/jobs``: Orthanc's view of the asynchronous work (``appliance.jobs``). Reading is open to
viewers; cancelling is for administrators (the route default for a POST)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import bottle

from ...jobs import Jobs, UnknownJob
from .common import as_json, fail


def started(job_id: str) -> Any:
    """Orthanc's answer to an asynchronous request."""
    return as_json({"ID": job_id, "Path": f"/jobs/{job_id}"})


def known(action: Callable[[], Any]) -> Any:
    try:
        return action()
    except UnknownJob as exc:
        fail(404, str(exc))


def install(app: bottle.Bottle, jobs: Jobs) -> None:
    @app.get("/jobs")
    def listing() -> Any:
        """The jobs' IDs, oldest first, or with ``expand`` each job as ``/jobs/{id}``"""
        if "expand" in bottle.request.query:
            return as_json(jobs.all())
        return as_json(jobs.ids())

    @app.get("/jobs/<job_id>")
    def job(job_id: str) -> Any:
        """One job: Type, State, Progress, Content, ErrorCode, ErrorDescription and times"""
        return as_json(known(lambda: jobs.get(job_id)))

    @app.post("/jobs/<job_id>/cancel")
    def cancel(job_id: str) -> Any:
        """Cancel a job (it ends in Failure, error 37); a finished job is left as it is"""
        known(lambda: jobs.cancel(job_id))
        return as_json({})
