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
from collections import deque
from collections.abc import Callable

__all__ = ["ReplayCache"]


class ReplayCache:
    """``seen(signature)``: True when this signature was seen within the window.

    A dict of expiry times and a queue of (expiry, signature) in the order they were
    added: expired signatures leave from the queue's head, and past ``max_size`` the
    oldest go first. (cachetools' TTLCache did the same at about four times the cost; this
    runs for every verified call.)
    """

    def __init__(
        self, max_size: int, window: float, *, clock: Callable[[], float] = time.time
    ) -> None:
        if max_size < 1 or window <= 0:
            raise ValueError("max_size must be >= 1 and window > 0")
        self._max = max_size
        self._window = window
        self._clock = clock
        self._until: dict[str, float] = {}
        self._order: deque[tuple[float, str]] = deque()
        self.replays = 0

    def seen(self, signature: str) -> bool:
        now = self._clock()
        until, order = self._until, self._order
        while order and order[0][0] <= now:
            self._forget_oldest()
        expiry = until.get(signature)
        if expiry is not None and now < expiry:
            self.replays += 1
            return True
        expiry = now + self._window
        until[signature] = expiry
        order.append((expiry, signature))
        # Past the bound the oldest go; so do queue entries that no longer match their
        # signature's expiry (one set again after its expiry while the clock stepped back).
        while len(until) > self._max or len(order) > 2 * self._max:
            self._forget_oldest()
        return False

    def _forget_oldest(self) -> None:
        expiry, signature = self._order.popleft()
        if self._until.get(signature) == expiry:
            del self._until[signature]

    def __len__(self) -> int:
        return len(self._until)

    @property
    def max_size(self) -> int:
        return self._max
