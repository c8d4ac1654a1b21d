"""The STI-PA trust list (verifier.net.trustlist): formats, checks, refusals, and the whole
service keeping its anchors current from a real HTTPS repository on 127.0.0.1."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import json
import os
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from pytest_aiohttp import AiohttpClient

from verifier.cli import main
from verifier.http.app import create_app, startup_summary
from verifier.http.keys import SERVICE
from verifier.net.trustlist import TrustSettings, expiry_figures, read_token
from verifier.net.trustparse import ListError, check_entries, judge, parse_list
from verifier.settings import ConfigError, Settings, load_settings
from verifier.testing import Signer, TestPKI
from verifier.testing.pki import CA, make_crl, pem, sign_jws
from verifier.testing.pki import b64url as pki_b64url
from verifier.testing.repository import Repository

TOKEN = "admin-token-0123456789"
ORIG, DEST = "12155551212", "12155551213"


def _json_list(*cas: CA) -> bytes:
    return json.dumps({"crts": [pem(ca.cert).decode() for ca in cas]}).encode()


# -- parsing and checking ------------------------------------------------------------------


def test_formats_detected_by_content(pki: TestPKI) -> None:
    a, b = pki.root.issue_ca("A"), pki.root.issue_ca("B")
    bundle = pem(a.cert) + b"\n" + pem(b.cert)
    array = json.dumps([pem(a.cert).decode(), pem(b.cert).decode()]).encode()
    signer = pki.root.issue_ca("list signer")
    assert isinstance(signer.key, ec.EllipticCurvePrivateKey)
    jws = sign_jws(signer.key, {"alg": "ES256"}, json.loads(_json_list(a, b))).encode()
    for body in (bundle, _json_list(a, b), array, jws):
        certs, skipped = parse_list(body)
        assert ([a.cert, b.cert], []) == (certs, skipped)
    certs, _ = parse_list(jws, signer=signer.cert, require_signature=True)
    assert [a.cert, b.cert] == certs


def test_jws_signature_checked(pki: TestPKI) -> None:
    a = pki.root.issue_ca("A")
    signer, other = pki.root.issue_ca("list signer"), pki.root.issue_ca("someone else")
    assert isinstance(other.key, ec.EllipticCurvePrivateKey)
    assert isinstance(signer.key, ec.EllipticCurvePrivateKey)
    forged = sign_jws(other.key, {"alg": "ES256"}, json.loads(_json_list(a))).encode()
    with pytest.raises(ListError, match="does not verify"):
        parse_list(forged, signer=signer.cert)
    with pytest.raises(ListError, match="no list_signer"):
        parse_list(forged, require_signature=True)
    with pytest.raises(ListError, match="not signed"):
        parse_list(_json_list(a), signer=signer.cert, require_signature=True)
    with pytest.raises(ListError, match="not signed"):
        parse_list(pem(a.cert), require_signature=True)
    rs = sign_jws(signer.key, {"alg": "RS256"}, json.loads(_json_list(a))).encode()
    with pytest.raises(ListError, match="does not match"):
        parse_list(rs, signer=signer.cert)


def test_rs256_list_signature(pki: TestPKI) -> None:
    a = pki.root.issue_ca("A")
    signer = pki.root.issue_ca("RSA list signer", key_type="rsa2048")
    assert isinstance(signer.key, rsa.RSAPrivateKey)
    head = pki_b64url(b'{"alg":"RS256"}')
    body = pki_b64url(_json_list(a))
    signing_input = f"{head}.{body}".encode()
    good = signer.key.sign(signing_input, padding.PKCS1v15(), hashes.SHA256())
    certs, _ = parse_list(
        signing_input + b"." + pki_b64url(good).encode(),
        signer=signer.cert,
        require_signature=True,
    )
    assert [a.cert] == certs
    bad = signing_input + b"." + pki_b64url(good[:-1] + bytes([good[-1] ^ 1])).encode()
    with pytest.raises(ListError, match="does not verify"):
        parse_list(bad, signer=signer.cert)


@pytest.mark.parametrize(
    "body", [b"garbage", b"{not json", b"a.b!.c", b"a.b.c", b"eyJ9.e30.", b"42", b""]
)
def test_unparseable_lists_refused(body: bytes) -> None:
    with pytest.raises(ListError):
        parse_list(body)


def test_bad_entries_skipped_and_reported(pki: TestPKI) -> None:
    now = dt.datetime.now(dt.UTC)
    good = pki.root.issue_ca("good")
    expired = pki.root.issue_ca(
        "expired", not_before=now - dt.timedelta(days=20), not_after=now - dt.timedelta(days=1)
    )
    leaf = pki.ca.issue_leaf("1234")
    body = json.dumps(
        {"crts": [pem(good.cert).decode(), "not a cert", pem(leaf.cert).decode(), 7]}
        | {"more": [pem(expired.cert).decode(), pem(good.cert).decode()]}
    ).encode()
    certs, skipped = parse_list(body)
    assert ["entry 1: not a certificate", "entry 3: not a certificate"] == skipped
    kept, bad = check_entries(certs, now.timestamp())
    assert [good.cert] == kept  # once, though listed twice
    assert [
        "CN=SHAKEN 1234,O=verifier test PKI,C=US: not a CA (CA:TRUE and keyCertSign required)",
        "CN=expired,O=verifier test PKI,C=US: outside its validity",
    ] == bad


def test_judge_refuses_empty_lists_and_large_drops(pki: TestPKI) -> None:
    cas = [pki.root.issue_ca(f"CA {i}").cert for i in range(4)]
    with pytest.raises(ListError, match="no usable CA"):
        judge([], cas, 0.5)
    judge(cas[2:], cas, 0.5)  # half may go
    with pytest.raises(ListError, match="drop 3 of the 4"):
        judge(cas[3:], cas, 0.5)
    judge(cas[3:], cas, 0.75)
    judge(cas[3:], [], 0.0)  # nothing in force yet


def test_token_file_must_be_private(tmp_path: Path) -> None:
    path = tmp_path / "token"
    path.write_text("s3cret-token\n")
    os.chmod(path, 0o644)
    with pytest.raises(ListError, match="mode 0644"):
        read_token(TrustSettings(list_token_file=str(path)))
    os.chmod(path, 0o600)
    assert "s3cret-token" == read_token(TrustSettings(list_token_file=str(path)))
    assert "from-env" == read_token(TrustSettings(list_token="from-env"))


def test_trust_settings(tmp_path: Path) -> None:
    config = tmp_path / "verifier.toml"
    config.write_text('[trust]\nlist_token = "s3cret"\n')
    with pytest.raises(ConfigError, match="VERIFIER_TRUST_LIST_TOKEN"):
        load_settings(config)
    settings = load_settings(
        env={
            "VERIFIER_TRUST_LIST_URL": "https://list.example/crts",
            "VERIFIER_TRUST_LIST_TOKEN": "s3cret",
        }
    )
    assert "https://list.example/crts" == settings.trust.list_url
    assert "s3cret" not in repr(settings)
    with pytest.raises(ConfigError, match="list_url must be an https URL"):
        load_settings(overrides={"trust.list_url": "http://list.example/crts"})
    assert Path("data/trust-list.pem") == settings.trust.cache_path("data")


# -- the service keeping its trust current -------------------------------------------------


@dataclass
class Stack:
    repo: Repository
    settings: Settings
    a: Signer
    b: Signer
    lab: Signer
    client: Any
    cas: dict[str, CA]


@pytest.fixture
async def stack(
    aiohttp_client: AiohttpClient, pki: TestPKI, tmp_path: Path
) -> AsyncIterator[Stack]:
    ca_a, ca_b = pki.root.issue_ca("STI-CA A"), pki.root.issue_ca("STI-CA B")
    lab_ca = pki.untrusted_root()
    async with Repository.create(pki) as repo:
        signers = {}
        for name, ca in (("a", ca_a), ("b", ca_b), ("lab", lab_ca)):
            signer = ca.issue_leaf("1001", x5u=repo.url(f"/{name}.pem"))
            repo.put(f"/{name}.pem", signer.chain_pem())
            signers[name] = signer
        repo.put("/list.json", _json_list(ca_a, ca_b), content_type="application/json")
        (tmp_path / "lab.pem").write_bytes(pem(lab_ca.cert))
        settings = repo.service_settings(
            pki,
            tmp_path,
            {
                "trust_anchors": [str(tmp_path / "lab.pem")],
                "trust.list_url": repo.url("/list.json"),
                "trust.list_cache": str(tmp_path / "cache" / "list.pem"),
                "records.enabled": False,
                "api.admin_token": TOKEN,
            },
        )
        client = await aiohttp_client(create_app(settings))
        cas = {"a": ca_a, "b": ca_b, "lab": lab_ca}
        yield Stack(repo, settings, signers["a"], signers["b"], signers["lab"], client, cas)


async def _verify(client: Any, signer: Signer) -> int | None:
    """The real service's verdict (None: passed) on a call signed now (its clock is real)."""
    body = {"identity": signer.identity(iat=int(time.time())), "from": ORIG, "to": DEST}
    async with client.post("/v1/verify", json=body) as resp:
        assert 200 == resp.status
        result: dict[str, Any] = await resp.json()
    if result["verstat"] == "TN-Validation-Passed":
        return None
    code: int = result["reason"]["sip_code"]
    return code


