"""What a flood of forged x5u may cost: a per-host budget of cold fetches, and 404s remembered.

A forged PASSporT can name any path on a legitimate repository, and its x5u must be fetched
before its signature can be checked. :class:`ColdFetchBudget` bounds what such a flood makes
the verifier send, without starving the legitimate new x5u of the same host:

- **A budget per host** (token buckets: ``cold_fetch_rate`` per second, up to
  ``cold_fetch_burst``). Each network fetch of an x5u takes one token when it starts; a fetch
  whose chain a PASSporT's signature then verifies under gives it back (the fetcher's
  vouching), so only useless fetches (404s, HTML, bad chains, and copies of real chains
  that no signature verifies under) spend the budget, and a cold start on legitimate x5u
  is never slowed by it. With no token the
  fetch is refused at once, 436 "busy" (caused by :class:`OverBudget`, a
  :class:`~verifier.net.transport.HostBusy`): nothing is sent, the host is not blamed, and
  the refusal is not remembered as the URL's failure.
- **A budget for unknown hosts together** (``unknown_hosts_rate``, ``unknown_hosts_burst``):
  a fetch from a host that has never served a chain a call's signature verified under also
  takes a token from one bucket that all such hosts share, given back in the same way. A
  forger with hosts of its own cannot multiply its budget by the number of its hosts; the
  repositories calls are signed from are known hosts, and never wait on it.
- **A share for known paths.** Paths in a directory of the host that has served a valid
  chain draw on a second budget of the same size, which paths elsewhere cannot spend: a
  flood of random paths outside the repository's directories leaves it whole for the
  repository's new certificates. (Forged paths inside such a directory share it with them:
  both budgets together still bound the host's cold fetches.)
- **404 and 410 remembered per URL** for ``not_found_ttl``, in a bounded LRU of their own
  (``not_found_size``), apart from the chain cache and the other failures: a flood of
  missing paths can neither evict good chains nor grow memory without bound, and a missing
  path asked again is answered without a request.

Driven by the fetcher's clock; holds no I/O.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import NoReturn

from cachetools import LRUCache
from yarl import URL

from ..core.errors import X5uFetchFailed
from .transport import HostBusy

__all__ = ["ColdFetchBudget", "OverBudget"]


class OverBudget(HostBusy):
    """The cause (``__cause__``) of an :class:`X5uFetchFailed` raised because the x5u's host
    has spent its budget of cold fetches: the verifier's own limit, so (as any
    :class:`HostBusy`) not counted by the breaker and not remembered as the URL's failure."""


@dataclass(slots=True)
class _Bucket:
    tokens: float
    at: float


@dataclass(slots=True)
class _Host:
    unknown: _Bucket
    known: _Bucket


def _directory(url: URL) -> str:
    return url.raw_path.rpartition("/")[0] + "/"


