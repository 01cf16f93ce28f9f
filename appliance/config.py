"""One typed configuration: defaults here, overridden by a JSON file, then by command-line flags.

Every setting is a dataclass field with a docstring-like ``help`` in its metadata, so the schema is
also the documentation (``appliance check-config --describe``). Validation names the bad key and
value; unknown keys are errors, never silently ignored.
"""

from __future__ import annotations

import dataclasses
import json
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydicom.datadict import tag_for_keyword

AE_TITLE = re.compile(r"^[\x20-\x5b\x5d-\x7e]{1,16}$")  # PS3.5 6.2: no backslash, no controls


class ConfigError(ValueError):
    """A configuration value is missing, unknown or of the wrong type."""


def setting(default: Any, help: str, **kw: Any) -> Any:
    """A field with its documentation."""
    if isinstance(default, (dict, list)) or dataclasses.is_dataclass(default):
        factory: Any = (
            default.__class__ if dataclasses.is_dataclass(default) else default.copy
        )
        return field(default_factory=factory, metadata={"help": help, **kw})
    return field(default=default, metadata={"help": help, **kw})


Permission = Literal["echo", "store", "find", "move", "get"]


@dataclass(frozen=True)
class Modality:
    """A remote DICOM node we know, and what it may ask of us."""

    aet: str = setting("", "AE title of the remote node", check="aet")
    host: str = setting("", "host name or address")
    port: int = setting(104, "TCP port", min=1, max=65535)
    allow: list[Permission] = setting(
        ["echo", "store", "find", "move", "get"], "what this node may ask of us"
    )
    concurrency: int = setting(
        1, "simultaneous associations the outbound queue opens to this node", min=1, max=16
    )


Trigger = Literal["instance", "series", "study"]


@dataclass(frozen=True)
class Route:
    """A routing rule: what arrives and matches goes to ``destinations`` (modality names).

    Each condition is a pattern, or a list of patterns of which one must match: exact by
    default, ``*`` and ``?`` wildcards, or a regular expression written ``re:...``.
    """

    destinations: list[str] = setting([], "names of the known modalities to send to")
    enabled: bool = setting(True, "whether the rule routes anything")
    trigger: Trigger = setting(
        "instance", "send each instance as it arrives, or the matching instances of a series "
        "or study once it is stable (storage.stable_age)"
    )
    calling_aet: list[str] = setting([], "patterns the sender's AE title must match")
    called_aet: list[str] = setting([], "patterns the AE title the sender called must match")
    modality: list[str] = setting([], "patterns the series' Modality must match")
    sop_class: list[str] = setting([], "patterns the SOP Class UID must match")
    tags: dict[str, list[str]] = setting(
        {}, "DICOM keyword -> patterns the instance's value must match"
    )


@dataclass(frozen=True)
class DicomSettings:
    aet: str = setting("APPLIANCE", "our AE title", check="aet")
    port: int = setting(4242, "DICOM listening port", min=1, max=65535)
    host: str = setting("0.0.0.0", "address the DICOM listener binds")
    check_called_aet: bool = setting(
        False, "reject associations whose called AE title is not ours"
    )
    store_from_unknown: bool = setting(
        True, "accept C-STORE from calling AE titles that are not known modalities"
    )
    accept_unknown_sop_classes: bool = setting(
        False, "also accept storage of SOP classes pynetdicom does not know"
    )
    max_associations: int = setting(32, "simultaneous associations", min=1, max=1000)
    network_timeout: float = setting(60.0, "seconds of network silence before abort", min=1)
    acse_timeout: float = setting(30.0, "seconds to wait for association messages", min=1)
    dimse_timeout: float = setting(60.0, "seconds to wait for DIMSE messages", min=1)
    maximum_pdu: int = setting(
        131072,
        "maximum PDU size we receive (0: unlimited, which lets a peer send a whole dataset in"
        " one PDU that is held in memory)",
        min=0,
    )
    query_from_unknown: bool = setting(
        False, "answer C-FIND/C-MOVE/C-GET from calling AE titles that are not known modalities"
    )
    case_sensitive_pn: bool = setting(
        False, "C-FIND matches person names case-sensitively (Orthanc's CaseSensitivePN)"
    )
    unindexed_keys: Literal["read-file", "refuse"] = setting(
        "read-file", "C-FIND keys the index does not keep: read them from a stored file, "
        "or refuse the query"
    )
    max_find_answers: int = setting(
        0, "most C-FIND answers (0: unlimited); beyond, the C-FIND ends with 0xA700", min=0
    )
    query_retrieve_size: int = setting(
        100, "queries on remote nodes (with their answers) the REST API holds under /queries, "
        "the oldest forgotten first (Orthanc's QueryRetrieveSize)", min=1, max=10000
    )
    jobs_history_size: int = setting(
        10, "finished jobs (asynchronous retrieves and stores) the REST API keeps under /jobs, "
        "in memory, the oldest forgotten first (Orthanc's JobsHistorySize)", min=1, max=10000
    )
    concurrent_jobs: int = setting(
        2, "jobs run at a time; the others wait as Pending (Orthanc's ConcurrentJobs; read at "
        "start)", min=1, max=16
    )
    fast_store: bool = setting(
        True, "receive C-STORE requests in the network thread, without pynetdicom's DIMSE layer "
        "(several times less CPU per instance); false: pynetdicom's own path"
    )