async def _verdicts(stack: Stack, client: Any) -> list[int | None]:
    return [await _verify(client, s) for s in (stack.a, stack.b, stack.lab)]


async def _refresh(client: Any) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {TOKEN}"}
    async with client.post("/v1/admin/trust/refresh", headers=headers) as resp:
        assert 200 == resp.status
        body: dict[str, Any] = await resp.json()
        return body


async def test_trust_list_kept_current(stack: Stack, aiohttp_client: AiohttpClient) -> None:
    client = stack.client
    assert [None, None, None] == await _verdicts(stack, client)
    async with client.get("/readyz") as resp:
        trust = (await resp.json())["trust"]
    assert ("url", 2, 3) == (trust["source"], trust["list_anchors"], trust["anchors"])

    # the STI-PA withdraws CA A: after one refresh its calls fail 437, the others pass
    ca_b = stack.b.chain[1]
    stack.repo.put("/list.json", pem(ca_b), content_type="application/x-pem-file")
    report = await _refresh(client)
    assert (True, True, 1) == (report["ok"], report["changed"], report["count"])
    assert [437, None, None] == await _verdicts(stack, client)

    # a garbage list and an empty one leave the anchors in force
    for body in (b"<html>maintenance</html>", b'{"crts": []}', b"[]"):
        stack.repo.put("/list.json", body, content_type="application/json")
        report = await _refresh(client)
        assert False is report["ok"]
        assert (2, 1) == (report["trust"]["anchors"], report["trust"]["list_anchors"])
        assert [437, None, None] == await _verdicts(stack, client)

    # a reload (SIGHUP) reads the local anchors again and keeps the list's
    assert client.app is not None
    service = client.app[SERVICE]
    assert service.reload()
    assert 2 == len(service.trust.anchors)
    assert [437, None, None] == await _verdicts(stack, client)

    # restarted while the list URL is down: the cached list is used
    await client.close()
    stack.repo.put("/list.json", b"", status=503)
    restarted = await aiohttp_client(create_app(stack.settings))
    async with restarted.get("/readyz") as resp:
        trust = (await resp.json())["trust"]
    assert ("cache", 1, False) == (
        trust["source"],
        trust["list_anchors"],
        trust["last_refresh"]["ok"],
    )
    assert [437, None, None] == await _verdicts(stack, restarted)
    assert restarted.app is not None
    line = startup_summary(restarted.app)["trust_list"]
    assert f"cache {stack.repo.url('/list.json')} (1 anchors)" == line


