"""Query/retrieve over the REST API (``/modalities/{name}/echo|query|move|get``, ``/queries``)
against a real Orthanc and a DCMTK storescp, by plain HTTP and by pyorthanc; the answers'
shapes compared with those of the real Orthanc asking the same node."""

from __future__ import annotations

import json
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

from appliance.accounts import Accounts

from .conftest import (
    ADMIN,
    ADMIN_PASSWORD,
    ApplianceProcess,
    dcmtk,
    free_port,
    make_series,
    storescu,
)
from .peers import Orthanc, StoreSCP
from .test_scu import sop_uids, study_count

pytestmark = pytest.mark.integration

VIEWER = ("physicist", "viewer password")
# On Orthanc: study A (DOE^JOHN: a CT series of 2, an MR series of 1), B (DOE^JANE), C (ROE^RICHARD)
A, B, C = generate_uid(), generate_uid(), generate_uid()


@dataclass
class World:
    app: ApplianceProcess
    orthanc: Orthanc
    dest_port: int
    files: dict[str, list[Path]]

    def post(self, path: str, **kw: Any) -> requests.Response:
        return self.app.session.post(self.app.url + path, timeout=120, **kw)

    def query(self, body: dict[str, Any], modality: str = "orthanc") -> str:
        r = self.post(f"/modalities/{modality}/query", json=body)
        assert r.status_code == 200, r.text
        answer = r.json()
        assert answer["Path"] == f"/queries/{answer['ID']}"
        return str(answer["ID"])


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    root = tmp_path_factory.mktemp("rest-remote")
    dest_port, orthanc_port = free_port(), free_port()
    node = {"host": "127.0.0.1"}
    app = ApplianceProcess(root / "data", config={"dicom": {"query_retrieve_size": 20},
                                                  "modalities": {
        "orthanc": {"aet": "ORTHANC", "port": orthanc_port, **node},
        "dest": {"aet": "DEST", "port": dest_port, **node},
        "down": {"aet": "DOWN", "port": free_port(), **node},
    }})  # fmt: skip
    Accounts(app.data).add(VIEWER[0], "viewer", VIEWER[1])
    files = {
        "a-ct": make_series(root / "a-ct", 2, "RQ1", A, patient_name="DOE^JOHN"),
        "a-mr": make_series(root / "a-mr", 1, "RQ1", A, modality="MR", patient_name="DOE^JOHN"),
        "b": make_series(root / "b", 1, "RQ2", B, patient_name="DOE^JANE"),
        "c": make_series(root / "c", 1, "RQ3", C, patient_name="ROE^RICHARD"),
    }
    with ExitStack() as started:
        orthanc = Orthanc(root / "orthanc", dicom_port=orthanc_port, modalities={
            "box": ["APPLIANCE", "127.0.0.1", app.dicom_port],
            "dest": ["DEST", "127.0.0.1", dest_port],
            "self": ["ORTHANC", "127.0.0.1", orthanc_port],  # to compare our answers' shapes
        })  # fmt: skip
        started.callback(orthanc.stop)
        started.callback(app.start().stop)
        dcmtk("storescu", "-aec", "ORTHANC", "127.0.0.1", str(orthanc_port),
              *[str(p) for paths in files.values() for p in paths])
        yield World(app, orthanc, dest_port, files)


@pytest.fixture
def dest(world: World, tmp_path: Path) -> Iterator[StoreSCP]:
    scp = StoreSCP(world.dest_port, tmp_path / "dest")
    yield scp
    scp.stop()


def series_uid(world: World, name: str) -> str:
    return str(dcmread(world.files[name][0]).SeriesInstanceUID)


# --- C-ECHO -----------------------------------------------------------------------------------


def test_echo(world: World, dest: StoreSCP) -> None:
    for name, body in (("orthanc", None), ("orthanc", {"Timeout": 5, "CheckFind": True}),
                       ("dest", {})):
        r = world.post(f"/modalities/{name}/echo", json=body)
        assert r.status_code == 200 and r.json() == {}, (name, r.text)
    r = world.post("/modalities/down/echo")
    assert r.status_code == 500
    assert "cannot connect to DOWN@127.0.0.1" in r.json()["Message"]


# --- C-FIND and the held queries --------------------------------------------------------------


