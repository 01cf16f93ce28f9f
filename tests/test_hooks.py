"""Python hooks: every callback fires with the right data, the worked examples of the README
do what they say, and a failing or hanging hook never loses an image."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path
from typing import Any

import pytest
import requests

from .conftest import ROOT, ApplianceProcess, free_port, make_series, storescu, wait_for
from .peers import StoreSCP

pytestmark = pytest.mark.integration

RECORDER = """
import json

OUT = {out!r}


def record(kind, **values):
    with open(OUT, "a") as f:
        f.write(json.dumps({{"kind": kind, **values}}) + "\\n")


def filter_incoming(instance, api):
    record("filter", patient=instance.tags["PatientID"], origin=instance.origin.kind,
           rows=int(instance.dataset().Rows))
    if instance.tags["PatientID"] == "REFUSED":
        return False
    return 0xA700 if instance.tags["PatientID"] == "FULL" else True


def on_stored_instance(instance, api):
    record("stored", id=instance.id, study=instance.ids["ParentStudy"],
           sop=instance.tags["SOPInstanceUID"], name=api.tags(instance.id)["PatientName"])


def on_stable_series(series, api):
    record("stable_series", id=series["ID"], count=len(series["Instances"]))


def on_stable_study(study, api):
    record("stable_study", id=study["ID"])


def on_change(change, api):
    record("change", type=change["ChangeType"], id=change["ID"])
"""


def events(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines()]


def hooked(factory: Any, tmp_path: Path, source: str, **config: Any) -> ApplianceProcess:
    path = tmp_path / "hooks.py"
    path.write_text(source)
    settings = {"hooks": {"path": str(path), **config.pop("hooks", {})},
                "storage": {"stable_age": 1}, **config}
    return factory(config=settings).start()


def upload(app: ApplianceProcess, path: Path) -> requests.Response:
    return app.session.post(app.url + "/instances", data=path.read_bytes(), timeout=60)


def test_each_callback_fires_with_the_right_data(appliance_factory: Any,
                                                 tmp_path: Path) -> None:
    out = tmp_path / "events.jsonl"
    app = hooked(appliance_factory, tmp_path, RECORDER.format(out=str(out)))
    files = make_series(tmp_path / "s", 3, patient_id="P1", patient_name="Hook^Test")
    storescu(app, *files)
    refused = make_series(tmp_path / "r", 1, patient_id="REFUSED")[0]
    r = upload(app, refused)
    assert r.status_code == 400 and "refused by the incoming filter" in r.json()["Message"]
    r = upload(app, make_series(tmp_path / "f", 1, patient_id="FULL")[0])
    assert r.status_code == 400 and "0xA700" in r.json()["Message"]
    assert app.statistics()["CountInstances"] == 3

    (study,) = app.json("/studies")
    (series,) = app.json("/series")
    wait_for(lambda: {e["kind"] for e in events(out)} >= {"stable_series", "stable_study"},
             30, "stability callbacks")
    seen = events(out)
    filters = [e for e in seen if e["kind"] == "filter"]
    assert [e["patient"] for e in filters] == ["P1"] * 3 + ["REFUSED", "FULL"]
    assert {e["origin"] for e in filters} == {"DicomProtocol", "RestApi"}
    assert {e["rows"] for e in filters} == {64}
    stored = [e for e in seen if e["kind"] == "stored"]
    assert sorted(e["id"] for e in stored) == sorted(app.json("/instances"))
    assert {e["study"] for e in stored} == {study} and {e["name"] for e in stored} == {"Hook^Test"}
    assert [e for e in seen if e["kind"] == "stable_series"] == [
        {"kind": "stable_series", "id": series, "count": 3}]
    assert [e["id"] for e in seen if e["kind"] == "stable_study"] == [study]
    wait_for(lambda: {(e["type"], e["id"]) for e in events(out) if e["kind"] == "change"}
             >= {("NewStudy", study), ("StableSeries", series), ("StableStudy", study)},
             30, "on_change for the new and stable resources")
    changes = app.json("/changes")["Changes"]
    assert [c["ChangeType"] for c in changes][-2:] == ["StableSeries", "StableStudy"]


def test_failing_and_hanging_hooks_lose_no_image(appliance_factory: Any,
                                                 tmp_path: Path) -> None:
    source = textwrap.dedent("""
        import threading

        def filter_incoming(instance, api):
            threading.Event().wait(3600)  # hangs: abandoned after hooks.timeout

        def on_stored_instance(instance, api):
            raise RuntimeError("broken hook")

        def on_stable_series(series, api):
            threading.Event().wait(3600)
    """)
    app = hooked(appliance_factory, tmp_path, source, hooks={"timeout": 0.3})
    files = make_series(tmp_path / "s", 20)
    result = storescu(app, *files, options=("-v",))
    assert result.stderr.count("Received Store Response (Success)") == 20
    assert upload(app, make_series(tmp_path / "u", 1)[0]).status_code == 200
    assert app.statistics()["CountInstances"] == 21
    wait_for(lambda: "hook on_stable_series still running" in app.log(), 30, "the timeout")
    log = app.log()
    assert "hook filter_incoming still running after 0.3 s: abandoned" in log
    assert "hook on_stored_instance raised RuntimeError('broken hook')" in log
    assert "hook calls are still running" in log, \
        "a hook that always hangs cannot exhaust threads"
    storescu(app, *make_series(tmp_path / "later", 1))
    assert app.statistics()["CountInstances"] == 22, "the box keeps storing"
    assert app.fsck().returncode == 0


def test_unloadable_hooks_file_is_a_clear_start_up_error(appliance_factory: Any,
                                                          tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="fails to load"):
        hooked(appliance_factory, tmp_path, "this is not python")


def test_worked_examples(appliance_factory: Any, tmp_path: Path) -> None:
    """The README's examples: PET studies go to planning when stable; RT images are kept."""
    planning = StoreSCP(free_port(), tmp_path / "planning", "+B")
    try:
        examples = ROOT / "tools" / "hooks"
        source = "\n".join((examples / name).read_text()
                           for name in ("pet_to_planning.py", "keep_treatment_images.py"))
        app = hooked(appliance_factory, tmp_path, source, modalities={
            "planning": {"aet": planning.aet, "host": "127.0.0.1", "port": planning.port}})
        storescu(app, *make_series(tmp_path / "pet", 2, patient_id="PET", modality="PT"))
        storescu(app, *make_series(tmp_path / "ct", 2, patient_id="CT", modality="CT"))
        storescu(app, *make_series(tmp_path / "rt", 1, patient_id="RT", modality="RTIMAGE"))
        wait_for(lambda: len(planning.files()) == 2, 60, "the PET study at planning")
        protected = {s["PatientMainDicomTags"]["PatientID"]: s["IsProtected"]
                     for s in app.json("/studies?expand")}
        assert protected == {"PET": False, "CT": False, "RT": True}
        wait_for(lambda: app.json("/exports")["Exports"] != [], 30, "the export log")
        assert {e["PatientID"] for e in app.json("/exports")["Exports"]} == {"PET"}
    finally:
        planning.stop()