async def test_trust_refresh_needs_the_admin_token_and_a_list(
    stack: Stack, aiohttp_client: AiohttpClient, pki: TestPKI, tmp_path: Path
) -> None:
    async with stack.client.post("/v1/admin/trust/refresh") as resp:
        assert 401 == resp.status
    plain = load_settings(
        overrides={
            "trust_anchors": [str(tmp_path / "lab.pem")],
            "records.enabled": False,
            "api.admin_token": TOKEN,
        }
    )
    client = await aiohttp_client(create_app(plain))
    headers = {"Authorization": f"Bearer {TOKEN}"}
    async with client.post("/v1/admin/trust/refresh", headers=headers) as resp:
        body = await resp.json()
    assert (False, "no [trust] list_url is configured") == (body["ok"], body["error"])
    async with client.get("/readyz") as resp:
        assert "trust" not in await resp.json()


def test_no_anchor_at_all_refuses_to_start(tmp_path: Path) -> None:
    settings = load_settings(
        overrides={
            "trust_anchors": [str(tmp_path / "missing")],
            "trust.list_url": "https://127.0.0.1:1/list",
            "trust.list_cache": str(tmp_path / "none.pem"),
            "records.enabled": False,
        }
    )
    with pytest.raises(ValueError, match="at least one trust anchor"):
        create_app(settings)