@dataclass(frozen=True)
class StorageSettings:
    duplicates: Literal["keep", "overwrite"] = setting(
        "keep", "a second copy of a stored SOP instance: keep the first, or overwrite it"
    )
    stable_age: float = setting(
        60.0, "seconds without a new instance after which a series or study is stable", min=1
    )
    commit_batch: int = setting(256, "most instances committed by one index transaction", min=1)


@dataclass(frozen=True)
class QuotaSettings:
    """Limits of the rotating store (0: no limit). The oldest unprotected, fully delivered data
    is recycled to stay under them; when nothing can be, new instances are refused."""

    max_storage_mb: float = setting(0.0, "most megabytes of stored files", min=0)
    max_patients: int = setting(0, "most patients", min=0)
    max_studies: int = setting(0, "most studies", min=0)
    free_low_mb: float = setting(
        0.0, "free space on the data filesystem below which recycling starts (and, when "
        "nothing can be recycled, new instances are refused)", min=0
    )
    free_high_mb: float = setting(
        0.0, "free space recycling restores once started (at least free_low_mb)", min=0
    )
    retention_days: float = setting(
        0.0, "delete studies received more than this many days ago", min=0
    )
    retention_days_by_modality: dict[str, float] = setting(
        {}, "retention of the studies that have a series of these modalities (days)"
    )
    granularity: Literal["study", "patient"] = setting("study", "what is recycled at once")
    check_interval: float = setting(
        60.0, "seconds between background checks (retention, free space)", min=0.1
    )


@dataclass(frozen=True)
class QueueSettings:
    batch: int = setting(64, "most instances a destination worker sends per batch", min=1)
    linger: float = setting(
        2.0, "seconds an idle association to a destination stays open for the next instance",
        min=0,
    )
    retry_initial: float = setting(
        30.0, "seconds before the first retry; each failure doubles it", min=0.1
    )
    retry_max: float = setting(3600.0, "longest wait between two retries (seconds)", min=0.1)
    max_attempts: int = setting(
        30, "attempts after which an entry is failed (kept, retryable by hand)", min=1
    )
    max_age: float = setting(
        259200.0, "seconds after which an undelivered entry is failed (kept, retryable)", min=1
    )


@dataclass(frozen=True)
class HttpSettings:
    port: int = setting(8042, "HTTP port of the web page and APIs", min=1, max=65535)
    host: str = setting(
        "127.0.0.1", "address the HTTP server binds (loopback until accounts are configured)"
    )
    threads: int = setting(4, "HTTP worker threads", min=1, max=64)
    max_upload_mb: float = setting(
        1024.0, "largest body POST /instances and STOW-RS accept (megabytes); beyond: 413",
        min=0.001,
    )


@dataclass(frozen=True)
class HooksSettings:
    """Python callbacks run by the box (see the README: filter_incoming, on_stored_instance,
    on_stable_series, on_stable_study, on_change)."""

    path: str = setting("", "Python file defining the callbacks (empty: no hooks)")
    timeout: float = setting(
        10.0, "seconds a callback may run; beyond, it is logged and abandoned (an incoming "
        "filter that times out lets the instance in)", min=0.01,
    )


