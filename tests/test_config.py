"""verifier.settings: defaults < TOML file < environment < overrides, every value validated."""

# STYLE.md: asserts read ``expected == actual``.

from __future__ import annotations

import dataclasses
import inspect
import itertools
import json
import os
import re
import tomllib
import typing
from pathlib import Path
from typing import Any

import pytest

from verifier.net.fetch import FetchSettings
from verifier.net.rcd import RcdSettings
from verifier.net.redis_tier import RedisSettings
from verifier.net.transport import HttpClientSettings
from verifier.net.trustlist import TrustSettings
from verifier.records import RecordSettings
from verifier.settings import (
    ApiSettings,
    ConfigError,
    Settings,
    TuningKeys,
    VerificationSettings,
    describe,
    load_settings,
)
from verifier.settings_text import effective_toml
from verifier.sip.config import SipSettings

FULL_TOML = """
host = "192.0.2.10"
port = 9000
workers = 4
trust_anchors = ["/etc/verifier/anchors", "/etc/verifier/extra.pem"]
log_level = "DEBUG"
shutdown_timeout = 3

[verification]
max_iat_age = 30
max_future_skew = 5.5
max_date_skew = 90
nanp_national_match = false
max_identity_headers = 8
require_policy_oid = true

[http_client]
ports = [443, 8443]
connect_timeout = 0.5
timeout = 1.5
ca_file = "/etc/ssl/bundle.pem"
allow_private = true
private_allow = ["10.0.0.0/8", ".internal.example"]
breaker_threshold = 3
breaker_cooldown = 10
user_agent = "sti-vs/1"

[x5u]
max_body = 16384
min_ttl = 60
max_ttl = 7200
host_deny = ["bad.example"]
crl_mode = "closed"
crl_files = ["/etc/verifier/ca.crl"]

[rcd]
max_jcl_bytes = 4096
cache_ttl = 600

[records]
enabled = false
retention_days = 30

[redis]
key_prefix = "sti:"

[tuning]
batch_threads = 1
batch_signatures = false
key_tables = 0
event_loop = "asyncio"
writer_process = false
writer_nice = 0
writer_batch_size = 500
writer_flush_interval = 0.5
writer_queue_size = 100

[api]
reason_key_case = "camel"
include_attest = false
body_limit = 4096
batch_body_limit = 65536
batch_max = 10
log_full_numbers = true
log_verifications = false
"""


def _toml(tmp_path: Path, text: str, name: str = "verifier.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def _error(
    path: Path | None = None,
    *,
    env: dict[str, str] | None = None,
    overrides: dict[str, Any] | None = None,
) -> str:
    with pytest.raises(ConfigError) as caught:
        load_settings(path, env=env, overrides=overrides)
    return str(caught.value)


# -- layers --------------------------------------------------------------------------------------


def test_defaults() -> None:
    settings = load_settings()
    assert Settings() == settings
    assert ("127.0.0.1", 8080, 1, ("certs",)) == (
        settings.host,
        settings.port,
        settings.workers,
        settings.trust_anchors,
    )
    assert frozenset({443}) <= settings.http_client.ports
    assert ("lower", 64 * 1024, 1000) == (
        settings.api.reason_key_case,
        settings.api.body_limit,
        settings.api.batch_max,
    )
    assert 60.0 == settings.verification.max_date_skew


