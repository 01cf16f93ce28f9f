"""The pages everyone with an account uses: login, dashboard, browse, a study, restore."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import bottle

from ...accounts import AccountError
from ...index import audit, browse, resources
from ...routing.service import UnknownResource
from ...storage.archive import zip_stream
from ...storage.governor import DiskUsage, disk_usage
from .. import auth
from .common import STATIC, Services, flash_redirect, form, render, who

GRAPH_HOURS = 24


def install(app: bottle.Bottle, s: Services) -> None:
    install_login(app, s)

    @app.get("/")
    def root() -> Any:
        return bottle.redirect("/admin/")

    @app.get("/admin/")
    def dashboard() -> Any:
        now = time.time()
        stats = resources.statistics()
        disk = disk_usage(s.store.governor, int(stats["TotalDiskSize"]))
        queue = s.routing.queue_state()
        return render("dashboard.tpl", title="Dashboard", stats=stats, disk=disk,
                      attention=attention(s.store.governor.full_reason, disk, queue),
                      sources=browse.last_reception_by_source(),
                      hourly=browse.received_per_hour(now, GRAPH_HOURS),
                      labels=browse.hours_ago_labels(now, GRAPH_HOURS),
                      queue=queue, failures=s.routing.recent_failures(10),
                      modalities=sorted(s.routing.modalities()))

    @app.get("/admin/browse")
    def search() -> Any:
        query = browse.StudyQuery(**{k: _query(k) for k in (
            "name", "patient_id", "date_from", "date_to", "modality", "accession")})
        by_patient = _query("view") == "patients"
        return render("browse.tpl", title="Browse", q=query, by_patient=by_patient,
                      patients=browse.search_patients(query) if by_patient else [],
                      studies=[] if by_patient else browse.search_studies(query),
                      modalities=sorted(s.routing.modalities()))

    @app.get("/admin/studies/<study_id>")
    def study(study_id: str) -> Any:
        found = browse.study(study_id)
        if found is None:
            raise bottle.HTTPError(404, f"no study {study_id}")
        return render("study.tpl", title="Study", study=found,
                      modalities=sorted(s.routing.modalities()),
                      sent=_query("sent"), since=_query("since"))

    @app.post("/admin/studies/<study_id>/send", role="viewer")
    def send(study_id: str) -> Any:
        """The restore: queue the study for a known modality, then watch it on its page."""
        destination = form("destination")
        since = time.time()
        try:
            count = s.routing.send("studies", study_id, destination)
        except UnknownResource as exc:
            raise bottle.HTTPError(404, str(exc)) from exc
        auth.audit_note(f"sent study {study_id} ({count} instances) to {destination}")
        target = f"/admin/studies/{study_id}?sent={destination}&since={since:.3f}"
        return bottle.redirect(target)

    @app.get("/admin/studies/<study_id>/progress")
    def progress(study_id: str) -> Any:
        try:
            since = float(_query("since") or "0")
            value = s.routing.progress(study_id, _query("destination"), since)
        except ValueError as exc:
            raise bottle.HTTPError(400, "since must be a time") from exc
        except UnknownResource as exc:
            raise bottle.HTTPError(404, str(exc)) from exc
        bottle.response.content_type = "application/json"
        return json.dumps(value)

    @app.get("/admin/studies/<study_id>/archive")
    def archive(study_id: str) -> Iterator[bytes]:
        files = s.store.files_of("studies", study_id)
        if files is None:
            raise bottle.HTTPError(404, f"no study {study_id}")
        bottle.response.content_type = "application/zip"
        bottle.response.set_header("Content-Disposition",
                                   f'attachment; filename="study-{study_id[:8]}.zip"')
        return zip_stream(files)

    @app.post("/admin/studies/<study_id>/delete")
    def delete(study_id: str) -> Any:
        if s.store.delete_resource("studies", study_id, f"deleted by {who()}") is None:
            raise bottle.HTTPError(404, f"no study {study_id}")
        auth.audit_note(f"deleted study {study_id}")
        return flash_redirect("/admin/browse", "study deleted")

    @app.post("/admin/studies/<study_id>/protect")
    def protect(study_id: str) -> Any:
        protected = form("protected") == "1"
        until = form("until")
        try:
            expiry = time.mktime(time.strptime(until, "%Y-%m-%d")) + 86400 if until else None
        except ValueError:
            return flash_redirect(f"/admin/studies/{study_id}", error="the date is not valid")
        if not s.store.protect("studies", study_id, protected, expiry if protected else None):
            raise bottle.HTTPError(404, f"no study {study_id}")
        auth.audit_note(f"{'protected' if protected else 'unprotected'} study {study_id}"
                        + (f" until {until}" if protected and until else ""))
        return flash_redirect(f"/admin/studies/{study_id}",
                              "protected" if protected else "protection removed")

    @app.get("/admin/series/<series_id>")
    def series(series_id: str) -> Any:
        found = browse.series_instances(series_id)
        if found is None:
            raise bottle.HTTPError(404, f"no series {series_id}")
        return render("series.tpl", title="Series", series=found)

    @app.get("/admin/upload", role="admin")
    def upload() -> Any:
        return render("upload.tpl", title="Upload")

    @app.get("/admin/audit", role="admin")
    def audit_log() -> Any:
        return render("audit.tpl", title="Audit log",
                      entries=audit.recent(500, _query("action")), action=_query("action"))


def attention(full_reason: str, disk: DiskUsage, queue: dict[str, dict[str, Any]]
              ) -> list[str]:
    """What needs someone's attention, for the dashboard's status line."""
    out = [f"refusing new images: {full_reason}"] if full_reason else []
    if disk.free < 0.05 * disk.total:
        out.append("less than 5% of the disk is free")
    for name, q in queue.items():
        if q["ConsecutiveFailures"]:
            out.append(f"{name} is failing: {q['LastError']}")
        if q["Failed"]:
            out.append(f"{q['Failed']} sends to {name} failed for good (retry them in Queue)")
    return out


def install_login(app: bottle.Bottle, s: Services) -> None:
    security = s.security

    @app.get("/static/<name:path>", public=True)
    def static(name: str) -> Any:
        return bottle.static_file(name, root=str(STATIC))

    @app.get("/login", public=True)
    def login_form() -> Any:
        if security.setup is not None:
            return render("message.tpl", title="Not set up",
                          message="No administrator yet: open the setup link printed in the "
                                  "appliance's log.")
        return render("login.tpl", title="Log in", error="", next=_query("next"),
                      pre_csrf=auth.pre_csrf_token(security.settings()), name="")

    @app.post("/login", public=True)
    def login() -> Any:
        auth.check_pre_csrf()
        name, target = form("username"), auth.safe_next(form("next"))
        try:
            session = security.login(name, form("password"), auth.client_address())
        except AccountError as exc:
            bottle.response.status = 429 if isinstance(exc, auth.LoginPaused) else 401
            return render("login.tpl", title="Log in", error=str(exc), next=target,
                          pre_csrf=auth.pre_csrf_token(security.settings()), name=name)
        auth.set_session_cookie(session, security.settings())
        return bottle.redirect(target)

    @app.post("/logout", role="viewer")
    def logout() -> Any:
        principal = auth.current()
        if principal.session is not None:
            security.sessions.drop(principal.session.id)
        bottle.response.delete_cookie(auth.COOKIE, path="/")
        return bottle.redirect("/login")

    @app.get("/setup", public=True)
    def setup_form() -> Any:
        token = _query("token")
        if security.setup is None or not security.setup.matches(token):
            raise bottle.HTTPError(403, "the setup link is not valid (already used?)")
        return render("setup.tpl", title="Set up", token=token, error="",
                      pre_csrf=auth.pre_csrf_token(security.settings()))

    @app.post("/setup", public=True)
    def setup() -> Any:
        auth.check_pre_csrf()
        token, password = form("token"), form("password")
        try:
            if password != form("password2"):
                raise AccountError("the two passwords differ")
            session = security.create_admin(token, form("username"), password,
                                            auth.client_address())
        except AccountError as exc:
            bottle.response.status = 400
            return render("setup.tpl", title="Set up", token=token, error=str(exc),
                          pre_csrf=auth.pre_csrf_token(security.settings()))
        auth.set_session_cookie(session, security.settings())
        return bottle.redirect("/admin/")


def _query(name: str) -> str:
    value = bottle.request.query.getunicode(name)
    return value.strip() if value else ""
