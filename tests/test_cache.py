"""verifier.net.cache: lifetimes from HTTP headers, clamping, the memory tier, the stores."""

# STYLE.md: asserts read ``expected == actual``.

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from verifier.core.certs import TrustStore
from verifier.net.cache import (
    CacheEntry,
    DiskStore,
    MemoryTier,
    PreloadStore,
    StoredChain,
    clamp,
    lifetime_from_headers,
)
from verifier.testing import TestPKI

NOW = 1_700_000_000.0


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({}, None),
        ({"Cache-Control": "max-age=600"}, 600.0),
        ({"Cache-Control": "public, max-age=600, s-maxage=60"}, 60.0),
        ({"Cache-Control": "max-age=600", "Age": "100"}, 500.0),
        ({"Cache-Control": "max-age=60", "Age": "100"}, 0.0),
        ({"Cache-Control": "no-store, max-age=600"}, 0.0),
        ({"Cache-Control": "no-cache"}, 0.0),
        ({"Cache-Control": "max-age=soon"}, None),
        ({"Cache-Control": "max-age=-1"}, None),
        ({"Expires": "Tue, 14 Nov 2023 22:23:20 GMT"}, 600.0),  # NOW is 22:13:20
        (
            {"Expires": "Tue, 14 Nov 2023 22:23:20 GMT", "Date": "Tue, 14 Nov 2023 22:03:20 GMT"},
            1200.0,
        ),
        ({"Expires": "0"}, 0.0),
        ({"Cache-Control": "max-age=30", "Expires": "Tue, 14 Nov 2023 22:23:20 GMT"}, 30.0),
    ],
)
def test_lifetime_from_headers(headers: dict[str, str], expected: float | None) -> None:
    assert expected == lifetime_from_headers(headers, now=NOW)


@pytest.mark.parametrize(
    ("lifetime", "expected"), [(None, 3600.0), (10.0, 300.0), (1e9, 86400.0), (1000.0, 1000.0)]
)
def test_clamp(lifetime: float | None, expected: float) -> None:
    assert expected == clamp(lifetime, default=3600.0, minimum=300.0, maximum=86400.0)


def test_memory_tier_is_bounded_lru() -> None:
    pki = TestPKI.create()
    credential = TrustStore([pki.root.cert]).validate(pki.signer.chain, time.time())
    tier = MemoryTier(2)
    for name in ("a", "b", "c"):
        tier.put(
            name,
            CacheEntry(
                credential=credential, fetched_at=0, fresh_until=1, stale_until=2, generation=0
            ),
        )
    assert (2, None) == (len(tier), tier.get("a"))
    tier.delete("b")
    tier.clear()
    assert 0 == len(tier)


async def test_disk_store_round_trip(tmp_path: Path) -> None:
    store = DiskStore(tmp_path / "warm")
    chain = StoredChain(body=b"PEM", fetched_at=1.0, expires_at=2.0)
    assert await store.load("https://a.example/sp.pem") is None
    await store.save("https://a.example/sp.pem", chain)
    assert chain == await store.load("https://a.example/sp.pem")
    assert await store.load("https://b.example/sp.pem") is None


def _rewrite_meta(directory: Path, text: str) -> None:
    for meta in directory.glob("*.json"):
        meta.write_text(text)


async def test_disk_store_ignores_damaged_files(tmp_path: Path) -> None:
    store = DiskStore(tmp_path)
    await store.save("https://a.example/sp.pem", StoredChain(body=b"x", fetched_at=1, expires_at=2))
    _rewrite_meta(tmp_path, "{not json")
    assert await store.load("https://a.example/sp.pem") is None
    _rewrite_meta(tmp_path, json.dumps({"x5u": "https://a.example/sp.pem"}))  # no lifetimes
    assert await store.load("https://a.example/sp.pem") is None


async def test_preload_store(tmp_path: Path) -> None:
    (tmp_path / "sp.pem").write_bytes(b"PEM")
    (tmp_path / "index.json").write_text(json.dumps({"https://a.example/sp.pem": "sp.pem"}))
    store = PreloadStore(tmp_path)
    loaded = await store.load("https://a.example/sp.pem")
    assert loaded is not None and (b"PEM", float("inf")) == (loaded.body, loaded.expires_at)
    assert "https://a.example/sp.pem" in store
    assert await store.load("https://b.example/sp.pem") is None


@pytest.mark.parametrize(
    ("index", "words"),
    [(None, "cannot read"), ("[]", "JSON object"), ('{"https://a.example/x": "gone.pem"}', "gone")],
)
def test_preload_store_refuses_bad_directories(
    tmp_path: Path, index: str | None, words: str
) -> None:
    if index is not None:
        (tmp_path / "index.json").write_text(index)
    with pytest.raises(ValueError, match=words):
        PreloadStore(tmp_path)
