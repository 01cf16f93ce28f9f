"""The ``appliance`` command: serve, fsck, reindex, check-config, user, health, the SCU
commands (echo, send, query, retrieve) and the store's operations (protect, unprotect, delete:
``cli_manage``)."""

from __future__ import annotations

import argparse
import getpass
import json
import logging
import os
import shutil
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from . import __version__, log
from .cli_manage import add_parsers
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


def configs_of(args: argparse.Namespace) -> ConfigStore:
    """The file, the settings saved at run time (modalities, routes...), then the flags."""
    return ConfigStore.open(Path(args.config) if args.config else None, _overrides(args))


def config_of(args: argparse.Namespace) -> Config:
    """The configuration the command runs with (``configs_of``, read once)."""
    return configs_of(args).current


def cmd_serve(args: argparse.Namespace) -> int:
    from .runtime import serve  # seconds of imports on a small box: done while the disk mounts

    if args.wait_mount is not None:
        if not args.data:
            raise SystemExit("serve: --wait-mount needs --data (the mount point)")
        wait_for_mount(Path(args.data).resolve(), args.wait_mount)
    configs = configs_of(args)
    log.setup(configs.current.log.level)
    return serve(configs)


def wait_for_mount(data: Path, seconds: float) -> None:
    """The OS image starts us while its data partition is still being found and mounted: wait
    for it, and never run on the empty directory beneath (what we stored there would vanish)."""
    deadline = time.monotonic() + seconds
    while not os.path.ismount(data):
        if time.monotonic() > deadline:
            raise SystemExit(f"serve: {data} is not a mount point after {seconds:g} s: "
                             "is the data partition there?")
        time.sleep(0.05)


def cmd_fsck(args: argparse.Namespace) -> int:
    from .runtime import DataLock
    from .storage.fsck import reconcile
    from .store import Store

    config = config_of(args)
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

    config = config_of(args)
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
    config = config_of(args)
    print(json.dumps(to_dict(config), indent=2))
    return 0


def cmd_health(args: argparse.Namespace) -> int:
    """Ask the running appliance (this configuration's HTTP port) how it is: exit 0 ok,
    1 degraded, 2 failing or unreachable (Nagios plugin conventions)."""
    from .health.client import EXIT_CODES, fetch_health, lines
    from .health.probes import loopback

    url = args.url
    if url is None:
        http = config_of(args).http
        url = f"http://{loopback(http.host)}:{args.http_port or http.port}"
    answer = fetch_health(url, args.timeout)
    print("\n".join(lines(answer)))
    return EXIT_CODES[answer.state]


def cmd_user(args: argparse.Namespace) -> int:
    """Accounts are written directly (the appliance reads them at start): refused while it
    runs, so the two never write the file at once."""
    from .accounts import AccountError, Accounts
    from .runtime import DataLock

    config = config_of(args)
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


# --- SCU commands: thin wrappers around dicom/remote.py -----------------------------------------


def _scu(func: Any) -> Any:
    """Errors of the request itself (unknown modality, bad key): a message and exit code 2."""

    def run(args: argparse.Namespace) -> int:
        from .dicom.remote import BadQuery, UnknownModality

        log.setup("WARNING")  # why an instance was not sent, say
        logging.getLogger("pynetdicom").setLevel(logging.CRITICAL)  # our errors say it better
        try:
            return int(func(args))
        except (UnknownModality, BadQuery) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2

    return run


def _node(args: argparse.Namespace, config: Config) -> tuple[str, Any]:
    """The remote node: a configured modality by name, or ``--host``/``--port`` (ad hoc)."""
    from .config import AE_TITLE, Modality
    from .dicom.remote import BadQuery, describe, resolve

    if args.name:
        modality = resolve(config, args.name)
        return f"{args.name} ({describe(modality)})", modality
    if not args.host or not args.port:
        raise BadQuery("name a configured modality, or give --host and --port")
    if not AE_TITLE.match(args.remote_aet):
        raise BadQuery(f"--aet {args.remote_aet!r} is not a valid AE title (1-16 characters)")
    modality = Modality(aet=args.remote_aet, host=args.host, port=args.port)
    return describe(modality), modality


