"""Store-and-forward routing against real peers: DCMTK storescp and a real Orthanc as
destinations, a pynetdicom SCP that refuses, ports closed and opened, and kill -9."""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydicom import dcmread
from pynetdicom import AE, AllStoragePresentationContexts, evt

from .conftest import (
    SUCCESS_LINE,
    ApplianceProcess,
    free_port,
    make_series,
    pydicom_file,
    storescu,
    wait_for,
)
from .peers import Orthanc, StoreSCP
from .test_store import split_part10

pytestmark = pytest.mark.integration

FAST_RETRY = {"retry_initial": 0.2, "retry_max": 0.5}


def node(port: int, aet: str = "DEST", **extra: Any) -> dict[str, Any]:
    return {"aet": aet, "host": "127.0.0.1", "port": port, **extra}


def queue(app: ApplianceProcess) -> dict[str, Any]:
    return dict(app.json("/queue"))


def pending(app: ApplianceProcess, dest: str) -> int:
    state = queue(app).get(dest, {})
    return int(state.get("Pending", 0)) + int(state.get("Held", 0))


def received(scp: StoreSCP) -> int:
    """Store requests storescp logged (a duplicate delivery would count twice)."""
    return scp.log().count("Received Store Request")


@pytest.fixture
def scp_factory(tmp_path: Path) -> Iterator[Any]:
    made: list[StoreSCP] = []

    def make(name: str, port: int | None = None, start: bool = True) -> StoreSCP:
        scp = StoreSCP(port or free_port(), tmp_path / name, "+B", start=start)
        made.append(scp)
        return scp

    yield make
    for scp in made:
        scp.stop()


def dataset_bytes(data: bytes) -> bytes:
    return split_part10(data)[1]


def test_route_each_instance_to_storescp(appliance_factory: Any, scp_factory: Any,
                                          tmp_path: Path) -> None:
    """Every stored instance reaches the destination once, byte-identical to what we store,
    and the export log says so."""
    scp = scp_factory("dest")
    app = appliance_factory(config={
        "modalities": {"dest": node(scp.port)},
        "routes": {"all": {"destinations": ["dest"]}},
        "queue": {"linger": 60},  # the association stays open between arrivals
    }).start()
    files = make_series(tmp_path / "in", 12)
    storescu(app, *files)
    wait_for(lambda: len(scp.files()) == 12 and pending(app, "dest") == 0, 60, "delivery")
    assert received(scp) == 12
    assert scp.log().count("Association Acknowledged") == 1, "one association for the stream"
    stored = {dataset_bytes(app.get(f"/instances/{i}/file").content)
              for i in app.json("/instances")}
    delivered = {dataset_bytes(p.read_bytes()) for p in scp.files()}
    assert delivered == stored
    exports = app.json("/exports")["Exports"]
    assert len(exports) == 12
    assert {e["Outcome"] for e in exports} == {"success"}
    assert {e["RemoteModality"] for e in exports} == {"dest"}


def test_conditions_select_what_is_routed(appliance_factory: Any, scp_factory: Any,
                                          tmp_path: Path) -> None:
    """Modality, calling AE (wildcard) and any tag (regular expression, read from the file
    when the index does not keep it) must all match."""
    scp = scp_factory("dest")
    app = appliance_factory(config={
        "modalities": {"dest": node(scp.port)},
        "routes": {"pet": {"destinations": ["dest"], "modality": ["PT"],
                           "calling_aet": ["PET*"],
                           "tags": {"BitsStored": ["re:1[26]"]}}},
    }).start()
    pet = make_series(tmp_path / "pet", 3, modality="PT")
    ct = make_series(tmp_path / "ct", 2, modality="CT")
    storescu(app, *pet, options=("-aet", "PETCAM"))
    storescu(app, *ct, options=("-aet", "PETCAM"))
    storescu(app, *make_series(tmp_path / "pet2", 2, modality="PT"), options=("-aet", "OTHER"))
    wait_for(lambda: len(scp.files()) >= 3 and pending(app, "dest") == 0, 60, "delivery")
    assert statistics_instances(app) == 7
    assert received(scp) == 3
    assert {dcmread(p).Modality for p in scp.files()} == {"PT"}


def statistics_instances(app: ApplianceProcess) -> int:
    return int(app.statistics()["CountInstances"])