@dataclass(frozen=True)
class SecuritySettings:
    """Accounts, sessions and what may be reached without logging in."""

    session_minutes: float = setting(
        480.0, "minutes of inactivity after which a login session expires", min=1
    )
    secure_cookies: bool = setting(
        False, "mark session cookies Secure (set when the box is reached over HTTPS)"
    )
    public_paths: list[str] = setting(
        ["/health", "/metrics"], "paths answered without authentication (monitoring)"
    )
    max_login_failures: int = setting(
        5, "failed logins per user, and 4 times as many per address, before a pause", min=1
    )
    lockout_minutes: float = setting(
        5.0, "minutes failed logins are remembered (and a paused login waits)", min=0.1
    )


@dataclass(frozen=True)
class LogSettings:
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = setting("INFO", "log level")
    patient_data: bool = setting(True, "allow patient names and IDs in log lines")


@dataclass(frozen=True)
class HealthSettings:
    """Health checks (``/health``, ``appliance health``, the systemd watchdog) and metrics."""

    public: bool = setting(
        True, "/health and /metrics readable by anyone (false: from this machine only, until "
        "accounts exist)"
    )
    interval: float = setting(10.0, "seconds between two background runs of the checks",
                              min=0.1)
    timeout: float = setting(
        5.0, "seconds a check may take before it counts as failing (a wedged component)",
        min=0.1
    )
    disk_degraded_mb: float = setting(
        2048.0, "free space on the data filesystem below which the box is degraded", min=0
    )
    disk_failing_mb: float = setting(
        256.0, "free space on the data filesystem below which the box is failing", min=0
    )
    max_silence: dict[str, float] = setting(
        {}, "per calling AE title, the longest silence (seconds) before the source is "
        "reported silent (degraded), e.g. {\"PETCAM\": 86400}"
    )
    max_queue_age: float = setting(
        3600.0, "seconds the oldest pending entry of a destination may wait before the "
        "destination is degraded", min=1
    )
    max_consecutive_failures: int = setting(
        5, "failed attempts in a row after which a destination is degraded", min=1
    )
    busy_grace: float = setting(
        300.0, "seconds every association slot may stay taken (the self C-ECHO refused) "
        "before the DICOM listener counts as failing rather than busy", min=0
    )


@dataclass(frozen=True)
class Config:
    data: str = setting("", "data directory (index and files); default: ./data in the checkout")
    dicom: DicomSettings = setting(DicomSettings(), "DICOM network")
    storage: StorageSettings = setting(StorageSettings(), "the store")
    http: HttpSettings = setting(HttpSettings(), "web server")
    log: LogSettings = setting(LogSettings(), "logging")
    modalities: dict[str, Modality] = setting({}, "known remote nodes, by name")
    routes: dict[str, Route] = setting({}, "routing rules, by name")
    queue: QueueSettings = setting(QueueSettings(), "the outbound queue")
    quota: QuotaSettings = setting(QuotaSettings(), "the rotating storage quota")
    hooks: HooksSettings = setting(HooksSettings(), "Python hooks")
    health: HealthSettings = setting(HealthSettings(), "health checks, watchdog and metrics")
    security: SecuritySettings = setting(SecuritySettings(), "accounts and sessions")

    @property
    def data_dir(self) -> Path:
        return Path(self.data) if self.data else default_data_dir()

    def modality_by_aet(self, aet: str) -> Modality | None:
        return next((m for m in self.modalities.values() if m.aet == aet), None)


def default_data_dir() -> Path:
    """``data/`` beside the package when run from a checkout, else the working directory."""
    checkout = Path(__file__).resolve().parent.parent
    return checkout / "data" if (checkout / "pyproject.toml").exists() else Path.cwd() / "data"


