"""The operator console (verifier/http/console.py and static/): its JSON endpoints, and the
page in a real headless Chromium (Debian's ``chromium``, driven by Playwright) over a
service on 127.0.0.1 that verified a few hundred calls of known kinds through its real x5u
fetcher and record store. Screenshots of each view land in the test's temporary directory
(their paths are printed)."""

from __future__ import annotations

import asyncio
import csv
import io
import shutil
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiohttp
import pytest
from pytest_aiohttp import AiohttpClient, AiohttpServer

from verifier.http.app import create_app
from verifier.records import RecordStore
from verifier.settings import Settings
from verifier.testing import TestPKI
from verifier.testing.repository import Repository

if TYPE_CHECKING:  # the kit fixture's type; pytest imports conftest itself
    from conftest import RecordKit

TOKEN = "console-test-token-0123456789"
ORIG, DEST = "12155551212", "12155551213"
BLOCKED_SPC, REFERENCE = "666X", "FCC EB-TCD-21-00031913"
CHROMIUM = "/usr/bin/chromium"
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
# What the service is sent: passes by attestation, a blocked SPC, failures of three reasons.
PASSES = {"A": 90, "B": 50, "C": 30}
BLOCKED = 20
STALE = 40  # iat an hour old: 403 iat_too_old, the top failure reason
UNFETCHABLE = 15  # x5u answers 404: 436
FORGED = 10  # signature of another key: 438


@dataclass
class Console:
    url: str
    session: aiohttp.ClientSession
    traced_origid: str
    total: int
    blocked_expires: str
    """The blocked SPC's certificate expiry as the page shows it (its UTC date)."""


def _settings(repo: Repository, pki: TestPKI, tmp: Path, **extra: Any) -> Settings:
    policy = tmp / "policy.toml"
    policy.write_text(f'[[block]]\nspc = "{BLOCKED_SPC}"\nreference = "{REFERENCE}"\n')
    return repo.service_settings(
        pki,
        tmp,
        {
            "records.data_dir": str(tmp / "records"),
            "tuning.writer_flush_interval": 0.01,
            "policy_file": str(policy),
            **extra,
        },
    )


async def _verify(session: aiohttp.ClientSession, url: str, identity: str) -> dict[str, Any]:
    async with session.post(
        f"{url}/v1/verify", json={"identity": identity, "from": ORIG, "to": DEST}
    ) as resp:
        assert 200 == resp.status
        body: dict[str, Any] = await resp.json()
        return body


@pytest.fixture
async def console(
    aiohttp_server: AiohttpServer, tmp_path: Path, now: int
) -> AsyncIterator[Console]:
    pki = TestPKI.create()
    blocked = pki.ca.issue_leaf(BLOCKED_SPC)
    forger = pki.ca.issue_leaf("1234")
    async with Repository.create(pki) as repo:
        pki.signer.x5u = repo.url("/sp.pem")
        blocked.x5u = repo.url("/blocked.pem")
        forger.x5u = pki.signer.x5u  # signs with its own key under the default signer's x5u
        repo.put("/sp.pem", pki.signer.chain_pem())
        repo.put("/blocked.pem", blocked.chain_pem())
        settings = _settings(repo, pki, tmp_path, **{"api.admin_token": TOKEN})
        server = await aiohttp_server(create_app(settings))
        url = str(server.make_url("")).rstrip("/")
        gone = pki.ca.issue_leaf("1234")
        gone.x5u = repo.url("/gone.pem")  # never put: the repository answers 404
        identities: list[str] = []
        for attest, count in PASSES.items():
            identities += [pki.signer.identity(iat=now, attest=attest) for _ in range(count)]
        identities += [blocked.identity(iat=now) for _ in range(BLOCKED)]
        identities += [pki.signer.identity(iat=now - 3600) for _ in range(STALE)]
        identities += [gone.identity(iat=now) for _ in range(UNFETCHABLE)]
        identities += [forger.identity(iat=now) for _ in range(FORGED)]
        traced = str(uuid.uuid4())
        async with aiohttp.ClientSession() as session:
            for start in range(0, len(identities), 25):
                await asyncio.gather(
                    *(_verify(session, url, i) for i in identities[start : start + 25])
                )
            once = pki.signer.identity(iat=now, origid=traced)
            first, replayed = await _verify(session, url, once), await _verify(session, url, once)
            assert "TN-Validation-Passed" == first["verstat"]
            assert "replayed" in str(replayed).lower()
            total = len(identities) + 2
            # The writer flushes every 10 ms; wait until the store holds every call.
            headers = {"Authorization": f"Bearer {TOKEN}"}
            for _ in range(500):
                async with session.get(f"{url}/v1/stats", headers=headers) as resp:
                    if (await resp.json())["total"] == total:
                        break
                await asyncio.sleep(0.02)
            expires = blocked.cert.not_valid_after_utc.strftime("%Y-%m-%d")
            yield Console(
                url=url,
                session=session,
                traced_origid=traced,
                total=total,
                blocked_expires=expires,
            )


