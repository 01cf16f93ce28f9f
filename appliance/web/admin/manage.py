"""The administrator's pages: settings (versions, rollback, export/import), modalities with a
C-ECHO test, routes with a dry run, the queue, users and API tokens."""

from __future__ import annotations

import dataclasses
import json
import typing
from collections.abc import Callable
from typing import Any

import bottle

from ...accounts import ROLES, AccountError
from ...config import Config, ConfigError, Permission
from ...index import browse
from ...routing.service import UnknownResource
from .. import auth
from .common import Services, answer_status, flash_redirect, form, render, who

# What the settings page edits; the rest stays in the configuration file (or the export).
EDITABLE = ("dicom.aet", "dicom.port", "http.host", "http.port", "storage.stable_age",
            "quota.max_storage_mb", "quota.max_patients", "quota.max_studies",
            "quota.free_low_mb", "quota.free_high_mb", "quota.retention_days",
            "security.session_minutes", "security.secure_cookies",
            "security.max_login_failures", "security.lockout_minutes")
NEEDS_RESTART = {"dicom.aet", "dicom.port", "http.host", "http.port"}
PERMISSIONS: tuple[str, ...] = typing.get_args(Permission)
ROUTE_LISTS = ("calling_aet", "called_aet", "modality", "sop_class")


@dataclasses.dataclass(frozen=True)
class Field:
    key: str
    kind: type
    value: Any
    help: str


def fields(config: Config) -> list[Field]:
    out = []
    for key in EDITABLE:
        section, name = key.split(".")
        owner = getattr(config, section)
        meta = {f.name: f for f in dataclasses.fields(owner)}[name]
        kind = typing.get_type_hints(type(owner))[name]
        out.append(Field(key, kind, getattr(owner, name), meta.metadata.get("help", "")))
    return out


def parse_settings(config: Config) -> dict[str, Any]:
    """The settings form as a partial configuration (``ConfigError`` on a malformed number)."""
    changes: dict[str, dict[str, Any]] = {}
    for f in fields(config):
        section, name = f.key.split(".")
        raw = form(f.key)
        value: Any
        try:
            value = (raw == "on" if f.kind is bool else f.kind(raw))
        except ValueError as exc:
            raise ConfigError(f"{f.key}: {raw!r} is not a {f.kind.__name__}") from exc
        if value != f.value:
            changes.setdefault(section, {})[name] = value
    return changes


def patterns(text: str) -> list[str]:
    return [p.strip() for p in text.split(",") if p.strip()]


def route_values() -> dict[str, Any]:
    """The route form as the configuration's keys."""
    tags: dict[str, list[str]] = {}
    for line in form("tags").splitlines():
        keyword, sep, values = line.partition("=")
        if not sep:
            if line.strip():
                raise ConfigError(f"tags: {line!r} is not Keyword=pattern,pattern")
            continue
        tags[keyword.strip()] = patterns(values)
    return {"destinations": bottle.request.forms.getall("destinations"),
            "enabled": form("enabled") == "on", "trigger": form("trigger") or "instance",
            "tags": tags, **{k: patterns(form(k)) for k in ROUTE_LISTS}}


def modality_values() -> dict[str, Any]:
    try:
        port, concurrency = int(form("port")), int(form("concurrency", "1") or "1")
    except ValueError as exc:
        raise ConfigError("port and concurrency must be whole numbers") from exc
    return {"aet": form("aet"), "host": form("host"), "port": port,
            "allow": bottle.request.forms.getall("allow"), "concurrency": concurrency}


def install(app: bottle.Bottle, s: Services) -> None:
    install_settings(app, s)
    install_routing(app, s)
    install_users(app, s)


