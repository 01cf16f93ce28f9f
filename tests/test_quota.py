"""The rotating storage quota against real senders: DCMTK storescu fills small limits."""

from __future__ import annotations

import datetime
import os
from pathlib import Path
from typing import Any

import pytest
from pydicom.uid import generate_uid

from .conftest import SUCCESS_LINE, ApplianceProcess, make_series, storescu, wait_for

pytestmark = pytest.mark.integration

OUT_OF_RESOURCES_LINE = "Received Store Response (Refused: OutOfResources)"  # 0xA700


def send_study(app: ApplianceProcess, folder: Path, count: int = 3, patient: str = "P",
               modality: str = "CT", refused: bool = False) -> str:
    """Store one study (or see it refused with 0xA700); return its StudyInstanceUID."""
    uid = generate_uid()
    files = make_series(folder, count, patient_id=patient, study_uid=uid, modality=modality)
    result = storescu(app, *files, options=("-v", "--no-halt"), check=not refused)
    line = OUT_OF_RESOURCES_LINE if refused else SUCCESS_LINE
    assert result.stderr.count(line) == count, result.stderr
    return uid


def study_uids(app: ApplianceProcess) -> set[str]:
    return {s["MainDicomTags"]["StudyInstanceUID"] for s in app.json("/studies?expand")}


def study_id(app: ApplianceProcess, uid: str) -> str:
    (found,) = [s["ID"] for s in app.json("/studies?expand")
                if s["MainDicomTags"]["StudyInstanceUID"] == uid]
    return str(found)


def protect(app: ApplianceProcess, uid: str, body: Any = "1") -> None:
    data = body if isinstance(body, str) else None
    r = app.session.put(f"{app.url}/studies/{study_id(app, uid)}/protected", data=data,
                     json=None if data is not None else body, timeout=30)
    assert r.status_code == 200, r.text


def fsck_clean(app: ApplianceProcess) -> None:
    result = app.fsck()
    assert result.returncode == 0, result.stdout + result.stderr


def test_max_studies_recycles_oldest_unprotected(appliance_factory: Any,
                                                 tmp_path: Path) -> None:
    app = appliance_factory(config={"quota": {"max_studies": 3}}).start()
    uids = [send_study(app, tmp_path / f"s{i}", patient=f"P{i}") for i in range(3)]
    protect(app, uids[0])
    uids += [send_study(app, tmp_path / f"s{i}", patient=f"P{i}") for i in range(3, 5)]
    assert study_uids(app) == {uids[0], uids[3], uids[4]}, "oldest unprotected go first"
    assert app.statistics()["CountPatients"] == 3, "emptied patients go with their study"
    deleted = [c for c in app.json("/changes?limit=1000")["Changes"]
               if c["ChangeType"] == "Deleted" and c["ResourceType"] == "Study"]
    assert len(deleted) == 2 and all(c["Reason"] == "recycled: max_studies" for c in deleted)


def test_nothing_to_free_refuses_with_a700_and_keeps_the_store(appliance_factory: Any,
                                                               tmp_path: Path) -> None:
    app = appliance_factory(config={"quota": {"max_studies": 2}}).start()
    kept = [send_study(app, tmp_path / f"s{i}") for i in range(2)]
    for uid in kept:
        protect(app, uid)
    result = send_study(app, tmp_path / "refused", refused=True)
    assert result not in study_uids(app)
    log = app.log()
    assert "store full (max_studies) and nothing can be recycled" in log

    def quota_check() -> dict[str, Any]:
        checks = app.get("/health").json()["checks"]
        return dict(next(c for c in checks if c["name"] == "quota"))

    (upload,) = make_series(tmp_path / "upload", 1, patient_id="U")
    r = app.session.post(f"{app.url}/instances", data=upload.read_bytes(), timeout=60)
    assert r.status_code == 507 and "store is full" in r.json()["Message"], r.text
    wait_for(lambda: quota_check()["status"] == "failing", 60, "the health check to say full")
    assert "max_studies" in quota_check()["reason"]
    assert study_uids(app) == set(kept)
    assert app.statistics()["CountInstances"] == 6
    # an instance of a study already stored still fits: only new studies cross the limit
    more = make_series(tmp_path / "more", 1, patient_id="P", study_uid=kept[0])
    assert SUCCESS_LINE in storescu(app, *more, options=("-v",)).stderr
    app.stop()
    fsck_clean(app)