async def _get(console: Console, path: str, token: str | None = TOKEN) -> tuple[int, Any]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with console.session.get(console.url + path, headers=headers) as resp:
        if resp.content_type == "application/json":
            return resp.status, await resp.json()
        return resp.status, await resp.text()


# -- the aggregate queries, in every store ---------------------------------------------------


def test_store_aggregates(record_store: RecordStore, kit: type[RecordKit]) -> None:
    t0 = kit.T0
    failed = {"verstat": "TN-Validation-Failed", "reason": "invalid_signature", "sip_code": 438}
    record_store.insert_many(
        [
            kit.rec(0, attest="A", spc=("AAAA",)),
            kit.rec(1, attest="B", spc=("AAAA",), action="block", label="blocked"),
            kit.rec(61, attest="C", spc=("AAAA", "BBBB"), **failed),
            kit.rec(
                62,
                attest=None,
                spc=(),
                verstat="No-TN-Validation",
                reason="x5u_fetch_failed",
                sip_code=436,
                x5u="https://gone.example/x.pem",
            ),
            kit.rec(120, attest="A", spc=("BBBB",)),  # outside: the window is half-open
        ]
    )
    out = record_store.console(t0, t0 + 120, 60)
    assert 4 == out["total"]
    assert [
        {"t": t0, "verstat": "TN-Validation-Passed", "attest": "A", "count": 1},
        {"t": t0, "verstat": "TN-Validation-Passed", "attest": "B", "count": 1},
        {"t": t0 + 60, "verstat": "No-TN-Validation", "attest": "none", "count": 1},
        {"t": t0 + 60, "verstat": "TN-Validation-Failed", "attest": "C", "count": 1},
    ] == out["series"]
    assert [
        {"reason": "invalid_signature", "sip_code": 438, "count": 1},
        {"reason": "x5u_fetch_failed", "sip_code": 436, "count": 1},
    ] == out["reasons"]
    assert [
        {"action": "accept", "label": None, "count": 3},
        {"action": "block", "label": "blocked", "count": 1},
    ] == out["dispositions"]
    assert [{"x5u": "https://gone.example/x.pem", "count": 1}] == out["x5u_failures"]
    assert 3 == record_store.console(t0, t0 + 120, 60, "AAAA")["total"]
    rows = record_store.providers(t0, t0 + 120)
    assert ["AAAA", "BBBB"] == [r["spc"] for r in rows]
    assert {"A": 1, "B": 1, "C": 1} == rows[0]["attest"]
    assert (3, 1, 1, t0, t0 + 61) == tuple(
        rows[0][k] for k in ("calls", "failures", "blocked", "first_seen", "last_seen")
    )
    assert [] == record_store.providers(t0 + 200, t0 + 300)
    with pytest.raises(ValueError, match="buckets"):
        record_store.console(t0, t0 + 86400, 1)


# -- the JSON endpoints --------------------------------------------------------------------


async def test_overview_counts_what_was_sent(console: Console) -> None:
    status, body = await _get(console, "/v1/console/overview?window=3600")
    assert 200 == status
    assert console.total == body["total"]
    assert ("iat_too_old", 403, STALE) == tuple(body["reasons"][0].values())
    blocked = [d["count"] for d in body["dispositions"] if d["action"] == "block"]
    assert [BLOCKED] == blocked
    assert [UNFETCHABLE] == [f["count"] for f in body["x5u_failures"]]
    assert 1 == body["trust_anchors"]["count"]
    assert {"busy": 0, "rate_limited": 0} == body["x5u_fetch"]["refused"]
    by_attest: dict[str, int] = {}
    for s in body["series"]:
        by_attest[s["attest"]] = by_attest.get(s["attest"], 0) + s["count"]
    assert PASSES["B"] == by_attest["B"]
    assert PASSES["C"] == by_attest["C"]