def test_toml_file_sets_every_table(tmp_path: Path) -> None:
    settings = load_settings(_toml(tmp_path, FULL_TOML))
    assert (
        Settings(
            host="192.0.2.10",
            port=9000,
            workers=4,
            trust_anchors=("/etc/verifier/anchors", "/etc/verifier/extra.pem"),
            log_level="DEBUG",
            shutdown_timeout=3.0,
            verification=VerificationSettings(
                max_iat_age=30.0,
                max_future_skew=5.5,
                max_date_skew=90.0,
                nanp_national_match=False,
                max_identity_headers=8,
                require_policy_oid=True,
                key_tables=0,
            ),
            http_client=HttpClientSettings(
                ports=frozenset({443, 8443}),
                connect_timeout=0.5,
                timeout=1.5,
                ca_file="/etc/ssl/bundle.pem",
                allow_private=True,
                private_allow=("10.0.0.0/8", ".internal.example"),
                breaker_threshold=3,
                breaker_cooldown=10.0,
                user_agent="sti-vs/1",
            ),
            x5u=FetchSettings(
                max_body=16384,
                min_ttl=60.0,
                max_ttl=7200.0,
                host_deny=("bad.example",),
                crl_mode="closed",
                crl_files=("/etc/verifier/ca.crl",),
            ),
            rcd=RcdSettings(max_jcl_bytes=4096, cache_ttl=600.0),
            records=RecordSettings(
                enabled=False,
                retention_days=30.0,
                writer_process=False,
                writer_nice=0,
                batch_size=500,
                flush_interval=0.5,
                queue_size=100,
            ),
            redis=RedisSettings(key_prefix="sti:"),
            batch_threads=1,
            batch_signatures=False,
            event_loop="asyncio",
            api=ApiSettings(
                reason_key_case="camel",
                include_attest=False,
                body_limit=4096,
                batch_body_limit=65536,
                batch_max=10,
                log_full_numbers=True,
                log_verifications=False,
            ),
        )
        == settings
    )
    assert isinstance(settings.shutdown_timeout, float)
    assert frozenset({443, 8443}) == settings.options.x5u_ports
    assert 30.0 == settings.options.max_iat_age


def test_empty_toml_file_is_the_defaults(tmp_path: Path) -> None:
    assert Settings() == load_settings(_toml(tmp_path, "# nothing\n"))


def test_environment_overrides() -> None:
    settings = load_settings(
        env={
            "VERIFIER_PORT": "9090",
            "VERIFIER_HTTP_CLIENT_ALLOW_PRIVATE": "true",
            "VERIFIER_HTTP_CLIENT_PORTS": "443, 8443",
            "VERIFIER_API_REASON_KEY_CASE": "camel",
            "VERIFIER_TRUST_ANCHORS": "/a.pem,/b",
            "VERIFIER_VERIFICATION_MAX_IAT_AGE": "30.5",
            "VERIFIER_VERIFICATION_NANP_NATIONAL_MATCH": "off",
            "VERIFIER_HTTP_CLIENT_CA_FILE": "",
            "VERIFIER_API_BATCH_MAX": "5",
            "VERIFIER_TUNING_KEY_TABLES": "0",
            "VERIFIER_TUNING_WRITER_BATCH_SIZE": "100",
            "UNRELATED": "ignored",
            "VERIFIER_TEST_DATABASE_URL": "the test suite's, not read",
        }
    )
    assert 9090 == settings.port
    assert True is settings.http_client.allow_private
    assert frozenset({443, 8443}) == settings.http_client.ports
    assert (0, 100) == (settings.verification.key_tables, settings.records.batch_size)
    assert "camel" == settings.api.reason_key_case
    assert ("/a.pem", "/b") == settings.trust_anchors
    assert 30.5 == settings.verification.max_iat_age
    assert False is settings.verification.nanp_national_match
    assert None is settings.http_client.ca_file
    assert 5 == settings.api.batch_max


@pytest.mark.parametrize(
    ("value", "expected"),
    [("1", True), ("yes", True), ("ON", True), ("True", True), ("0", False), ("no", False)],
)
def test_environment_booleans(value: str, expected: bool) -> None:
    env = {"VERIFIER_HTTP_CLIENT_ALLOW_PRIVATE": value}
    assert expected is load_settings(env=env).http_client.allow_private


def test_the_process_environment_is_read_only_when_passed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("VERIFIER_PORT", "9191")
    assert 8080 == load_settings().port
    assert 9191 == load_settings(env=os.environ).port


def test_overrides_use_dotted_keys() -> None:
    settings = load_settings(
        overrides={
            "port": 7000,
            "http_client.allow_private": True,
            "http_client.ports": [8443],
            "x5u.crl_check": False,
            "api.reason_key_case": "camel",
            "verification.max_date_skew": 120,
            "tuning.batch_threads": 1,
        }
    )
    assert 7000 == settings.port
    assert True is settings.http_client.allow_private
    assert frozenset({8443}) == settings.http_client.ports
    assert (False, 1) == (settings.x5u.crl_check, settings.batch_threads)
    assert "camel" == settings.api.reason_key_case
    assert 120.0 == settings.verification.max_date_skew