class ColdFetchBudget:
    """The budgets of cold x5u fetches per host, the directories known to serve valid
    chains, and the URLs answered 404 or 410. ``rate`` 0: no budget (404s are still
    remembered). ``size`` bounds the hosts and directories held; ``clock`` is in seconds."""

    def __init__(
        self,
        *,
        rate: float,
        burst: int,
        not_found_ttl: float,
        not_found_size: int,
        size: int,
        clock: Callable[[], float],
        unknown_hosts_rate: float = 0.0,
        unknown_hosts_burst: int = 1,
    ) -> None:
        self._rate = rate
        self._burst = float(burst)
        self._unknown_rate = unknown_hosts_rate
        self._unknown_burst = float(unknown_hosts_burst)
        self._unknown = _Bucket(self._unknown_burst, clock())
        self._known_hosts: LRUCache[str, bool] = LRUCache(maxsize=size)
        self._not_found_ttl = not_found_ttl
        self._clock = clock
        self._hosts: LRUCache[str, _Host] = LRUCache(maxsize=size)
        self._known: LRUCache[tuple[str, str], bool] = LRUCache(maxsize=size)
        self._not_found: LRUCache[str, tuple[str, float]] = LRUCache(maxsize=not_found_size)
        self.refused: Counter[str] = Counter()
        """Fetches refused for want of a token, by host."""
        self.not_found_hits = 0
        """x5u answered from the 404 memory."""

    # -- the budget ------------------------------------------------------------------------

    def _bucket(self, host: str, directory: str) -> _Bucket:
        budgets = self._hosts.get(host)
        if budgets is None:
            now = self._clock()
            budgets = self._hosts[host] = _Host(
                unknown=_Bucket(self._burst, now), known=_Bucket(self._burst, now)
            )
        return budgets.known if (host, directory) in self._known else budgets.unknown

    def _refill(self, bucket: _Bucket, rate: float, burst: float) -> None:
        now = self._clock()
        elapsed = max(0.0, now - bucket.at)
        bucket.tokens = min(burst, bucket.tokens + elapsed * rate)
        bucket.at = now

    def take(self, url: URL) -> None:
        """Take a token of ``url``'s host for a fetch about to start, and one of the unknown
        hosts' bucket if the host is not known to serve chains.

        Raises:
            X5uFetchFailed: caused by :class:`OverBudget`, the host (or the unknown hosts
                together) has no token left.
        """
        host = url.host
        if not host:
            return
        bucket = self._bucket(host, _directory(url)) if self._rate else None
        if bucket is not None:
            self._refill(bucket, self._rate, self._burst)
            if bucket.tokens < 1.0:
                self._refuse(host, f"its budget of {self._rate:g}")
        shared = self._unknown if self._unknown_rate and host not in self._known_hosts else None
        if shared is not None:
            self._refill(shared, self._unknown_rate, self._unknown_burst)
            if shared.tokens < 1.0:
                self._refuse(host, f"the budget of {self._unknown_rate:g} for unknown hosts")
            shared.tokens -= 1.0
        if bucket is not None:
            bucket.tokens -= 1.0

    def _refuse(self, host: str, budget: str) -> NoReturn:
        self.refused[host] += 1
        detail = f"x5u host {host} busy: more new x5u than {budget} failed fetches per second"
        raise X5uFetchFailed(detail) from OverBudget(detail)

    def served(self, url: URL, *, fetched: bool) -> None:
        """``url``'s chain was vouched for by a signature (fetched from the network after
        :meth:`take` if ``fetched``, else from a store or the fleet's tier): its directory
        is known to serve chains from now on, and a fetch's token comes back."""
        host = url.host
        if not host:
            return
        directory = _directory(url)
        if self._rate and fetched:
            bucket = self._bucket(host, directory)
            self._refill(bucket, self._rate, self._burst)
            bucket.tokens = min(self._burst, bucket.tokens + 1.0)
        if self._unknown_rate and fetched and host not in self._known_hosts:
            self._refill(self._unknown, self._unknown_rate, self._unknown_burst)
            self._unknown.tokens = min(self._unknown_burst, self._unknown.tokens + 1.0)
        self._known[host, directory] = True
        self._known_hosts[host] = True

    # -- 404 and 410 -----------------------------------------------------------------------

    def not_found(self, x5u: str, detail: str) -> None:
        """Remember that ``x5u`` was answered 404 or 410 (``detail`` says which)."""
        if self._not_found_ttl > 0:
            self._not_found[x5u] = (detail, self._clock() + self._not_found_ttl)

    def remembered(self, x5u: str) -> str | None:
        """The detail of ``x5u``'s 404 or 410 while it is remembered, else None."""
        found = self._not_found.get(x5u)
        if found is None:
            return None
        if self._clock() < found[1]:
            self.not_found_hits += 1
            return found[0]
        self._not_found.pop(x5u, None)
        return None

    def __len__(self) -> int:
        """URLs remembered as 404 or 410."""
        return len(self._not_found)
