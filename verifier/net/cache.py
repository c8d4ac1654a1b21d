"""The certificate cache: lifetimes, the in-process tier, and the stores behind it.

Two kinds of tier, one interface each:

* :class:`MemoryTier` (first, always): x5u -> :class:`CacheEntry`, the *validated*
  Credential with its freshness bounds. A hit costs a dict lookup and a time comparison:
  no parsing, no chain validation, and it never leaves the process.
* :class:`ChainStore` (behind it, optional, in order): x5u -> :class:`StoredChain`, the
  fetched bytes with their expiry. A chain found there is validated again before it is
  used, because a store may be shared (Redis, a later issue), on disk
  (:class:`DiskStore`, the warm cache that spares the repositories after a restart), or
  supplied by the operator (:class:`PreloadStore`, for air-gapped use and tests).

:func:`lifetime_from_headers` reads ``Cache-Control`` / ``Expires``; :func:`clamp` bounds the
result and never lets it pass the chain's earliest notAfter or a CRL's nextUpdate.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from cachetools import LRUCache

from ..core.certs import Credential
from ..core.times import parse_time

__all__ = [
    "CacheEntry",
    "ChainStore",
    "DiskStore",
    "MemoryTier",
    "PreloadStore",
    "StoredChain",
    "clamp",
    "lifetime_from_headers",
]

log = logging.getLogger(__name__)


# ------------------------------------------------------------------------------------- lifetimes


def _seconds(text: str) -> float | None:
    try:
        value = int(text.strip().strip('"'))
    except ValueError:
        return None
    return float(value) if value >= 0 else None


def _http_date(text: str) -> float | None:
    try:
        return parse_time(text)
    except ValueError:
        return None


def lifetime_from_headers(headers: Mapping[str, str], *, now: float) -> float | None:
    """Seconds the response may be cached, from ``Cache-Control`` or ``Expires``; None if
    neither says. ``no-store``/``no-cache`` give 0; ``s-maxage`` wins over ``max-age``
    (we are a shared cache); ``Age`` is subtracted; ``Expires`` counts from ``Date``.
    Unparseable values count as absent (``Expires``: as already expired, RFC 9111)."""
    cc = headers.get("Cache-Control")
    age = _seconds(headers.get("Age", "0")) or 0.0
    if cc:
        directives: dict[str, str] = {}
        for part in cc.split(","):
            name, _, value = part.strip().partition("=")
            directives[name.strip().lower()] = value
        if "no-store" in directives or "no-cache" in directives:
            return 0.0
        for name in ("s-maxage", "max-age"):
            if name in directives:
                seconds = _seconds(directives[name])
                if seconds is not None:
                    return max(0.0, seconds - age)
    expires = headers.get("Expires")
    if expires is not None:
        at = _http_date(expires)
        if at is None:
            return 0.0
        date = _http_date(headers.get("Date", "")) if headers.get("Date") else None
        return max(0.0, at - (date if date is not None else now))
    return None


def clamp(
    lifetime: float | None,
    *,
    default: float,
    minimum: float,
    maximum: float,
) -> float:
    """``lifetime`` (``default`` when None) bounded to [minimum, maximum]."""
    value = default if lifetime is None else lifetime
    return min(max(value, minimum), maximum)


# ------------------------------------------------------------------------------------- memory tier


@dataclass(slots=True, kw_only=True)
class CacheEntry:
    """A validated credential and how long it may be served.

    Fresh until ``fresh_until``; from then until ``stale_until`` it may be served while one
    refresh runs (stale-while-revalidate), no more often than ``next_refresh`` allows.
    ``generation`` is the trust store it was validated against. ``unsaved`` is the fetched
    chain the stores get once a PASSporT's signature has verified under it.
    """

    credential: Credential
    fetched_at: float
    fresh_until: float
    stale_until: float
    generation: int
    next_refresh: float = 0.0
    source: str = "network"
    unsaved: StoredChain | None = None


class MemoryTier:
    """Bounded LRU of validated entries, keyed by x5u. The first tier; never shared.

    Two segments: entries a PASSporT's signature has verified under (``maxsize``), and
    entries fetched but not yet used so (``probation``, a tenth of ``maxsize`` unless
    given), which :meth:`promote` moves over. Anyone can serve a copy of a real chain at
    as many URLs as they like: a flood of such x5u churns the probation segment only, and
    never pushes out the chains that calls are signed with.
    """

    __slots__ = ("_data", "_probation")

    def __init__(self, maxsize: int, probation: int | None = None) -> None:
        self._data: LRUCache[str, CacheEntry] = LRUCache(maxsize=maxsize)
        self._probation: LRUCache[str, CacheEntry] = LRUCache(
            maxsize=probation if probation is not None else max(1, maxsize // 10)
        )

    def get(self, x5u: str) -> CacheEntry | None:
        entry = self._data.get(x5u)
        return entry if entry is not None else self._probation.get(x5u)

    def put(self, x5u: str, entry: CacheEntry, *, vouched: bool = True) -> None:
        """Hold ``entry``: in the main segment if ``vouched`` (a signature verified under
        its x5u, or it came from a store that holds only such chains), else on probation."""
        if vouched:
            self._probation.pop(x5u, None)
            self._data[x5u] = entry
        else:
            self._data.pop(x5u, None)
            self._probation[x5u] = entry

    def vouched(self, x5u: str) -> bool:
        """Whether ``x5u`` is held in the main segment."""
        return x5u in self._data

    def promote(self, x5u: str) -> CacheEntry | None:
        """Move ``x5u``'s entry from probation to the main segment; the entry if it was on
        probation, else None."""
        entry = self._probation.pop(x5u, None)
        if entry is not None:
            self._data[x5u] = entry
        return entry

    def delete(self, x5u: str) -> None:
        self._data.pop(x5u, None)
        self._probation.pop(x5u, None)

    def entries(self) -> list[CacheEntry]:
        """The main segment's entries now (a copy): probation holds chains no call has
        been signed with, which say nothing about the providers calls come from."""
        return list(self._data.values())

    def clear(self) -> None:
        self._data.clear()
        self._probation.clear()

    def __len__(self) -> int:
        """Entries held in both segments."""
        return len(self._data) + len(self._probation)


# ------------------------------------------------------------------------------------- stores


@dataclass(frozen=True, slots=True, kw_only=True)
class StoredChain:
    """The bytes x5u served (PEM or DER) and until when they may be used (epoch seconds)."""

    body: bytes
    fetched_at: float
    expires_at: float


class ChainStore(Protocol):
    """A tier behind the memory tier. Chains read from it are validated before use.

    ``load`` returns None for a miss; neither method raises for an unavailable store (it
    logs and misses), so a broken store never fails a verification.
    """

    async def load(self, x5u: str) -> StoredChain | None: ...

    async def save(self, x5u: str, chain: StoredChain) -> None: ...


class PreloadStore:
    """Certificates supplied by the operator: ``DIR/index.json`` maps x5u -> PEM file name.

    Read when built; chains never expire here (validity still bounds them), and ``save``
    does nothing. Raises ValueError (naming the file) for a bad index or a missing file.
    """

    __slots__ = ("_chains",)

    def __init__(self, directory: str | Path) -> None:
        root = Path(directory)
        index = root / "index.json"
        try:
            mapping = json.loads(index.read_text())
        except (OSError, ValueError) as exc:
            raise ValueError(f"{index}: cannot read the preload index: {exc}") from None
        if not isinstance(mapping, dict):
            raise ValueError(f"{index}: must be a JSON object mapping x5u to a file name")
        self._chains: dict[str, bytes] = {}
        for x5u, name in mapping.items():
            if not isinstance(x5u, str) or not isinstance(name, str):
                raise ValueError(f"{index}: entries must be strings")
            path = root / name
            try:
                self._chains[x5u] = path.read_bytes()
            except OSError as exc:
                raise ValueError(f"{path}: {exc.strerror}") from None

    def __contains__(self, x5u: str) -> bool:
        return x5u in self._chains

    async def load(self, x5u: str) -> StoredChain | None:
        body = self._chains.get(x5u)
        if body is None:
            return None
        return StoredChain(body=body, fetched_at=0.0, expires_at=float("inf"))

    async def save(self, x5u: str, chain: StoredChain) -> None:
        return None


class DiskStore:
    """The warm cache: a directory of fetched chains (``<sha256 of x5u>.pem``) with their
    lifetimes (``.json``), so that a restart does not stampede the repositories."""

    __slots__ = ("_root",)

    def __init__(self, directory: str | Path) -> None:
        self._root = Path(directory)
        self._root.mkdir(parents=True, exist_ok=True)

    def _paths(self, x5u: str) -> tuple[Path, Path]:
        stem = hashlib.sha256(x5u.encode()).hexdigest()
        return self._root / f"{stem}.pem", self._root / f"{stem}.json"

    def _load(self, x5u: str) -> StoredChain | None:
        body_path, meta_path = self._paths(x5u)
        try:
            meta = json.loads(meta_path.read_text())
            body = body_path.read_bytes()
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            log.warning("warm_cache_unreadable", extra={"path": str(meta_path), "error": str(exc)})
            return None
        if not isinstance(meta, dict) or meta.get("x5u") != x5u:
            return None
        try:
            return StoredChain(
                body=body,
                fetched_at=float(meta["fetched_at"]),
                expires_at=float(meta["expires_at"]),
            )
        except (KeyError, TypeError, ValueError):
            return None

    def _save(self, x5u: str, chain: StoredChain) -> None:
        body_path, meta_path = self._paths(x5u)
        meta = {"x5u": x5u, "fetched_at": chain.fetched_at, "expires_at": chain.expires_at}
        try:
            for path, data in ((body_path, chain.body), (meta_path, json.dumps(meta).encode())):
                tmp = path.with_suffix(path.suffix + ".tmp")
                tmp.write_bytes(data)
                os.replace(tmp, path)
        except OSError as exc:
            log.warning(
                "warm_cache_write_failed", extra={"path": str(body_path), "error": str(exc)}
            )

    async def load(self, x5u: str) -> StoredChain | None:
        return await asyncio.to_thread(self._load, x5u)

    async def save(self, x5u: str, chain: StoredChain) -> None:
        await asyncio.to_thread(self._save, x5u, chain)
