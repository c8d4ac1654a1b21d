"""ES256 checks with a hot key's precomputed table (verifier.accel.es256), held to
pyca/cryptography's verdict on the same inputs."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import os
import threading
import time
from collections.abc import Iterator, Sequence
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from hypothesis import given, settings
from hypothesis import strategies as st

from verifier.accel import es256
from verifier.core import errors
from verifier.core.certs import TrustStore, credential_from_public_key
from verifier.core.es256 import ES256Key, PlainKey, check_each, plain_check
from verifier.core.passport import verify_es256
from verifier.core.verify import CallInfo, Verification, verify_many
from verifier.http.app import create_app
from verifier.http.keys import TRUST
from verifier.metrics import Metrics
from verifier.records import RecordSettings
from verifier.settings import Settings
from verifier.testing import ChainSource, Signer, TestPKI

N = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551
ES256 = ec.ECDSA(hashes.SHA256())
KEY = ec.derive_private_key(0x5EED_0001, ec.SECP256R1())
OTHER = ec.derive_private_key(0x5EED_0002, ec.SECP256R1())


@pytest.fixture(autouse=True)
def fresh_tables() -> Iterator[None]:
    es256.configure()
    es256.configure(max_tables=0)  # drops every table
    es256.configure()
    yield
    es256.configure(max_tables=0)
    es256.configure()


def raw(signature_der: bytes) -> bytes:
    r, s = decode_dss_signature(signature_der)
    return r.to_bytes(32, "big") + s.to_bytes(32, "big")


def sign(key: ec.EllipticCurvePrivateKey, message: bytes) -> bytes:
    return raw(key.sign(message, ES256))


def point(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.public_key().public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    )


def plain(key: ec.EllipticCurvePrivateKey, message: bytes, signature: bytes) -> bool:
    return plain_check(key.public_key(), message, signature)


def wait_for_tables(count: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while es256.tables_in_use() < count:
        if time.monotonic() > deadline:
            raise AssertionError(f"{es256.tables_in_use()} tables, {count} expected")
        time.sleep(0.005)


def make_hot(key: ec.EllipticCurvePrivateKey) -> es256.ES256Key:
    checker = es256.ES256Key(key.public_key())
    for i in range(es256.HOT_AFTER):
        message = b"warm %d" % i
        assert checker.check(message, sign(key, message))
    return checker


def test_tables_are_available_here() -> None:
    # Every other test in this file would pass through the plain check alone otherwise.
    assert es256.unavailable() == ""


TABLE = es256._Table(point(KEY))


@settings(derandomize=True, max_examples=150, deadline=None)
@given(
    message=st.binary(min_size=0, max_size=400),
    flip=st.integers(min_value=0, max_value=64 * 8 + 7),
)
def test_table_agrees_with_cryptography(message: bytes, flip: int) -> None:
    signature = sign(KEY, message)
    assert TABLE.check(message, signature) is True
    if flip < 64 * 8:  # damage one bit of the signature
        damaged = bytearray(signature)
        damaged[flip // 8] ^= 1 << (flip % 8)
        bad_message = message
    else:  # or of the message
        damaged = bytearray(signature)
        bad_message = message + bytes([flip % 8])
    assert TABLE.check(bad_message, bytes(damaged)) is False
    assert plain(KEY, bad_message, bytes(damaged)) is False


@settings(derandomize=True, max_examples=150, deadline=None)
@given(signature=st.binary(min_size=64, max_size=64), message=st.binary(max_size=64))
def test_table_refuses_arbitrary_signatures(signature: bytes, message: bytes) -> None:
    assert TABLE.check(message, signature) is plain(KEY, message, signature) is False


def test_other_keys_signature_is_refused() -> None:
    signature = sign(OTHER, b"hello")
    assert TABLE.check(b"hello", signature) is False
    assert plain(KEY, b"hello", signature) is False


@pytest.mark.parametrize(
    ("r", "s"),
    [(0, 1), (1, 0), (0, 0), (N, 1), (1, N), (N + 1, 1), (2**256 - 1, 2**256 - 1), (N - 1, N - 1)],
)
def test_scalars_out_of_range_are_refused(r: int, s: int) -> None:
    signature = r.to_bytes(32, "big") + s.to_bytes(32, "big")
    assert TABLE.check(b"m", signature) is False
    assert plain(KEY, b"m", signature) is False


def test_r_plus_or_minus_n_is_not_the_same_signature() -> None:
    signature = sign(KEY, b"m")
    r = int.from_bytes(signature[:32], "big")
    if r + N < 2**256:
        shifted = (r + N).to_bytes(32, "big") + signature[32:]
        assert TABLE.check(b"m", shifted) is plain(KEY, b"m", shifted) is False
    negated_s = (N - int.from_bytes(signature[32:], "big")).to_bytes(32, "big")
    # (r, n - s) is ECDSA's other valid signature for the same message: both accept it.
    assert TABLE.check(b"m", signature[:32] + negated_s) is True
    assert plain(KEY, b"m", signature[:32] + negated_s) is True


def test_sum_at_infinity_is_refused() -> None:
    # With the private key d known, pick r so that u1·G + u2·Q is the point at infinity:
    # e/s + r·d/s = 0 (mod n), that is r = -e/d. Any s then gives infinity.
    d = KEY.private_numbers().private_value
    e = int.from_bytes(hashlib.sha256(b"m").digest(), "big")
    r = (-e * pow(d, -1, N)) % N
    for s in (1, 2, N - 1, 0x1234567):
        signature = r.to_bytes(32, "big") + s.to_bytes(32, "big")
        assert TABLE.check(b"m", signature) is False
        assert plain(KEY, b"m", signature) is False


def test_a_key_gets_its_table_once_hot() -> None:
    checker = es256.ES256Key(KEY.public_key())
    for i in range(es256.HOT_AFTER - 1):
        assert checker.check(b"%d" % i, sign(KEY, b"%d" % i))
    time.sleep(0.05)
    assert es256.tables_in_use() == 0
    assert checker.check(b"last", sign(KEY, b"last"))
    wait_for_tables(1)
    assert checker.check(b"after", sign(KEY, b"after")) is True
    assert checker.check(b"after", sign(KEY, b"other")) is False


def test_failed_checks_do_not_make_a_key_hot() -> None:
    checker = es256.ES256Key(KEY.public_key())
    for i in range(3 * es256.HOT_AFTER):
        assert checker.check(b"%d" % i, bytes(64)) is False
    time.sleep(0.05)
    assert es256.tables_in_use() == 0


def test_credentials_of_one_key_share_its_table() -> None:
    make_hot(KEY)
    wait_for_tables(1)
    again = make_hot(KEY)  # a credential made again, e.g. a refreshed cache entry
    time.sleep(0.05)
    assert es256.tables_in_use() == 1
    assert again.check(b"x", sign(KEY, b"x"))


def wait_for_builder() -> None:
    deadline = time.monotonic() + 10
    while es256._tables.building:
        assert time.monotonic() < deadline
        time.sleep(0.005)


def test_a_full_set_of_tables_makes_room_only_for_a_hotter_key() -> None:
    es256.configure(max_tables=2, hot_after=4)
    keys = [ec.derive_private_key(0x5EED_0100 + i, ec.SECP256R1()) for i in range(3)]
    checkers = [es256.ES256Key(k.public_key()) for k in keys]
    signed = [(b"m", sign(key, b"m")) for key in keys]

    def use(i: int) -> None:
        assert checkers[i].check(*signed[i]) is True

    for _ in range(4):  # keys 0 and 1 turn hot
        use(0)
        use(1)
    wait_for_tables(2)
    for _ in range(200):  # key 1 falls idle; key 2 is used as often as key 0
        use(0)
        use(2)
        wait_for_builder()
    assert {point(keys[0]), point(keys[2])} == set(es256._tables.by_point)
    for checker, key in zip(checkers, keys, strict=True):  # all still verify
        assert checker.check(b"z", sign(key, b"z")) is True
        assert checker.check(b"z", sign(key, b"y")) is False


def test_more_hot_keys_than_tables_do_not_take_turns() -> None:
    """Issue 15 item 5: five keys used alike over four tables: the four built first stay."""
    es256.configure(max_tables=4, hot_after=8)
    keys = [ec.derive_private_key(0x5EED_0300 + i, ec.SECP256R1()) for i in range(5)]
    checkers = [es256.ES256Key(k.public_key()) for k in keys]
    signed = [(b"m", sign(key, b"m")) for key in keys]
    held: set[object] = set()
    for _ in range(300):
        for checker, (message, signature) in zip(checkers, signed, strict=True):
            assert checker.check(message, signature) is True
        held.update(es256._tables.by_point.values())
        wait_for_builder()
    assert 4 == es256.tables_in_use()
    assert 4 == len(held)  # no table was dropped and built again
    assert 1 == [c.has_table() for c in checkers].count(False)


def test_no_tables_when_turned_off() -> None:
    es256.configure(max_tables=0)
    checker = make_hot(KEY)
    checker.check(b"x", sign(KEY, b"x"))
    time.sleep(0.05)
    assert es256.tables_in_use() == 0
    assert checker.check(b"x", sign(KEY, b"y")) is False


def test_configure_refuses_nonsense() -> None:
    with pytest.raises(ValueError):
        es256.configure(max_tables=-1)
    with pytest.raises(ValueError):
        es256.configure(hot_after=0)


def test_table_checks_from_many_threads() -> None:
    checker = make_hot(KEY)
    wait_for_tables(1)
    messages = [os.urandom(100) for _ in range(100)]
    signed = [(m, sign(KEY, m)) for m in messages]
    wrong: list[tuple[bytes, bool]] = []

    def work(offset: int) -> None:
        for i, (m, signature) in enumerate(signed):
            good = (i + offset) % 2 == 0
            given_signature = signature if good else signed[(i + 1) % len(signed)][1]
            if checker.check(m, given_signature) is not good:
                wrong.append((m, good))

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert wrong == []


def test_a_table_that_fails_its_proof_turns_tables_off() -> None:
    try:
        # A "known-good" signature that does not verify: the new table must refuse it,
        # and a table that disagrees with the plain check is never used.
        es256._build(point(KEY), b"m", sign(KEY, b"other"))
        assert "disagreed" in es256.unavailable()
        assert es256.tables_in_use() == 0
        checker = make_hot(KEY)
        time.sleep(0.05)
        assert es256.tables_in_use() == 0
        assert checker.check(b"x", sign(KEY, b"x")) is True
    finally:
        es256._broken = ""


def test_verify_es256_takes_a_key_or_its_checker() -> None:
    signature = sign(KEY, b"a.b")
    verify_es256(KEY.public_key(), b"a.b", signature)
    verify_es256(es256.ES256Key(KEY.public_key()), b"a.b", signature)
    with pytest.raises(errors.InvalidSignature):
        verify_es256(es256.ES256Key(KEY.public_key()), b"a.c", signature)


def test_metrics_count_the_tables() -> None:
    metrics = Metrics.create()
    metrics.watch_fetcher(dict)
    assert b"verifier_es256_key_tables 0.0" in metrics.render()
    make_hot(KEY)
    wait_for_tables(1)
    assert b"verifier_es256_key_tables 1.0" in metrics.render()


def test_the_pipeline_uses_the_credentials_table() -> None:
    pki = TestPKI.create()
    now = time.time()
    trust = TrustStore([pki.root.cert], key_factory=es256.ES256Key)
    credential = trust.validate(list(pki.signer.chain), now)

    def verify(value: str) -> bool:
        verification = Verification(value, now=now)
        for entry in verification.pending():
            verification.settle(entry, credential)
        return verification.result().passed

    for _ in range(es256.HOT_AFTER):
        assert verify(pki.signer.identity(iat=int(now)))
    wait_for_tables(1)
    assert verify(pki.signer.identity(iat=int(now)))
    one, other = (pki.signer.identity(iat=int(now)) for _ in range(2))
    swapped = one.split(";")[0].rsplit(".", 1)[0] + "." + other.split(";")[0].rsplit(".", 1)[1]
    assert not verify(swapped + one[one.index(";") :])


def test_check_many_agrees_with_one_by_one() -> None:
    hot = make_hot(KEY)
    wait_for_tables(1)
    cold = es256.ES256Key(OTHER.public_key())
    jobs: list[tuple[es256.ES256Key, bytes, bytes]] = []
    expected: list[bool] = []
    for i in range(40):
        key, checker = (KEY, hot) if i % 3 else (OTHER, cold)
        message = b"message %d" % i
        signature = sign(key, message)
        kind = i % 5
        if kind == 1:  # another message's signature
            signature = sign(key, message + b"!")
        elif kind == 2:  # out of range
            signature = bytes(32) + signature[32:]
        elif kind == 3:  # one bit off
            signature = signature[:40] + bytes([signature[40] ^ 4]) + signature[41:]
        jobs.append((checker, message, signature))
        expected.append(kind in (0, 4))
    assert es256.check_many(jobs) == expected
    assert [checker.check(m, s) for checker, m, s in jobs] == expected
    assert es256.check_many([]) == []


def test_check_many_with_only_refused_signatures() -> None:
    hot = make_hot(KEY)
    wait_for_tables(1)
    assert es256.check_many([(hot, b"m", bytes(64)), (hot, b"m", b"\xff" * 64)]) == [False] * 2


def test_without_libcrypto_every_check_is_plain(monkeypatch: pytest.MonkeyPatch) -> None:
    # A machine without a usable libcrypto cannot be had here: fake what _load reports.
    monkeypatch.setattr(es256, "_why_not", "no libcrypto found")
    assert es256.unavailable() == "no libcrypto found"
    checker = make_hot(KEY)
    for i in range(2 * es256.HOT_AFTER):
        assert checker.check(b"%d" % i, sign(KEY, b"%d" % i)) is True
    assert checker.check(b"x", sign(KEY, b"y")) is False
    time.sleep(0.05)
    assert es256.tables_in_use() == 0
    assert es256.check_many([(checker, b"z", sign(KEY, b"z"))]) == [True]


def test_inversion_without_gmp_gives_the_same_verdicts(monkeypatch: pytest.MonkeyPatch) -> None:
    # gmpy2 has wheels for the usual platforms; elsewhere OpenSSL's BN_mod_inverse serves.
    values = [
        1,
        2,
        N - 1,
        0x1234567,
        *(int.from_bytes(os.urandom(32), "big") % N or 1 for _ in range(50)),
    ]
    with_gmp = [es256._inverse(v, es256._scratch()) for v in values]
    assert es256._gmp_invert is not None  # type: ignore[attr-defined]
    monkeypatch.setattr(es256, "_gmp_invert", None)
    assert with_gmp == [es256._inverse(v, es256._scratch()) for v in values]
    assert all(v * w % N == 1 for v, w in zip(values, with_gmp, strict=True))
    signed = [(TABLE, b"m%d" % i, sign(KEY, b"m%d" % i)) for i in range(5)]
    damaged = [(t, m + b"!", s) for t, m, s in signed]
    assert [True] * 5 + [False] * 5 == es256._table_checks(signed + damaged)
    assert all(TABLE.check(m, s) for _, m, s in signed)


async def test_batch_threads_only_for_keys_without_a_table(monkeypatch: pytest.MonkeyPatch) -> None:
    pki = TestPKI.create()
    now = time.time()
    trust = TrustStore([pki.root.cert], key_factory=es256.ES256Key)
    source = ChainSource(trust, [pki.signer])
    call = CallInfo(from_="12155551212", to="12155551213")
    threaded: list[int] = []
    real = asyncio.to_thread

    async def to_thread(func: Any, /, *args: Any) -> Any:
        threaded.append(len(args[0]))
        return await real(func, *args)

    monkeypatch.setattr(asyncio, "to_thread", to_thread)

    async def batch() -> list[str]:
        requests = [(pki.signer.identity(iat=int(now)), call) for _ in range(40)]
        results = await verify_many(
            requests, now=now, credentials=source, threads=2, batch_check=es256.check_many
        )
        return [r.verstat for r in results]

    es256.configure(max_tables=0)
    assert ["TN-Validation-Passed"] * 40 == await batch()
    assert [20, 20] == threaded  # plain checks: on two threads
    threaded.clear()
    es256.configure()
    await batch()  # the key is hot now
    wait_for_tables(1)
    threaded.clear()
    # A credential made again (ChainSource validates on every call) finds its key's table.
    assert ["TN-Validation-Passed"] * 40 == await batch()
    assert [] == threaded  # table checks keep the GIL: on the loop


def test_keys_turning_hot_together_are_built_one_at_a_time() -> None:
    es256.configure(hot_after=1)
    keys = [ec.derive_private_key(0x5EED_0200 + i, ec.SECP256R1()) for i in range(6)]
    checkers = [es256.ES256Key(k.public_key()) for k in keys]
    for checker, key in zip(checkers, keys, strict=True):
        assert checker.check(b"m", sign(key, b"m"))
    builders = [t for t in threading.enumerate() if t.name == "es256-tables"]
    assert len(builders) == 1
    wait_for_tables(6)
    assert [c.has_table() for c in checkers] == [True] * 6
    assert not es256._tables.building


# -- the core's protocol, and the hand-off -----------------------------------------------------


def test_the_core_checks_with_the_plain_key_unless_handed_another() -> None:
    pki = TestPKI.create()
    now = time.time()
    plain = TrustStore([pki.root.cert]).validate(list(pki.signer.chain), now)
    assert isinstance(plain.es256, PlainKey)
    assert not plain.es256.has_table()
    signature = sign(pki.signer.key, b"a.b")
    assert (True, False) == (
        plain.es256.check(b"a.b", signature),
        plain.es256.check(b"a.c", signature),
    )
    accelerated = TrustStore([pki.root.cert]).with_key_factory(es256.ES256Key)
    credential = accelerated.validate(list(pki.signer.chain), now)
    assert isinstance(credential.es256, es256.ES256Key)
    # A credential copied with a change (the CRL check adds a warning) keeps its check.
    warned = dataclasses.replace(credential, warnings=("crl: failed open",))
    assert credential.es256 is warned.es256
    bare = credential_from_public_key(KEY.public_key(), key_factory=es256.ES256Key)
    assert isinstance(bare.es256, es256.ES256Key)
    assert isinstance(credential_from_public_key(KEY.public_key()).es256, PlainKey)


def test_check_many_takes_other_keys_through_their_own_check() -> None:
    hot = make_hot(KEY)
    wait_for_tables(1)
    plain = PlainKey(OTHER.public_key())
    jobs: list[tuple[ES256Key, bytes, bytes]] = [
        (hot, b"m1", sign(KEY, b"m1")),
        (plain, b"m2", sign(OTHER, b"m2")),
        (plain, b"m3", sign(KEY, b"m3")),
        (hot, b"m4", sign(OTHER, b"m4")),
    ]
    assert [True, True, False, False] == es256.check_many(jobs)
    assert [True, True, False, False] == check_each(jobs)


async def test_verify_many_checks_the_signatures_with_the_batch_check_handed_in() -> None:
    pki = TestPKI.create()
    now = time.time()
    source = ChainSource(TrustStore([pki.root.cert]), [pki.signer])
    requests = [(pki.signer.identity(iat=int(now)), None) for _ in range(3)]
    batches: list[int] = []

    def counted(jobs: Sequence[tuple[ES256Key, bytes, bytes]]) -> list[bool]:
        batches.append(len(jobs))
        return check_each(jobs)

    def refuses(jobs: Sequence[tuple[ES256Key, bytes, bytes]]) -> list[bool]:
        return [False] * len(jobs)

    passed = await verify_many(requests, now=now, credentials=source, batch_check=counted)
    assert [True] * 3 == [r.passed for r in passed]
    assert [3] == batches
    refused = await verify_many(requests, now=now, credentials=source, batch_check=refuses)
    assert ["invalid_signature"] * 3 == [r.reason.slug if r.reason else None for r in refused]


def test_the_app_hands_the_key_tables_to_the_core(trust: TrustStore, signer: Signer) -> None:
    app = create_app(Settings(records=RecordSettings(enabled=False)), trust=trust)
    credential = app[TRUST].validate(list(signer.chain), time.time())
    assert isinstance(credential.es256, es256.ES256Key)
    assert isinstance(trust.validate(list(signer.chain), time.time()).es256, PlainKey)


def test_a_65_byte_signature_is_refused_on_every_path() -> None:
    """Issue 15 item 5: s with a leading zero byte is not an ES256 signature, and checks made
    with it neither pass nor make a key hot (whose table would then fail its proof)."""
    try:
        good = sign(KEY, b"m")
        long = good[:32] + b"\x00" + good[32:]
        checker = es256.ES256Key(KEY.public_key())
        assert False is plain_check(KEY.public_key(), b"m", long)
        assert False is PlainKey(KEY.public_key()).check(b"m", long)
        for _ in range(2 * es256.HOT_AFTER):
            assert False is checker.check(b"m", long)
        assert [False, True] == es256.check_many([(checker, b"m", long), (checker, b"m", good)])
        time.sleep(0.05)
        assert (0, "") == (es256.tables_in_use(), es256.unavailable())
        hot = make_hot(KEY)
        wait_for_tables(1)
        assert [False, True] == [hot.check(b"m", long), hot.check(b"m", good)]
        assert [False, False] == [hot.check(b"m", good[:63]), hot.check(b"m", good + b"\x00")]
    finally:
        es256._broken = ""
