"""verifier.settings: defaults < TOML file < environment < overrides, every value validated."""

# STYLE.md: asserts read ``expected == actual``.

from __future__ import annotations

import dataclasses
import inspect
import itertools
import os
import re
from pathlib import Path
from typing import Any

import pytest

from verifier.net.fetch import FetchSettings
from verifier.net.rcd import RcdSettings
from verifier.net.redis_tier import RedisSettings
from verifier.records import RecordSettings
from verifier.settings import (
    ApiSettings,
    ConfigError,
    Settings,
    VerificationSettings,
    describe,
    load_settings,
)

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

[x5u]
ports = [443, 8443]
connect_timeout = 0.5
timeout = 1.5
max_body = 16384
ca_file = "/etc/ssl/bundle.pem"
min_ttl = 60
max_ttl = 7200
allow_private_x5u = true
private_allow = ["10.0.0.0/8", ".internal.example"]
host_deny = ["bad.example"]
crl_mode = "closed"
crl_files = ["/etc/verifier/ca.crl"]

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
    assert frozenset({443}) <= settings.x5u.ports
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
            ),
            x5u=FetchSettings(
                ports=frozenset({443, 8443}),
                connect_timeout=0.5,
                timeout=1.5,
                max_body=16384,
                ca_file="/etc/ssl/bundle.pem",
                min_ttl=60.0,
                max_ttl=7200.0,
                allow_private_x5u=True,
                private_allow=("10.0.0.0/8", ".internal.example"),
                host_deny=("bad.example",),
                crl_mode="closed",
                crl_files=("/etc/verifier/ca.crl",),
            ),
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
            "VERIFIER_X5U_ALLOW_PRIVATE_X5U": "true",
            "VERIFIER_X5U_PORTS": "443, 8443",
            "VERIFIER_API_REASON_KEY_CASE": "camel",
            "VERIFIER_TRUST_ANCHORS": "/a.pem,/b",
            "VERIFIER_VERIFICATION_MAX_IAT_AGE": "30.5",
            "VERIFIER_VERIFICATION_NANP_NATIONAL_MATCH": "off",
            "VERIFIER_X5U_CA_FILE": "",
            "VERIFIER_API_BATCH_MAX": "5",
            "UNRELATED": "ignored",
            "VERIFIER_NO_SUCH_SETTING": "ignored too",
        }
    )
    assert 9090 == settings.port
    assert True is settings.x5u.allow_private_x5u
    assert frozenset({443, 8443}) == settings.x5u.ports
    assert "camel" == settings.api.reason_key_case
    assert ("/a.pem", "/b") == settings.trust_anchors
    assert 30.5 == settings.verification.max_iat_age
    assert False is settings.verification.nanp_national_match
    assert None is settings.x5u.ca_file
    assert 5 == settings.api.batch_max


@pytest.mark.parametrize(
    ("value", "expected"),
    [("1", True), ("yes", True), ("ON", True), ("True", True), ("0", False), ("no", False)],
)
def test_environment_booleans(value: str, expected: bool) -> None:
    env = {"VERIFIER_X5U_ALLOW_PRIVATE_X5U": value}
    assert expected is load_settings(env=env).x5u.allow_private_x5u


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
            "x5u.allow_private_x5u": True,
            "x5u.ports": [8443],
            "api.reason_key_case": "camel",
            "verification.max_date_skew": 120,
        }
    )
    assert 7000 == settings.port
    assert True is settings.x5u.allow_private_x5u
    assert frozenset({8443}) == settings.x5u.ports
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
    assert f"{path}: prot: unknown setting" == _error(path)


def test_unknown_table_key(tmp_path: Path) -> None:
    path = _toml(tmp_path, "[x5u]\ntimout = 2\n")
    assert f"{path}: [x5u] timout: unknown setting" == _error(path)


def test_unknown_table_is_an_unknown_key(tmp_path: Path) -> None:
    path = _toml(tmp_path, "[server]\nport = 1\n")
    assert f"{path}: server: unknown setting" == _error(path)