def test_precedence_file_then_environment_then_overrides(tmp_path: Path) -> None:
    path = _toml(tmp_path, "port = 1000\nworkers = 2\nhost = '::1'\n[api]\nbatch_max = 7\n")
    env = {"VERIFIER_PORT": "2000", "VERIFIER_WORKERS": "3", "VERIFIER_API_BATCH_MAX": "8"}
    settings = load_settings(path, env=env, overrides={"port": 3000})
    assert (3000, 3, "::1", 8) == (
        settings.port,
        settings.workers,
        settings.host,
        settings.api.batch_max,
    )
    assert 2000 == load_settings(path, env=env).port
    assert 1000 == load_settings(path).port


def test_settings_are_frozen() -> None:
    settings = load_settings()
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.port = 1  # type: ignore[misc]


# -- errors name their source --------------------------------------------------------------------


def test_unknown_key(tmp_path: Path) -> None:
    path = _toml(tmp_path, "prot = 8080\n")
    assert f"{path}: prot: unknown setting (did you mean port?)" == _error(path)
    path = _toml(tmp_path, "listen = '::'\n")
    assert f"{path}: listen: unknown setting" == _error(path)


def test_unknown_table_key(tmp_path: Path) -> None:
    path = _toml(tmp_path, "[x5u]\nmax_bdy = 2\n")
    assert f"{path}: [x5u] max_bdy: unknown setting (did you mean max_body?)" == _error(path)


def test_unknown_table_is_an_unknown_key(tmp_path: Path) -> None:
    path = _toml(tmp_path, "[server]\nport = 1\n")
    assert f"{path}: server: unknown setting" == _error(path)


def test_table_that_is_not_a_table(tmp_path: Path) -> None:
    path = _toml(tmp_path, "api = 3\n")
    assert f"{path}: [api] must be a table" == _error(path)


def test_unknown_override() -> None:
    assert "option x5u.nope: unknown setting" == _error(overrides={"x5u.nope": 1})
    assert "option nope.port: unknown setting" == _error(overrides={"nope.port": 1})
    assert "option x5u: unknown setting" == _error(overrides={"x5u": {}})
    assert "option tuning: unknown setting" == _error(overrides={"tuning": {}})


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        ('port = "8080"', "port: expected an integer, got '8080'"),
        ("port = true", "port: expected an integer, got True"),
        ("port = 80.5", "port: expected an integer, got 80.5"),
        ("host = 1", "host: expected a string, got 1"),
        ('trust_anchors = "certs"', "trust_anchors: expected a list, got 'certs'"),
        ("shutdown_timeout = false", "shutdown_timeout: expected a number, got False"),
        (
            '[http_client]\nallow_private = "yes"',
            "[http_client] allow_private: expected true or false, got 'yes'",
        ),
        (
            '[http_client]\nports = [443, "8443"]',
            "[http_client] ports: expected an integer, got '8443'",
        ),
        ("[http_client]\nca_file = 5", "[http_client] ca_file: expected a string, got 5"),
        ("[x5u]\ncrl_check = 1", "[x5u] crl_check: expected true or false, got 1"),
        ("[tuning]\nkey_tables = 'all'", "[tuning] key_tables: expected an integer, got 'all'"),
        (
            "[verification]\nmax_iat_age = '60'",
            "[verification] max_iat_age: expected a number, got '60'",
        ),
    ],
)
def test_wrong_type_in_file(tmp_path: Path, toml: str, message: str) -> None:
    path = _toml(tmp_path, toml + "\n")
    assert f"{path}: {message}" == _error(path)


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"VERIFIER_PORT": "http"}, "VERIFIER_PORT: expected an integer, got 'http'"),
        ({"VERIFIER_PORT": ""}, "VERIFIER_PORT: expected an integer, got ''"),
        (
            {"VERIFIER_HTTP_CLIENT_ALLOW_PRIVATE": "maybe"},
            "VERIFIER_HTTP_CLIENT_ALLOW_PRIVATE: expected true or false, got 'maybe'",
        ),
        (
            {"VERIFIER_HTTP_CLIENT_PORTS": "443,https"},
            "VERIFIER_HTTP_CLIENT_PORTS: expected an integer, got 'https'",
        ),
        (
            {"VERIFIER_HTTP_CLIENT_TIMEOUT": "2s"},
            "VERIFIER_HTTP_CLIENT_TIMEOUT: expected a number, got '2s'",
        ),
        (
            {"VERIFIER_TUNING_EVENT_LOOP": "trio"},
            "VERIFIER_TUNING_EVENT_LOOP: 'trio' is not one of 'auto', 'asyncio', 'uvloop'",
        ),
    ],
)
def test_wrong_type_in_environment(env: dict[str, str], message: str) -> None:
    assert message == _error(env=env)


