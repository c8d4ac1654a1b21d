"""Service configuration: one TOML file, ``VERIFIER_*`` environment variables, CLI flags.

Precedence, lowest first: the defaults, the TOML file, the environment, the command line.
Everything is validated when loaded; a bad value stops the start with a message that names
where it came from (``config.toml: [http_client] timeout``, ``VERIFIER_HTTP_CLIENT_TIMEOUT``).
Nothing is read at import time.

The file's layout (:func:`describe` lists every key) is what a person writes; the loader
resolves it into :class:`Settings`, the dataclasses the service is built from.
``[http_client]`` is ``Settings.http_client``
(:class:`~verifier.net.transport.HttpClientSettings`), the rules every outgoing fetch
shares; ``[tuning]`` (:class:`TuningKeys`) holds the performance knobs and goes to where
each acts. A key's environment variable is ``VERIFIER_`` + its table (if any) + the key,
upper-cased: ``VERIFIER_PORT``, ``VERIFIER_HTTP_CLIENT_TIMEOUT``,
``VERIFIER_TUNING_KEY_TABLES``; lists there are comma-separated. An unknown key or
``VERIFIER_*`` variable stops the start like a bad value; one that moved names its new
place (``[x5u] timeout moved to [http_client] timeout``). ``VERIFIER_TEST_*`` variables
belong to the test suite and are not read.
"""

from __future__ import annotations

import dataclasses
import difflib
import itertools
import re
import tomllib
import types
import typing
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from .core.errors import VerifierError
from .core.verify import VerifyOptions
from .net.fetch import FetchSettings
from .net.rcd import RcdSettings
from .net.redis_tier import RedisSettings
from .net.transport import HttpClientSettings
from .net.trustlist import TrustSettings
from .records import RecordSettings
from .sip.config import SipSettings

_ROOT = re.compile(r"(/[A-Za-z0-9._~-]+)+")

__all__ = [
    "ApiSettings",
    "ConfigError",
    "Key",
    "Settings",
    "TuningKeys",
    "VerificationSettings",
    "describe",
    "load_settings",
]


class ConfigError(VerifierError, ValueError):
    """A configuration value is missing, unknown or invalid; the message says which."""