async def test_sti_pa_crl_revokes_within_one_refresh(
    stack: Stack, aiohttp_client: AiohttpClient
) -> None:
    ca_b = stack.cas["b"]
    crl_url = stack.repo.http_url("/sti-pa.crl")
    stack.repo.put("/sti-pa.crl", make_crl(ca_b), content_type="application/pkix-crl")
    trust = dataclasses.replace(stack.settings.trust, crl_urls=(crl_url,))
    settings = dataclasses.replace(stack.settings, trust=trust)
    await stack.client.close()
    client = await aiohttp_client(create_app(settings))
    other = ca_b.issue_leaf("1002", x5u=stack.repo.url("/other.pem"))
    stack.repo.put("/other.pem", other.chain_pem())
    assert [None, None, None, None] == [
        *await _verdicts(stack, client),
        await _verify(client, other),
    ]
    async with client.get("/readyz") as resp:
        assert 0 == (await resp.json())["trust"]["crls"][crl_url]["revoked"]

    # the STI-PA revokes B's signer: after one refresh its calls fail 437 (from the cache too)
    revoking = make_crl(ca_b, [stack.b.cert.serial_number])
    stack.repo.put("/sti-pa.crl", revoking, content_type="application/pkix-crl")
    report = await _refresh(client)
    assert {"ok": True, "revoked": 1} == {k: report["crls"][crl_url][k] for k in ("ok", "revoked")}
    assert [None, 437, None, None] == [
        *await _verdicts(stack, client),
        await _verify(client, other),
    ]
    # a CRL that no anchor signed, or that is not a CRL, is refused; the last good one stays
    forged = make_crl(ca_b, [], signer=stack.cas["a"].key)
    for body in (forged, b"garbage"):
        stack.repo.put("/sti-pa.crl", body, content_type="application/pkix-crl")
        report = await _refresh(client)
        assert False is report["crls"][crl_url]["ok"]
        assert [None, 437, None] == await _verdicts(stack, client)


# -- verifier trust status | refresh -------------------------------------------------------


