"""Asynchronous jobs (``/jobs``) against a real Orthanc: moves, gets and retrieves that run as
jobs, a store that a job follows through the durable queue, failures, cancelling, the history
bound, roles and pyorthanc's ``Job``; the jobs' JSON compared with the real Orthanc's. The
C-CANCEL of a running C-GET needs a peer that waits at a known point: a scripted pynetdicom
SCP."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyorthanc
import pytest
import requests
from pydicom import dcmread
from pydicom.uid import generate_uid
from pynetdicom import AE, StoragePresentationContexts, evt
from pyorthanc.jobs import State

from appliance.accounts import Accounts
from appliance.dicom.remote import MODELS

from .conftest import (
    ADMIN,
    ADMIN_PASSWORD,
    ApplianceProcess,
    dcmtk,
    free_port,
    make_series,
    storescu,
    wait_for,
)
from .peers import Orthanc
from .test_scu import study_count

pytestmark = pytest.mark.integration

VIEWER = ("reader", "reader password")
HISTORY = 3  # dicom.jobs_history_size here
# On Orthanc, one study per patient: (patient ID, study UID, instances)
STUDIES = {name: (f"JOB{n}", generate_uid(), n + 1) for n, name in enumerate("ABCDE")}


@dataclass
class Box:
    app: ApplianceProcess
    orthanc: Orthanc
    hang: socket.socket  # accepts TCP connections (in its backlog) and never answers

    def post(self, path: str, **kw: Any) -> requests.Response:
        return self.app.session.post(self.app.url + path, timeout=60, **kw)

    def start(self, path: str, body: Any) -> str:
        """An asynchronous request: Orthanc's answer, the job's ID."""
        r = self.post(path, json=body)
        assert r.status_code == 200, r.text
        job = r.json()
        assert job == {"ID": job["ID"], "Path": f"/jobs/{job['ID']}"}
        return str(job["ID"])

    def finished(self, job_id: str) -> dict[str, Any]:
        """The job once it left Pending/Running (polled as Orthanc's clients do)."""
        def done() -> bool:
            return self.app.json(f"/jobs/{job_id}")["State"] not in ("Pending", "Running")
        wait_for(done, 90, f"job {job_id} to finish")
        return dict(self.app.json(f"/jobs/{job_id}"))

    def arrived(self, name: str) -> int:
        patient_id, study_uid, _ = STUDIES[name]
        return study_count(self.app.json, patient_id, study_uid)


def move(name: str, **extra: Any) -> dict[str, Any]:
    return {"Level": "Study", "Resources": [{"StudyInstanceUID": STUDIES[name][1]}],
            "Asynchronous": True, **extra}


@pytest.fixture(scope="module")
def box(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Box]:
    root = tmp_path_factory.mktemp("jobs")
    orthanc_port = free_port()
    hang = socket.create_server(("127.0.0.1", 0), backlog=16)
    node = {"host": "127.0.0.1"}
    app = ApplianceProcess(root / "data", config={
        "dicom": {"jobs_history_size": HISTORY, "concurrent_jobs": 1},
        "queue": {"max_age": 1, "retry_initial": 0.2, "retry_max": 0.5},
        "modalities": {
            "orthanc": {"aet": "ORTHANC", "port": orthanc_port, **node},
            "down": {"aet": "DOWN", "port": free_port(), **node},
            "hang": {"aet": "HANG", "port": hang.getsockname()[1], **node},
        }})  # fmt: skip
    Accounts(app.data).add(VIEWER[0], "viewer", VIEWER[1])
    files = [p for name, (patient_id, study_uid, count) in STUDIES.items()
             for p in make_series(root / name, count, patient_id, study_uid)]
    with ExitStack() as started:
        started.callback(hang.close)
        orthanc = Orthanc(root / "orthanc", dicom_port=orthanc_port, modalities={
            "box": ["APPLIANCE", "127.0.0.1", app.dicom_port],
            "self": ["ORTHANC", "127.0.0.1", orthanc_port],
        }, extra={"JobsHistorySize": HISTORY})  # fmt: skip
        started.callback(orthanc.stop)
        started.callback(app.start().stop)
        dcmtk("storescu", "-aec", "ORTHANC", "127.0.0.1", str(orthanc_port),
              *[str(p) for p in files])
        yield Box(app, orthanc, hang)


def test_an_asynchronous_move_brings_a_study_in(box: Box) -> None:
    job_id = box.start("/modalities/orthanc/move", move("A"))
    job = box.finished(job_id)
    assert (job["Type"], job["State"], job["Progress"], job["ErrorCode"],
            job["ErrorDescription"]) == ("DicomMoveScu", "Success", 100, 0, "Success")
    content = job["Content"]
    assert (content["RemoteAet"], content["TargetAet"], content["Completed"]) == (
        "ORTHANC", "APPLIANCE", 1)
    assert content["Query"] == [{"0008,0052": "STUDY", "0020,000d": STUDIES["A"][1]}]
    assert job["CreationTime"] <= job["CompletionTime"] <= job["Timestamp"]
    assert box.arrived("A") == 1
    assert job_id in box.app.json("/jobs")
    (listed,) = [j for j in box.app.json("/jobs?expand") if j["ID"] == job_id]
    assert {**listed, "Timestamp": ""} == {**job, "Timestamp": ""}


def test_an_asynchronous_retrieve_of_an_answer_has_orthancs_shape(box: Box) -> None:
    """The real Orthanc retrieves the same answer asynchronously: the same keys, the same
    type and content."""
    query: dict[str, Any] = {"Level": "Study", "Query": {"PatientID": STUDIES["B"][0]}}
    ours = box.post("/modalities/orthanc/query", json=query).json()["ID"]
    job = box.finished(box.start(f"/queries/{ours}/answers/0/retrieve",
                                 {"TargetAet": "APPLIANCE", "Synchronous": False}))
    assert job["State"] == "Success" and box.arrived("B") == 2
    theirs = requests.post(f"{box.orthanc.url}/modalities/self/query", json=query,
                           timeout=60).json()["ID"]
    started = requests.post(f"{box.orthanc.url}/queries/{theirs}/answers/0/retrieve",
                            json={"TargetAet": "ORTHANC", "Asynchronous": True}, timeout=60)
    wait_for(lambda: box.orthanc.json(started.json()["Path"])["State"] == "Success", 60,
             "Orthanc's job")
    expected = box.orthanc.json(started.json()["Path"])
    assert set(job) == set(expected)
    assert job["Type"] == expected["Type"]
    assert set(expected["Content"]) <= set(job["Content"])
    assert (job["Content"]["Description"], job["Content"]["LocalAet"]) == (
        expected["Content"]["Description"], "APPLIANCE")


def test_an_asynchronous_cget_of_every_answer(box: Box) -> None:
    query = box.post("/modalities/orthanc/query", json={
        "Level": "Series", "Query": {"PatientID": STUDIES["C"][0]}}).json()["ID"]
    job = box.finished(box.start(f"/queries/{query}/retrieve",
                                 {"RetrieveMethod": "C-GET", "Asynchronous": True}))
    assert (job["Type"], job["State"], job["Content"]["Completed"]) == (
        "DicomGetScu", "Success", 3)
    assert "TargetAet" not in job["Content"] and box.arrived("C") == 3


def test_a_node_that_is_down_fails_the_job_with_the_reason(box: Box) -> None:
    job = box.finished(box.start("/modalities/down/get", {
        "Level": "Study", "Resources": [{"StudyInstanceUID": STUDIES["D"][1]}],
        "Asynchronous": True}))
    assert (job["State"], job["ErrorCode"], job["ErrorDescription"]) == (
        "Failure", 9, "Error in the network protocol")
    assert "cannot connect to DOWN@127.0.0.1" in job["ErrorDetails"]
    job = box.finished(box.start("/modalities/orthanc/move", move("D", TargetAet="NOWHERE")))
    assert job["State"] == "Failure" and "0xC000" in job["ErrorDetails"]
    assert box.arrived("D") == 0


def test_a_store_job_follows_the_queue_to_failure(box: Box, tmp_path: Path) -> None:
    """The durable queue sends (and keeps) the instances; the job fails once they are failed
    (here after ``queue.max_age``, 1 s, at a node that is down)."""
    study_uid = generate_uid()
    storescu(box.app, *make_series(tmp_path / "own", 2, "JOBSTORE", study_uid))
    (study,) = [s for s in box.app.json("/studies?expand")
                if s["MainDicomTags"]["StudyInstanceUID"] == study_uid]
    job = box.finished(box.start("/modalities/down/store",
                                 {"Resources": [study["ID"]], "Asynchronous": True}))
    assert (job["Type"], job["State"], job["ErrorCode"]) == ("DicomModalityStore", "Failure", 9)
    assert (job["Content"]["InstancesCount"], job["Content"]["FailedInstancesCount"]) == (2, 2)
    assert "/queue/down?state=failed" in job["ErrorDetails"]
    assert len(box.app.json("/queue/down?state=failed")) == 2


def test_cancel(box: Box) -> None:
    """One job at a time here: behind a job stuck on a node that never answers, a pending job
    is cancelled at once and never runs; the stuck one ends cancelled when its association
    fails."""
    stuck = box.start("/modalities/hang/move", move("E", Timeout=600))
    waiting = box.start("/modalities/orthanc/move", move("E"))
    wait_for(lambda: box.app.json(f"/jobs/{stuck}")["State"] == "Running", 30, "the job to run")
    assert box.app.json(f"/jobs/{waiting}")["State"] == "Pending"
    assert box.post(f"/jobs/{waiting}/cancel").json() == {}
    job = box.app.json(f"/jobs/{waiting}")
    assert (job["State"], job["ErrorCode"], job["ErrorDescription"]) == (
        "Failure", 37, "This job was canceled")
    assert box.post(f"/jobs/{stuck}/cancel").status_code == 200
    assert box.app.json(f"/jobs/{stuck}")["State"] == "Running", "stops when its request ends"
    box.hang.close()  # the connection waiting in its backlog is reset
    job = box.finished(stuck)
    assert (job["State"], job["ErrorCode"]) == ("Failure", 37)
    after = box.finished(box.start("/modalities/orthanc/move", move("A")))
    assert after["State"] == "Success"
    assert box.arrived("E") == 0, "the cancelled job ran"
    assert box.post(f"/jobs/{after['ID']}/cancel").json() == {}
    assert box.app.json(f"/jobs/{after['ID']}")["State"] == "Success"


@pytest.fixture
def scripted_get_scp(box: Box, tmp_path: Path) -> Iterator[tuple[threading.Event, str]]:
    """A pynetdicom C-GET SCP that sends a study of 3 instances and, after the first, waits
    for the test (``go``), then for the C-CANCEL before the third; registered as modality
    ``scripted``. Yields ``go`` and the study's UID."""
    study_uid = generate_uid()
    datasets = [dcmread(p) for p in make_series(tmp_path / "get", 3, "JOBGET", study_uid)]
    go = threading.Event()

    def handle_get(event: evt.Event) -> Iterator[Any]:
        yield len(datasets)
        yield 0xFF00, datasets[0]
        go.wait(60)
        yield 0xFF00, datasets[1]
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if event.is_cancelled:  # true once: pynetdicom forgets the C-CANCEL as it tells
                yield 0xFE00, None
                return
            time.sleep(0.01)
        yield 0xFF00, datasets[2]

    ae = AE("SCRIPTED")
    ae.add_supported_context(MODELS[("study", "get")])
    for cx in StoragePresentationContexts:
        ae.add_supported_context(str(cx.abstract_syntax), scp_role=True, scu_role=False)
    port = free_port()
    server = ae.start_server(("127.0.0.1", port), block=False,
                             evt_handlers=[(evt.EVT_C_GET, handle_get)])
    r = box.app.session.put(f"{box.app.url}/modalities/scripted", timeout=30,
                            json={"AET": "SCRIPTED", "Host": "127.0.0.1", "Port": port})
    assert r.status_code == 200, r.text
    yield go, study_uid
    go.set()
    assert server is not None
    server.shutdown()


def test_cancel_a_running_cget_sends_ccancel(box: Box,
                                             scripted_get_scp: tuple[threading.Event, str]
                                             ) -> None:
    """Cancelled after its first instance, the C-GET asks the peer to stop (C-CANCEL at the
    next pending response): 2 of 3 instances arrive, the job ends cancelled."""
    go, study_uid = scripted_get_scp
    job_id = box.start("/modalities/scripted/get", {
        "Level": "Study", "Resources": [{"StudyInstanceUID": study_uid}],
        "Asynchronous": True})
    wait_for(lambda: box.app.json(f"/jobs/{job_id}")["Progress"] == 33, 60, "one instance")
    assert box.app.json(f"/jobs/{job_id}")["State"] == "Running"
    box.post(f"/jobs/{job_id}/cancel")
    go.set()
    job = box.finished(job_id)
    assert (job["State"], job["ErrorCode"], job["Content"]["Completed"]) == ("Failure", 37, 2)
    assert "0xFE00" in job["ErrorDetails"]
    assert study_count(box.app.json, "JOBGET", study_uid) == 2


def test_unknown_jobs_are_404(box: Box) -> None:
    for r in (box.app.get("/jobs/nosuch"), box.post("/jobs/nosuch/cancel")):
        assert r.status_code == 404 and "unknown job: nosuch" in r.json()["Message"]


@pytest.mark.parametrize("path, body, status", [
    ("/modalities/orthanc/move", {**move("A"), "Asynchronous": "yes"}, 400),
    ("/modalities/orthanc/move", {**move("A"), "TargetAet": "A\\B"}, 400),
    ("/modalities/orthanc/get", {**move("A"), "Level": "Galaxy"}, 400),
    ("/modalities/nosuch/move", move("A"), 404),
    ("/queries/nosuch/retrieve", {"Asynchronous": True}, 404),
    ("/modalities/down/store", {"Resources": ["nosuch"], "Asynchronous": True}, 404),
    ("/modalities/down/store", {"Resources": ["nosuch"], "Asynchronous": 1}, 400),
])  # fmt: skip
def test_bad_asynchronous_requests_start_no_job(box: Box, path: str, body: Any,
                                                status: int) -> None:
    before = box.app.json("/jobs")
    r = box.post(path, json=body)
    assert r.status_code == status and r.json()["Message"], r.text
    assert box.app.json("/jobs") == before


def test_the_history_keeps_the_last_finished_jobs(box: Box) -> None:
    """``dicom.jobs_history_size`` (3 here), as Orthanc's JobsHistorySize."""
    made = [box.start("/modalities/down/move", move("D")) for _ in range(HISTORY + 2)]
    for job_id in made[-HISTORY:]:
        box.finished(job_id)
    assert box.app.json("/jobs") == made[-HISTORY:]
    assert [j["ID"] for j in box.app.json("/jobs?expand")] == made[-HISTORY:]
    for job_id in made[:2]:
        assert box.app.get(f"/jobs/{job_id}").status_code == 404


def test_viewers_read_jobs_administrators_cancel(box: Box) -> None:
    job_id = box.start("/modalities/down/move", move("D"))
    box.finished(job_id)
    url = box.app.url

    def read(path: str) -> Any:
        return requests.get(url + path, auth=VIEWER, timeout=30)

    assert read("/jobs").json() == box.app.json("/jobs")
    assert read(f"/jobs/{job_id}").json()["ID"] == job_id
    r = requests.post(f"{url}/jobs/{job_id}/cancel", auth=VIEWER, timeout=30)
    assert r.status_code == 403
    r = requests.post(f"{url}/modalities/orthanc/move", json=move("A"), auth=VIEWER, timeout=30)
    assert r.status_code == 403
    assert requests.get(f"{url}/jobs", timeout=30).status_code == 401


def test_pyorthanc_follows_an_asynchronous_move(box: Box) -> None:
    client = pyorthanc.Orthanc(box.app.url, username=ADMIN, password=ADMIN_PASSWORD)
    orthanc = pyorthanc.Modality(client, "orthanc")
    found = orthanc.query({"Level": "Study", "Query": {"PatientID": STUDIES["E"][0]}})
    started = orthanc.move(found["ID"], {"TargetAet": "APPLIANCE", "Synchronous": False})
    job = pyorthanc.Job(started["ID"], client)
    job.wait_until_completion(1)
    assert job.state == State.success
    assert (job.type, job.progress, job.content["Completed"]) == ("DicomMoveScu", 100, 5)
    assert job.completion_time is not None and job.creation_time <= job.completion_time
    assert box.arrived("E") == 5