def _keys(args: argparse.Namespace) -> dict[str, str]:
    from .dicom.remote import BadQuery

    keys: dict[str, str] = {}
    for item in args.key:
        key, sep, value = item.partition("=")
        if not key.strip():
            raise BadQuery(f"-k {item!r}: expected KEY=VALUE or KEY")
        keys[key.strip()] = value if sep else ""
    return keys


def cmd_echo(args: argparse.Namespace) -> int:
    from .dicom.remote import echo

    config = config_of(args)
    name, modality = _node(args, config)
    result = echo(config.dicom, modality)
    if not result.ok:
        print(f"C-ECHO {name}: failed after {result.milliseconds:.1f} ms: {result.error}",
              file=sys.stderr)
        return 1
    print(f"C-ECHO {name}: success in {result.milliseconds:.1f} ms")
    return 0


def cmd_send(args: argparse.Namespace) -> int:
    """C-STORE of a stored resource; reads the index (WAL reader) beside a running appliance."""
    from .dicom.remote import resolve, store
    from .dicom.scu import Outgoing
    from .index.db import open_database
    from .index.resources import instances_of
    from .storage.area import StorageArea

    config = config_of(args)
    modality = resolve(config, args.to)
    index = config.data_dir / "index.sqlite"
    if not index.exists():
        print(f"error: no index in {config.data_dir}", file=sys.stderr)
        return 2
    db = open_database(index)
    try:
        refs = instances_of(args.id)
    finally:
        db.close()
    if not refs:
        print(f"error: no patient, study, series or instance {args.id!r}", file=sys.stderr)
        return 2
    area = StorageArea(config.data_dir)
    items = [Outgoing(r.sop_uid, r.sop_class_uid, r.transfer_syntax, area.path(r.file))
             for r in refs]
    result = store(config.dicom, modality, items)
    for sent in result.outcomes:
        reason = f": {sent.error}" if sent.error else ""
        print(f"{sent.item.sop_uid}  {sent.category} (0x{sent.status:04X}){reason}")
    print(f"sent {len(items)} instances to {args.to}: {result.count('Success')} succeeded, "
          f"{result.count('Warning')} with warnings, {result.failed} failed")
    return 0 if result.ok else 1


def cmd_query(args: argparse.Namespace) -> int:
    from .dicom.remote import find, keyword

    config = config_of(args)
    _, modality = _node(args, config)
    answers = find(config.dicom, modality, args.level, _keys(args), args.model)
    rows = [{keyword(int(e.tag)): _text(e.value) for e in answer
             if e.keyword not in ("QueryRetrieveLevel", "SpecificCharacterSet")}
            for answer in answers]
    if args.json:
        print(json.dumps(rows, indent=2, ensure_ascii=False))
    else:
        _table(rows)
        print(f"{len(rows)} answers", file=sys.stderr)
    return 0


def _text(value: Any) -> str:
    from pydicom.multival import MultiValue

    if isinstance(value, (list, tuple, MultiValue)):
        return "\\".join(_text(v) for v in value)
    return "" if value is None else str(value)


def _table(rows: list[dict[str, str]]) -> None:
    columns = list(dict.fromkeys(k for row in rows for k in row))
    widths = {c: max(len(c), *(len(row.get(c, "")) for row in rows)) for c in columns}
    print("  ".join(c.ljust(widths[c]) for c in columns).rstrip())
    for row in rows:
        print("  ".join(row.get(c, "").ljust(widths[c]) for c in columns).rstrip())


def cmd_retrieve(args: argparse.Namespace) -> int:
    """C-MOVE to us or to ``--to``, or C-GET (``--get``) into the store or ``--out DIR``."""
    from .dicom.remote import BadQuery, get, move
    from .runtime import DataLocked

    config = config_of(args)
    name, modality = _node(args, config)
    keys = _keys(args)
    if args.out and not args.get:
        raise BadQuery("--out goes with --get (C-MOVE sends to an AE title, see --to)")
    if not args.get:
        destination = args.to or config.dicom.aet
        result = move(config.dicom, modality, args.level, keys, destination, args.model)
        print(f"C-MOVE from {name} to {destination}: {result.summary()}")
        return 0 if result.ok else 1
    try:
        with _get_receiver(args, config, modality) as on_instance:
            result = get(config.dicom, modality, args.level, keys, on_instance, args.model)
    except DataLocked:
        print(f"error: {config.data_dir} is in use by a running appliance: retrieve with C-MOVE "
              f"to it (--to {config.dicom.aet}, the default without --get), or C-GET into a "
              "folder with --out DIR", file=sys.stderr)
        return 2
    print(f"C-GET from {name}: {result.summary()}")
    return 0 if result.ok else 1