def test_table_that_is_not_a_table(tmp_path: Path) -> None:
    path = _toml(tmp_path, "api = 3\n")
    assert f"{path}: [api] must be a table" == _error(path)


def test_unknown_override() -> None:
    assert "--x5u.nope: unknown setting" == _error(overrides={"x5u.nope": 1})
    assert "--nope.port: unknown setting" == _error(overrides={"nope.port": 1})
    assert "--x5u: unknown setting" == _error(overrides={"x5u": {}})


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
            '[x5u]\nallow_private_x5u = "yes"',
            "[x5u] allow_private_x5u: expected true or false, got 'yes'",
        ),
        ('[x5u]\nports = [443, "8443"]', "[x5u] ports: expected an integer, got '8443'"),
        ("[x5u]\nca_file = 5", "[x5u] ca_file: expected a string, got 5"),
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
            {"VERIFIER_X5U_ALLOW_PRIVATE_X5U": "maybe"},
            "VERIFIER_X5U_ALLOW_PRIVATE_X5U: expected true or false, got 'maybe'",
        ),
        (
            {"VERIFIER_X5U_PORTS": "443,https"},
            "VERIFIER_X5U_PORTS: expected an integer, got 'https'",
        ),
        ({"VERIFIER_X5U_TIMEOUT": "2s"}, "VERIFIER_X5U_TIMEOUT: expected a number, got '2s'"),
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
        ("[x5u]\ntimeout = 0", "[x5u] timeout: timeout must be > 0"),
        ("[x5u]\nports = []", "[x5u] ports: ports must be a non-empty set of TCP ports"),
        ("[x5u]\nports = [70000]", "[x5u] ports: ports must be a non-empty set of TCP ports"),
        ("[x5u]\nmin_ttl = 90000", "[x5u] min_ttl: min_ttl must not exceed max_ttl"),
        ("[verification]\nmax_iat_age = 0", "[verification] max_iat_age: max_iat_age must be > 0"),
        (
            "[verification]\nmax_identity_headers = 0",
            "[verification] max_identity_headers: max_identity_headers must be >= 1",
        ),
        (
            "[verification]\nkey_tables = -1",
            "[verification] key_tables: key_tables must be >= 0",
        ),
        ("[api]\nbody_limit = 0", "[api] body_limit: body_limit must be >= 1"),
        ("[api]\nbatch_max = -5", "[api] batch_max: batch_max must be >= 1"),
    ],
)
def test_out_of_range_in_file(tmp_path: Path, toml: str, message: str) -> None:
    path = _toml(tmp_path, toml + "\n")
    assert f"{path}: {message}" == _error(path)


def test_out_of_range_names_the_layer_that_set_it(tmp_path: Path) -> None:
    path = _toml(tmp_path, "host = '0.0.0.0'\n[x5u]\ntimeout = 3\n")
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


def test_describe_lists_every_setting_with_its_doc() -> None:
    rows = describe()
    tables: dict[str, type[Any]] = {
        "": Settings,
        "verification": VerificationSettings,
        "x5u": FetchSettings,
        "api": ApiSettings,
        "records": RecordSettings,
        "rcd": RcdSettings,
        "redis": RedisSettings,
    }
    expected_keys = [
        (table, f.name)
        for table, cls in tables.items()
        for f in dataclasses.fields(cls)
        if f.name not in tables
    ]
    assert expected_keys == [(table, key) for table, key, _, _ in rows]
    documented = {
        (table, name) for table, cls in tables.items() for name in _documented_fields(cls)
    }
    assert documented == {(table, key) for table, key, _, doc in rows if doc}
    assert 25 <= len(documented)
    by_key = {(table, key): (default, doc) for table, key, default, doc in rows}
    assert 8080 == by_key[("", "port")][0]
    assert ("certs",) == by_key[("", "trust_anchors")][0]
    assert "lower" == by_key[("api", "reason_key_case")][0]
    default, doc = by_key[("x5u", "timeout")]
    assert 2.0 == default
    assert doc.startswith("Total time for one x5u fetch")
    assert "\n" not in doc and "  " not in doc
