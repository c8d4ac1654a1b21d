"""The local replay set (verifier.core.replay): a signature seen again within its window is a
replay; the set forgets after the window, and never holds more than its bound."""

from __future__ import annotations

import base64

import pytest

from verifier.core.replay import ReplayCache, replay_key

N = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551  # P-256 order


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class Clock:
    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


def test_a_signature_seen_again_within_the_window_is_a_replay() -> None:
    clock = Clock()
    replay = ReplayCache(10, 60, clock=clock)
    assert [False, False, True] == [replay.seen(s) for s in ("a", "b", "a")]
    clock.now += 59.9
    assert replay.seen("b")
    assert 2 == replay.replays


def test_after_the_window_the_signature_is_new_again_and_forgotten() -> None:
    clock = Clock()
    replay = ReplayCache(10, 60, clock=clock)
    replay.seen("a")
    replay.seen("b")
    clock.now += 60
    assert not replay.seen("a")  # its window ended: new again, for another window
    assert 1 == len(replay)  # "b" expired too and is gone
    clock.now += 30
    assert replay.seen("a")


def test_the_bound_drops_the_oldest_first() -> None:
    clock = Clock()
    replay = ReplayCache(3, 60, clock=clock)
    for s in "abcd":
        replay.seen(s)
        clock.now += 1
    assert 3 == len(replay)
    assert [True, True, True, False] == [replay.seen(s) for s in "bcda"]  # "a" went first
    assert 3 == replay.max_size


def test_a_clock_stepping_back_keeps_the_set_bounded() -> None:
    clock = Clock()
    replay = ReplayCache(5, 60, clock=clock)
    for step in range(1000):
        clock.now += 61 if step % 2 else -3600
        replay.seen(f"s{step % 7}")
        assert len(replay) <= 5
        assert len(replay._order) <= 10


def test_bounds_are_checked() -> None:
    with pytest.raises(ValueError):
        ReplayCache(0, 60)
    with pytest.raises(ValueError):
        ReplayCache(1, 0)


def test_the_twin_signature_has_the_same_key() -> None:
    r, s = (7).to_bytes(32, "big"), N - 5
    low, high = _b64(r + (5).to_bytes(32, "big")), _b64(r + s.to_bytes(32, "big"))
    assert low == replay_key(low) == replay_key(high)
    replay = ReplayCache(10, 60, clock=Clock())
    assert [False, True, True] == [replay.seen(x) for x in (high, low, high)]


def test_another_spelling_of_the_same_bytes_has_the_same_key() -> None:
    raw = bytes(range(64))
    text = _b64(raw)  # 86 characters: the last one carries 2 bits and 4 zero bits
    bumped = text[:-1] + chr(ord(text[-1]) + 1)
    assert raw == base64.urlsafe_b64decode(bumped + "==")
    assert replay_key(text) == replay_key(bumped)


@pytest.mark.parametrize("text", ["", "abc", "not base64 !", _b64(bytes(65)), _b64(bytes(63))])
def test_text_that_is_not_a_signature_is_its_own_key(text: str) -> None:
    assert text == replay_key(text)