def test_wrong_type_in_overrides() -> None:
    assert "option port: expected an integer, got '1'" == _error(overrides={"port": "1"})


def test_bad_literal(tmp_path: Path) -> None:
    path = _toml(tmp_path, '[api]\nreason_key_case = "upper"\n')
    assert f"{path}: [api] reason_key_case: 'upper' is not one of 'lower', 'camel'" == _error(path)
    env = {"VERIFIER_API_REASON_KEY_CASE": "Camel"}
    assert "VERIFIER_API_REASON_KEY_CASE: 'Camel' is not one of 'lower', 'camel'" == _error(env=env)
    path = _toml(tmp_path, '[x5u]\ncrl_mode = "strict"\n', "crl.toml")
    assert f"{path}: [x5u] crl_mode: 'strict' is not one of 'open', 'closed'" == _error(path)


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        ("port = 70000", "port: port must be 0-65535"),
        ("port = -1", "port: port must be 0-65535"),
        ("workers = 0", "workers: workers must be at least 1"),
        ('log_level = "LOUD"', "log_level: log_level must be DEBUG, INFO, WARNING or ERROR"),
        ("[http_client]\ntimeout = 0", "[http_client] timeout: timeout must be > 0"),
        (
            "[http_client]\nports = []",
            "[http_client] ports: ports must be a non-empty set of TCP ports",
        ),
        (
            "[http_client]\nports = [70000]",
            "[http_client] ports: ports must be a non-empty set of TCP ports",
        ),
        (
            "[http_client]\nprivate_allow = ['10.0.0.300/8']",
            "[http_client] private_allow: allow entry '10.0.0.300/8' is not a valid address"
            " or CIDR",
        ),
        ("[x5u]\nmin_ttl = 90000", "[x5u] min_ttl: min_ttl must not exceed max_ttl"),
        ("[verification]\nmax_iat_age = 0", "[verification] max_iat_age: max_iat_age must be > 0"),
        (
            "[verification]\nmax_identity_headers = 0",
            "[verification] max_identity_headers: max_identity_headers must be >= 1",
        ),
        ("[tuning]\nkey_tables = -1", "[tuning] key_tables: key_tables must be >= 0"),
        ("[tuning]\nbatch_threads = 0", "[tuning] batch_threads: batch_threads must be at least 1"),
        (
            "[tuning]\nwriter_batch_size = 0",
            "[tuning] writer_batch_size: writer_batch_size must be >= 1",
        ),
        (
            "[tuning]\nwriter_queue_size = 0",
            "[tuning] writer_queue_size: writer_queue_size must be >= 1",
        ),
        ("[api]\nbody_limit = 0", "[api] body_limit: body_limit must be >= 1"),
        ("[api]\nbatch_max = -5", "[api] batch_max: batch_max must be >= 1"),
    ],
)
def test_out_of_range_in_file(tmp_path: Path, toml: str, message: str) -> None:
    path = _toml(tmp_path, toml + "\n")
    assert f"{path}: {message}" == _error(path)


def test_out_of_range_names_the_layer_that_set_it(tmp_path: Path) -> None:
    path = _toml(tmp_path, "host = '0.0.0.0'\n[http_client]\ntimeout = 3\n")
    assert "VERIFIER_PORT: port must be 0-65535" == _error(path, env={"VERIFIER_PORT": "70000"})
    assert "VERIFIER_WORKERS: workers must be at least 1" == _error(env={"VERIFIER_WORKERS": "0"})
    assert "option port: port must be 0-65535" == _error(path, overrides={"port": 70000})
    env = {"VERIFIER_X5U_MAX_TTL": "10"}  # below the default min_ttl, which nobody set
    assert "VERIFIER_X5U_MAX_TTL: min_ttl must not exceed max_ttl" == _error(path, env=env)


def test_unreadable_file(tmp_path: Path) -> None:
    missing = tmp_path / "missing.toml"
    assert f"{missing}: cannot read (No such file or directory)" == _error(missing)
    assert f"{tmp_path}: cannot read (Is a directory)" == _error(tmp_path)


