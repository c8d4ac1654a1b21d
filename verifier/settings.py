"""Service configuration: one TOML file, ``VERIFIER_*`` environment overrides, CLI flags.

Precedence, lowest first: the defaults below, the TOML file, the environment, the command
line. Everything is validated when loaded; a bad value stops the start with a message that
names where it came from (``config.toml: [x5u] timeout``, ``VERIFIER_X5U_TIMEOUT``).
Nothing is read at import time.

TOML layout: top-level keys are :class:`Settings` fields; the tables ``[verification]``,
``[x5u]`` and ``[api]`` hold :class:`VerificationSettings`, :class:`FetchSettings`
and :class:`ApiSettings`. The environment variable of a key is ``VERIFIER_`` + the table name
(if any) + the key, upper-cased: ``VERIFIER_PORT``, ``VERIFIER_X5U_ALLOW_PRIVATE_X5U``.
Lists in the environment are comma-separated.
"""

from __future__ import annotations

import dataclasses
import itertools
import re
import tomllib
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from .core.errors import VerifierError
from .core.verify import VerifyOptions
from .net.fetch import FetchSettings
from .net.rcd import RcdSettings
from .net.redis_tier import RedisSettings
from .records import RecordSettings

__all__ = [
    "ApiSettings",
    "ConfigError",
    "Settings",
    "VerificationSettings",
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
    """Refuse certificates without the SHAKEN policy OID 2.16.840.1.114569.1.1.1."""
    max_div_hops: int = 5
    """Most diversions (div PASSporTs, RFC 8946) in one chain; a longer chain is refused."""
    replay_cache_size: int = 100_000
    """Most PASSporT signatures remembered for replay detection (each for the iat window)."""
    key_tables: int = 64
    """Signing keys in heavy use that get a precomputed table (about 150 KiB each): their
    ES256 checks cost about 0.45x a plain check. 0: none."""

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

    def options(self, fetch: FetchSettings) -> VerifyOptions:
        return VerifyOptions(
            max_iat_age=self.max_iat_age,
            max_future_skew=self.max_future_skew,
            nanp_national_match=self.nanp_national_match,
            x5u_ports=fetch.ports,
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
    """Bearer token for /v1/records, /v1/stats and /v1/admin/reload (unset: they answer 403).
    Give it through the environment (VERIFIER_API_ADMIN_TOKEN), not in a shared file."""
    verify_token: str | None = None
    """Bearer token for the verification endpoints too (unset: open, as switches expect)."""

    def __post_init__(self) -> None:
        for name in ("body_limit", "batch_body_limit", "batch_max"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1")
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
    policy_file: str | None = None
    """TOML policy: labels, provider block and allow lists, rules (none: the defaults)."""
    batch_threads: int = 2
    """Threads that check a large batch's signatures (``/v1/verify/batch``) while no other
    request is in flight (beside other requests the event loop checks them: it is faster
    then) and some key has no table yet (a table's checks keep the GIL: threads would only
    add hand-overs); 1: always on the event loop. More than the host's cores gains nothing."""
    batch_signatures: bool = True
    """Check the ES256 signatures of all requests that reach that step in one event-loop
    turn together (faster under load: OpenSSL stays hot in the CPU caches)."""
    event_loop: Literal["auto", "asyncio", "uvloop"] = "auto"
    """``auto`` uses uvloop when it is installed (it is a dependency on Linux)."""
    verification: VerificationSettings = field(default_factory=VerificationSettings)
    x5u: FetchSettings = field(default_factory=FetchSettings)
    api: ApiSettings = field(default_factory=ApiSettings)
    records: RecordSettings = field(default_factory=RecordSettings)
    rcd: RcdSettings = field(default_factory=RcdSettings)
    redis: RedisSettings = field(default_factory=RedisSettings)

    def __post_init__(self) -> None:
        if not 0 <= self.port < 65536:
            raise ValueError("port must be 0-65535")
        if self.workers < 1:
            raise ValueError("workers must be at least 1")
        if self.batch_threads < 1:
            raise ValueError("batch_threads must be at least 1")
        if self.log_level.upper() not in {"DEBUG", "INFO", "WARNING", "ERROR"}:
            raise ValueError("log_level must be DEBUG, INFO, WARNING or ERROR")

    @property
    def options(self) -> VerifyOptions:
        return self.verification.options(self.x5u)


_TABLES: dict[str, type[Any]] = {
    "verification": VerificationSettings,
    "x5u": FetchSettings,
    "api": ApiSettings,
    "records": RecordSettings,
    "rcd": RcdSettings,
    "redis": RedisSettings,
}


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


def _fields(cls: type[Any]) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls) if f.name not in _TABLES}


def _build(cls: type[Any], values: dict[str, Any], where: str, sources: dict[str, str]) -> Any:
    """``cls(**values)``; a range error names where the setting it mentions was set."""
    try:
        return cls(**values)
    except ValueError as exc:
        named = [src for name, src in sources.items() if re.search(rf"\b{name}\b", str(exc))]
        raise ConfigError(f"{named[0] if named else where}: {exc}") from None


def load_settings(
    path: str | Path | None = None,
    *,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Settings:
    """Settings from defaults, the TOML file at ``path``, ``env`` and ``overrides``.

    ``overrides`` uses dotted keys for tables (``{"x5u.allow_private_x5u": True}``).

    Raises:
        ConfigError: unreadable file, unknown key, wrong type or out-of-range value.
    """
    layers: dict[str, dict[str, Any]] = {"": {}, **{t: {} for t in _TABLES}}
    sources: dict[str, dict[str, str]] = {name: {} for name in layers}  # key -> where it was set
    if path is not None:
        try:
            data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
        except OSError as exc:
            raise ConfigError(f"{path}: cannot read ({exc.strerror})") from None
        except UnicodeDecodeError as exc:
            raise ConfigError(f"{path}: not UTF-8 (byte {exc.start})") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: not valid TOML ({exc})") from None
        top = _fields(Settings)
        for key, value in data.items():
            if key in _TABLES:
                if not isinstance(value, dict):
                    raise ConfigError(f"{path}: [{key}] must be a table")
                table = _fields(_TABLES[key])
                for sub, sub_value in value.items():
                    if sub not in table:
                        raise ConfigError(f"{path}: [{key}] {sub}: unknown setting")
                    where = sources[key][sub] = f"{path}: [{key}] {sub}"
                    layers[key][sub] = _coerce(sub_value, table[sub], where)
            elif key in top:
                where = sources[""][key] = f"{path}: {key}"
                layers[""][key] = _coerce(value, top[key], where)
            else:
                raise ConfigError(f"{path}: {key}: unknown setting")
    environ = env if env is not None else {}
    for table_name, cls in (("", Settings), *_TABLES.items()):
        prefix = "VERIFIER_" + (table_name.upper() + "_" if table_name else "")
        for name, hint in _fields(cls).items():
            var = prefix + name.upper()
            if var in environ:
                sources[table_name][name] = var
                layers[table_name][name] = _coerce(environ[var], hint, var)
    for dotted, value in (overrides or {}).items():
        table_name, _, name = dotted.rpartition(".")
        cls = _TABLES.get(table_name, Settings) if table_name else Settings
        hints = _fields(cls)
        if name not in hints or (table_name and table_name not in _TABLES):
            raise ConfigError(f"--{dotted}: unknown setting")
        where = sources[table_name][name] = f"option {dotted}"
        layers[table_name][name] = _coerce(value, hints[name], where)
    tables = {
        name: _build(
            cls,
            layers[name],
            f"[{name}]" if path is None else f"{path}: [{name}]",
            sources[name],
        )
        for name, cls in _TABLES.items()
    }
    settings: Settings = _build(
        Settings, {**layers[""], **tables}, str(path) if path else "settings", sources[""]
    )
    return settings


def describe() -> list[tuple[str, str, Any, str]]:
    """(table, key, default, doc) of every setting, for the README and ``verifier config``."""
    out: list[tuple[str, str, Any, str]] = []
    for table_name, cls in (("", Settings), *_TABLES.items()):
        docs = _attribute_docs(cls)
        for f in dataclasses.fields(cls):
            if f.name in _TABLES:
                continue
            default = f.default if f.default is not dataclasses.MISSING else None
            out.append((table_name, f.name, default, docs.get(f.name, "")))
    return out


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
