"""``appliance protect|unprotect|delete``: the store's own operations from the command line.

The resource is named by an Orthanc ID or a UID, read from the index (a WAL reader works
beside a running appliance). A running appliance holds the data directory, so the change goes
through its REST API on loopback, authenticated by the local token it wrote at start; on a
stopped one, straight to the store. Either way the change log records it.
"""

from __future__ import annotations

import argparse
import json
import sys
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any

from .config import Config

PROTECTABLE = ("patients", "studies")  # what Orthanc (and the quota) pins


class Refused(RuntimeError):
    """The request cannot be done as asked (unknown or ambiguous resource, wrong level)."""


def target(config: Config, identifier: str, levels: tuple[str, ...] | None = None
           ) -> tuple[str, str]:
    """The one (level, public ID) ``identifier`` names, among ``levels`` if given."""
    from .index import resources
    from .index.db import open_database

    index = config.data_dir / "index.sqlite"
    if not index.exists():
        raise Refused(f"no index in {config.data_dir}")
    db = open_database(index)
    try:
        found = resources.resolve(identifier)
    finally:
        db.close()
    if levels is not None:
        found = [f for f in found if f[0] in levels]
    if not found:
        what = " or ".join(levels) if levels else "resource"
        raise Refused(f"no {what} {identifier!r} (an Orthanc ID or a UID)")
    if len(found) > 1:
        raise Refused(f"{identifier!r} names {len(found)} resources: "
                      + ", ".join(f"{level}/{pid}" for level, pid in found))
    return found[0]


def through_api(config: Config, method: str, path: str, body: bytes) -> None:
    """The request, to the running appliance on loopback with its local token."""
    from .accounts import read_local_token

    try:
        token, base = read_local_token(config.data_dir)
    except (OSError, ValueError, KeyError) as exc:
        raise Refused(f"cannot read the running appliance's local token ({exc}): run this as "
                      "its user or root") from exc
    url = base + path
    request = urllib.request.Request(url, body, method=method,
                                     headers={"Authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(request, timeout=600):
            return
    except urllib.error.HTTPError as exc:
        with exc:
            raise Refused(f"the appliance answered {exc.code}: {_message(exc.read())}") from exc
    except OSError as exc:
        raise Refused(f"the appliance holds {config.data_dir} but does not answer on {url}: "
                      f"{exc}") from exc


def _message(body: bytes) -> str:
    try:
        return str(json.loads(body).get("Message", body.decode()))
    except (ValueError, AttributeError):
        return body.decode("utf-8", "replace")


def run(config: Config, via_api: Callable[[], None], direct: Callable[[Any], bool]) -> None:
    """``direct(store)`` on a stopped appliance, else ``via_api()``."""
    from .runtime import DataLock, DataLocked
    from .store import Store

    try:
        lock = DataLock(config.data_dir)
    except DataLocked:
        via_api()
        return
    store = Store(config)
    store.start()
    try:
        if not direct(store):
            raise Refused("the resource went away meanwhile")
    finally:
        store.stop()
        lock.release()


def cmd_protect(config: Config, args: argparse.Namespace) -> int:
    from .index.quota import pin_expiry

    protected = args.command == "protect"
    level, public_id = target(config, args.id, PROTECTABLE)
    until = getattr(args, "until", None)
    try:
        expiry = pin_expiry(until) if until else None
    except ValueError as exc:
        raise Refused(f"--until {until!r}: expected YYYYMMDD") from exc
    body = {"Protected": protected, **({"Until": until} if until else {})}
    run(config,
        lambda: through_api(config, "PUT", f"/{level}/{public_id}/protected",
                            json.dumps(body).encode()),
        lambda store: store.protect(level, public_id, protected, expiry))
    state = "protected" + (f" until the end of {until}" if until else "") if protected \
        else "no longer protected"
    print(f"{level[:-1] if level != 'series' else level} {public_id} {state}")
    return 0


def cmd_delete(config: Config, args: argparse.Namespace) -> int:
    level, public_id = target(config, args.id)
    if not args.yes:
        print(f"refusing to delete {level}/{public_id} without --yes", file=sys.stderr)
        return 2
    reason = "deleted from the command line"
    run(config,
        lambda: through_api(config, "DELETE", f"/{level}/{public_id}", b""),
        lambda store: store.delete_resource(level, public_id, reason) is not None)
    print(f"deleted {level}/{public_id} and everything under it")
    return 0


def add_parsers(command: Callable[..., argparse.ArgumentParser]) -> None:
    ident = "Orthanc ID, or a UID, PatientID or AccessionNumber"
    protect = command("protect", _wrap(cmd_protect),
                      "pin a patient or study against recycling by the quota")
    protect.add_argument("id", metavar="ID", help=ident)
    protect.add_argument("--until", metavar="YYYYMMDD", help="the pin ends after this day")
    unprotect = command("unprotect", _wrap(cmd_protect), "remove a patient's or study's pin")
    unprotect.add_argument("id", metavar="ID", help=ident)
    delete = command("delete", _wrap(cmd_delete),
                     "delete a patient, study, series or instance with all below it")
    delete.add_argument("id", metavar="ID", help=ident)
    delete.add_argument("--yes", action="store_true", help="really delete")


def _wrap(func: Callable[[Config, argparse.Namespace], int]) -> Callable[[argparse.Namespace],
                                                                           int]:
    def cmd(args: argparse.Namespace) -> int:
        from .cli import config_of

        try:
            return func(config_of(args), args)
        except Refused as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2

    return cmd