def test_stable_study_trigger_to_orthanc(appliance_factory: Any, tmp_path: Path) -> None:
    """A study route holds its instances until the study is stable, then sends all of them;
    arrival is checked through Orthanc's REST API."""
    orthanc = Orthanc(tmp_path / "orthanc")
    try:
        app = appliance_factory(config={
            "storage": {"stable_age": 4},
            "modalities": {"pacs": node(orthanc.dicom_port, "ORTHANC")},
            "routes": {"study": {"destinations": ["pacs"], "trigger": "study"}},
        }).start()
        study = "1.2.826.0.1.3680043.8.498.1"
        files = (make_series(tmp_path / "a", 4, study_uid=study)
                 + make_series(tmp_path / "b", 3, study_uid=study, modality="MR"))
        storescu(app, *files)
        state = queue(app)["pacs"]
        assert state["Held"] == 7 and state["Pending"] == 0, state
        wait_for(lambda: len(orthanc.json("/instances")) == 7, 60, "Orthanc to receive")
        wait_for(lambda: pending(app, "pacs") == 0, 30, "the queue to drain")
        studies = orthanc.json("/studies?expand")
        assert [s["MainDicomTags"]["StudyInstanceUID"] for s in studies] == [study]
    finally:
        orthanc.stop()


def test_destination_down_then_up(appliance_factory: Any, scp_factory: Any,
                                  tmp_path: Path) -> None:
    """While the port is closed everything waits; once it opens everything arrives, once."""
    scp = scp_factory("dest", start=False)
    app = appliance_factory(config={
        "modalities": {"dest": node(scp.port)},
        "routes": {"all": {"destinations": ["dest"]}},
        "queue": FAST_RETRY,
    }).start()
    storescu(app, *make_series(tmp_path / "in", 20))
    wait_for(lambda: queue(app)["dest"]["ConsecutiveFailures"] >= 2, 30, "failed attempts")
    assert pending(app, "dest") == 20
    scp.start()
    wait_for(lambda: pending(app, "dest") == 0, 60, "delivery after the port opened")
    assert received(scp) == 20
    assert len(scp.files()) == 20


@pytest.mark.slow
def test_kill_with_full_queue_resumes(appliance_factory: Any, scp_factory: Any,
                                      tmp_path: Path) -> None:
    """kill -9 with 60 instances queued for a destination that is down: after a restart with
    the destination up, all 60 arrive."""
    scp = scp_factory("dest", start=False)
    config = {"modalities": {"dest": node(scp.port)},
              "routes": {"all": {"destinations": ["dest"]}}, "queue": FAST_RETRY}
    app = appliance_factory(config=config).start()
    result = storescu(app, *make_series(tmp_path / "in", 60), options=("-v",))
    assert result.stderr.count(SUCCESS_LINE) == 60
    app.kill()
    scp.start()
    app.start()
    wait_for(lambda: pending(app, "dest") == 0 and received(scp) >= 60, 60, "delivery")
    assert received(scp) == 60


class RefusingSCP:
    """A pynetdicom storage SCP whose answer the test chooses (0xA700 until told otherwise),
    and when: each answer waits until ``gate`` is open."""

    def __init__(self, status: int = 0xA700) -> None:
        self.status = status
        self.gate = threading.Event()
        self.gate.set()
        self.arrived = 0  # requests, answered or waiting at the gate
        self.received: list[str] = []
        self.ae = AE(ae_title="REFUSER")
        self.ae.supported_contexts = AllStoragePresentationContexts
        self.port = free_port()
        self.server = self.ae.start_server(
            ("127.0.0.1", self.port), block=False,
            evt_handlers=[(evt.EVT_C_STORE, self._on_store)],
        )
        self.lock = threading.Lock()

    def _on_store(self, event: Any) -> int:
        with self.lock:
            self.arrived += 1
        self.gate.wait(60)
        with self.lock:
            if self.status == 0:
                self.received.append(str(event.request.AffectedSOPInstanceUID))
            return self.status

    def stop(self) -> None:
        self.server.shutdown()


def test_failure_statuses_backoff_then_failed_then_retry(appliance_factory: Any,
                                                          tmp_path: Path) -> None:
    scp = RefusingSCP()
    try:
        app = appliance_factory(config={
            "modalities": {"refuser": node(scp.port, "REFUSER")},
            "routes": {"all": {"destinations": ["refuser"]}},
            "queue": {**FAST_RETRY, "max_attempts": 3},
        }).start()
        storescu(app, *make_series(tmp_path / "in", 5))
        wait_for(lambda: queue(app)["refuser"]["Failed"] == 5, 60, "entries to fail")
        state = queue(app)["refuser"]
        assert state["Pending"] == 0 and state["LastError"].startswith("0xA700")
        failed = app.json("/queue/refuser?state=failed")
        assert len(failed) == 5 and {e["Attempts"] for e in failed} == {3}
        outcomes = [e["Outcome"] for e in app.json("/exports?limit=1000")["Exports"]]
        assert outcomes == ["failure"] * 15
        with scp.lock:
            scp.status = 0
        r = app.session.post(app.url + "/queue/refuser/retry", timeout=30)
        assert r.json() == {"Retried": 5}
        wait_for(lambda: len(scp.received) == 5 and pending(app, "refuser") == 0, 60,
                 "delivery after retry")
        assert queue(app)["refuser"]["Failed"] == 0
    finally:
        scp.stop()