def install_settings(app: bottle.Bottle, s: Services) -> None:
    def page(error: str = "", status: int = 200) -> str:
        answer_status(status, error)
        return render("settings.tpl", title="Settings", fields=fields(s.configs.current),
                      restart=NEEDS_RESTART, history=s.configs.history(), error=error)

    @app.get("/admin/settings", role="admin")
    def settings() -> Any:
        return page()

    @app.post("/admin/settings")
    def save() -> Any:
        try:
            changes = parse_settings(s.configs.current)
            if changes:
                s.configs.update(changes, who())
        except ConfigError as exc:
            return page(f"not saved: {exc}", 400)
        auth.audit_note(f"settings changed: {json.dumps(changes)}")
        restart = [f"{sec}.{k}" for sec, v in changes.items() for k in v
                   if f"{sec}.{k}" in NEEDS_RESTART]
        note = f" ({', '.join(restart)} apply after a restart)" if restart else ""
        return flash_redirect("/admin/settings", ("saved" if changes else "no change") + note)

    @app.post("/admin/settings/rollback/<version:int>")
    def rollback(version: int) -> Any:
        try:
            s.configs.rollback(version, who())
        except ConfigError as exc:
            return page(f"rollback refused: {exc}", 400)
        auth.audit_note(f"configuration rolled back to version {version}")
        return flash_redirect("/admin/settings", f"version {version} restored")

    @app.get("/admin/settings/export", role="admin")
    def export() -> Any:
        bottle.response.content_type = "application/json"
        bottle.response.set_header("Content-Disposition",
                                   'attachment; filename="appliance-config.json"')
        return json.dumps(s.configs.export(), indent=2)

    @app.post("/admin/settings/import")
    def import_() -> Any:
        upload = bottle.request.files.get("file")
        try:
            if upload is None:
                raise ConfigError("choose a configuration file to import")
            values = json.loads(upload.file.read().decode("utf-8"))
            if not isinstance(values, dict):
                raise ConfigError("the file must hold a JSON object")
            values.pop("data", None)
            s.configs.replace(values, who())
        except (ConfigError, ValueError) as exc:
            return page(f"not imported: {exc}", 400)
        auth.audit_note("configuration imported")
        return flash_redirect("/admin/settings", "configuration imported")


def install_routing(app: bottle.Bottle, s: Services) -> None:
    def modalities_page(error: str = "", echo: str = "", edit: dict[str, Any] | None = None,
                        status: int = 200) -> str:
        answer_status(status, error)
        return render("modalities.tpl", title="Modalities", modalities=s.routing.modalities(),
                      permissions=PERMISSIONS, error=error, echo=echo, edit=edit)

    @app.get("/admin/modalities", role="admin")
    def modalities() -> Any:
        name = bottle.request.query.getunicode("edit") or ""
        found = s.routing.modalities().get(name)
        edit = {"name": name, **dataclasses.asdict(found)} if found else None
        return modalities_page(edit=edit)

    @app.post("/admin/modalities")
    def save_modality() -> Any:
        """C-ECHO first; save when it answers (or when asked to save anyway)."""
        name = form("name")
        edit = {"name": name, "aet": form("aet"), "host": form("host"), "port": form("port"),
                "allow": bottle.request.forms.getall("allow"),
                "concurrency": form("concurrency", "1")}
        try:
            values = modality_values()
            failure = s.routing.echo(values)
            echo = f"C-ECHO to {values['aet']}: " + (failure or "success")
            if form("action") == "test":
                auth.audit_note(echo)
                return modalities_page(echo=echo, edit=edit)
            if failure and form("force") != "on":
                return modalities_page(echo=echo, edit=edit, status=400,
                                       error=f"not saved: {echo}")
            s.routing.put_modality(name, values, who())
        except ConfigError as exc:
            return modalities_page(error=f"not saved: {exc}", edit=edit, status=400)
        auth.audit_note(f"modality {name} saved: {json.dumps(values)}; {echo}")
        return flash_redirect("/admin/modalities", f"modality {name} saved; {echo}")

    @app.post("/admin/modalities/<name>/delete")
    def delete_modality(name: str) -> Any:
        return deleted("modality", "/admin/modalities", s.routing.delete_modality, name)

    def routes_page(error: str = "", edit: dict[str, Any] | None = None,
                    dry: list[dict[str, Any]] | None = None, status: int = 200) -> str:
        answer_status(status, error)
        return render("routes.tpl", title="Routes", routes=s.routing.routes(),
                      modalities=sorted(s.routing.modalities()), error=error, edit=edit,
                      dry=dry)

    @app.get("/admin/routes", role="admin")
    def routes() -> Any:
        name = bottle.request.query.getunicode("edit") or ""
        found = s.routing.routes().get(name)
        return routes_page(edit={"name": name, **dataclasses.asdict(found)} if found else None)

    @app.post("/admin/routes")
    def save_route() -> Any:
        name = form("name")
        try:
            values = route_values()
            edit = {"name": name, **values}
            if form("action") == "dry-run":
                matched = s.routing.dry_run(name or "dry-run", values)
                dry = [{**summary, "matched": matched[summary["id"]]}
                       for summary in map(browse.study, matched) if summary]
                return routes_page(edit=edit, dry=dry)
            s.routing.put_route(name, values, who())
        except ConfigError as exc:
            return routes_page(error=f"not saved: {exc}", edit={"name": name}, status=400)
        auth.audit_note(f"route {name} saved: {json.dumps(values)}")
        return flash_redirect("/admin/routes", f"route {name} saved")

    @app.post("/admin/routes/<name>/toggle")
    def toggle_route(name: str) -> Any:
        found = s.routing.routes().get(name)
        if found is None:
            raise bottle.HTTPError(404, f"no route {name}")
        values = {**dataclasses.asdict(found), "enabled": not found.enabled}
        s.routing.put_route(name, values, who())
        state = "enabled" if values["enabled"] else "disabled"
        auth.audit_note(f"route {name} {state}")
        return flash_redirect("/admin/routes", f"route {name} {state}")

    @app.post("/admin/routes/<name>/delete")
    def delete_route(name: str) -> Any:
        return deleted("route", "/admin/routes", s.routing.delete_route, name)


    @app.get("/admin/queue")
    def queue() -> Any:
        return render("queue.tpl", title="Queue", queue=s.routing.queue_state())

    @app.post("/admin/queue/<name>/<action:re:retry|cancel>")
    def queue_action(name: str, action: str) -> Any:
        count = s.routing.retry(name) if action == "retry" else s.routing.cancel(name)
        auth.audit_note(f"{action} {count} entries for {name}")
        return flash_redirect("/admin/queue", f"{count} entries for {name}: {action}")


