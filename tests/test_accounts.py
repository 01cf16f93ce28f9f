"""Accounts, tokens and the login limiter, without a server."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest

from appliance.accounts import AccountError, Accounts
from appliance.config import SecuritySettings
from appliance.web.auth import LoginLimiter, Sessions


def test_passwords_are_salted_scrypt_hashes(tmp_path: Path) -> None:
    accounts = Accounts(tmp_path)
    accounts.add("alice", "admin", "a long password")
    accounts.add("bob", "viewer", "a long password")
    stored = json.loads(accounts.path.read_text())["users"]
    assert "a long password" not in accounts.path.read_text()
    assert stored[0]["salt"] != stored[1]["salt"] and stored[0]["hash"] != stored[1]["hash"]
    assert stat.S_IMODE(accounts.path.stat().st_mode) == 0o600
    reopened = Accounts(tmp_path)
    assert reopened.verify("alice", "a long password") is not None
    assert reopened.verify("alice", "a long passwore") is None
    assert reopened.verify("nobody", "a long password") is None


def test_bad_accounts_are_refused_and_change_nothing(tmp_path: Path) -> None:
    accounts = Accounts(tmp_path)
    for name, role, password in (("x y", "admin", "a long password"),
                                 ("carol", "root", "a long password"),
                                 ("carol", "viewer", "short")):
        with pytest.raises(AccountError):
            accounts.add(name, role, password)
    assert accounts.users() == [] and not accounts.path.exists()
    accounts.add("alice", "admin", "a long password")
    with pytest.raises(AccountError, match="last administrator"):
        accounts.remove("alice")


def test_tokens_are_kept_as_digests_and_revocable(tmp_path: Path) -> None:
    accounts = Accounts(tmp_path)
    accounts.add("alice", "viewer", "a long password")
    secret = accounts.create_token("alice", "ci")
    assert secret not in accounts.path.read_text()
    user = Accounts(tmp_path).by_token(secret)
    assert user is not None and user.role == "viewer"
    assert accounts.by_token(secret + "x") is None
    accounts.revoke_token(secret.split(".")[0])
    assert accounts.by_token(secret) is None


def test_login_limiter_pauses_a_user_then_an_address() -> None:
    limiter, settings = LoginLimiter(), SecuritySettings(max_login_failures=2)
    for _ in range(2):
        assert not limiter.blocked("10.0.0.1", "alice", settings)
        limiter.failed("10.0.0.1", "alice")
    assert limiter.blocked("10.0.0.1", "alice", settings)
    assert not limiter.blocked("10.0.0.1", "bob", settings)
    for name in ("bob", "carol", "dave", "erin", "frank", "gina"):
        limiter.failed("10.0.0.1", name)
    assert limiter.blocked("10.0.0.1", "zoe", settings), "8 failures from one address"
    assert not limiter.blocked("10.0.0.2", "zoe", settings)


def test_sessions_expire_and_end(tmp_path: Path) -> None:
    accounts = Accounts(tmp_path)
    user = accounts.add("alice", "admin", "a long password")
    sessions = Sessions()
    expired = sessions.create(user, minutes=-1)
    assert sessions.get(expired.id, minutes=10) is None
    live = sessions.create(user, minutes=10)
    assert sessions.get(live.id, minutes=10) is live and live.csrf != expired.csrf
    sessions.drop_user("alice")
    assert sessions.get(live.id, minutes=10) is None