async def test_overview_buckets_are_whole_minutes_from_an_hour_up(console: Console) -> None:
    """At most 60 buckets; whole minutes from an hour up, which the rollups answer."""
    for window, bucket in ((600, 10.0), (3600, 60.0), (5000, 120.0), (86400, 1440.0)):
        status, body = await _get(console, f"/v1/console/overview?window={window}")
        assert (200, bucket, console.total) == (status, body["bucket"], body["total"])


async def test_providers_and_policy_name_the_blocked_spc(console: Console) -> None:
    status, body = await _get(console, "/v1/console/providers?window=3600")
    assert 200 == status
    rows = {row["spc"]: row for row in body["providers"]}
    assert {"1234", BLOCKED_SPC} == set(rows)
    assert {"status": "blocked", "reference": REFERENCE} == rows[BLOCKED_SPC]["policy"]
    assert BLOCKED == rows[BLOCKED_SPC]["blocked"]
    assert {"status": "default", "reference": None} == rows["1234"]["policy"]
    # The certificate of each provider's latest call, from the certificate table.
    assert "CN=verifier test STI-CA" in rows[BLOCKED_SPC]["issuer"]
    assert rows[BLOCKED_SPC]["not_after"] > rows[BLOCKED_SPC]["last_seen"]
    status, body = await _get(console, "/v1/console/policy")
    assert 200 == status
    [entry] = body["entries"]
    assert ("block", "spc", BLOCKED_SPC, REFERENCE, BLOCKED) == (
        entry["list"],
        entry["key"],
        entry["value"],
        entry["reference"],
        entry["matched"],
    )


@pytest.mark.parametrize(
    ("path", "status"),
    [
        ("/v1/console/overview?window=10", 400),
        ("/v1/console/overview?window=x", 400),
        ("/v1/console/providers?since=1", 400),
        ("/v1/console/overview?spc=%00", 400),
        ("/v1/console/overview?spc=" + "A" * 65, 400),
        ("/v1/console/policy?window=99999999999", 400),
        ("/console/..%2Fconsole.py", 404),
        ("/console/index.html", 404),
    ],
)
async def test_bad_requests_are_4xx(console: Console, path: str, status: int) -> None:
    assert status == (await _get(console, path))[0]


async def test_data_needs_the_token_the_page_does_not(console: Console) -> None:
    for path in ("/v1/console/overview", "/v1/console/providers", "/v1/console/policy"):
        assert 401 == (await _get(console, path, token="wrong"))[0]
        assert 401 == (await _get(console, path, token=None))[0]
    status, text = await _get(console, "/console", token=None)
    assert 200 == status
    assert "verifier console" in text


async def test_console_is_403_without_an_admin_token(
    aiohttp_client: AiohttpClient, tmp_path: Path
) -> None:
    pki = TestPKI.create()
    async with Repository.create(pki) as repo:
        client = await aiohttp_client(create_app(_settings(repo, pki, tmp_path)))
        for path in ("/console", "/console/console.js"):
            async with client.get(path) as resp:
                assert 403 == resp.status
                assert "api.admin_token" in await resp.text()
        async with client.get("/v1/console/overview") as resp:
            assert 403 == resp.status


# -- in a browser ---------------------------------------------------------------------------


def _browser_missing() -> str | None:
    try:
        import playwright.async_api  # noqa: F401
    except ImportError:
        return "playwright is not installed (pip install --group dev)"
    if shutil.which(CHROMIUM) is None:
        return f"no {CHROMIUM} (apt-get install chromium; .ci/run does)"
    return None


async def _fits(page: Any) -> bool:
    """No horizontal scrolling of the page itself."""
    width: int = await page.evaluate("document.documentElement.scrollWidth")
    inner: int = await page.evaluate("window.innerWidth")
    return width <= inner