def test_storescu_sees_out_of_resources(appliance_factory: Any, tmp_path: Path) -> None:
    app = appliance_factory(config={"quota": {"max_storage_mb": 0.05}}).start()
    files = make_series(tmp_path / "big", 1, size=256)  # 128 KiB of pixels: over 50 KB alone
    result = storescu(app, *files, options=("-v",), check=False)
    assert OUT_OF_RESOURCES_LINE in result.stderr, result.stderr
    assert app.statistics()["CountInstances"] == 0


def test_queued_studies_are_never_recycled(appliance_factory: Any, tmp_path: Path) -> None:
    """A study waiting in the outbound queue (its destination is down) stays, even when it is
    the oldest; once nothing else can go, new studies are refused."""
    app = appliance_factory(config={
        "quota": {"max_studies": 2},
        "modalities": {"down": {"aet": "DOWN", "host": "127.0.0.1", "port": 9}},
        "routes": {"mr": {"destinations": ["down"], "modality": ["MR"]}},
        "queue": {"retry_initial": 60},
    }).start()
    mr = send_study(app, tmp_path / "mr", modality="MR")
    ct = [send_study(app, tmp_path / f"ct{i}") for i in range(3)]
    assert study_uids(app) == {mr, ct[2]}
    r = app.session.post(f"{app.url}/queue/down/cancel", timeout=30)
    assert r.json() == {"Cancelled": 3}
    newest = send_study(app, tmp_path / "after")
    assert study_uids(app) == {ct[2], newest}, "cancelled: the MR study may go now"


def test_max_storage_bytes(appliance_factory: Any, tmp_path: Path) -> None:
    limit_mb = 0.25
    app = appliance_factory(config={"quota": {"max_storage_mb": limit_mb}}).start()
    uids = [send_study(app, tmp_path / f"s{i}", count=5, patient=f"P{i}") for i in range(6)]
    stats = app.statistics()
    assert int(stats["TotalDiskSize"]) <= limit_mb * 1024 * 1024
    remaining = study_uids(app)
    assert uids[-1] in remaining and uids[0] not in remaining
    assert remaining == set(uids[-len(remaining):]), "the newest are kept"


def free_mb(path: Path) -> float:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize / (1024 * 1024)


def test_free_space_watermark_for_real(appliance_factory: Any, tmp_path: Path) -> None:
    """A low mark just above the real free space: everything unprotected is recycled, the
    protected study stays, and new instances are refused."""
    app = appliance_factory().start()
    uids = [send_study(app, tmp_path / f"s{i}", patient=f"P{i}") for i in range(3)]
    protect(app, uids[1])
    app.stop()
    mark = free_mb(tmp_path) + 200
    app.config = {"quota": {"free_low_mb": mark, "free_high_mb": mark + 10,
                            "check_interval": 0.2}}
    app.start()
    wait_for(lambda: study_uids(app) == {uids[1]}, 30, "recycling to the watermark")
    send_study(app, tmp_path / "refused", refused=True)
    assert study_uids(app) == {uids[1]}
    assert "store full (free space)" in app.log()


def yyyymmdd(days: int) -> str:
    return (datetime.date.today() + datetime.timedelta(days=days)).strftime("%Y%m%d")


def test_retention_by_age_and_modality_and_pins_with_expiry(appliance_factory: Any,
                                                            tmp_path: Path) -> None:
    app = appliance_factory(config={"quota": {
        "retention_days_by_modality": {"MR": 2 / 86400}, "check_interval": 0.2,
    }}).start()
    ct = send_study(app, tmp_path / "ct")
    mr_expired_pin = send_study(app, tmp_path / "mr1", modality="MR")
    mr_pinned = send_study(app, tmp_path / "mr2", modality="MR")
    protect(app, mr_expired_pin, {"Protected": True, "Until": yyyymmdd(-1)})
    protect(app, mr_pinned, {"Protected": True, "Until": yyyymmdd(+1)})
    assert app.get(f"/studies/{study_id(app, mr_pinned)}/protected").text == "1"
    assert app.get(f"/studies/{study_id(app, ct)}/protected").text == "0"
    wait_for(lambda: study_uids(app) == {ct, mr_pinned}, 30, "retention of the MR study")
    reasons = {c["Reason"] for c in app.json("/changes?limit=1000")["Changes"]
               if c["ChangeType"] == "Deleted"}
    assert reasons == {"recycled: retention 2.31481e-05 days (MR)"}