def test_a_stop_finishes_the_instance_on_the_wire_not_the_batch(appliance_factory: Any,
                                                               tmp_path: Path) -> None:
    """SIGTERM while a slow destination holds a batch: the stop waits for the instance being
    sent only (a destination that takes its time must not hold a shutdown); the rest of the
    batch stays queued and arrives, once, after the restart."""
    scp = RefusingSCP(status=0)
    scp.gate.clear()
    try:
        app = appliance_factory(config={  # a series route: the 20 are claimed as one batch
            "storage": {"stable_age": 1},
            "modalities": {"slow": node(scp.port, "REFUSER")},
            "routes": {"series": {"destinations": ["slow"], "trigger": "series"}},
        }).start()
        storescu(app, *make_series(tmp_path / "in", 20))
        wait_for(lambda: scp.arrived == 1, 60, "the first instance to wait at the gate")
        assert app.proc is not None
        app.proc.send_signal(signal.SIGTERM)
        wait_for(lambda: "routing: stopping" in app.log(), 30, "routing to stop")
        scp.gate.set()
        assert app.stop() == 0
        assert scp.arrived == 1 and len(scp.received) == 1
        app.start()
        wait_for(lambda: pending(app, "slow") == 0, 60, "the rest, after the restart")
        assert len(scp.received) == len(set(scp.received)) == 20
    finally:
        scp.gate.set()
        scp.stop()


def test_one_destination_down_does_not_delay_the_other(appliance_factory: Any,
                                                       scp_factory: Any,
                                                       tmp_path: Path) -> None:
    up = scp_factory("up")
    down = scp_factory("down", start=False)
    app = appliance_factory(config={
        "modalities": {"up": node(up.port), "down": node(down.port)},
        "routes": {"both": {"destinations": ["up", "down"]}},
        "queue": {"retry_initial": 30},
    }).start()
    storescu(app, *make_series(tmp_path / "in", 30))
    # storescp logs a request before it answers: the entry goes once the answer is recorded
    wait_for(lambda: received(up) == 30 and pending(app, "up") == 0, 60,
             "the live destination to receive")
    assert pending(app, "down") == 30


def test_compressed_instance_falls_back_to_uncompressed(appliance_factory: Any,
                                                        scp_factory: Any) -> None:
    """storescp (by default) accepts only uncompressed syntaxes: an RLE instance arrives
    decompressed, pixel for pixel."""
    scp = scp_factory("dest")
    app = appliance_factory(config={
        "modalities": {"dest": node(scp.port)},
        "routes": {"all": {"destinations": ["dest"]}},
    }).start()
    source = pydicom_file("MR_small_RLE.dcm")
    send_untouched(app, source)
    wait_for(lambda: len(scp.files()) == 1 and pending(app, "dest") == 0, 60, "delivery")
    got = dcmread(scp.files()[0])
    assert not got.file_meta.TransferSyntaxUID.is_compressed
    assert got.SOPInstanceUID == dcmread(source).SOPInstanceUID, "the same instance"
    original = dcmread(source)
    original.decompress()
    assert got.pixel_array.tobytes() == original.pixel_array.tobytes()


def send_untouched(app: ApplianceProcess, path: Path) -> None:
    """C-STORE of a file's bytes as they are (pynetdicom does not re-encode a path)."""
    ds = dcmread(path, stop_before_pixels=True)
    ae = AE(ae_title="SENDER")
    ae.add_requested_context(ds.SOPClassUID, ds.file_meta.TransferSyntaxUID)
    assoc = ae.associate("127.0.0.1", app.dicom_port, ae_title=app.aet)
    assert assoc.is_established
    try:
        assert assoc.send_c_store(path).Status == 0
    finally:
        assoc.release()