@dataclass(frozen=True, slots=True, kw_only=True)
class VerificationSettings:
    max_iat_age: float = 60.0
    """Oldest acceptable PASSporT iat, seconds before the verification time."""
    max_future_skew: float = 10.0
    """How far iat may be ahead of the verification time."""
    max_date_skew: float = 60.0
    """How far the request's SIP Date (ATIS ``time``) may be from now (403 Stale Date)."""
    nanp_national_match: bool = True
    """A 10-digit number given by the switch matches the claim's ``1`` + number."""
    max_identity_headers: int = 32
    """Most Identity header values verified in one request (more: 438)."""
    require_policy_oid: bool = False
    """Refuse certificates without a SHAKEN CP OID (2.16.840.1.114569.1.1.N, N the CP version)."""
    max_div_hops: int = 5
    """Most diversions (div PASSporTs, RFC 8946) in one chain; a longer chain is refused."""
    replay_cache_size: int = 100_000
    """Most PASSporT signatures remembered for replay detection (each for the iat window)."""
    key_tables: int = 64
    """Set by ``[tuning] key_tables``."""

    def __post_init__(self) -> None:
        for name in ("max_iat_age", "max_date_skew"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0")
        if self.max_future_skew < 0:
            raise ValueError("max_future_skew must be >= 0")
        for name in ("max_identity_headers", "max_div_hops", "replay_cache_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1")
        if self.key_tables < 0:
            raise ValueError("key_tables must be >= 0")

    @property
    def replay_window(self) -> float:
        """How long a PASSporT can pass the iat checks: how long replays are remembered."""
        return self.max_iat_age + self.max_future_skew

    def options(self, http_client: HttpClientSettings) -> VerifyOptions:
        return VerifyOptions(
            max_iat_age=self.max_iat_age,
            max_future_skew=self.max_future_skew,
            nanp_national_match=self.nanp_national_match,
            x5u_ports=http_client.ports,
            max_identity_headers=self.max_identity_headers,
            max_div_hops=self.max_div_hops,
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class ApiSettings:
    reason_key_case: Literal["lower", "camel"] = "lower"
    """ATIS failure keys: ``reasoncode``/``reasontext``/``reasondesc`` or ``reasonCode``..."""
    include_attest: bool = True
    """Add ``attest`` to the ATIS verificationResponse on a pass."""
    body_limit: int = 64 * 1024
    """Largest request body, in bytes, of the single-verification endpoints (413 beyond)."""
    batch_body_limit: int = 8 * 1024 * 1024
    """Largest request body of ``/v1/verify/batch``."""
    batch_max: int = 1000
    """Most requests in one batch."""
    log_full_numbers: bool = False
    """Log calling/called numbers in full; by default all but the last 4 digits are masked."""
    log_verifications: bool = True
    """One JSON log line per verification."""
    admin_token: str | None = None
    """Bearer token for /v1/records, /v1/stats and /v1/admin/* (unset: they answer 403).
    Give it through the environment (VERIFIER_API_ADMIN_TOKEN), not in a shared file."""
    verify_token: str | None = None
    """Bearer token for the verification endpoints too (unset: open, as switches expect)."""
    threegpp_root: str = "/3gpp/stir/v1"
    """Path of the 3GPP API (TS 24.229 Annex V): its verification, divVerification and
    rphVerification resources are served under it."""

    def __post_init__(self) -> None:
        for name in ("body_limit", "batch_body_limit", "batch_max"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1")
        root = self.threegpp_root
        if not root.startswith("/") or root.endswith("/") or not _ROOT.fullmatch(root):
            raise ValueError("threegpp_root must be a path like /3gpp/stir/v1 (no trailing /)")
        if root == "/stir/v1":
            raise ValueError("threegpp_root /stir/v1 would take the ATIS verification path")
        for name in ("admin_token", "verify_token"):
            token = getattr(self, name)
            if token is not None and (len(token) < 16 or not token.isprintable() or " " in token):
                raise ValueError(f"{name} must be at least 16 printable characters, no spaces")


@dataclass(frozen=True, slots=True, kw_only=True)
class Settings:
    host: str = "127.0.0.1"
    """Address to listen on (``0.0.0.0`` for every interface)."""
    port: int = 8080
    """TCP port of the API."""
    workers: int = 1
    """Worker processes sharing the port (SO_REUSEPORT); one is a process per core."""
    trust_anchors: tuple[str, ...] = ("certs",)
    """PEM files or directories of trust anchors (STI-PA approved CAs)."""
    log_level: str = "INFO"
    """DEBUG, INFO (one line per verification), WARNING or ERROR; JSON lines on stderr."""
    shutdown_timeout: float = 10.0
    """Seconds given to in-flight requests on SIGTERM/SIGINT."""
    keepalive_timeout: float = 75.0
    """Seconds an idle keep-alive connection stays open (aiohttp's own default is an hour)."""
    policy_file: str | None = None
    """TOML policy: labels, provider block and allow lists, rules (none: the defaults)."""
    batch_threads: int = 2
    """Set by ``[tuning] batch_threads``."""
    batch_signatures: bool = True
    """Set by ``[tuning] batch_signatures``."""
    event_loop: Literal["auto", "asyncio", "uvloop"] = "auto"
    """Set by ``[tuning] event_loop``."""
    verification: VerificationSettings = field(default_factory=VerificationSettings)
    http_client: HttpClientSettings = field(default_factory=HttpClientSettings)
    x5u: FetchSettings = field(default_factory=FetchSettings)
    api: ApiSettings = field(default_factory=ApiSettings)
    records: RecordSettings = field(default_factory=RecordSettings)
    rcd: RcdSettings = field(default_factory=RcdSettings)
    redis: RedisSettings = field(default_factory=RedisSettings)
    trust: TrustSettings = field(default_factory=TrustSettings)
    sip: SipSettings = field(default_factory=SipSettings)

    def __post_init__(self) -> None:
        if not 0 <= self.port < 65536:
            raise ValueError("port must be 0-65535")
        if self.workers < 1:
            raise ValueError("workers must be at least 1")
        if not self.keepalive_timeout > 0:
            raise ValueError("keepalive_timeout must be a positive number of seconds")
        if self.batch_threads < 1:
            raise ValueError("batch_threads must be at least 1")
        if self.log_level.upper() not in {"DEBUG", "INFO", "WARNING", "ERROR"}:
            raise ValueError("log_level must be DEBUG, INFO, WARNING or ERROR")

    @property
    def options(self) -> VerifyOptions:
        return self.verification.options(self.http_client)


class TuningKeys:
    """``[tuning]``: performance knobs. Leave them alone unless you have measured a change
    on your own load (``benchmarks/`` has the tools, ``benchmarks/RESULTS.md`` the figures)."""

    batch_threads: int
    """Threads that check a large batch's signatures while it is alone in flight; 1: none but
    the event loop."""
    batch_signatures: bool
    """Check together the ES256 signatures that reach that step in one event-loop turn."""
    key_tables: int
    """Signing keys in heavy use given a precomputed table for faster ES256 checks; 0: none."""
    event_loop: Literal["auto", "asyncio", "uvloop"]
    """``auto``: uvloop when it is installed (a dependency on Linux), else asyncio."""
    writer_process: bool
    """SQLite: records are written by a child process, not a thread of the service."""
    writer_nice: int
    """The record writer process's niceness above the service's (0-19); 0: the same."""
    writer_batch_size: int
    """Most records written in one transaction."""
    writer_flush_interval: float
    """How long the record writer waits for a batch to fill before writing what it has."""
    writer_queue_size: int
    """Records accepted but not yet written, at most (then ``[records] overflow`` applies)."""


_PARTS: dict[str, type[Any]] = {
    "verification": VerificationSettings,
    "api": ApiSettings,
    "http_client": HttpClientSettings,
    "x5u": FetchSettings,
    "rcd": RcdSettings,
    "records": RecordSettings,
    "redis": RedisSettings,
    "trust": TrustSettings,
    "sip": SipSettings,
}
"""The fields of :class:`Settings` that hold a dataclass, and their classes."""

_FORMERLY: dict[tuple[str, str], str] = {
    (table, "allow_private_x5u" if (table, name) == ("x5u", "allow_private") else name): name
    for table in ("x5u", "rcd")
    for name in (f.name for f in dataclasses.fields(HttpClientSettings))
}
"""(table, key) of the old layout, each ``[x5u]`` and ``[rcd]`` -> its ``[http_client]`` key."""

_TUNING: dict[str, tuple[str, str]] = {
    "batch_threads": ("", "batch_threads"),
    "batch_signatures": ("", "batch_signatures"),
    "key_tables": ("verification", "key_tables"),
    "event_loop": ("", "event_loop"),
    "writer_process": ("records", "writer_process"),
    "writer_nice": ("records", "writer_nice"),
    "writer_batch_size": ("records", "batch_size"),
    "writer_flush_interval": ("records", "flush_interval"),
    "writer_queue_size": ("records", "queue_size"),
}
"""``[tuning]`` key -> (part of Settings, "" for Settings itself; field)."""

_TABLES = (
    "",
    "verification",
    "api",
    "http_client",
    "x5u",
    "rcd",
    "records",
    "redis",
    "trust",
    "sip",
    "tuning",
)
"""The file's tables in reference order; "" is the top level."""

_TEST_PREFIX = "VERIFIER_TEST_"


@dataclass(frozen=True, slots=True, kw_only=True)
class Key:
    """One key of the configuration file; :func:`describe` returns them all.

    ``targets`` are the fields its value goes to: (part of :class:`Settings`, "" for
    Settings itself; field name).
    """

    table: str
    name: str
    hint: Any
    default: Any
    targets: tuple[tuple[str, str], ...]
    doc: str = ""

    @property
    def label(self) -> str:
        """As written in messages: ``port``, ``[x5u] max_body``."""
        return f"[{self.table}] {self.name}" if self.table else self.name

    @property
    def dotted(self) -> str:
        """As given in ``overrides``: ``port``, ``x5u.max_body``."""
        return f"{self.table}.{self.name}" if self.table else self.name

    @property
    def env(self) -> str:
        return _env_name(self.table, self.name)


def _env_name(table: str, name: str) -> str:
    return "VERIFIER_" + (f"{table}_" if table else "").upper() + name.upper()


def _default(cls: type[Any], name: str) -> Any:
    for f in dataclasses.fields(cls):
        if f.name == name:
            if f.default is not dataclasses.MISSING:
                return f.default
            if f.default_factory is not dataclasses.MISSING:
                return f.default_factory()
    raise KeyError(name)  # pragma: no cover - the tables above name real fields


def _keys(*, docs: bool = False) -> list[Key]:
    """Every key of the file, in reference order, with its type, default and targets."""
    moved = set(_TUNING.values())
    out: list[Key] = []
    for table in _TABLES:
        targets: dict[str, tuple[tuple[str, str], ...]]
        cls: type[Any]
        if table == "tuning":
            cls = TuningKeys
            targets = {n: (t,) for n, t in _TUNING.items()}
        else:
            cls = _PARTS[table] if table else Settings
            names = [f.name for f in dataclasses.fields(cls) if f.name not in _PARTS]
            targets = {n: ((table, n),) for n in names if (table, n) not in moved}
        hints = typing.get_type_hints(cls)
        text = _attribute_docs(cls) if docs else {}
        for name, where in targets.items():
            part, field_name = where[0]
            owner = _PARTS[part] if part else Settings
            default = _default(owner, field_name)
            out.append(
                Key(
                    table=table,
                    name=name,
                    hint=hints[name],
                    default=default,
                    targets=where,
                    doc=text.get(name, ""),
                )
            )
    return out


def _coerce(value: Any, hint: Any, where: str) -> Any:
    """``value`` (from TOML, or a string from the environment) as the field's type."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    from_env = isinstance(value, str) and where.startswith("VERIFIER_")
    if origin in (typing.Union, types.UnionType):
        if (value is None or (from_env and value == "")) and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(value, inner[0], where)
    if origin is Literal:
        if value not in args:
            choices = ", ".join(repr(a) for a in args)
            raise ConfigError(f"{where}: {value!r} is not one of {choices}")
        return value
    if origin in (tuple, frozenset, list):
        items = [v.strip() for v in value.split(",") if v.strip()] if from_env else value
        if not isinstance(items, list | tuple):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        inner_type = args[0] if args else str
        converted = [_coerce(v, inner_type, where) for v in items]
        return frozenset(converted) if origin is frozenset else tuple(converted)
    if hint is bool:
        if isinstance(value, bool):
            return value
        if from_env and value.lower() in {"1", "true", "yes", "on"}:
            return True
        if from_env and value.lower() in {"0", "false", "no", "off"}:
            return False
        raise ConfigError(f"{where}: expected true or false, got {value!r}")
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if from_env:
            try:
                return int(value)
            except ValueError:
                pass
        raise ConfigError(f"{where}: expected an integer, got {value!r}")
    if hint is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        if from_env:
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{where}: expected a number, got {value!r}")
    if hint is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{where}: expected a string, got {value!r}")
    raise ConfigError(f"{where}: unsupported setting type {hint!r}")  # pragma: no cover


def _build(
    cls: type[Any], values: dict[str, Any], where: str, sources: dict[str, tuple[str, str]]
) -> Any:
    """``cls(**values)``; a range error names the key that set the field it mentions."""
    try:
        return cls(**values)
    except ValueError as exc:
        text = str(exc)
        named = [(f, s) for f, s in sources.items() if re.search(rf"\b{f}\b", text)]
        if not named and len(sources) == 1:  # the one value set is the cause
            named = list(sources.items())
        if not named:
            raise ConfigError(f"{where}: {text}") from None
        field_name, (source, key_name) = named[0]
        text = re.sub(rf"\b{field_name}\b", key_name, text)
        raise ConfigError(f"{source}: {text}") from None


def _moved(keys: list[Key]) -> dict[tuple[str, str], Key]:
    """(table, key) of the old layout -> the key that took its place."""
    moved = {t: k for k in keys if k.table == "tuning" for t in k.targets}
    by_place = {(k.table, k.name): k for k in keys}
    moved.update((old, by_place["http_client", new]) for old, new in _FORMERLY.items())
    return moved


def _refused(old: str, new: str | None, name: str = "", known: Iterable[str] = ()) -> ConfigError:
    """``old`` moved to ``new``, or is unknown: then the ``known`` name closest to ``name``."""
    if new:
        return ConfigError(f"{old} moved to {new}")
    prefix = "VERIFIER_" if name.startswith("VERIFIER_") else ""  # alike in every name
    bare = [k.removeprefix(prefix) for k in known]
    close = difflib.get_close_matches(name.removeprefix(prefix), bare, n=1, cutoff=0.7)
    hint = f" (did you mean {prefix}{close[0]}?)" if close else ""
    return ConfigError(f"{old}: unknown setting{hint}")


def _read_toml(path: str | Path) -> dict[str, Any]:
    try:
        return tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read ({exc.strerror})") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 (byte {exc.start})") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML ({exc})") from None


def load_settings(
    path: str | Path | None = None,
    *,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Settings:
    """Settings from defaults, the TOML file at ``path``, ``env`` and ``overrides``.

    ``overrides`` names keys as the file does, dotted for tables
    (``{"http_client.allow_private": True}``).

    Raises:
        ConfigError: unreadable file, unknown or moved key or ``VERIFIER_*`` variable, wrong
            type or out-of-range value.
    """
    keys = _keys()
    by_place = {(k.table, k.name): k for k in keys}
    moved = _moved(keys)
    chosen: dict[str, tuple[Key, Any, str]] = {}  # dotted -> (key, value, where); last wins
    if path is not None:
        for name, value in _read_toml(path).items():
            if name in _TABLES and name:
                if not isinstance(value, dict):
                    raise ConfigError(f"{path}: [{name}] must be a table")
                items = [(name, sub, sub_value) for sub, sub_value in value.items()]
            else:
                items = [("", name, value)]
            for table, sub, sub_value in items:
                key = by_place.get((table, sub))
                if key is None:
                    new = moved.get((table, sub))
                    old = f"[{table}] {sub}" if table else sub
                    known = (k.name for k in keys if k.table == table)
                    raise _refused(f"{path}: {old}", new.label if new else None, sub, known)
                where = f"{path}: {key.label}"
                if key.dotted == "trust.list_token":  # a secret: never in a shared file
                    raise ConfigError(
                        f"{where}: give it as VERIFIER_TRUST_LIST_TOKEN or in list_token_file"
                    )
                chosen[key.dotted] = (key, _coerce(sub_value, key.hint, where), where)
    environ = env if env is not None else {}
    by_env = {k.env: k for k in keys}
    moved_env = {_env_name(*place): k for place, k in moved.items()}
    for var in sorted(environ):
        if not var.startswith("VERIFIER_") or var.startswith(_TEST_PREFIX):
            continue
        key = by_env.get(var)
        if key is None:
            new = moved_env.get(var)
            raise _refused(var, new.env if new else None, var, by_env)
        chosen[key.dotted] = (key, _coerce(environ[var], key.hint, var), var)
    for dotted, value in (overrides or {}).items():
        table, _, name = dotted.rpartition(".")
        key = by_place.get((table, name))
        if key is None:
            new = moved.get((table, name))
            known = (k.dotted for k in keys)
            raise _refused(f"option {dotted}", new.dotted if new else None, dotted, known)
        where = f"option {dotted}"
        chosen[key.dotted] = (key, _coerce(value, key.hint, where), where)
    layers: dict[str, dict[str, Any]] = {"": {}, **{p: {} for p in _PARTS}}
    sources: dict[str, dict[str, tuple[str, str]]] = {p: {} for p in layers}
    for key, value, where in chosen.values():
        for part, field_name in key.targets:
            layers[part][field_name] = value
            sources[part][field_name] = (where, key.name)
    parts = {
        name: _build(cls, layers[name], f"{path}: [{name}]" if path else f"[{name}]", sources[name])
        for name, cls in _PARTS.items()
    }
    settings: Settings = _build(
        Settings, {**layers[""], **parts}, str(path) if path else "settings", sources[""]
    )
    return settings


def describe() -> list[Key]:
    """Every key of the configuration file, in reference order, with its one-line doc."""
    return _keys(docs=True)


def _attribute_docs(cls: type[Any]) -> dict[str, str]:
    """The string literal under each field in the class source (PEP 257 attribute docs)."""
    import ast
    import inspect

    try:
        tree = ast.parse(inspect.getsource(cls))
    except (OSError, TypeError):  # pragma: no cover - source not available
        return {}
    docs: dict[str, str] = {}
    body = tree.body[0].body if tree.body and isinstance(tree.body[0], ast.ClassDef) else []
    for node, nxt in itertools.pairwise(body):
        if (
            isinstance(node, ast.AnnAssign)
            and isinstance(node.target, ast.Name)
            and isinstance(nxt, ast.Expr)
            and isinstance(nxt.value, ast.Constant)
            and isinstance(nxt.value.value, str)
        ):
            docs[node.target.id] = " ".join(nxt.value.value.split())
    return docs