def test_invalid_toml(tmp_path: Path) -> None:
    path = _toml(tmp_path, "port = \n")
    message = _error(path)
    assert message.startswith(f"{path}: not valid TOML (")
    assert "line 1" in message


def test_not_utf8_toml(tmp_path: Path) -> None:
    path = tmp_path / "latin1.toml"
    path.write_bytes(b'host = "caf\xe9"\n')
    assert f"{path}: not UTF-8 (byte 11)" == _error(path)


# -- moved and unknown keys ----------------------------------------------------------------------

# Every key of the old layout that has a new place: (old table, old key, new table, new key).
MOVED = [
    *(
        (table, old, "http_client", new)
        for table, names in (
            ("x5u", ("ports", "connect_timeout", "timeout", "ca_file", "allow_private_x5u")),
            ("rcd", ("ports", "connect_timeout", "timeout", "ca_file", "allow_private")),
        )
        for old, new in zip(names, (*names[:4], "allow_private"), strict=True)
    ),
    *(
        (table, name, "http_client", name)
        for table in ("x5u", "rcd")
        for name in ("private_allow", "breaker_threshold", "breaker_cooldown", "user_agent")
    ),
    ("", "batch_threads", "tuning", "batch_threads"),
    ("", "batch_signatures", "tuning", "batch_signatures"),
    ("", "event_loop", "tuning", "event_loop"),
    ("verification", "key_tables", "tuning", "key_tables"),
    ("records", "writer_process", "tuning", "writer_process"),
    ("records", "writer_nice", "tuning", "writer_nice"),
    ("records", "batch_size", "tuning", "writer_batch_size"),
    ("records", "flush_interval", "tuning", "writer_flush_interval"),
    ("records", "queue_size", "tuning", "writer_queue_size"),
]


def test_the_moved_keys_are_the_shared_ones_twice_and_the_tuning_ones() -> None:
    added_since = {"max_per_host"}  # new in [http_client], never in [x5u] or [rcd]
    shared = [f for f in dataclasses.fields(HttpClientSettings) if f.name not in added_since]
    assert 2 * len(shared) + len(TuningKeys.__annotations__) == len(MOVED)


def _label(table: str, key: str) -> str:
    return f"[{table}] {key}" if table else key


def _env(table: str, key: str) -> str:
    return f"VERIFIER_{table}_{key}".upper() if table else f"VERIFIER_{key}".upper()


def test_a_moved_key_in_the_file_names_its_new_place(tmp_path: Path) -> None:
    path = _toml(tmp_path, "[x5u]\ntimeout = 3\n")
    assert f"{path}: [x5u] timeout moved to [http_client] timeout" == _error(path)
    path = _toml(tmp_path, "[records]\nbatch_size = 50\n")
    assert f"{path}: [records] batch_size moved to [tuning] writer_batch_size" == _error(path)
    path = _toml(tmp_path, "batch_threads = 4\n")
    assert f"{path}: batch_threads moved to [tuning] batch_threads" == _error(path)


@pytest.mark.parametrize(("table", "old", "new_table", "new"), MOVED)
def test_every_moved_key_names_its_new_place_everywhere(
    tmp_path: Path, table: str, old: str, new_table: str, new: str
) -> None:
    text = f"[{table}]\n{old} = 1\n" if table else f"{old} = 1\n"
    path = _toml(tmp_path, text)
    assert f"{path}: {_label(table, old)} moved to {_label(new_table, new)}" == _error(path)
    env = {_env(table, old): "1"}
    assert f"{_env(table, old)} moved to {_env(new_table, new)}" == _error(env=env)
    dotted = f"{table}.{old}" if table else old
    assert f"option {dotted} moved to {new_table}.{new}" == _error(overrides={dotted: 1})


def test_an_unknown_environment_variable_is_refused() -> None:
    assert "VERIFIER_LISTEN: unknown setting (did you mean VERIFIER_SIP_LISTEN?)" == _error(
        env={"VERIFIER_LISTEN": "::"}
    )
    assert "VERIFIER_POLICY: unknown setting (did you mean VERIFIER_POLICY_FILE?)" == _error(
        env={"VERIFIER_POLICY": "p.toml"}
    )
    assert "VERIFIER_: unknown setting" == _error(env={"VERIFIER_": ""})
    assert "VERIFIER_PROT: unknown setting (did you mean VERIFIER_PORT?)" == _error(
        env={"VERIFIER_PROT": "8080"}
    )
    assert (
        "VERIFIER_HTTP_CLIENT_TIMOUT: unknown setting (did you mean VERIFIER_HTTP_CLIENT_TIMEOUT?)"
        == _error(env={"VERIFIER_HTTP_CLIENT_TIMOUT": "1"})
    )