def test_query_at_study_level_and_the_query_resource(world: World) -> None:
    query_id = world.query({"Level": "Study", "Query": {"PatientName": "DOE*",
                                                        "StudyDate": ""}})
    assert query_id in world.app.json("/queries")
    assert world.app.json(f"/queries/{query_id}") == [
        "answers", "level", "modality", "query", "retrieve"]
    assert world.app.json(f"/queries/{query_id}/answers") == ["0", "1"]
    simplified = world.app.json(f"/queries/{query_id}/answers?expand&simplify")
    assert sorted((a["PatientName"], a["StudyInstanceUID"], a["PatientID"], a["StudyDate"])
                  for a in simplified) == [("DOE^JANE", B, "RQ2", "20260101"),
                                           ("DOE^JOHN", A, "RQ1", "20260101")]
    full = world.app.json(f"/queries/{query_id}/answers?expand")
    assert {a["0020,000d"]["Value"] for a in full} == {A, B}
    assert full[0]["0010,0010"]["Name"] == "PatientName"
    assert full[0]["0010,0010"]["Type"] == "String"
    content = world.app.json(f"/queries/{query_id}/answers/1/content?short")
    assert content["0020,000d"] == simplified[1]["StudyInstanceUID"]
    assert world.app.json(f"/queries/{query_id}/answers/1") == [
        "content", "retrieve", "query-series", "query-instances"]
    assert world.app.get(f"/queries/{query_id}/level").text == "Study"
    assert world.app.get(f"/queries/{query_id}/modality").text == "orthanc"
    assert world.app.json(f"/queries/{query_id}/query?simplify") == {
        "PatientName": "DOE*", "StudyDate": ""}
    assert world.app.json(f"/queries/{query_id}/query")["0010,0010"]["Value"] == "DOE*"
    r = world.app.session.delete(f"{world.app.url}/queries/{query_id}", timeout=30)
    assert r.status_code == 200
    assert query_id not in world.app.json("/queries")
    assert world.app.get(f"/queries/{query_id}").status_code == 404


def test_query_at_series_level_with_wildcards(world: World) -> None:
    query_id = world.query({"Level": "Series", "Query": {"StudyInstanceUID": A,
                                                         "Modality": ""}})
    answers = world.app.json(f"/queries/{query_id}/answers?expand&simplify")
    assert sorted((a["Modality"], a["SeriesInstanceUID"]) for a in answers) == [
        ("CT", series_uid(world, "a-ct")), ("MR", series_uid(world, "a-mr"))]
    query_id = world.query({"Level": "series", "Query": {"PatientID": "RQ?",
                                                         "Modality": "M*"}})
    (answer,) = world.app.json(f"/queries/{query_id}/answers?expand&simplify")
    assert answer["SeriesInstanceUID"] == series_uid(world, "a-mr")
    assert world.app.get(f"/queries/{query_id}/level").text == "Series"
    query_id = world.query({"Level": "Study", "Query": {"PatientName": "NOBODY*"}})
    assert world.app.json(f"/queries/{query_id}/answers") == []


def test_queries_below_an_answer(world: World) -> None:
    """``query-studies|series|instances``: a new query with the answer's identifying keys."""
    patient = world.query({"Level": "Patient", "Query": {"PatientID": "RQ1"}})

    def below(query_id: str, child: str, body: dict[str, Any]) -> list[dict[str, Any]]:
        r = world.post(f"/queries/{query_id}/answers/0/query-{child}", json=body)
        assert r.status_code == 200, r.text
        return list(world.app.json(f"/queries/{r.json()['ID']}/answers?expand&simplify"))

    (study,) = below(patient, "studies", {})
    assert study["StudyInstanceUID"] == A
    series = below(patient, "series", {"Query": {"Modality": "MR"}})
    assert [s["SeriesInstanceUID"] for s in series] == [series_uid(world, "a-mr")]
    mr = world.query({"Level": "Series", "Query": {"StudyInstanceUID": A, "Modality": "MR"}})
    assert world.app.json(f"/queries/{mr}/answers/0") == ["content", "retrieve",
                                                          "query-instances"]
    (instance,) = below(mr, "instances", {"Timeout": 10})
    assert instance["SOPInstanceUID"] in sop_uids(world.files["a-mr"])
    r = world.post(f"/queries/{mr}/answers/0/query-studies", json={})
    assert r.status_code == 404 and "no Study below" in r.json()["Message"]
    r = world.post(f"/queries/{mr}/answers/0/query-instances", json={"Query": ["x"]})
    assert r.status_code == 400


