"""Identity headers and chains recorded by the service (``[records] keep_identity``,
``identity_max_bytes``), and ``verifier records --reverify`` re-verifying those records from
the store alone: real calls through the service on 127.0.0.1, its x5u fetched from a local
HTTPS repository, certificates from the test PKI."""

# STYLE.md: asserts read ``expected == actual``.

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import aiohttp
import pytest
from pytest_aiohttp import AiohttpServer

from verifier.http.app import create_app
from verifier.records import RecordQuery, SqliteRecordStore
from verifier.settings import Settings
from verifier.testing import Signer, TestPKI
from verifier.testing.pki import pem
from verifier.testing.repository import Repository

if TYPE_CHECKING:  # the kit fixture's type; pytest imports conftest itself
    from conftest import RecordKit

    Kit = type[RecordKit]

ORIG, DEST = "12155551212", "12155551213"
TOKEN = "reverify-test-token-0123456789"


@dataclass
class Filled:
    """A data directory filled by real calls (request ids as in the fixture)."""

    data_dir: Path
    root_pem: Path
    """The first PKI's root alone (the second PKI's anchor dropped)."""
    both_pem: Path
    """Both roots: the anchors the service had."""
    config: Path
    """The service's configuration file as far as re-verifying goes (anchors, x5u ports)."""


async def _call(
    session: aiohttp.ClientSession, url: str, identity: str | list[str] | None, request_id: str
) -> dict[str, Any]:
    body: dict[str, Any] = {"from": ORIG, "to": DEST}
    if identity is not None:
        body["identity"] = identity
    async with session.post(
        f"{url}/v1/verify", json=body, headers={"X-RequestID": request_id}
    ) as resp:
        assert 200 == resp.status
        answer: dict[str, Any] = await resp.json()
        return answer


async def _record_calls(
    aiohttp_server: AiohttpServer, settings: Settings, calls: dict[str, str | list[str] | None]
) -> None:
    """``calls`` (request id -> Identity value(s)) made to a real service with ``settings``
    (its admin token ``TOKEN``), once the writer has stored them all, the service closed."""
    server = await aiohttp_server(create_app(settings))
    url = str(server.make_url("")).rstrip("/")
    async with aiohttp.ClientSession() as session:
        for request_id, identity in calls.items():
            await _call(session, url, identity, request_id)
        headers = {"Authorization": f"Bearer {TOKEN}"}
        for _ in range(500):  # the writer flushes every 10 ms
            async with session.get(f"{url}/v1/stats", headers=headers) as resp:
                if (await resp.json())["total"] == len(calls):
                    break
            await asyncio.sleep(0.02)
    await server.close()  # the writer drains, the store closes


@pytest.fixture
async def filled(aiohttp_server: AiohttpServer, tmp_path: Path, now: int) -> AsyncIterator[Filled]:
    pki, other = TestPKI.create(), TestPKI.create(spc="5678")
    forger = pki.ca.issue_leaf("1234")
    async with Repository.create(pki) as repo:
        pki.signer.x5u = forger.x5u = repo.url("/sp.pem")
        other.signer.x5u = repo.url("/other.pem")
        repo.put("/sp.pem", pki.signer.chain_pem())
        repo.put("/other.pem", other.signer.chain_pem())
        both = tmp_path / "both.pem"
        both.write_bytes(pem(pki.root.cert) + pem(other.root.cert))
        data_dir = tmp_path / "records"
        settings = repo.service_settings(
            pki,
            tmp_path,
            {
                "trust_anchors": [str(both)],
                "records.data_dir": str(data_dir),
                "tuning.writer_flush_interval": 0.01,
                "api.admin_token": TOKEN,
            },
        )
        calls: dict[str, str | list[str] | None] = {
            "pass-1": pki.signer.identity(iat=now, attest="A"),
            "pass-2": pki.signer.identity(iat=now, attest="B"),
            "forged": forger.identity(iat=now),  # 438 invalid_signature: its x5u's chain
            "other": other.signer.identity(iat=now),  # its anchor is dropped below
            "stale": pki.signer.identity(iat=now - 3600),  # 403 before any chain
            "none": None,  # 428: no Identity header at all
        }
        await _record_calls(aiohttp_server, settings, calls)
        config = tmp_path / "verifier.toml"
        config.write_text(
            f'trust_anchors = ["{both}"]\n[http_client]\nports = [{repo.port}]\n', encoding="utf-8"
        )
        yield Filled(
            data_dir=data_dir, root_pem=tmp_path / "root.pem", both_pem=both, config=config
        )


def _records(data_dir: Path) -> dict[str, Any]:
    store = SqliteRecordStore.open(data_dir, create=False)
    try:
        return {r.request_id: r for chunk in store.iter_query(RecordQuery()) for r in chunk}
    finally:
        store.close()


