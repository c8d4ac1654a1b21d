"""Replay detection: a PASSporT seen again within its freshness window.

Keyed by the PASSporT's signature (what RFC 9410 ``ppi`` names it by), made canonical by
:func:`replay_key`: an ECDSA signature (r, s) has a twin (r, n - s) that verifies as well, so
a replay could otherwise pass as new with its ``s`` swapped. A repeat is not
necessarily an attack: a forked INVITE legitimately carries the same PASSporT to several
destinations, so a replay is an input to the disposition policy (default: labelled, never
blocked). Memory is bounded: at most ``max_size`` signatures, each kept for the freshness
window (``max_iat_age + max_future_skew``), after which an old PASSporT fails on ``iat``
anyway.

One :class:`ReplayCache` per service. The shared tier for many instances (Redis, a later
issue) sits behind the same :meth:`seen`.
"""

from __future__ import annotations

import base64
import binascii
import time
from collections import deque
from collections.abc import Callable

__all__ = ["ReplayCache", "replay_key"]

_N = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551  # P-256 order


def replay_key(signature: str) -> str:
    """The replay sets' key for a base64url ES256 signature: ``r`` and the lower of ``s`` and
    ``n - s``, base64url again (so another spelling of the same bytes is the same key too).
    Text that is not a 64-byte signature is its own key."""
    try:
        raw = base64.urlsafe_b64decode(signature + "=" * (-len(signature) % 4))
    except (ValueError, binascii.Error):
        return signature
    if len(raw) != 64:
        return signature
    s = int.from_bytes(raw[32:], "big")
    if _N - s < s < _N:
        raw = raw[:32] + (_N - s).to_bytes(32, "big")
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


class ReplayCache:
    """``seen(signature)``: True when this signature (by :func:`replay_key`) was seen within
    the window.

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
        signature = replay_key(signature)
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