def test_the_oldest_queries_are_forgotten(world: World) -> None:
    """``dicom.query_retrieve_size`` (20 here) queries are held, as Orthanc's
    QueryRetrieveSize."""
    made = [world.query({"Level": "Patient", "Query": {"PatientID": f"RQ{i}"}})
            for i in range(21)]
    assert world.app.json("/queries") == made[1:]
    assert world.app.get(f"/queries/{made[0]}/answers").status_code == 404
    assert world.app.json(f"/queries/{made[2]}/answers/0/content?simplify")["PatientID"] == "RQ2"


def test_normalize_drops_keys_below_the_level(world: World) -> None:
    """Normalize (the default): keys below the level are not sent, the level's identifying
    keys are; without it the keys go as given."""
    query_id = world.query({"Level": "Study", "Query": {"PatientID": "RQ3",
                                                        "SOPInstanceUID": ""}})
    (answer,) = world.app.json(f"/queries/{query_id}/answers?expand&simplify")
    assert answer["StudyInstanceUID"] == C and "SOPInstanceUID" not in answer
    query_id = world.query({"Level": "Study", "Normalize": False,
                            "Query": {"PatientID": "RQ3"}})
    (answer,) = world.app.json(f"/queries/{query_id}/answers?expand&simplify")
    assert "StudyInstanceUID" not in answer and answer["PatientID"] == "RQ3"


def canonical(value: Any) -> Any:
    """A JSON value without the order of keys and of the answers (a list)."""
    if isinstance(value, list):
        return sorted(json.dumps(v, sort_keys=True) for v in value)
    return json.dumps(value, sort_keys=True)


def test_answers_have_the_shape_of_orthancs(world: World) -> None:
    """The real Orthanc asks itself the same query: same answers, same JSON."""
    body: dict[str, Any] = {"Level": "Study", "Query": {"PatientName": "DOE*", "StudyDate": "",
                                        "ModalitiesInStudy": ""}}
    theirs = requests.post(f"{world.orthanc.url}/modalities/self/query", json=body,
                           timeout=60).json()["ID"]
    ours = world.query(body)
    for suffix in ("answers", "answers?expand", "answers?expand&simplify",
                   "answers/0/content?short", "query", "query?simplify"):
        expected = world.orthanc.json(f"/queries/{theirs}/{suffix}")
        got = world.app.json(f"/queries/{ours}/{suffix}")
        assert canonical(got) == canonical(expected), suffix
    assert world.app.json(f"/queries/{ours}") == world.orthanc.json(f"/queries/{theirs}")


# --- retrieve: C-MOVE and C-GET ---------------------------------------------------------------


def test_retrieve_an_answer_lands_in_the_box(world: World) -> None:
    query_id = world.query({"Level": "Study", "Query": {"PatientName": "DOE^JANE"}})
    r = world.post(f"/queries/{query_id}/answers/0/retrieve", data="APPLIANCE")
    assert r.status_code == 200, r.text
    done = r.json()
    assert (done["TargetAet"], done["RemoteAet"], done["Completed"]) == (
        "APPLIANCE", "ORTHANC", 1)
    assert done["Query"] == [{"0008,0052": "STUDY", "0020,000d": B}]
    assert study_count(world.app.json, "RQ2", B) == 1
    r = world.post(f"/queries/{query_id}/retrieve")  # again, to us by default
    assert r.status_code == 200 and r.json()["TargetAet"] == "APPLIANCE", r.text
    assert study_count(world.app.json, "RQ2", B) == 1


def test_retrieve_every_answer_with_cget(world: World) -> None:
    query_id = world.query({"Level": "Series", "Query": {"PatientID": "RQ3"}})
    r = world.post(f"/queries/{query_id}/retrieve", json={"RetrieveMethod": "C-GET",
                                                          "Timeout": 30})
    assert r.status_code == 200, r.text
    assert r.json()["Completed"] == 1 and "TargetAet" not in r.json()
    assert study_count(world.app.json, "RQ3", C) == 1