@contextmanager
def _get_receiver(args: argparse.Namespace, config: Config, modality: Any) -> Iterator[Any]:
    """Where C-GET puts what it receives: ``--out DIR``, or the store when no running
    appliance holds it (``DataLocked`` otherwise)."""
    import tempfile

    from .dicom.handlers import receiver
    from .dicom.remote import describe, save_into
    from .index.ingest import Origin
    from .runtime import DataLock
    from .store import Store

    if args.out:
        yield save_into(Path(args.out))
        return
    lock = DataLock(config.data_dir)
    store = Store(config)
    store.start()
    tempfile.tempdir = str(store.area.tmp)  # spool beside the files: the store renames them
    origin = Origin(calling_aet=modality.aet, called_aet=config.dicom.aet,
                    remote_address=modality.host)
    try:
        yield receiver(store, origin, describe(modality))
    finally:
        store.stop()
        lock.release()


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
    serve.add_argument("--wait-mount", type=float, metavar="SECONDS",
                       help="wait up to SECONDS for --data to be a mounted file system of its "
                       "own (started while the data partition mounts); fail if it is not")
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
    health = command("health", cmd_health, "how is the running appliance? (exit 0/1/2)")
    health.add_argument("--http-port", type=int, metavar="N", help="its HTTP port")
    health.add_argument("--url", help="its base URL (default: this machine, configured port)")
    health.add_argument("--timeout", type=float, default=10.0, metavar="S",
                        help="seconds to wait for the answer")
    _scu_parsers(command)
    add_parsers(command)
    return p


def _scu_parsers(command: Any) -> None:
    def remote(name: str, func: Any, help: str) -> argparse.ArgumentParser:
        sp = command(name, _scu(func), help)
        sp.add_argument("name", nargs="?", metavar="NAME", help="a configured modality")
        sp.add_argument("--aet", dest="remote_aet", default="ANY-SCP", metavar="AET",
                        help="ad-hoc node: its AE title")
        sp.add_argument("--host", help="ad-hoc node: host")
        sp.add_argument("--port", type=int, help="ad-hoc node: port")
        return sp

    def query_keys(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--level", default="STUDY", type=str.upper,
                        choices=["PATIENT", "STUDY", "SERIES", "IMAGE"])
        sp.add_argument("-k", "--key", action="append", default=[], metavar="KEY[=VALUE]",
                        help="a key (keyword or gggg,eeee) and its value; repeatable")
        sp.add_argument("--model", choices=["study", "patient"], default="study",
                        help="query/retrieve information model (root)")

    remote("echo", cmd_echo, "C-ECHO a remote node")
    send = command("send", _scu(cmd_send), "C-STORE a stored resource to a remote node")
    send.add_argument("id", metavar="ID",
                      help="Orthanc ID of a patient/study/series/instance, or a Study, Series "
                           "or SOP Instance UID")
    send.add_argument("--to", required=True, metavar="NAME", help="a configured modality")
    query = remote("query", cmd_query, "C-FIND on a remote node")
    query_keys(query)
    query.add_argument("--json", action="store_true", help="answers as JSON")
    retrieve = remote("retrieve", cmd_retrieve, "C-MOVE or C-GET from a remote node")
    query_keys(retrieve)
    how = retrieve.add_mutually_exclusive_group()
    how.add_argument("--to", metavar="AET", help="C-MOVE destination (default: our AE title)")
    how.add_argument("--get", action="store_true", help="C-GET instead of C-MOVE")
    retrieve.add_argument("--out", metavar="DIR",
                          help="with --get: keep the files in DIR instead of the store")


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