def test_protect_and_delete_from_the_command_line(appliance_factory: Any,
                                                  tmp_path: Path) -> None:
    """Beside the running box (through its API, with the local token) and on a stopped one
    (straight to the store); by UID or Orthanc ID; the quota then obeys the pins."""
    app = appliance_factory(config={"quota": {"max_studies": 2}}).start()
    a, b = (send_study(app, tmp_path / f"s{i}", patient=f"P{i}") for i in range(2))
    result = app.cli("protect", a, "--until", "20991231")
    assert result.returncode == 0, result.stderr
    assert "protected until the end of 20991231" in result.stdout
    assert app.get(f"/studies/{study_id(app, a)}/protected").text == "1"
    b_id = study_id(app, b)
    assert app.cli("delete", b_id).returncode == 2, "--yes is required"
    result = app.cli("delete", b_id, "--yes")
    assert result.returncode == 0, result.stderr
    assert study_uids(app) == {a}
    assert any(c["ChangeType"] == "Deleted" and c["ID"] == b_id
               for c in app.json("/changes?limit=1000")["Changes"])
    c, d = (send_study(app, tmp_path / f"n{i}", patient=f"N{i}") for i in range(2))
    assert study_uids(app) == {a, d}, "the pinned study stays, the oldest other goes"
    series_uid = app.json(f"/studies/{study_id(app, d)}/series")[0]["MainDicomTags"][
        "SeriesInstanceUID"]
    app.stop()
    result = app.cli("unprotect", a)
    assert result.returncode == 0 and "no longer protected" in result.stdout, result.stderr
    for unknown in ("1.2.3.4.5", series_uid):  # series cannot be pinned (as in Orthanc)
        refused = app.cli("protect", unknown)
        assert refused.returncode == 2, refused.stdout
        assert f"no patients or studies {unknown!r}" in refused.stderr
    app.start()
    last = send_study(app, tmp_path / "last", patient="L")
    assert study_uids(app) == {d, last}, "unpinned while stopped: recycled first"


def test_bad_protection_body(appliance: ApplianceProcess, tmp_path: Path) -> None:
    send_study(appliance, tmp_path / "s")
    (sid,) = appliance.json("/studies")
    r = appliance.session.put(f"{appliance.url}/studies/{sid}/protected", data="maybe", timeout=30)
    assert r.status_code == 400
    r = appliance.session.put(f"{appliance.url}/studies/unknown/protected", data="1", timeout=30)
    assert r.status_code == 404


def test_delete_cascades_and_names_the_remaining_ancestor(appliance: ApplianceProcess,
                                                          tmp_path: Path) -> None:
    uid = generate_uid()
    make_series(tmp_path / "a", 2, study_uid=uid)
    make_series(tmp_path / "b", 2, study_uid=uid)
    storescu(appliance, *sorted((tmp_path / "a").iterdir()), *sorted((tmp_path / "b").iterdir()))
    series = appliance.json("/series")
    r = appliance.session.delete(f"{appliance.url}/series/{series[0]}", timeout=30)
    assert r.json()["RemainingAncestor"]["Type"] == "Study"
    (study,) = appliance.json("/studies")
    r = appliance.session.delete(f"{appliance.url}/studies/{study}", timeout=30)
    assert r.json() == {"RemainingAncestor": None}
    assert appliance.statistics()["CountInstances"] == 0
    r = appliance.session.delete(f"{appliance.url}/studies/{study}", timeout=30)
    assert r.status_code == 404
    appliance.stop()
    fsck_clean(appliance)


@pytest.mark.slow
def test_kill_during_a_large_recycling(appliance_factory: Any, tmp_path: Path) -> None:
    """kill -9 while a 1,500-instance study is being recycled: after a restart, index and
    files agree."""
    app = appliance_factory().start()
    big = send_study(app, tmp_path / "big", count=1500)
    app.stop()
    app.config = {"quota": {"retention_days": 1 / 86400, "check_interval": 0.1}}
    app.start()
    wait_for(lambda: app.statistics()["CountInstances"] < 1500, 60, "recycling to start")
    app.kill()
    app.config = {}
    app.start()
    assert big not in study_uids(app)
    app.stop()
    fsck_clean(app)
