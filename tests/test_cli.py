"""verifier.cli: ``verifier verify | sign | pki init | demo | config`` through main(argv)."""

from __future__ import annotations

import datetime as dt
import io
import json
import time
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from verifier.cli import main
from verifier.testing import Signer, TestPKI, pem


def run(argv: Sequence[str]) -> int:
    with pytest.raises(SystemExit) as info:
        main(list(argv))
    code = info.value.code
    assert isinstance(code, int)
    return code


@dataclass(frozen=True)
class Files:
    root: str
    chain: str
    key: str
    public_key: str


@pytest.fixture(scope="module")
def files(pki: TestPKI, tmp_path_factory: pytest.TempPathFactory) -> Files:
    out = tmp_path_factory.mktemp("cli-pki")
    (out / "root.pem").write_bytes(pem(pki.root.cert))
    (out / "sp.pem").write_bytes(pki.signer.chain_pem())
    (out / "sp.key").write_bytes(pki.signer.key_pem())
    public = pki.signer.key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    (out / "sp.pub").write_bytes(public)
    return Files(
        root=str(out / "root.pem"),
        chain=str(out / "sp.pem"),
        key=str(out / "sp.key"),
        public_key=str(out / "sp.pub"),
    )


def _cert_args(files: Files) -> list[str]:
    return ["--cert", files.chain, "--trust-anchor", files.root]


def _fresh(signer: Signer, **kwargs: object) -> str:
    return signer.identity(iat=int(time.time()), **kwargs)  # type: ignore[arg-type]


def _tampered(value: str) -> str:
    token, _, params = value.partition(";")
    h, p, s = token.split(".")
    s = ("B" if s[0] == "A" else "A") + s[1:]
    return f"{h}.{p}.{s};{params}"


# -- verify ------------------------------------------------------------------------------------


def test_verify_passes(files: Files, signer: Signer, capsys: pytest.CaptureFixture[str]) -> None:
    value = _fresh(signer)
    assert 0 == run(["verify", value, *_cert_args(files)])
    out = capsys.readouterr().out
    assert "[0] ppt=shaken passed" in out
    assert "verstat=TN-Validation-Passed attest=A spc=1234" in out


def test_verify_with_call_numbers(
    files: Files, signer: Signer, capsys: pytest.CaptureFixture[str]
) -> None:
    value = _fresh(signer, orig="12155551212", dest="12155551213")
    args = ["verify", value, *_cert_args(files), "--orig", "12155551212"]
    assert 0 == run([*args, "--dest", "tel:+12155551213"])
    assert 1 == run([*args, "--dest", "12155559999"])
    assert "(dest_mismatch)" in capsys.readouterr().out


def test_verify_tampered(files: Files, signer: Signer, capsys: pytest.CaptureFixture[str]) -> None:
    assert 1 == run(["verify", _tampered(_fresh(signer)), *_cert_args(files)])
    out = capsys.readouterr().out
    assert "verstat=TN-Validation-Failed" in out
    assert "438 Invalid Identity Header (invalid_signature)" in out


def test_verify_json(files: Files, signer: Signer, capsys: pytest.CaptureFixture[str]) -> None:
    assert 0 == run(["verify", _fresh(signer), *_cert_args(files), "--json"])
    result = json.loads(capsys.readouterr().out)
    assert "TN-Validation-Passed" == result["verstat"]
    assert ["1234"] == result["certificate"]["spc"]
    assert 1 == run(["verify", _tampered(_fresh(signer)), *_cert_args(files), "--json"])
    result = json.loads(capsys.readouterr().out)
    assert "TN-Validation-Failed" == result["verstat"]
    assert 438 == result["reason"]["sip_code"]


@pytest.fixture(scope="module")
def old_call(signer: Signer) -> tuple[str, int]:
    """A header signed an hour ago (inside the test certificates' validity) and its iat."""
    iat = int(time.time()) - 3600
    return signer.identity(iat=iat), iat


