"""The whole service with its real fetchers: x5u and RCD content from a real HTTPS
repository on 127.0.0.1, every answer through a real socket."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from pytest_aiohttp import AiohttpClient

from verifier.http.app import create_app
from verifier.http.keys import CREDENTIALS, RCD_FETCHER, SETTINGS
from verifier.net.fetch import CertificateFetcher
from verifier.net.rcd import digest_of
from verifier.testing import Signer, TestPKI, identity_header
from verifier.testing.repository import Repository

LOGO = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 8
ORIG, DEST = "12155551212", "12155551213"


@dataclass
class Stack:
    repo: Repository
    pki: TestPKI
    forwarder: Signer
    client: Any


@pytest.fixture
async def stack(aiohttp_client: AiohttpClient, tmp_path: Path) -> AsyncIterator[Stack]:
    pki = TestPKI.create()
    forwarder = pki.ca.issue_leaf("5678")
    async with Repository.create(pki) as repo:
        pki.signer.x5u = repo.url("/sp.pem")
        forwarder.x5u = repo.url("/fw.pem")
        repo.put("/sp.pem", pki.signer.chain_pem())
        repo.put("/fw.pem", forwarder.chain_pem())
        repo.put("/logo.png", LOGO, content_type="image/png")
        ports = [443, repo.port]
        settings = repo.service_settings(
            pki,
            tmp_path,
            {
                "http_client.ports": ports,
                "records.enabled": False,
            },
        )
        client = await aiohttp_client(create_app(settings))
        yield Stack(repo, pki, forwarder, client)


async def native(stack: Stack, body: dict[str, Any]) -> dict[str, Any]:
    async with stack.client.post("/v1/verify", json=body) as resp:
        assert 200 == resp.status
        result: dict[str, Any] = await resp.json()
        return result


async def test_branded_call_with_a_logo(stack: Stack, now: int) -> None:
    icn = stack.repo.url("/logo.png")
    rcd = {"nam": "ACME Pharmacy", "icn": icn}
    good = stack.pki.signer.identity(
        iat=now, claims={"rcd": rcd, "rcdi": {"/icn": digest_of(LOGO)}}
    )
    body = await native(stack, {"identity": good, "from": ORIG, "to": DEST})
    assert "TN-Validation-Passed" == body["verstat"]
    assert {
        "verified": True,
        "nam": "ACME Pharmacy",
        "logo": icn,
        "reason": None,
        "details": {"/nam": "covered by signature", "/icn": "digest ok"},
    } == body["rcd"]
    wrong = stack.pki.signer.identity(
        iat=now, claims={"rcd": rcd, "rcdi": {"/icn": digest_of(b"another logo")}}
    )
    body = await native(stack, {"identity": wrong, "from": ORIG, "to": DEST})
    assert "TN-Validation-Passed" == body["verstat"]  # the call's identity still verifies
    assert (False, None, "/icn: digest mismatch") == (
        body["rcd"]["verified"],
        body["rcd"]["logo"],
        body["rcd"]["reason"],
    )
    # the logo was fetched once: the second verdict came from the content cache
    assert 1 == stack.repo.counts["/logo.png"]
    assert 1 == stack.repo.counts["/sp.pem"]


async def test_rcd_passport_beside_the_shaken_one(stack: Stack, now: int) -> None:
    signer = stack.pki.signer
    token = signer.passport(
        iat=now,
        header={"ppt": "rcd"},
        claims={"rcd": {"nam": "ACME Pharmacy"}},
        drop=["attest", "origid"],
    )
    values = [signer.identity(iat=now), identity_header(token, signer.x5u, ppt="rcd")]
    body = await native(stack, {"identity": values, "from": ORIG, "to": DEST})
    assert [("shaken", "passed"), ("rcd", "passed")] == [
        (h["ppt"], h["status"]) for h in body["identities"]
    ]
    assert (True, "ACME Pharmacy") == (body["rcd"]["verified"], body["rcd"]["nam"])


async def test_forwarded_call_fetches_each_hops_certificate(stack: Stack, now: int) -> None:
    signer, forwarder = stack.pki.signer, stack.forwarder
    div = forwarder.passport(
        iat=now,
        dest="12155559999",
        header={"ppt": "div"},
        claims={"div": {"tn": DEST}},
        drop=["attest", "origid"],
    )
    values = [signer.identity(iat=now), identity_header(div, forwarder.x5u, ppt="div")]
    body = await native(stack, {"identity": values, "from": ORIG, "to": "12155559999"})
    assert "TN-Validation-Passed" == body["verstat"]
    assert "diversion" == body["matched"]["dest"]
    assert "TN-Validation-Passed" == body["diversion"]["verstat"]
    assert (1, 1) == (stack.repo.counts["/sp.pem"], stack.repo.counts["/fw.pem"])


async def test_both_fetchers_are_handed_the_one_http_client_settings(stack: Stack) -> None:
    app = stack.client.app
    shared = app[SETTINGS].http_client
    credentials, rcd_fetcher = app[CREDENTIALS], app[RCD_FETCHER]
    assert isinstance(credentials, CertificateFetcher)
    assert rcd_fetcher is not None
    assert frozenset({443, stack.repo.port}) == shared.ports
    assert credentials.client is shared
    assert rcd_fetcher.client is shared


async def test_admin_reload_keeps_cached_chains(
    aiohttp_client: AiohttpClient, tmp_path: Path, now: int
) -> None:
    """Issue 15 item 2: a reload with the unchanged root file refetches nothing, and calls go
    on verifying from the cache while the repository is down."""
    pki = TestPKI.create()
    signers = [pki.ca.issue_leaf(f"77{i}") for i in range(3)]
    token = "a-long-admin-token-for-tests"
    async with Repository.create(pki) as repo:
        for i, signer in enumerate(signers):
            signer.x5u = repo.put(f"/sp{i}.pem", signer.chain_pem())
        settings = repo.service_settings(
            pki, tmp_path, {"records.enabled": False, "api.admin_token": token}
        )
        client = await aiohttp_client(create_app(settings))

        async def verdicts() -> list[str]:
            out = []
            for signer in signers:
                body = {"identity": signer.identity(iat=now), "from": ORIG, "to": DEST}
                async with client.post("/v1/verify", json=body) as resp:
                    out.append((await resp.json())["verstat"])
            return out

        async def reload() -> dict[str, Any]:
            auth = {"Authorization": f"Bearer {token}"}
            async with client.post("/v1/admin/reload", headers=auth) as resp:
                answer: dict[str, Any] = await resp.json()
                return answer

        assert ["TN-Validation-Passed"] * 3 == await verdicts()
        assert True is (await reload())["ok"]
        assert ["TN-Validation-Passed"] * 3 == await verdicts()
        assert 3 == repo.requests  # nothing fetched again
        for i in range(3):
            repo.put(f"/sp{i}.pem", b"down", status=503)
        assert True is (await reload())["ok"]
        assert ["TN-Validation-Passed"] * 3 == await verdicts()
        assert 3 == repo.requests


async def test_copies_of_a_real_chain_cost_a_forger_the_hosts_budget(
    aiohttp_client: AiohttpClient, tmp_path: Path, now: int
) -> None:
    """A forger serves a copy of a real provider's chain at paths of its own and signs with
    its own key: each copy validates, no signature verifies under it, so each spends the
    host's budget of cold fetches; the real provider's calls pass all along."""
    pki = TestPKI.create()
    forger = pki.ca.issue_leaf("666X")
    async with Repository.create(pki) as repo:
        pki.signer.x5u = repo.put("/sp.pem", pki.signer.chain_pem())
        copies = [repo.put(f"/copies/{i:08x}.pem", pki.signer.chain_pem()) for i in range(10)]
        settings = repo.service_settings(
            pki,
            tmp_path,
            {
                "records.enabled": False,
                "x5u.cold_fetch_rate": 0.001,
                "x5u.cold_fetch_burst": 3,
                "x5u.warm_cache_dir": str(tmp_path / "warm"),
            },
        )
        client = await aiohttp_client(create_app(settings))

        async def call(signer: Signer) -> tuple[str, int | None]:
            body = {"identity": signer.identity(iat=now), "from": ORIG, "to": DEST}
            async with client.post("/v1/verify", json=body) as resp:
                answer = await resp.json()
            return answer["verstat"], (answer.get("reason") or {}).get("sip_code")

        assert ("TN-Validation-Passed", None) == await call(pki.signer)
        forged = [await call(dataclasses.replace(forger, x5u=copy)) for copy in copies]
        assert [("TN-Validation-Failed", 438)] * 3 + [("No-TN-Validation", 436)] * 7 == forged
        assert [1] * 3 + [0] * 7 == [repo.counts[f"/copies/{i:08x}.pem"] for i in range(10)]
        assert ("TN-Validation-Passed", None) == await call(pki.signer)
        kept = list((tmp_path / "warm").glob("*.pem"))  # the warm cache holds only the used one
        assert 1 == len(kept) and kept[0].read_bytes() == pki.signer.chain_pem()