async def test_console_in_chromium(console: Console, tmp_path: Path) -> None:
    missing = _browser_missing()
    if missing:
        pytest.skip(missing)
    from playwright.async_api import async_playwright, expect

    shots = tmp_path / "screenshots"
    shots.mkdir()
    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            context = await browser.new_context(viewport={"width": 1280, "height": 800})
            page = await context.new_page()
            await page.goto(console.url + "/console")

            # A wrong token shows an error, not a blank page.
            await page.fill("#token", "not-the-token")
            await page.click("#login button[type=submit]")
            await expect(page.locator("#login-error")).to_contain_text("token was refused")
            await expect(page.locator("#nav")).to_be_hidden()
            await page.screenshot(path=shots / "login-refused.png")

            await page.fill("#token", TOKEN)
            await page.click("#login button[type=submit]")
            await expect(page.locator("#total")).to_have_text(str(console.total))
            await expect(page.locator("#blocked")).to_have_text(str(BLOCKED))
            await expect(page.locator("#replays")).to_have_text("1")
            legend = page.locator("#chart-attest .legend")
            await expect(legend.locator("[data-key=B]")).to_have_text(f"B {PASSES['B']}")
            await expect(legend.locator("[data-key=C]")).to_have_text(f"C {PASSES['C']}")
            top = page.locator("#reasons tbody tr").first
            await expect(top).to_contain_text("iat_too_old")
            await expect(top).to_contain_text(str(STALE))
            await page.screenshot(path=shots / "overview.png", full_page=True)

            await page.click("nav a[data-view=providers]")
            row = page.locator("#providers tbody tr", has_text=BLOCKED_SPC)
            await expect(row).to_contain_text(f"blocked: {REFERENCE}")
            first = page.locator("#providers tbody tr").first
            await expect(first).to_contain_text("1234")  # the busiest first
            await page.click("#providers th[data-sort=calls]")  # then the quietest first
            await expect(first).to_contain_text(BLOCKED_SPC)
            await expect(row).to_contain_text("verifier test STI-CA")  # the issuer's CN
            await expect(row).to_contain_text(f"expires {console.blocked_expires}")
            await page.screenshot(path=shots / "providers.png", full_page=True)
            await row.locator("a").click()
            await expect(page.locator("#provider-title")).to_have_text(f"Provider {BLOCKED_SPC}")
            await page.screenshot(path=shots / "provider.png", full_page=True)

            await page.click("nav a[data-view=traceback]")
            await page.fill("#traceback input[name=origid]", console.traced_origid)
            await page.click("#traceback button[type=submit]")
            results = page.locator("#traceback-results tbody tr")
            # The call and its replay share the origid: exactly those two records.
            await expect(results).to_have_count(2)
            await expect(results.first).to_contain_text(console.traced_origid)
            async with page.expect_download() as download_info:
                await page.click("#export-csv")
            download = await download_info.value
            saved = tmp_path / "records.csv"
            await download.save_as(saved)
            rows = list(csv.DictReader(io.StringIO(saved.read_text(encoding="utf-8"))))
            assert [console.traced_origid] * 2 == [r["origid"] for r in rows]
            await page.screenshot(path=shots / "traceback.png", full_page=True)

            # The PASSporT as received: decoded header and claims, and the raw header.
            await expect(page.locator("#passport")).to_be_hidden()
            await results.first.locator("button.show-passport").click()
            await expect(page.locator("#passport")).to_be_visible()
            await expect(page.locator("#passport .passport-header")).to_contain_text('"ES256"')
            claims = page.locator("#passport .passport-claims")
            await expect(claims).to_contain_text(f'"origid": "{console.traced_origid}"')
            await expect(claims).to_contain_text(f'"tn": "{ORIG}"')
            await expect(page.locator("#passport .passport-raw")).to_contain_text(";info=<https://")
            await page.screenshot(path=shots / "passport.png", full_page=True)

            # The token is kept for the tab: a reload asks for it no more.
            await page.reload()
            await expect(page.locator("#traceback-view")).to_be_visible()
            await expect(page.locator("#login-view")).to_be_hidden()

            await page.click("nav a[data-view=policy]")
            entry = page.locator("#policy-entries tbody tr").first
            await expect(entry).to_contain_text(REFERENCE)
            await expect(entry).to_contain_text(str(BLOCKED))
            await page.screenshot(path=shots / "policy.png", full_page=True)

            # Phone width: every view without horizontal scrolling.
            await page.set_viewport_size({"width": 375, "height": 800})
            for view in ("overview", "providers", "traceback", "policy"):
                await page.click(f"nav a[data-view={view}]")
                await expect(page.locator(f"#{view}-view")).to_be_visible()
                assert await _fits(page), view
            await page.click("nav a[data-view=overview]")
            await expect(page.locator("#total")).to_have_text(str(console.total))
            await page.screenshot(path=shots / "overview-phone.png", full_page=True)
        finally:
            await browser.close()
    for shot in sorted(shots.iterdir()):
        print(f"screenshot: {shot}")