def test_verify_at_epoch(
    files: Files, old_call: tuple[str, int], capsys: pytest.CaptureFixture[str]
) -> None:
    value, iat = old_call
    assert 0 == run(["verify", value, *_cert_args(files), "--at", str(iat + 5)])
    assert 0 == run(["verify", value, *_cert_args(files), "--at", f"{iat + 5}.5"])
    capsys.readouterr()
    assert 1 == run(["verify", value, *_cert_args(files)])
    assert "403 Stale Date (iat_too_old)" in capsys.readouterr().out


def test_verify_at_rfc3339(files: Files, old_call: tuple[str, int]) -> None:
    value, iat = old_call
    when = dt.datetime.fromtimestamp(iat + 5, dt.UTC)
    for text in (
        when.strftime("%Y-%m-%dT%H:%M:%SZ"),
        when.isoformat(),
        when.astimezone(dt.timezone(dt.timedelta(hours=-5))).isoformat(),
    ):
        assert 0 == run(["verify", value, *_cert_args(files), "--at", text]), text
    late = (when + dt.timedelta(minutes=5)).strftime("%Y-%m-%dT%H:%M:%SZ")
    assert 1 == run(["verify", value, *_cert_args(files), "--at", late])


def test_verify_max_iat_age(files: Files, old_call: tuple[str, int]) -> None:
    value, _ = old_call
    assert 0 == run(["verify", value, *_cert_args(files), "--max-iat-age", "7200"])


