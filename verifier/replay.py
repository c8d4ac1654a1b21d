"""Replay detection: a PASSporT seen again within its freshness window.

Keyed by the PASSporT's signature (what RFC 9410 ``ppi`` names it by). A repeat is not
necessarily an attack: a forked INVITE legitimately carries the same PASSporT to several
destinations, so a replay is an input to the disposition policy (default: labelled, never
blocked). Memory is bounded: at most ``max_size`` signatures, each kept for the freshness
window (``max_iat_age + max_future_skew``), after which an old PASSporT fails on ``iat``
anyway.

One :class:`ReplayCache` per service. The shared tier for many instances (Redis, a later
issue) sits behind the same :meth:`seen`.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from cachetools import TTLCache

__all__ = ["ReplayCache"]


class ReplayCache:
    """``seen(signature)``: True when this signature was seen within the window."""

    def __init__(
        self, max_size: int, window: float, *, clock: Callable[[], float] = time.time
    ) -> None:
        if max_size < 1 or window <= 0:
            raise ValueError("max_size must be >= 1 and window > 0")
        self._seen: TTLCache[str, bool] = TTLCache(maxsize=max_size, ttl=window, timer=clock)
        self.replays = 0

    def seen(self, signature: str) -> bool:
        if signature in self._seen:
            self.replays += 1
            return True
        self._seen[signature] = True
        return False

    def __len__(self) -> int:
        return len(self._seen)

    @property
    def max_size(self) -> int:
        return int(self._seen.maxsize)