def test_move_to_a_third_node(world: World, dest: StoreSCP) -> None:
    ct = series_uid(world, "a-ct")
    r = world.post("/modalities/orthanc/move", json={
        "Level": "Series", "Resources": [{"StudyInstanceUID": A, "SeriesInstanceUID": ct}],
        "TargetAet": "DEST", "Timeout": 30})
    assert r.status_code == 200, r.text
    assert r.json()["Completed"] == 2 and r.json()["TargetAet"] == "DEST"
    assert sop_uids(dest.files()) == sop_uids(world.files["a-ct"])
    r = world.post("/modalities/orthanc/move", json={
        "Level": "Study", "Resources": [{"StudyInstanceUID": A}], "TargetAet": "NOWHERE"})
    # Orthanc refuses an unknown destination with 0xC000 (unable to process)
    assert r.status_code == 500, r.text
    assert r.json()["Message"].startswith("C-MOVE from ORTHANC: status 0xC000 (Failure)")
    r = world.post("/modalities/down/move", json={
        "Level": "Study", "Resources": [{"StudyInstanceUID": A}]})
    assert r.status_code == 500 and "cannot connect to DOWN" in r.json()["Message"]


def test_get_a_study_into_the_box(world: World) -> None:
    r = world.post("/modalities/orthanc/get", json={
        "Level": "Study", "Resources": [{"StudyInstanceUID": A}]})
    assert r.status_code == 200, r.text
    assert (r.json()["Completed"], r.json()["Failed"]) == (3, 0)
    assert r.json()["LocalAet"] == "APPLIANCE"
    assert study_count(world.app.json, "RQ1", A) == 3


# --- errors and roles -------------------------------------------------------------------------


STUDY_A = {"Level": "Study", "Resources": [{"StudyInstanceUID": A}]}


@pytest.mark.parametrize("path, body, message", [
    ("/modalities/orthanc/echo", "not json", "not valid JSON"),
    ("/modalities/orthanc/echo", {"Timeout": "soon"}, "Timeout"),
    ("/modalities/orthanc/echo", {"Tiemout": 5}, "unknown keys: Tiemout"),
    ("/modalities/orthanc/query", {"Query": {}}, "must contain Level"),
    ("/modalities/orthanc/query", {"Level": "Galaxy", "Query": {}}, "Galaxy"),
    ("/modalities/orthanc/query", {"Level": "Study", "Query": ["PatientName"]}, "Query"),
    ("/modalities/orthanc/query", {"Level": "Study", "Query": {"PatientName": 1}}, "Query"),
    ("/modalities/orthanc/query", {"Level": "Study", "Query": {"NoSuchKey": ""}},
     "neither a DICOM keyword"),
    ("/modalities/orthanc/query", {"Level": "Study", "Normalize": "yes"}, "Normalize"),
    ("/modalities/orthanc/move", {"Level": "Study"}, "must contain Resources"),
    ("/modalities/orthanc/move", {**STUDY_A, "Resources": []}, "non-empty"),
    ("/modalities/orthanc/move", {**STUDY_A, "TargetAet": "A\\B"}, "not a valid AE title"),
    ("/modalities/orthanc/move", {**STUDY_A, "Synchronous": "no"}, "Synchronous must be"),
    ("/modalities/orthanc/get", {**STUDY_A, "TargetAet": "DEST"}, "unknown keys"),
    ("/modalities/orthanc/get", [A], "JSON object"),
])  # fmt: skip
def test_bad_bodies_are_400_and_change_nothing(world: World, path: str, body: Any,
                                               message: str) -> None:
    before = (world.app.json("/queries"), world.app.statistics()["CountInstances"])
    kw = {"data": body} if isinstance(body, str) else {"json": body}
    r = world.post(path, **kw)
    assert r.status_code == 400 and message in r.json()["Message"], r.text
    assert (world.app.json("/queries"), world.app.statistics()["CountInstances"]) == before


def test_bad_retrieve_bodies_are_400(world: World) -> None:
    query_id = world.query({"Level": "Study", "Query": {"PatientID": "RQ2"}})
    for body in ({"RetrieveMethod": "C-SEND"}, {"TargetAet": 7}, {"Colour": "red"}):
        r = world.post(f"/queries/{query_id}/retrieve", json=body)
        assert r.status_code == 400, (body, r.text)
    # without its StudyInstanceUID, an answer would ask to move every study
    query_id = world.query({"Level": "Study", "Normalize": False, "Query": {"PatientID": "RQ2"}})
    r = world.post(f"/queries/{query_id}/answers/0/retrieve")
    assert r.status_code == 400 and "without StudyInstanceUID" in r.json()["Message"]