def test_verify_from_file(
    files: Files, signer: Signer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    div = signer.identity(iat=int(time.time()), header={"ppt": "div"}, params=";ppt=div")
    path = tmp_path / "invite.txt"
    path.write_text(f"Identity: {_fresh(signer)}\n\n{div}\n")
    assert 0 == run(["verify", f"@{path}", *_cert_args(files)])
    out = capsys.readouterr().out
    assert "[0] ppt=shaken passed" in out
    assert "[1] ppt=div failed: 436 Bad Identity Info (info_missing)" in out


def test_verify_from_stdin(files: Files, signer: Signer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO(_fresh(signer) + "\n"))
    assert 0 == run(["verify", "-", *_cert_args(files)])
    monkeypatch.setattr("sys.stdin", io.StringIO(_tampered(_fresh(signer)) + "\n"))
    assert 1 == run(["verify", "-", *_cert_args(files)])


def test_verify_empty_stdin(
    files: Files, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO("\n"))
    assert 1 == run(["verify", "-", *_cert_args(files)])
    assert "428 Use Identity Header (no_identity)" in capsys.readouterr().out


def test_verify_with_bare_key(
    files: Files, signer: Signer, capsys: pytest.CaptureFixture[str]
) -> None:
    assert 0 == run(["verify", _fresh(signer), "--key", files.public_key])
    assert "bare public key" in capsys.readouterr().out
    assert 0 == run(["verify", _fresh(signer), "--key", files.key])  # a private key will do
    assert 1 == run(["verify", _tampered(_fresh(signer)), "--key", files.public_key])


def test_verify_bare_passport(files: Files, signer: Signer) -> None:
    token = signer.passport(iat=int(time.time()))
    assert 0 == run(["verify", token, "--bare", *_cert_args(files)])
    assert 1 == run(["verify", token, *_cert_args(files)])  # as a header: no info


def test_verify_require_policy_oid(files: Files, signer: Signer) -> None:
    assert 0 == run(["verify", _fresh(signer), *_cert_args(files), "--require-policy-oid"])


def test_verify_untrusted(
    files: Files, pki: TestPKI, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    other = pki.untrusted_root().issue_leaf()
    chain = tmp_path / "other.pem"
    chain.write_bytes(other.chain_pem())
    args = ["verify", _fresh(other), "--cert", str(chain), "--trust-anchor", files.root]
    assert 1 == run(args)
    assert "(cert_not_trusted)" in capsys.readouterr().out


@pytest.mark.parametrize(
    "extra",
    [
        ["--at", "yesterday"],
        ["--at", "2024-05-01T12:00:00"],  # no UTC offset
        ["--at", "nan"],  # would pass every time check
        ["--at", "inf"],
        ["--at", "1e20"],
        ["--max-iat-age", "0"],
        ["--max-iat-age", "soon"],
    ],
)
def test_verify_usage_errors(
    files: Files, signer: Signer, extra: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert 2 == run(["verify", _fresh(signer), *_cert_args(files), *extra])
    assert "error" in capsys.readouterr().err


def test_verify_usage_errors_in_files(files: Files, signer: Signer, tmp_path: Path) -> None:
    value = _fresh(signer)
    missing = str(tmp_path / "missing.pem")
    not_pem = tmp_path / "not.pem"
    not_pem.write_text("hello")
    assert 2 == run(["verify", f"@{missing}", *_cert_args(files)])
    assert 2 == run(["verify", value, "--cert", missing, "--trust-anchor", files.root])
    assert 2 == run(["verify", value, "--cert", files.chain, "--trust-anchor", missing])
    assert 2 == run(["verify", value, "--cert", str(not_pem), "--trust-anchor", files.root])
    assert 2 == run(["verify", value, "--key", missing])
    assert 2 == run(["verify", value, "--key", str(not_pem)])
    assert 2 == run(["verify", value, "--key", files.chain])  # a certificate is not a key


def test_verify_cert_and_key_together(files: Files, signer: Signer) -> None:
    assert 2 == run(["verify", _fresh(signer), *_cert_args(files), "--key", files.public_key])


def test_verify_online_needs_trust_anchors(
    signer: Signer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # no ./certs to default to
    assert 2 == run(["verify", _fresh(signer)])
    assert 2 == run(["verify", signer.passport(), "--bare"])  # a bare PASSporT has no info


def test_argparse_errors() -> None:
    assert 2 == run([])
    assert 2 == run(["verify"])
    assert 2 == run(["frobnicate"])
    assert 0 == run(["--version"])


# -- sign --------------------------------------------------------------------------------------


def test_sign_then_verify(files: Files, capsys: pytest.CaptureFixture[str]) -> None:
    x5u = "https://127.0.0.1:8443/sp.pem"
    args = ["sign", "--key", files.key, "--x5u", x5u, "--orig", "12155551212"]
    assert 0 == run([*args, "--dest", "12155551213", "--dest", "12155551214", "--attest", "B"])
    value = capsys.readouterr().out.strip()
    assert f";info=<{x5u}>;alg=ES256;ppt=" in value
    verify = ["verify", value, *_cert_args(files), "--orig", "12155551212", "--json"]
    assert 0 == run([*verify, "--dest", "12155551214"])
    result = json.loads(capsys.readouterr().out)
    assert "B" == result["attest"]
    assert ["12155551213", "12155551214"] == result["claims"]["dest"]["tn"]


def test_sign_with_fixed_iat_and_origid(files: Files, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["sign", "--key", files.key, "--x5u", "https://127.0.0.1:8443/sp.pem"]
    args += ["--orig", "12155551212", "--dest", "12155551213", "--iat", "1700000000"]
    assert 0 == run([*args, "--origid", "call-1"])
    value = capsys.readouterr().out.strip()
    assert 0 == run(["verify", value, "--key", files.public_key, "--at", "1700000001", "--json"])
    result = json.loads(capsys.readouterr().out)
    assert ("call-1", 1700000000) == (result["origid"], result["claims"]["iat"])
    # November 2023 is before the test certificates were made
    assert 1 == run(["verify", value, *_cert_args(files), "--at", "1700000001"])
    assert "(cert_not_yet_valid)" in capsys.readouterr().out


def test_sign_usage_errors(files: Files, tmp_path: Path) -> None:
    p384 = tmp_path / "p384.key"
    from cryptography.hazmat.primitives.asymmetric import ec

    p384.write_bytes(
        ec.generate_private_key(ec.SECP384R1()).private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    base = ["--x5u", "https://a.example/x.pem", "--orig", "1", "--dest", "2"]
    assert 2 == run(["sign", "--key", str(p384), *base])
    assert 2 == run(["sign", "--key", files.public_key, *base])
    assert 2 == run(["sign", "--key", str(tmp_path / "missing"), *base])
    assert 2 == run(["sign", "--key", files.key, *base, "--attest", "N"])


# -- pki init ------------------------------------------------------------------------------------


def test_pki_init_then_verify(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "pki"
    assert 0 == run(["pki", "init", str(out)])
    assert "test PKI written" in capsys.readouterr().out
    for name in ("sp.key", "root.key", "ca.key"):
        assert 0o600 == (out / name).stat().st_mode & 0o777
    x5u = "https://127.0.0.1:8443/sp.pem"
    assert 0 == run(
        ["sign", "--key", str(out / "sp.key"), "--x5u", x5u, "--orig", "1215", "--dest", "1216"]
    )
    value = capsys.readouterr().out.strip()
    trust = ["--cert", str(out / "sp.pem"), "--trust-anchor", str(out / "root.pem")]
    assert 0 == run(["verify", value, *trust])
    assert 0 == run(["verify", value, "--cert", str(out / "sp.pem"), "--trust-anchor", str(out)])
    capsys.readouterr()
    # A variant the verifier must refuse, signed with its own key.
    expired = ["--key", str(out / "variants" / "expired.key"), "--x5u", x5u]
    assert 0 == run(["sign", *expired, "--orig", "1215", "--dest", "1216"])
    value = capsys.readouterr().out.strip()
    cert = [
        "--cert",
        str(out / "variants" / "expired.pem"),
        "--trust-anchor",
        str(out / "root.pem"),
    ]
    assert 1 == run(["verify", value, *cert])
    assert "(cert_expired)" in capsys.readouterr().out


def test_pki_init_refuses_to_overwrite(tmp_path: Path) -> None:
    assert 0 == run(["pki", "init", str(tmp_path)])
    root = (tmp_path / "root.pem").read_bytes()
    assert 2 == run(["pki", "init", str(tmp_path)])
    assert root == (tmp_path / "root.pem").read_bytes()
    assert 0 == run(["pki", "init", str(tmp_path), "--force"])
    assert root != (tmp_path / "root.pem").read_bytes()


# -- demo ----------------------------------------------------------------------------------------


# -- config check / reference --------------------------------------------------------------------


def test_config_check_prints_the_effective_configuration_with_secrets_masked(
    files: Files,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    config = tmp_path / "v.toml"
    config.write_text(
        f"trust_anchors = ['{files.root}']\n"
        "[http_client]\ntimeout = 1.5\n[tuning]\nkey_tables = 8\n"
    )
    monkeypatch.setenv("VERIFIER_API_ADMIN_TOKEN", "admin-token-0123456789")
    monkeypatch.setenv("VERIFIER_REDIS_URL", "redis://:r3dis-pass@127.0.0.1:6379/0")
    monkeypatch.setenv("VERIFIER_RECORDS_DATABASE_URL", "postgresql://v:pg-pass@127.0.0.1/r")
    assert 0 == run(["config", "check", "--config", str(config)])
    out, err = capsys.readouterr()
    lines = out.splitlines()
    assert "timeout = 1.5  # default: 2.0" == lines[lines.index("[http_client]") + 3]
    shown = tomllib.loads(out)
    assert 8 == shown["tuning"]["key_tables"]
    assert "***" == shown["api"]["admin_token"]
    assert "redis://:***@127.0.0.1:6379/0" == shown["redis"]["url"]
    assert "postgresql://v:***@127.0.0.1/r" == shown["records"]["database_url"]
    for secret in ("admin-token", "r3dis-pass", "pg-pass"):
        assert secret not in out + err
    assert "" == err


def test_config_check_without_a_file_reads_the_environment(
    files: Files, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("VERIFIER_TRUST_ANCHORS", files.root)
    monkeypatch.setenv("VERIFIER_HTTP_CLIENT_ALLOW_PRIVATE", "yes")
    assert 0 == run(["config", "check"])
    shown = tomllib.loads(capsys.readouterr().out)
    assert True is shown["http_client"]["allow_private"]
    assert [files.root] == shown["trust_anchors"]


@pytest.mark.parametrize(
    ("toml", "env", "message"),
    [
        ("[x5u]\ntimeout = 3\n", {}, "[x5u] timeout moved to [http_client] timeout"),
        (
            "[records]\nqueue_size = 5\n",
            {},
            "[records] queue_size moved to [tuning] writer_queue_size",
        ),
        ("", {"VERIFIER_X5U_CA_FILE": "/ca.pem"}, "VERIFIER_X5U_CA_FILE moved to"),
        ("", {"VERIFIER_PROT": "80"}, "VERIFIER_PROT: unknown setting"),
        ("[tuning]\nbatch_threads = 0\n", {}, "[tuning] batch_threads: batch_threads must be"),
        ("policy_file = 'missing-policy.toml'\n", {}, "missing-policy.toml: cannot read"),
        ("trust_anchors = ['missing.pem']\n", {}, "missing.pem: no such file or directory"),
        ("[api]\nadmin_token = 'short'\n", {}, "admin_token must be at least 16"),
    ],
)
def test_config_check_refuses_a_bad_configuration_with_status_2(
    files: Files,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    toml: str,
    env: dict[str, str],
    message: str,
) -> None:
    monkeypatch.chdir(tmp_path)
    config = tmp_path / "v.toml"
    anchors = "" if "trust_anchors" in toml else f"trust_anchors = ['{files.root}']\n"
    config.write_text(anchors + toml)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert 2 == run(["config", "check", "--config", str(config)])
    out, err = capsys.readouterr()
    assert "" == out
    assert err.startswith("verifier: error: ")
    assert message in err
    assert "Traceback" not in err
    assert "short" not in err  # a refused secret is not echoed


def test_config_check_unreadable_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert 2 == run(["config", "check", "--config", str(tmp_path / "none.toml")])
    assert "none.toml: cannot read (No such file or directory)" in capsys.readouterr().err


def test_config_reference_prints_the_readme_block(capsys: pytest.CaptureFixture[str]) -> None:
    from verifier.settings_text import README_BEGIN, README_END

    assert 0 == run(["config", "reference"])
    out = capsys.readouterr().out
    assert out.startswith(README_BEGIN)
    assert out.rstrip().endswith(README_END)
    assert "| `timeout` | `VERIFIER_HTTP_CLIENT_TIMEOUT` | `2.0` |" in out


def test_config_reference_update_rewrites_the_block(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from verifier.settings_text import README_BEGIN, README_END, reference

    readme = tmp_path / "README.md"
    readme.write_text(f"# x\n\n{README_BEGIN}\nold\n{README_END}\n\n## next\n")
    assert 0 == run(["config", "reference", "--update", str(readme)])
    assert f"# x\n\n{reference()}\n\n## next\n" == readme.read_text()
    assert "rewritten" in capsys.readouterr().out
    assert 0 == run(["config", "reference", "--update", str(readme)])
    assert "up to date" in capsys.readouterr().out
    (tmp_path / "plain.md").write_text("# no markers\n")
    assert 2 == run(["config", "reference", "--update", str(tmp_path / "plain.md")])
    assert "no '<!-- BEGIN" in capsys.readouterr().err
    assert 2 == run(["config", "reference", "--update", str(tmp_path / "missing.md")])
    assert "cannot read" in capsys.readouterr().err


def test_serve_refuses_an_unknown_variable_before_starting(
    files: Files, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("VERIFIER_X5U_ALLOW_PRIVATE_X5U", "1")
    assert 2 == run(["serve", "--trust-anchor", files.root, "--port", "0"])
    message = "VERIFIER_X5U_ALLOW_PRIVATE_X5U moved to VERIFIER_HTTP_CLIENT_ALLOW_PRIVATE"
    assert f"verifier: error: {message}\n" == capsys.readouterr().err


def test_serve_fetch_flags_are_http_client_keys(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # the flags' keys are accepted: the first error is the missing trust anchor, after them
    argv = ["serve", "--x5u-ca-file", "ca.pem", "--allow-private-x5u"]
    assert 2 == run([*argv, "--trust-anchor", str(tmp_path / "none.pem")])
    assert f"{tmp_path / 'none.pem'}: no such file or directory" in capsys.readouterr().err