def deleted(kind: str, page: str, delete: Callable[[str, str], None], name: str) -> Any:
    """Delete a modality or route, and say so (or why not) on its page."""
    try:
        delete(name, who())
    except (ConfigError, UnknownResource) as exc:
        return flash_redirect(page, error=str(exc))
    auth.audit_note(f"{kind} {name} deleted")
    return flash_redirect(page, f"{kind} {name} deleted")


def install_users(app: bottle.Bottle, s: Services) -> None:
    accounts = s.security.accounts

    def page(error: str = "", secret: str = "", status: int = 200) -> str:
        answer_status(status, error)
        return render("users.tpl", title="Users", users=accounts.users(),
                      tokens=accounts.tokens(), roles=ROLES, error=error, secret=secret)

    @app.get("/admin/users", role="admin")
    def users() -> Any:
        return page()

    def changed(action: Callable[[], Any], done: str) -> Any:
        """Run an account change; its error on the page, or its note in the audit log."""
        try:
            action()
        except AccountError as exc:
            return page(str(exc), status=400)
        auth.audit_note(done)
        return flash_redirect("/admin/users", done)

    @app.post("/admin/users")
    def add_user() -> Any:
        name, role = form("username"), form("role")

        def add() -> None:
            accounts.add(name, role, form("password"))
            s.security.sessions.drop_user(name)  # a changed role or password logs them out

        return changed(add, f"user {name} saved with role {role}")

    @app.post("/admin/users/<name>/delete")
    def remove_user(name: str) -> Any:
        def remove() -> None:
            accounts.remove(name)
            s.security.sessions.drop_user(name)

        return changed(remove, f"user {name} removed")

    @app.post("/admin/tokens")
    def create_token() -> Any:
        try:
            secret = accounts.create_token(form("username"), form("label"))
        except AccountError as exc:
            return page(str(exc), status=400)
        auth.audit_note(f"API token {secret.split('.')[0]} created for {form('username')}")
        return page(secret=secret)

    @app.post("/admin/tokens/<token_id>/delete")
    def revoke_token(token_id: str) -> Any:
        return changed(lambda: accounts.revoke_token(token_id), f"API token {token_id} revoked")