def test_modalities_and_routes_change_at_run_time(appliance_factory: Any, scp_factory: Any,
                                                  tmp_path: Path) -> None:
    """Through the REST API, validated, saved, in effect at once and after a restart."""
    scp = scp_factory("dest")
    app = appliance_factory().start()
    url = app.url
    r = app.session.put(f"{url}/routes/r", json={"destinations": ["nowhere"]}, timeout=30)
    assert r.status_code == 400 and "nowhere" in r.json()["Message"]
    r = app.session.put(f"{url}/modalities/dest", json={"AET": "DEST", "Host": "127.0.0.1",
                                                     "Port": 0}, timeout=30)
    assert r.status_code == 400 and "minimum" in r.json()["Message"]
    r = app.session.put(f"{url}/modalities/dest", json={"AET": "DEST", "Host": "127.0.0.1",
                                                     "Port": scp.port}, timeout=30)
    assert r.status_code == 200, r.text
    assert app.json("/modalities") == ["dest"]
    r = app.session.put(f"{url}/routes/r", json={"destinations": ["dest"], "modality": ["MR"]},
                     timeout=30)
    assert r.status_code == 200, r.text
    r = app.session.delete(f"{url}/modalities/dest", timeout=30)
    assert r.status_code == 400, "a modality a route uses cannot be deleted"
    storescu(app, *make_series(tmp_path / "mr", 2, modality="MR"))
    wait_for(lambda: received(scp) == 2, 60, "the new route to deliver")
    assert app.stop() == 0
    app.start()
    assert app.json("/routes")["r"]["modality"] == ["MR"]
    storescu(app, *make_series(tmp_path / "mr2", 1, modality="MR"))
    wait_for(lambda: received(scp) == 3, 60, "the saved route to deliver after a restart")


def test_send_by_hand_goes_through_the_queue(appliance_factory: Any, scp_factory: Any,
                                             tmp_path: Path) -> None:
    scp = scp_factory("dest", start=False)
    app = appliance_factory(config={"modalities": {"dest": node(scp.port)},
                                    "queue": FAST_RETRY}).start()
    storescu(app, *make_series(tmp_path / "in", 4))
    (study,) = app.json("/studies")
    r = app.session.post(f"{app.url}/modalities/dest/store",
                         json={"Resources": [study], "Asynchronous": True}, timeout=30)
    assert r.status_code == 200, r.text
    job = r.json()["Path"]
    assert job == f"/jobs/{r.json()['ID']}"
    waiting = app.json(job)
    assert (waiting["Type"], waiting["State"], waiting["Content"]["InstancesCount"]) == (
        "DicomModalityStore", "Running", 4)
    r = app.session.post(f"{app.url}/modalities/dest/store", json=["nope"], timeout=30)
    assert r.status_code == 404
    r = app.session.post(f"{app.url}/modalities/dest/store",
                         json={"Resources": [study], "Timeout": 1}, timeout=30)
    assert r.status_code == 502 and r.json()["Waiting"] == 4, "down: still queued"
    scp.start()
    wait_for(lambda: received(scp) == 8 and pending(app, "dest") == 0, 60, "delivery")
    done = app.json(job)
    assert (done["State"], done["Progress"], done["Content"]["FailedInstancesCount"]) == (
        "Success", 100, 0)
    r = app.session.post(f"{app.url}/modalities/dest/store", json=study, timeout=60)
    assert r.status_code == 200, r.text
    assert r.json()["Delivered"] == 4 and r.json()["FailedInstancesCount"] == 0
    assert received(scp) == 12


def test_undecodable_syntax_is_refused_with_a_reason(appliance_factory: Any,
                                                     scp_factory: Any) -> None:
    """JPEG-LS has no installed decoder: the entry waits, with the reason in the queue."""
    scp = scp_factory("dest")
    app = appliance_factory(config={
        "modalities": {"dest": node(scp.port)},
        "routes": {"all": {"destinations": ["dest"]}},
    }).start()
    send_untouched(app, pydicom_file("MR_small_jpeg_ls_lossless.dcm"))
    wait_for(lambda: queue(app).get("dest", {}).get("LastError"), 60, "the refusal")
    assert "decompressing JPEG-LS Lossless Image Compression failed" in \
        queue(app)["dest"]["LastError"]
    assert pending(app, "dest") == 1 and scp.files() == []


def test_series_trigger_and_concurrent_workers(appliance_factory: Any, scp_factory: Any,
                                               tmp_path: Path) -> None:
    """A series route waits for each series to be stable; two workers share a destination
    without sending anything twice."""
    scp = scp_factory("dest")
    app = appliance_factory(config={
        "storage": {"stable_age": 2},
        "modalities": {"dest": node(scp.port, concurrency=2)},
        "routes": {"series": {"destinations": ["dest"], "trigger": "series"}},
        "queue": {"batch": 5},
    }).start()
    study = "1.2.826.0.1.3680043.8.498.2"
    storescu(app, *make_series(tmp_path / "a", 30, study_uid=study),
             *make_series(tmp_path / "b", 30, study_uid=study))
    wait_for(lambda: received(scp) >= 60 and pending(app, "dest") == 0, 60, "delivery")
    assert received(scp) == 60 and len(scp.files()) == 60
    assert len(app.json("/exports?limit=1000")["Exports"]) == 60
