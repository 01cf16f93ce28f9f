"""The ``appliance`` command: serve, fsck, reindex, check-config."""

from __future__ import annotations

import argparse
import getpass
import json
import logging
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from . import __version__, log
from .config import Config, ConfigError, describe, to_dict
from .configstore import ConfigStore

logger = logging.getLogger("appliance")


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    """Command-line flags as configuration values (they win over the file)."""
    out: dict[str, Any] = {}
    if getattr(args, "data", None):
        out["data"] = str(Path(args.data).resolve())
    dicom = {k: v for k, v in (("aet", getattr(args, "aet", None)),
                               ("port", getattr(args, "dicom_port", None))) if v is not None}
    if dicom:
        out["dicom"] = dicom
    if getattr(args, "http_port", None) is not None:
        out["http"] = {"port": args.http_port}
    return out


def _configs(args: argparse.Namespace) -> ConfigStore:
    """The file, the settings saved at run time (modalities, routes...), then the flags."""
    return ConfigStore.open(Path(args.config) if args.config else None, _overrides(args))


def _config(args: argparse.Namespace) -> Config:
    return _configs(args).current


def cmd_serve(args: argparse.Namespace) -> int:
    from .runtime import serve

    configs = _configs(args)
    log.setup(configs.current.log.level)
    return serve(configs)


def cmd_fsck(args: argparse.Namespace) -> int:
    from .runtime import DataLock
    from .storage.fsck import reconcile
    from .store import Store

    config = _config(args)
    log.setup("WARNING")
    lock = DataLock(config.data_dir) if args.repair else None
    store = Store(config)
    store.start()
    try:
        report = reconcile(store, repair=args.repair, verify=args.verify)
    finally:
        store.stop()
        if lock:
            lock.release()
    print("\n".join(report.lines()))
    for public_id in report.missing_files:
        print(f"missing file: instance {public_id}")
    for public_id in report.corrupt_files:
        print(f"checksum mismatch: instance {public_id}")
    return 0 if report.clean or args.repair else 1


def cmd_reindex(args: argparse.Namespace) -> int:
    """Rebuild the index from the files alone (the old index is kept aside)."""
    from .runtime import DataLock
    from .storage.fsck import reconcile
    from .store import Store

    config = _config(args)
    log.setup("WARNING")
    lock = DataLock(config.data_dir)
    db_path = config.data_dir / "index.sqlite"
    if db_path.exists():
        aside = db_path.with_name(f"index.sqlite.{time.strftime('%Y%m%dT%H%M%S')}.old")
        shutil.move(db_path, aside)
        for suffix in ("-wal", "-shm"):
            side = db_path.with_name(db_path.name + suffix)
            if side.exists():
                shutil.move(side, aside.with_name(aside.name + suffix))
        print(f"previous index kept as {aside}")
    store = Store(config)
    store.start()
    try:
        report = reconcile(store, repair=True)
    finally:
        store.stop()
        lock.release()
    print(f"re-indexed {report.reindexed} instances"
          f" ({report.duplicates_removed} duplicates removed,"
          f" {len(report.quarantined)} unreadable files quarantined)")
    return 0


def cmd_check_config(args: argparse.Namespace) -> int:
    if args.describe:
        print("\n".join(describe()))
        return 0
    config = _config(args)
    print(json.dumps(to_dict(config), indent=2))
    return 0


def cmd_user(args: argparse.Namespace) -> int:
    """Accounts are written directly (the appliance reads them at start): refused while it
    runs, so the two never write the file at once."""
    from .accounts import AccountError, Accounts
    from .runtime import DataLock

    config = _config(args)
    lock = DataLock(config.data_dir)
    try:
        accounts = Accounts(config.data_dir)
        if args.action == "add":
            password = sys.stdin.readline().rstrip("\n") if args.password_stdin else \
                getpass.getpass(f"password for {args.name}: ")
            accounts.add(args.name, "admin" if args.admin else args.role, password)
            print(f"user {args.name} saved")
        elif args.action == "remove":
            accounts.remove(args.name)
            print(f"user {args.name} removed")
        else:
            print(accounts.create_token(args.name, args.label))
    except AccountError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    finally:
        lock.release()
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="appliance", description="DICOM edge appliance")
    p.add_argument("--version", action="version", version=__version__)
    sub = p.add_subparsers(dest="command", required=True)

    def command(name: str, func: Any, help: str) -> argparse.ArgumentParser:
        sp = sub.add_parser(name, help=help)
        sp.add_argument("--config", metavar="FILE", help="JSON configuration file")
        sp.add_argument("--data", metavar="DIR", help="data directory (index and files)")
        sp.set_defaults(func=func)
        return sp

    serve = command("serve", cmd_serve, "run the appliance")
    serve.add_argument("--aet", help="our AE title")
    serve.add_argument("--dicom-port", type=int, metavar="N", help="DICOM port (default 4242)")
    serve.add_argument("--http-port", type=int, metavar="N", help="HTTP port (default 8042)")
    fsck = command("fsck", cmd_fsck, "check that files and index agree")
    fsck.add_argument("--repair", action="store_true", help="fix what is found")
    fsck.add_argument("--verify", action="store_true", help="also verify every file's checksum")
    command("reindex", cmd_reindex, "rebuild the index from the stored files")
    user = command("user", cmd_user, "add or remove an account, or make an API token "
                   "(while the appliance is stopped)")
    user.add_argument("action", choices=["add", "remove", "token"])
    user.add_argument("name", help="user name")
    user.add_argument("--admin", action="store_true", help="role admin (same as --role admin)")
    user.add_argument("--role", choices=["admin", "viewer"], default="viewer")
    user.add_argument("--password-stdin", action="store_true",
                      help="read the password from the first line of standard input")
    user.add_argument("--label", default="", help="what the token is for")
    check = command("check-config", cmd_check_config, "validate and print the configuration")
    check.add_argument("--describe", action="store_true", help="list every setting")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return int(args.func(args))
    except ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except RuntimeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