async def test_trust_commands(
    stack: Stack, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "verifier.toml"
    s = stack.settings
    config.write_text(
        f'trust_anchors = ["{tmp_path / "lab.pem"}"]\n'
        "[http_client]\n"
        f'ca_file = "{s.http_client.ca_file}"\n'
        'private_allow = ["127.0.0.1"]\n'
        "[trust]\n"
        f'list_url = "{s.trust.list_url}"\n'
        f'list_cache = "{tmp_path / "standalone" / "list.pem"}"\n'
    )
    # standalone: into the cache file, with the report beside it
    assert 0 == await asyncio.to_thread(_run, ["trust", "refresh", "--config", str(config)])
    report = json.loads(capsys.readouterr().out)
    assert (True, 2) == (report["ok"], report["count"])
    assert 0 == await asyncio.to_thread(_run, ["trust", "status", "--config", str(config)])
    status = json.loads(capsys.readouterr().out)
    assert ["local"] == [a["source"] for a in status["anchors"]]
    assert ["CN=STI-CA A,O=verifier test PKI,C=US", "CN=STI-CA B,O=verifier test PKI,C=US"] == [
        a["subject"] for a in status["list_anchors"]
    ]
    assert True is status["last_refresh"]["ok"]
    stack.repo.put("/list.json", b"garbage")
    assert 1 == await asyncio.to_thread(_run, ["trust", "refresh", "--config", str(config)])
    assert False is json.loads(capsys.readouterr().out)["ok"]
    # through the running service, with its admin token
    server = stack.client.server
    base = f"http://{server.host}:{server.port}"
    os.environ["VERIFIER_API_ADMIN_TOKEN"] = TOKEN
    try:
        argv = ["trust", "refresh", "--config", str(config), "--service", base]
        assert 1 == await asyncio.to_thread(_run, argv)
    finally:
        del os.environ["VERIFIER_API_ADMIN_TOKEN"]
    report = json.loads(capsys.readouterr().out)
    assert (False, 3) == (report["ok"], report["trust"]["anchors"])


def _run(argv: list[str]) -> int:
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    code = exit_.value.code
    assert isinstance(code, int)
    return code


# -- expiry ---------------------------------------------------------------------------------


def test_expiry_figures(pki: TestPKI) -> None:
    now = dt.datetime.now(dt.UTC)
    soon = pki.root.issue_ca("soon", not_after=now + dt.timedelta(days=3)).cert
    later = pki.root.issue_ca("later", not_after=now + dt.timedelta(days=300)).cert
    t = now.timestamp()
    signers = [("1001", t + 86400.0), ("1002", t + 30 * 86400.0), ("1003", t + 60 * 86400.0)]
    figures = expiry_figures([later, soon], None, signers, now=t, warning=14 * 86400, top=2)
    assert {"anchor": 1, "certificate": 1} == figures["expiring"]
    assert [("1001", 86400.0), ("1002", 30 * 86400.0)] == figures["cert_expiry"]
    assert soon.not_valid_after_utc.timestamp() - t == figures["earliest_anchor_expiry"]
    assert ["anchor", "certificate"] == [s["kind"] for s in figures["soon"]]


async def test_expiry_warned_and_shown_in_metrics(
    stack: Stack,
    aiohttp_client: AiohttpClient,
    pki: TestPKI,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    assert None is await _verify(stack.client, stack.b)  # a cached signer certificate
    async with stack.client.get("/metrics") as resp:
        text = await resp.text()
    assert "verifier_trust_anchors 3.0" in text
    assert 'verifier_trust_source{source="url"} 1.0' in text
    assert 'verifier_cert_expiry_seconds{spc="1001"}' in text
    assert 'verifier_trust_expiring{kind="anchor"} 0.0' in text
    ending = dt.datetime.now(dt.UTC) + dt.timedelta(days=3)
    (tmp_path / "soon.pem").write_bytes(pem(pki.root.issue_ca("soon", not_after=ending).cert))
    settings = load_settings(
        overrides={"trust_anchors": [str(tmp_path / "soon.pem")], "records.enabled": False}
    )
    caplog.set_level("WARNING", logger="verifier.http.app")
    client = await aiohttp_client(create_app(settings))
    async with client.get("/metrics") as resp:
        assert 'verifier_trust_expiring{kind="anchor"} 1.0' in await resp.text()
    warned = [r for r in caplog.records if r.getMessage() == "anchor_expiring"]
    assert ["CN=soon,O=verifier test PKI,C=US"] == [r.__dict__["subject"] for r in warned]
