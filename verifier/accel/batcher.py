"""ES256 signature checks batched per event-loop iteration.

Under load, many requests reach step 12 in one turn of the event loop. Instead of each
checking its signature in the middle of its own request handling, they queue the check
and one callback verifies the whole queue in a tight loop (:func:`verifier.accel.es256.check_many`):
OpenSSL's code and the keys' tables stay hot in the CPU caches between signatures, and hot
keys' checks share one scalar inversion (benchmarks/RESULTS.md has the figures).

No helper thread: pyca/cryptography releases the GIL during a check, but the thread must
take the GIL back after each one, and a busy event loop gives it up only every switch
interval. Use ``verifier serve --workers N`` to use more cores.

One :class:`SignatureBatcher` per application; its :meth:`~SignatureBatcher.check` is the
core's ``signatures`` hook (:func:`verifier.core.verify.verify`).
"""

from __future__ import annotations

import asyncio

from ..core.es256 import ES256Key
from .es256 import check_many

__all__ = ["SignatureBatcher"]

_Job = tuple[ES256Key, bytes, bytes, "asyncio.Future[bool]"]


class SignatureBatcher:
    """``await batcher.check(key, signing_input, signature)`` -> True when it verifies."""

    def __init__(self) -> None:
        self._batch: list[_Job] = []

    def check(self, key: ES256Key, signing_input: bytes, signature: bytes) -> asyncio.Future[bool]:
        """A future that resolves to whether the raw 64-byte R||S ``signature`` verifies."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[bool] = loop.create_future()
        self._batch.append((key, signing_input, signature, future))
        if len(self._batch) == 1:
            loop.call_soon(self._flush)
        return future

    def _flush(self) -> None:
        batch, self._batch = self._batch, []
        verdicts = check_many([(key, data, signature) for key, data, signature, _ in batch])
        for (_, _, _, future), ok in zip(batch, verdicts, strict=True):
            if not future.done():  # its request may have been cancelled meanwhile
                future.set_result(ok)
