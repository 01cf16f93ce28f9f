"""User accounts and API tokens, kept in ``<data>/security/accounts.json``.

A JSON file written atomically (mode 0600), not a table of the index: the CLI must create the
first account while the appliance is stopped without starting the index writer, and
``appliance reindex`` moves the index aside, which must not lose the accounts. A few dozen
accounts at most: reading them all is cheap.

Passwords are hashed with scrypt (memory-hard, in the standard library) and a salt per user,
and compared in constant time. API tokens are random 256-bit secrets: a SHA-256 of one is
enough to keep it (nothing to brute-force), and cheap to check on every request.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import secrets
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from .atomic import write_json

Role = Literal["admin", "viewer"]
ROLES: tuple[Role, ...] = ("admin", "viewer")
USERNAME = re.compile(r"^[A-Za-z0-9._@-]{1,64}$")
MIN_PASSWORD = 10
SCRYPT = {"n": 2**14, "r": 8, "p": 1}  # 16 MiB per hash: RFC 7914's interactive setting


class AccountError(ValueError):
    """A bad user name, role or password, or an unknown account."""


@dataclass
class Token:
    id: str
    user: str
    digest: str  # SHA-256 of the secret, hex
    created: float
    label: str = ""


@dataclass
class User:
    name: str
    role: Role
    salt: str  # hex
    hash: str  # hex scrypt of the password
    created: float
    tokens: list[Token] = field(default_factory=list)


def hash_password(password: str, salt: bytes) -> bytes:
    return hashlib.scrypt(password.encode("utf-8"), salt=salt, dklen=32, **SCRYPT)


def token_digest(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


def check_password(password: str) -> None:
    if len(password) < MIN_PASSWORD:
        raise AccountError(f"the password must have at least {MIN_PASSWORD} characters")


class Accounts:
    def __init__(self, data_dir: Path) -> None:
        self.path = data_dir / "security" / "accounts.json"
        self._lock = threading.Lock()
        self._users = self._read()
        self._dummy = (secrets.token_bytes(16), b"")  # timing of unknown users: hash anyway

    def _read(self) -> dict[str, User]:
        if not self.path.exists():
            return {}
        raw = json.loads(self.path.read_text("utf-8"))
        return {u["name"]: User(**{**u, "tokens": [Token(**t) for t in u["tokens"]]})
                for u in raw["users"]}

    def _save(self) -> None:
        write_json(self.path, {"users": [asdict(u) for u in self._users.values()]}, 0o600)

    def users(self) -> list[User]:
        return sorted(self._users.values(), key=lambda u: u.name)

    def has_admin(self) -> bool:
        return any(u.role == "admin" for u in self._users.values())

    def add(self, name: str, role: str, password: str) -> User:
        """Create or replace a user (a new password, a new role)."""
        if not USERNAME.match(name):
            raise AccountError(f"{name!r} is not a valid user name (letters, digits, ._@-)")
        if role not in ROLES:
            raise AccountError(f"role must be one of {', '.join(ROLES)}, not {role!r}")
        check_password(password)
        salt = secrets.token_bytes(16)
        with self._lock:
            old = self._users.get(name)
            user = User(name, role, salt.hex(), hash_password(password, salt).hex(),
                        time.time(), old.tokens if old else [])  # type: ignore[arg-type]
            self._users[name] = user
            self._save()
        return user

    def remove(self, name: str) -> None:
        with self._lock:
            if name not in self._users:
                raise AccountError(f"no user named {name!r}")
            others = [u for u in self._users.values() if u.name != name and u.role == "admin"]
            if self._users[name].role == "admin" and not others:
                raise AccountError("the last administrator cannot be removed")
            del self._users[name]
            self._save()

    def verify(self, name: str, password: str) -> User | None:
        """The user if the password is right (constant-time compare, same cost if unknown)."""
        user = self._users.get(name)
        salt, expected = ((bytes.fromhex(user.salt), bytes.fromhex(user.hash)) if user
                          else self._dummy)
        ok = hmac.compare_digest(hash_password(password, salt), expected)
        return user if ok and user is not None else None

    def create_token(self, name: str, label: str = "") -> str:
        """A new API token for ``name``; the secret is shown once, only its digest is kept."""
        with self._lock:
            user = self._users.get(name)
            if user is None:
                raise AccountError(f"no user named {name!r}")
            token_id = secrets.token_hex(4)
            secret = f"{token_id}.{secrets.token_urlsafe(32)}"
            user.tokens.append(Token(token_id, name, token_digest(secret), time.time(), label))
            self._save()
        return secret

    def revoke_token(self, token_id: str) -> None:
        with self._lock:
            for user in self._users.values():
                kept = [t for t in user.tokens if t.id != token_id]
                if len(kept) != len(user.tokens):
                    user.tokens = kept
                    self._save()
                    return
        raise AccountError(f"no token {token_id!r}")

    def by_token(self, secret: str) -> User | None:
        token_id = secret.split(".", 1)[0]
        digest = token_digest(secret)
        for user in self._users.values():
            for token in user.tokens:
                if token.id == token_id and hmac.compare_digest(token.digest, digest):
                    return user
        return None

    def tokens(self) -> list[dict[str, Any]]:
        return [{"id": t.id, "user": t.user, "label": t.label, "created": t.created}
                for u in self.users() for t in u.tokens]


class LocalToken:
    """The secret of commands run on the box itself (``appliance protect|delete`` beside a
    running appliance): a new one at each start, in ``<data>/security/local-token.json``
    (mode 0600) with the URL to use it on. Whoever can read it can already change the files
    it guards."""

    def __init__(self, data_dir: Path, url: str) -> None:
        self.value = secrets.token_urlsafe(32)
        write_json(local_token_path(data_dir), {"token": self.value, "url": url}, mode=0o600)

    def matches(self, candidate: str) -> bool:
        return hmac.compare_digest(self.value, candidate)


def local_token_path(data_dir: Path) -> Path:
    return data_dir / "security" / "local-token.json"


def read_local_token(data_dir: Path) -> tuple[str, str]:
    """The running appliance's local token and URL (``OSError``, ``ValueError`` or
    ``KeyError`` when they cannot be read)."""
    value = json.loads(local_token_path(data_dir).read_text(encoding="utf-8"))
    return str(value["token"]), str(value["url"])


class SetupToken:
    """The one-time secret that lets the first administrator be created (no default
    password): printed to the console and the log at start while there is no administrator."""

    def __init__(self) -> None:
        self.value: str | None = secrets.token_urlsafe(24)

    def matches(self, candidate: str) -> bool:
        return self.value is not None and hmac.compare_digest(self.value, candidate)

    def consume(self) -> None:
        self.value = None