def _check(path: str, value: Any, tp: Any, meta: typing.Mapping[str, Any]) -> Any:
    """Validate ``value`` against the annotation ``tp`` and return it converted."""
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: expected an object, got {value!r}")
        return build(typing.cast(type, tp), value, path)
    if origin is Literal:
        if value not in typing.get_args(tp):
            choices = ", ".join(repr(a) for a in typing.get_args(tp))
            raise ConfigError(f"{path}: {value!r} is not one of {choices}")
        return value
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: expected an object, got {value!r}")
        _, vt = typing.get_args(tp)
        return {str(k): _check(f"{path}.{k}", v, vt, {}) for k, v in value.items()}
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{path}: expected a list, got {value!r}")
        (it,) = typing.get_args(tp)
        return [_check(f"{path}[{i}]", v, it, {}) for i, v in enumerate(value)]
    if origin in (typing.Union, types.UnionType):
        return value
    return _scalar(path, value, tp, meta)


def _scalar(path: str, value: Any, tp: type, meta: typing.Mapping[str, Any]) -> Any:
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, tp) or (tp is int and isinstance(value, bool)):
        raise ConfigError(f"{path}: {value!r} is not a {tp.__name__}")
    if "min" in meta and value < meta["min"]:
        raise ConfigError(f"{path}: {value!r} is below the minimum {meta['min']}")
    if "max" in meta and value > meta["max"]:
        raise ConfigError(f"{path}: {value!r} is above the maximum {meta['max']}")
    if meta.get("check") == "aet" and not AE_TITLE.match(str(value).strip() or "!"):
        raise ConfigError(f"{path}: {value!r} is not a valid AE title (1-16 characters)")
    return value


def build(cls: type, values: dict[str, Any], prefix: str = "") -> Any:
    """Build dataclass ``cls`` from a dict, validating every key."""
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in values.items():
        path = f"{prefix}.{key}" if prefix else key
        if key not in fields:
            raise ConfigError(f"{path}: unknown setting")
        kwargs[key] = _check(path, value, hints[key], fields[key].metadata)
    return cls(**kwargs)


WHOLE = ("modalities", "routes")  # replaced as a whole by an override, so entries can be removed


def merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """Deep-merge ``override`` into a copy of ``base``."""
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict) and key not in WHOLE:
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def read_file(path: Path | None) -> dict[str, Any]:
    """The values of a JSON configuration file (none for no file)."""
    if path is None:
        return {}
    try:
        values = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise ConfigError(f"{path}: no such configuration file") from exc
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path}: not valid JSON ({exc})") from exc
    if not isinstance(values, dict):
        raise ConfigError(f"{path}: the configuration must be a JSON object")
    return values


def load(path: Path | None = None, overrides: dict[str, Any] | None = None) -> Config:
    """Defaults, then the JSON file at ``path``, then ``overrides`` (from the command line)."""
    return validated(merge(read_file(path), overrides or {}))


def validated(values: dict[str, Any]) -> Config:
    """Build the configuration and check what types alone cannot: references and patterns."""
    config = typing.cast(Config, build(Config, values))
    for name, route in config.routes.items():
        for dest in route.destinations:
            if dest not in config.modalities:
                raise ConfigError(f"routes.{name}.destinations: {dest!r} is not a known modality")
        for keyword in route.tags:
            if tag_for_keyword(keyword) is None:
                raise ConfigError(f"routes.{name}.tags: {keyword!r} is not a DICOM keyword")
        patterns = [("calling_aet", route.calling_aet), ("called_aet", route.called_aet),
                    ("modality", route.modality), ("sop_class", route.sop_class),
                    *((f"tags.{k}", v) for k, v in route.tags.items())]
        for key, values_ in patterns:
            for pattern in values_:
                if pattern.startswith("re:"):
                    try:
                        re.compile(pattern[3:])
                    except re.error as exc:
                        raise ConfigError(
                            f"routes.{name}.{key}: {pattern!r} is not a valid regular "
                            f"expression ({exc})"
                        ) from exc
    return config


def to_dict(config: Config) -> dict[str, Any]:
    return dataclasses.asdict(config)


def describe(cls: type = Config, prefix: str = "") -> list[str]:
    """One line per setting: key, default and help, for ``check-config --describe``."""
    lines = []
    defaults = cls()
    for f in dataclasses.fields(cls):
        key = f"{prefix}{f.name}"
        value = getattr(defaults, f.name)
        if dataclasses.is_dataclass(value):
            lines += describe(type(value), key + ".")
        else:
            lines.append(f"{key} = {json.dumps(value)}  # {f.metadata.get('help', '')}")
    return lines