async def test_the_service_records_identity_and_one_chain_per_signer(filled: Filled) -> None:
    records = _records(filled.data_dir)
    assert {"pass-1", "pass-2", "forged", "other", "stale", "none"} == set(records)
    assert None is records["none"].identity
    assert records["pass-1"].identity is not None
    assert records["pass-1"].identity.count(".") >= 2  # the JWS as received
    assert records["pass-1"].fingerprint == records["pass-2"].fingerprint
    assert None is records["forged"].fingerprint  # not the signer's: the signature failed
    assert {records["forged"].x5u: records["pass-1"].fingerprint} == records["forged"].signers
    assert None is records["pass-1"].signers
    store = SqliteRecordStore.open(filled.data_dir, create=False)
    try:
        chains = store.chains(r.fingerprint for r in records.values() if r.fingerprint)
    finally:
        store.close()
    assert {records["pass-1"].fingerprint, records["other"].fingerprint} == set(chains)
    assert 3 == chains[records["other"].fingerprint].count("BEGIN CERTIFICATE")  # leaf..root


def test_reverify_with_the_same_anchors_finds_the_same_verdicts(
    filled: Filled, kit: Kit, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["records", "--data-dir", str(filled.data_dir), "--reverify"]
    assert 0 == kit.run([*argv, "--config", str(filled.config), "--json"])
    body = json.loads(capsys.readouterr().out)
    by_id = {r["request_id"]: r for r in body["results"]}
    assert {
        "pass-1": "same",
        "pass-2": "same",
        "forged": "same",
        "other": "same",
        "stale": "no_chain",
        "none": "no_identity",
    } == {k: v["status"] for k, v in by_id.items()}
    assert {"verstat": "TN-Validation-Passed", "reason": None} == by_id["other"]["reverified"]
    forged = {"verstat": "TN-Validation-Failed", "reason": "invalid_signature"}
    assert (forged, forged) == (by_id["forged"]["recorded"], by_id["forged"]["reverified"])
    assert {"same": 4, "different": 0, "no_identity": 1, "no_chain": 1, "request_date": 0} == (
        body["counts"]
    )


def test_reverify_reports_a_verdict_that_the_anchors_now_change(
    filled: Filled, kit: Kit, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["records", "--data-dir", str(filled.data_dir), "--reverify"]
    argv += ["--config", str(filled.config)]
    assert 1 == kit.run([*argv, "--trust-anchor", str(filled.root_pem)])
    lines = capsys.readouterr().out.splitlines()
    by_id = {line.split()[0]: line for line in lines[:-1]}
    assert (
        "other TN-Validation-Passed/- -> TN-Validation-Failed/cert_not_trusted DIFFERENT"
        == by_id["other"]
    )
    assert by_id["pass-1"].endswith(" same")
    assert by_id["none"].endswith("/no_identity -> no Identity header recorded")
    assert by_id["stale"].endswith("no certificate chain recorded")
    assert by_id["forged"].endswith(" same")
    assert "same=3 different=1 no_identity=1 no_chain=1 request_date=0" == lines[-1]
    # The usual filters choose the records: the changed one alone.
    assert 0 == kit.run([*argv, "--trust-anchor", str(filled.root_pem), "--spc", "1234"])


def test_reverify_with_the_anchors_alone_does_not_judge_the_x5u_port(
    filled: Filled, kit: Kit, capsys: pytest.CaptureFixture[str]
) -> None:
    """The local repository's port is not in the default x5u ports (443, 8443); nothing is
    fetched, so with only the anchors (the demo's case: no configuration file) the
    recorded verdicts stand."""
    argv = ["records", "--data-dir", str(filled.data_dir), "--reverify", "--json"]
    assert 0 == kit.run([*argv, "--trust-anchor", str(filled.both_pem)])
    counts = json.loads(capsys.readouterr().out)["counts"]
    assert {"same": 4, "different": 0, "no_identity": 1, "no_chain": 1, "request_date": 0} == (
        counts
    )


def test_reverify_usage_errors(filled: Filled, kit: Kit) -> None:
    where = ["records", "--data-dir", str(filled.data_dir)]
    assert 2 == kit.run([*where, "--reverify", "--csv"])
    assert 2 == kit.run([*where, "--trust-anchor", str(filled.root_pem)])


# -- a call diverted by another provider (RFC 8946) --------------------------------------------

FIRST = "12155551299"
"""The number first called (the SHAKEN dest), diverted on to ``DEST``."""


@dataclass
class Diverted:
    """A store (``verifier records`` arguments) filled by a real service."""

    where: list[str]
    anchor: Path
    forwarder: Signer


@pytest.fixture(params=["sqlite", "postgres"])
async def diverted(
    request: pytest.FixtureRequest, aiohttp_server: AiohttpServer, tmp_path: Path, now: int
) -> AsyncIterator[Diverted]:
    """Calls recorded in each store: one diverted by another provider (its SHAKEN PASSporT
    signed by one SP, its div PASSporT by another SP under a certificate of its own; both
    valid), and one that was not diverted."""
    records: dict[str, Any] = {"records.data_dir": str(tmp_path / "records")}
    where = ["--data-dir", str(tmp_path / "records")]
    if request.param == "postgres":
        url: str = request.getfixturevalue("schema_url")
        records["records.database_url"] = url
        where = ["--database-url", url]
    pki = TestPKI.create()
    async with Repository.create(pki) as repo:
        pki.signer.x5u = repo.url("/sp.pem")
        forwarder = pki.ca.issue_leaf("5678", x5u=repo.url("/forwarder.pem"))
        for signer in (pki.signer, forwarder):
            repo.put(urlsplit(signer.x5u).path, signer.chain_pem())
        overrides = {"tuning.writer_flush_interval": 0.01, "api.admin_token": TOKEN, **records}
        calls: dict[str, str | list[str] | None] = {
            "diverted": [
                pki.signer.identity(iat=now, dest=FIRST),
                forwarder.div_identity(iat=now, orig=ORIG, div=FIRST, dest=DEST),
            ],
            "direct": pki.signer.identity(iat=now),
        }
        await _record_calls(aiohttp_server, repo.service_settings(pki, tmp_path, overrides), calls)
        yield Diverted(where=where, anchor=tmp_path / "root.pem", forwarder=forwarder)


def test_reverify_checks_each_passport_with_the_chain_recorded_for_its_x5u(
    diverted: Diverted, kit: Kit, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["records", *diverted.where, "--json"]
    assert 0 == kit.run(argv)
    records = {r["request_id"]: r for r in json.loads(capsys.readouterr().out)["records"]}
    [(x5u, fingerprint)] = records["diverted"]["signers"].items()
    assert diverted.forwarder.x5u == x5u
    assert fingerprint != records["diverted"]["fingerprint"]
    assert None is records["direct"]["signers"]
    argv += ["--reverify", "--trust-anchor", str(diverted.anchor)]
    assert 0 == kit.run(argv)
    by_id = {r["request_id"]: r for r in json.loads(capsys.readouterr().out)["results"]}
    passed = {"verstat": "TN-Validation-Passed", "reason": None}
    assert {
        "diverted": ("same", passed, passed),
        "direct": ("same", passed, passed),
    } == {k: (v["status"], v["recorded"], v["reverified"]) for k, v in by_id.items()}


@pytest.mark.parametrize(
    ("overrides", "kept"),
    [
        ({}, {"short": True, "long": True}),
        ({"records.identity_max_bytes": 1024}, {"short": True, "long": False}),
        ({"records.keep_identity": False}, {"short": False, "long": False}),
    ],
)
async def test_identity_cap_and_off_switch(
    aiohttp_server: AiohttpServer,
    tmp_path: Path,
    now: int,
    overrides: dict[str, Any],
    kept: dict[str, bool],
) -> None:
    pki = TestPKI.create()
    async with Repository.create(pki) as repo:
        pki.signer.x5u = repo.url("/sp.pem")
        repo.put("/sp.pem", pki.signer.chain_pem())
        settings = repo.service_settings(
            pki,
            tmp_path,
            {
                "records.data_dir": str(tmp_path / "records"),
                "tuning.writer_flush_interval": 0.01,
                **overrides,
            },
        )
        short = pki.signer.identity(iat=now)
        long = pki.signer.identity(iat=now, claims={"note": "x" * 2000})
        assert len(short) < 1024 < len(long) < 8192
        server = await aiohttp_server(create_app(settings))
        url = str(server.make_url("")).rstrip("/")
        async with aiohttp.ClientSession() as session:
            for request_id, identity in (("short", short), ("long", long)):
                answer = await _call(session, url, identity, request_id)
                assert "TN-Validation-Passed" == answer["verstat"]
        await server.close()
    records = _records(tmp_path / "records")
    assert kept == {k: records[k].identity is not None for k in ("short", "long")}
    if kept["short"]:
        assert short == records["short"].identity


def test_a_verdict_on_the_request_date_is_not_reverified(kit: Kit, now: int) -> None:
    """A 403 on the request's own date (not recorded) cannot be judged again: said so."""
    from verifier.core.certs import TrustStore
    from verifier.core.verify import VerifyOptions
    from verifier.records.reverify import reverify

    pki = TestPKI.create()
    stale = kit.rec(
        0,
        ts=float(now),
        verstat="TN-Validation-Failed",
        reason="date_stale",
        sip_code=403,
        identity=pki.signer.identity(iat=now),
        fingerprint="ab" * 32,
    )
    chains = {"ab" * 32: (pki.signer.chain_pem() + pem(pki.root.cert)).decode("ascii")}
    [item] = reverify([stale], chains, TrustStore([pki.root.cert]), VerifyOptions())
    assert ("request_date", None) == (item.status, item.verstat)
    assert item.line().endswith("not re-verified: the verdict was about the request's date")