def test_a_misspelt_key_gets_the_known_one_it_is_closest_to(tmp_path: Path) -> None:
    path = _toml(tmp_path, "[tuning]\nkey_table = 0\n")
    assert f"{path}: [tuning] key_table: unknown setting (did you mean key_tables?)" == _error(path)
    message = _error(overrides={"http_client.timout": 1})
    assert (
        "option http_client.timout: unknown setting (did you mean http_client.timeout?)" == message
    )


def test_only_verifier_variables_are_read_and_the_test_suites_are_left_alone() -> None:
    env = {
        "PORT": "1",
        "verifier_port": "2",
        "VERIFIER_TEST_REDIS_URL": "redis://127.0.0.1:6379/15",
        "VERIFIER_TEST_ANYTHING": "x",
    }
    assert Settings() == load_settings(env=env)


# -- the layout covers the dataclasses ---------------------------------------------------------


PARTS: dict[str, type[Any]] = {
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


def test_every_field_of_the_settings_is_set_by_exactly_one_key() -> None:
    fields = [("", f.name) for f in dataclasses.fields(Settings) if f.name not in PARTS]
    fields += [(part, f.name) for part, cls in PARTS.items() for f in dataclasses.fields(cls)]
    targets = [t for key in describe() for t in key.targets]
    assert sorted(fields) == sorted(targets)


def test_the_shared_fetch_rules_are_declared_once() -> None:
    shared = {f.name for f in dataclasses.fields(HttpClientSettings)}
    for cls in (FetchSettings, RcdSettings):
        assert set() == shared & {f.name for f in dataclasses.fields(cls)}, cls.__name__


def test_a_key_has_the_type_and_default_of_every_field_it_sets() -> None:
    for key in describe():
        for part, name in key.targets:
            cls = PARTS[part] if part else Settings
            assert typing.get_type_hints(cls)[name] == key.hint, key.label
            assert getattr(cls(), name) == key.default, key.label


def test_shared_and_tuning_keys_reach_every_place_they_act() -> None:
    settings = load_settings(
        overrides={
            "http_client.connect_timeout": 0.3,
            "http_client.breaker_cooldown": 1.0,
            "http_client.private_allow": ["127.0.0.1"],
            "http_client.user_agent": "x/1",
            "tuning.event_loop": "asyncio",
            "tuning.writer_nice": 5,
            "tuning.writer_flush_interval": 0.05,
        }
    )
    assert (0.3, 1.0, ("127.0.0.1",), "x/1") == (
        settings.http_client.connect_timeout,
        settings.http_client.breaker_cooldown,
        settings.http_client.private_allow,
        settings.http_client.user_agent,
    )
    assert ("asyncio", 5, 0.05) == (
        settings.event_loop,
        settings.records.writer_nice,
        settings.records.flush_interval,
    )


def test_environment_variables_are_unique_and_follow_the_rule() -> None:
    keys = describe()
    assert len(keys) == len({k.env for k in keys})
    assert "VERIFIER_HTTP_CLIENT_TIMEOUT" in {k.env for k in keys}
    assert "VERIFIER_TUNING_KEY_TABLES" in {k.env for k in keys}
    assert not [k.env for k in keys if k.env.startswith("VERIFIER_TEST_")]
    for k in keys:
        assert _env(k.table, k.name) == k.env


# -- describe ------------------------------------------------------------------------------------


def _documented_fields(cls: type[Any]) -> set[str]:
    """Fields followed by a docstring line in the class source, read independently of describe."""
    lines = inspect.getsource(cls).splitlines()
    found = set()
    for line, following in itertools.pairwise(lines):
        match = re.match(r"    (\w+): .+", line)
        if match and following.strip().startswith('"""'):
            found.add(match.group(1))
    return found


def test_describe_lists_every_key_in_reference_order_with_its_doc() -> None:
    rows = describe()
    tables = [
        *("", "verification", "api", "http_client", "x5u", "rcd", "records", "redis", "trust"),
        *("sip", "tuning"),
    ]
    assert tables == list(dict.fromkeys(k.table for k in rows))
    assert [f.name for f in dataclasses.fields(HttpClientSettings)] == [
        k.name for k in rows if k.table == "http_client"
    ]
    assert [n for n in TuningKeys.__annotations__] == [k.name for k in rows if k.table == "tuning"]
    for k in rows:
        cls = TuningKeys if k.table == "tuning" else PARTS[k.table] if k.table else Settings
        assert k.name in _documented_fields(cls), k.label
        assert k.doc and "\n" not in k.doc and "  " not in k.doc, k.label
    by_key = {(k.table, k.name): k for k in rows}
    assert 8080 == by_key[("", "port")].default
    assert ("certs",) == by_key[("", "trust_anchors")].default
    assert "lower" == by_key[("api", "reason_key_case")].default
    timeout = by_key[("http_client", "timeout")]
    assert (2.0, "VERIFIER_HTTP_CLIENT_TIMEOUT") == (timeout.default, timeout.env)
    assert timeout.doc.startswith("Total time for one fetch")
    assert (("records", "batch_size"),) == by_key[("tuning", "writer_batch_size")].targets
    assert "[x5u] max_body" == by_key[("x5u", "max_body")].label


# -- the effective configuration (`verifier config check`) ----------------------------------------


def test_effective_configuration_reads_back_as_the_same_settings(tmp_path: Path) -> None:
    settings = load_settings(
        _toml(tmp_path, FULL_TOML),
        env={"VERIFIER_POLICY_FILE": "/etc/verifier/policy.toml", "VERIFIER_HOST": 'a"b\\c\x7f'},
    )
    text = effective_toml(settings)
    assert settings == load_settings(_toml(tmp_path, text, "effective.toml"))
    lines = text.splitlines()
    assert 'policy_file = "/etc/verifier/policy.toml"  # default: unset' in lines
    assert "[tuning]\nbatch_threads = 1  # default: 2\n" in text
    assert "# verify_token: unset" in lines


def test_effective_configuration_of_the_defaults() -> None:
    lines = effective_toml(Settings()).splitlines()
    assert "port = 8080" in lines
    assert "ports = [443, 8443]" == lines[lines.index("[http_client]") + 1]
    assert "# policy_file: unset" in lines
    assert "# url: unset" in lines


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://:s3cret@10.0.0.5:6379/0", "redis://:***@10.0.0.5:6379/0"),
        ("redis://cache:s3cret@redis.internal/2", "redis://cache:***@redis.internal/2"),
        (
            "rediss://redis.internal:6380/0?password=s3cret",
            "rediss://redis.internal:6380/0?password=***",
        ),
        ("unix:///run/redis.sock?db=1&password=s3cret", "unix:///run/redis.sock?db=1&password=***"),
        ("redis://redis.internal:6379/0", "redis://redis.internal:6379/0"),
        ("redis://[::1:6379/0", "***"),  # not a URL the parser splits: all of it hidden
    ],
)
def test_effective_configuration_masks_the_redis_password(url: str, shown: str) -> None:
    text = effective_toml(load_settings(overrides={"redis.url": url}))
    assert f"url = {json.dumps(shown)}  # default: unset" in text.splitlines()
    assert shown == tomllib.loads(text)["redis"]["url"]
    assert "s3cret" not in text


def test_effective_configuration_masks_tokens_and_the_database_password() -> None:
    settings = load_settings(
        env={
            "VERIFIER_API_ADMIN_TOKEN": "admin-token-0123456789",
            "VERIFIER_API_VERIFY_TOKEN": "verify-token-0123456789",
            "VERIFIER_RECORDS_DATABASE_URL": "postgresql://verifier:pa55word@db:5432/records",
        }
    )
    text = effective_toml(settings)
    shown = tomllib.loads(text)
    assert ("***", "***") == (shown["api"]["admin_token"], shown["api"]["verify_token"])
    assert "postgresql://verifier:***@db:5432/records" == shown["records"]["database_url"]
    for secret in ("admin-token", "verify-token", "pa55word"):
        assert secret not in text
    plain = effective_toml(load_settings(overrides={"records.database_url": "postgres://db/r"}))
    assert "postgres://db/r" == tomllib.loads(plain)["records"]["database_url"]
