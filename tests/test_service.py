"""verifier.service.Service apart from HTTP: how a batch shares the process with other
verifications."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from verifier.core.certs import TrustStore
from verifier.core.policy import Policy
from verifier.core.verify import CallInfo, verify_many
from verifier.http.answers import dumps
from verifier.metrics import Metrics
from verifier.records import RecordSettings
from verifier.service import Service, VerifyRequest
from verifier.settings import Settings
from verifier.testing import ChainSource, Signer


async def test_batch_signatures_use_threads_only_while_the_batch_is_alone(
    monkeypatch: pytest.MonkeyPatch, trust: TrustStore, signer: Signer, now: int
) -> None:
    asked: list[int] = []
    real = verify_many

    async def watched(*args: Any, threads: Any, **kwargs: Any) -> Any:
        def decide() -> int:  # asked by verify_many once the credentials are in
            asked.append(threads() if callable(threads) else threads)
            return asked[-1]

        return await real(*args, threads=decide, **kwargs)

    monkeypatch.setattr("verifier.service.verify_many", watched)
    service = Service(
        Settings(batch_threads=2, records=RecordSettings(enabled=False)),
        trust,
        credentials=ChainSource(trust, [signer]),
        policy=Policy.default(),
        metrics=Metrics.create(),
        clock=lambda: float(now),
    )
    call = CallInfo(from_="12155551212", to="12155551213")

    def batch() -> list[VerifyRequest]:
        return [VerifyRequest(signer.identity(iat=now), call, None) for _ in range(40)]

    ids = [str(i) for i in range(40)]
    with service.in_flight_request():  # as the batch endpoint does, from body to answer
        alone = await service.verify_batch(batch(), "batch", ids)
    assert [2] == asked
    asked.clear()

    async def first() -> list[Any]:
        with service.in_flight_request():
            outcomes = await service.verify_batch(batch(), "batch", ids)
            await asyncio.sleep(0.05)  # still encoding its answer while the second verifies
            return outcomes

    async def second() -> list[Any]:
        await asyncio.sleep(0)  # the first is in flight by now
        with service.in_flight_request():
            return await service.verify_batch(batch(), "batch", ids)

    together = await asyncio.gather(first(), second())
    assert [1, 1] == asked  # each saw the other in flight: the loop checks the signatures
    assert 0 == service.in_flight
    outcomes = [*alone, *together[0], *together[1]]
    assert {"TN-Validation-Passed"} == {o.result.verstat for o in outcomes}


@pytest.mark.parametrize(
    "value",
    [
        {"verificationResponse": {"verstat": "TN-Validation-Passed", "attest": "A"}},
        {"claims": {"x": "é \U0001f600 \x00 \"'\\ </script>", "n": [1, -2, 0.5, True, None]}},
        {"big": 2**70, "neg": -(2**64)},  # beyond orjson's 64 bits
        {"variables": ["\udc80"]},  # a lone surrogate, echoed from a request
        {1: "a non-string key"},
        [],
    ],
)
def test_dumps_writes_json_that_reads_back(value: Any) -> None:
    written = dumps(value)
    assert isinstance(written, bytes)
    expected = json.loads(json.dumps(value))  # what the standard library makes of it
    assert expected == json.loads(written)


def test_dumps_is_compact_utf8() -> None:
    assert b'{"a":[1,2],"b":"\xc3\xa9"}' == dumps({"a": [1, 2], "b": "\u00e9"})
    assert b'{"b":"\\u00e9","n":1180591620717411303424}' == dumps({"b": "\u00e9", "n": 2**70})


def test_every_exception_the_package_defines_derives_from_verifier_error() -> None:
    import importlib
    import inspect
    import pkgutil

    import verifier
    from verifier.core.errors import VerifierError

    found = []
    for info in pkgutil.walk_packages(verifier.__path__, "verifier."):
        if info.name.endswith("__main__") or info.name.endswith(".child"):
            continue
        module = importlib.import_module(info.name)
        for _, cls in inspect.getmembers(module, inspect.isclass):
            if cls.__module__ == info.name and issubclass(cls, BaseException):
                found.append(cls)
    outside = [
        c for c in found if not issubclass(c, VerifierError) and not c.__name__.startswith("_")
    ]
    assert [] == outside
    assert len(found) > 40
