"""Who may call what: a Bottle plugin in front of every route, the login and setup pages.

Three ways in: a session cookie (the admin page: HttpOnly, SameSite=Strict, expiring, kept in
memory, so a restart logs everyone out), an API token (``Authorization: Bearer``) or HTTP
Basic (the REST API). A route declares ``role="admin"`` or ``role="viewer"``; by default reads
need a viewer and everything else an administrator. Requests authenticated by the cookie must
carry the session's CSRF token when they change anything (form field ``csrf_token`` or header
``X-CSRF-Token``); token and Basic requests carry no ambient credential, so they need none.
Every change that succeeds is written to the audit log.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import logging
import secrets
import threading
import time
from collections import defaultdict, deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import bottle

from ..accounts import AccountError, Accounts, LocalToken, SetupToken, User
from ..config import SecuritySettings

log = logging.getLogger(__name__)

COOKIE = "appliance_session"
PRE_COOKIE = "appliance_csrf"  # double-submit token of the login and setup forms
SAFE_METHODS = {"GET", "HEAD", "OPTIONS"}
PRINCIPAL = "appliance.principal"
AUDIT = "appliance.audit"  # what a view says it did, for the audit log
LOCAL_USER = "(local)"  # commands run on the box (no account name can have parentheses)

Audit = Callable[[str, str, str, str, str], None]  # user, address, action, detail, outcome


@dataclass
class Session:
    id: str
    user: str
    role: str
    csrf: str
    expires: float


@dataclass(frozen=True)
class Principal:
    user: str
    role: str
    via: str  # session | token | basic
    session: Session | None = None


class Sessions:
    """Server-side sessions in memory; each request pushes the expiry forward."""

    def __init__(self) -> None:
        self._items: dict[str, Session] = {}
        self._lock = threading.Lock()

    def create(self, user: User, minutes: float) -> Session:
        session = Session(secrets.token_urlsafe(32), user.name, user.role,
                          secrets.token_urlsafe(32), time.time() + minutes * 60)
        with self._lock:
            self._items[session.id] = session
        return session

    def get(self, session_id: str, minutes: float) -> Session | None:
        now = time.time()
        with self._lock:
            session = self._items.get(session_id)
            if session is None or session.expires < now:
                self._items.pop(session_id, None)
                return None
            session.expires = now + minutes * 60
            return session

    def drop(self, session_id: str) -> None:
        with self._lock:
            self._items.pop(session_id, None)

    def drop_user(self, user: str) -> None:
        with self._lock:
            for key in [k for k, s in self._items.items() if s.user == user]:
                del self._items[key]


class LoginLimiter:
    """Failed logins remembered per address and per user name for a while: past the limit,
    logins are refused (429) until the oldest failure is forgotten."""

    def __init__(self) -> None:
        self._failures: dict[str, deque[float]] = defaultdict(deque)
        self._lock = threading.Lock()

    def _recent(self, key: str, window: float, now: float) -> deque[float]:
        times = self._failures[key]
        while times and times[0] < now - window:
            times.popleft()
        return times

    def blocked(self, address: str, user: str, settings: SecuritySettings) -> bool:
        now, window = time.time(), settings.lockout_minutes * 60
        with self._lock:
            return (len(self._recent("ip:" + address, window, now))
                    >= 4 * settings.max_login_failures
                    or len(self._recent("user:" + user, window, now))
                    >= settings.max_login_failures)

    def failed(self, address: str, user: str) -> None:
        now = time.time()
        with self._lock:
            self._failures["ip:" + address].append(now)
            self._failures["user:" + user].append(now)

    def succeeded(self, user: str) -> None:
        with self._lock:
            self._failures.pop("user:" + user, None)


class Security:
    """Accounts, sessions, the login limiter and the setup token, for the plugin and pages."""

    def __init__(self, accounts: Accounts, settings: Callable[[], SecuritySettings],
                 audit: Audit, local: LocalToken | None = None) -> None:
        self.accounts = accounts
        self.local = local
        self.settings = settings
        self.audit = audit
        self.sessions = Sessions()
        self.limiter = LoginLimiter()
        self.setup = SetupToken() if not accounts.has_admin() else None

    def login(self, name: str, password: str, address: str) -> Session:
        """A new session, or ``AccountError`` (wrong credentials, or too many attempts)."""
        settings = self.settings()
        if self.limiter.blocked(address, name, settings):
            self.audit(name, address, "login", "too many failed attempts", "refused")
            raise LoginPaused(f"too many failed logins: wait {settings.lockout_minutes:g}"
                              " minutes")
        user = self.accounts.verify(name, password)
        if user is None:
            self.limiter.failed(address, name)
            self.audit(name, address, "login", "wrong user name or password", "failed")
            raise AccountError("wrong user name or password")
        self.limiter.succeeded(name)
        self.audit(name, address, "login", "", "ok")
        return self.sessions.create(user, settings.session_minutes)

    def create_admin(self, token: str, name: str, password: str, address: str) -> Session:
        """The first administrator, with the one-time setup token."""
        if self.setup is None or not self.setup.matches(token):
            raise AccountError("the setup link is not valid (already used?)")
        user = self.accounts.add(name, "admin", password)
        self.setup.consume()
        self.setup = None
        self.audit(name, address, "setup", "first administrator created", "ok")
        return self.sessions.create(user, self.settings().session_minutes)

    def authenticate(self) -> Principal | None:
        """The caller of the current request, if any credential is valid."""
        header = bottle.request.get_header("Authorization", "")
        scheme, _, value = header.partition(" ")
        if scheme.lower() == "bearer":
            if self.local is not None and self.local.matches(value.strip()):
                return Principal(LOCAL_USER, "admin", "token")
            user = self.accounts.by_token(value.strip())
            return Principal(user.name, user.role, "token") if user else None
        if scheme.lower() == "basic":
            return self._basic(value.strip())
        session_id = bottle.request.get_cookie(COOKIE)
        if session_id:
            session = self.sessions.get(session_id, self.settings().session_minutes)
            if session is not None:
                return Principal(session.user, session.role, "session", session)
        return None

    def _basic(self, value: str) -> Principal | None:
        try:
            name, _, password = base64.b64decode(value).decode("utf-8").partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return None
        address = client_address()
        if self.limiter.blocked(address, name, self.settings()):
            return None
        user = self.accounts.verify(name, password)
        if user is None:
            self.limiter.failed(address, name)
            return None
        return Principal(user.name, user.role, "basic")


class LoginPaused(AccountError):
    """Too many failed logins lately."""


def client_address() -> str:
    return str(bottle.request.remote_addr or "")


def current() -> Principal:
    """The caller of the current request (routes behind the plugin always have one)."""
    return bottle.request.environ[PRINCIPAL]  # type: ignore[no-any-return]


def audit_note(text: str) -> None:
    """Let a view describe what it did, for the audit entry of its request."""
    bottle.request.environ[AUDIT] = text


def is_page_request() -> bool:
    path = bottle.request.path
    return path == "/" or path.startswith("/admin")


class AuthPlugin:
    """Guards every route but those marked ``public=True`` and the configured public paths."""

    name = "appliance-auth"
    api = 2

    def __init__(self, security: Security) -> None:
        self.security = security

    def apply(self, callback: Callable[..., Any], route: bottle.Route) -> Callable[..., Any]:
        if route.config.get("public"):
            return callback
        required = route.config.get("role")
        security = self.security

        def guarded(*args: Any, **kwargs: Any) -> Any:
            request = bottle.request
            if request.path in security.settings().public_paths:
                return callback(*args, **kwargs)
            principal = security.authenticate()
            if principal is None:
                return unauthenticated()
            method = request.method.upper()
            try:
                allow(principal, required or ("viewer" if method in SAFE_METHODS else "admin"),
                      method)
            except bottle.HTTPError as denied:
                if method not in SAFE_METHODS:
                    security.audit(principal.user, client_address(),
                                   f"{method} {request.path}", str(denied.body), "denied")
                raise
            request.environ[PRINCIPAL] = principal
            if method in SAFE_METHODS:
                return callback(*args, **kwargs)
            return audited(principal, method, callback, args, kwargs, security.audit)

        return guarded


def allow(principal: Principal, role: str, method: str) -> None:
    """403 unless the caller has the role, and (for a cookie) the CSRF token of a change."""
    if role == "admin" and principal.role != "admin":
        raise bottle.HTTPError(403, "this needs an administrator")
    if principal.via == "session" and method not in SAFE_METHODS:
        check_csrf(principal)


def audited(principal: Principal, method: str, callback: Callable[..., Any],
            args: tuple[Any, ...], kwargs: dict[str, Any], audit: Audit) -> Any:
    """Run a change and log it with its outcome (an error is logged, then re-raised)."""
    action = f"{method} {bottle.request.path}"
    try:
        result = callback(*args, **kwargs)
    except bottle.HTTPResponse as response:
        if response.status_code >= 400:
            audit(principal.user, client_address(), action, str(response.body)[:500], "failed")
        else:
            audit(principal.user, client_address(), action,
                  bottle.request.environ.get(AUDIT, ""), "ok")
        raise
    except Exception as exc:
        audit(principal.user, client_address(), action, f"internal error: {exc}"[:500], "error")
        raise
    outcome = "failed" if bottle.response.status_code >= 400 else "ok"
    audit(principal.user, client_address(), action, bottle.request.environ.get(AUDIT, ""),
          outcome)
    return result


SECURITY_HEADERS = {
    # No inline or foreign scripts: an injected <script> would not run even if it got through.
    "Content-Security-Policy": "default-src 'self'; script-src 'self'; "
                               "style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
                               "frame-ancestors 'none'; form-action 'self'",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
}


def security_headers() -> None:
    for name, value in SECURITY_HEADERS.items():
        bottle.response.set_header(name, value)


def unauthenticated() -> Any:
    if is_page_request():
        target = bottle.request.fullpath
        if bottle.request.query_string:
            target += "?" + bottle.request.query_string
        return bottle.redirect("/login?next=" + quote(target, safe=""))
    bottle.response.set_header("WWW-Authenticate", 'Basic realm="appliance"')
    raise bottle.HTTPError(401, "authentication required (session, Bearer token or Basic)")


def check_csrf(principal: Principal) -> None:
    assert principal.session is not None
    sent = (bottle.request.get_header("X-CSRF-Token")
            or bottle.request.forms.get("csrf_token") or "")
    if not hmac.compare_digest(sent.encode(), principal.session.csrf.encode()):
        raise bottle.HTTPError(403, "missing or wrong CSRF token")


def set_session_cookie(session: Session, settings: SecuritySettings) -> None:
    bottle.response.set_cookie(COOKIE, session.id, path="/", httponly=True, samesite="strict",
                               secure=settings.secure_cookies)


def pre_csrf_token(settings: SecuritySettings) -> str:
    """A double-submit token for the forms shown before login (cookie and field must agree)."""
    token = bottle.request.get_cookie(PRE_COOKIE) or secrets.token_urlsafe(24)
    bottle.response.set_cookie(PRE_COOKIE, token, path="/", httponly=True, samesite="strict",
                               secure=settings.secure_cookies)
    return token


def check_pre_csrf() -> None:
    cookie = bottle.request.get_cookie(PRE_COOKIE) or ""
    sent = bottle.request.forms.get("csrf_token") or ""
    if not cookie or not hmac.compare_digest(cookie.encode(), sent.encode()):
        raise bottle.HTTPError(403, "missing or wrong CSRF token (reload the form)")


def safe_next(target: str) -> str:
    """Only a path of this box (no open redirect)."""
    return target if target.startswith("/") and not target.startswith("//") else "/admin/"