def test_unknown_modality_query_and_answer_are_404(world: World) -> None:
    for path, body in (("/modalities/nosuch/echo", None),
                       ("/modalities/nosuch/query", {"Level": "Study", "Query": {}}),
                       ("/modalities/nosuch/move", STUDY_A),
                       ("/modalities/nosuch/get", STUDY_A),
                       ("/queries/nosuch/retrieve", None),
                       ("/queries/nosuch/answers/0/retrieve", "APPLIANCE")):
        kw = {"data": body} if isinstance(body, str) else {"json": body}
        r = world.post(path, **kw)
        assert r.status_code == 404 and r.json()["HttpStatus"] == 404, (path, r.text)
    assert "unknown modality 'nosuch'" in world.post("/modalities/nosuch/echo").json()["Message"]
    for suffix in ("", "/answers", "/answers/0/content", "/level", "/modality", "/query"):
        assert world.app.get(f"/queries/nosuch{suffix}").status_code == 404, suffix
    query_id = world.query({"Level": "Study", "Query": {"PatientID": "RQ2"}})
    for path in (f"/queries/{query_id}/answers/1/content", f"/queries/{query_id}/answers/1"):
        assert world.app.get(path).status_code == 404, path
    r = world.post(f"/queries/{query_id}/answers/1/retrieve")
    assert r.status_code == 404 and "no answer 1" in r.json()["Message"]
    r = world.app.session.delete(f"{world.app.url}/queries/nosuch", timeout=30)
    assert r.status_code == 404


def test_viewers_may_echo_and_query_not_retrieve(world: World) -> None:
    def post(path: str, body: Any) -> requests.Response:
        return requests.post(world.app.url + path, json=body, auth=VIEWER, timeout=60)

    assert post("/modalities/orthanc/echo", None).status_code == 200
    r = post("/modalities/orthanc/query", {"Level": "Study", "Query": {"PatientID": "RQ2"}})
    assert r.status_code == 200
    query_id = r.json()["ID"]
    assert requests.get(f"{world.app.url}/queries/{query_id}/answers", auth=VIEWER,
                        timeout=30).json() == ["0"]
    for path, body in ((f"/queries/{query_id}/retrieve", {}),
                       ("/modalities/orthanc/move", STUDY_A),
                       ("/modalities/orthanc/get", STUDY_A)):
        assert post(path, body).status_code == 403, path
    r = requests.delete(f"{world.app.url}/queries/{query_id}", auth=VIEWER, timeout=30)
    assert r.status_code == 200 and query_id not in world.app.json("/queries")
    assert requests.post(world.app.url + "/modalities/orthanc/echo",
                         timeout=30).status_code == 401


# --- pyorthanc --------------------------------------------------------------------------------


def test_pyorthanc_modality_echo_store_query_move(world: World, tmp_path: Path) -> None:
    client = pyorthanc.Orthanc(world.app.url, username=ADMIN, password=ADMIN_PASSWORD)
    orthanc = pyorthanc.Modality(client, "orthanc")
    assert orthanc.echo()
    assert not pyorthanc.Modality(client, "down").echo()

    mine = generate_uid()
    storescu(world.app, *make_series(tmp_path / "mine", 2, "RQ4", mine, patient_name="OWN^ONE"))
    (study,) = pyorthanc.find_studies(client, query={"PatientID": "RQ4"})
    sent = orthanc.store(study.id_)
    assert sent["RemoteAet"] == "ORTHANC" and sent["FailedInstancesCount"] == 0
    assert study_count(world.orthanc.json, "RQ4", mine) == 2

    found = orthanc.query({"Level": "Study", "Query": {"PatientName": "DOE*"}})
    assert sorted(a["StudyInstanceUID"] for a in found["answers"]) == sorted([A, B])
    client.delete_studies_id(study.id_)
    found = orthanc.query({"Level": "Study", "Query": {"PatientID": "RQ4", "PatientName": ""}})
    assert [a["PatientName"] for a in found["answers"]] == ["OWN^ONE"]
    moved = orthanc.move(found["ID"], {"TargetAet": "APPLIANCE"})
    assert moved["Completed"] == 2
    assert study_count(world.app.json, "RQ4", mine) == 2
