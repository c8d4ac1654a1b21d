"""verifier.core.times: the one time parser."""

from __future__ import annotations

import pytest

from verifier.core.times import parse_time


@pytest.mark.parametrize(
    ("text", "epoch"),
    [
        ("1700000000", 1700000000.0),
        ("1700000000.5", 1700000000.5),
        (" 1700000000 ", 1700000000.0),
        ("2023-11-14T22:13:20Z", 1700000000.0),
        ("2023-11-14t22:13:20z", 1700000000.0),
        ("2023-11-14T17:13:20-05:00", 1700000000.0),
        ("Tue, 14 Nov 2023 22:13:20 GMT", 1700000000.0),
        ("Tue, 14 Nov 2023 17:13:20 -0500", 1700000000.0),
        ("14 Nov 2023 22:13:20 +0000", 1700000000.0),
    ],
)
def test_the_three_forms(text: str, epoch: float) -> None:
    assert epoch == parse_time(text)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("yesterday", "not epoch seconds, an RFC 3339 date-time nor an RFC 5322 date"),
        ("", "not epoch seconds"),
        ("Tue, 32 Nov", "not epoch seconds"),
        ("Tue, 14 Nov 99999 22:13:20 GMT", "not epoch seconds"),
        ("2023-11-14T22:13:20", "an RFC 3339 date-time needs a UTC offset or Z"),
        ("2023-11-14", "an RFC 3339 date-time needs a UTC offset or Z"),
        ("nan", "not a date-time in years 1-9999"),
        ("inf", "not a date-time in years 1-9999"),
        ("-inf", "not a date-time in years 1-9999"),
        ("1e20", "not a date-time in years 1-9999"),
        ("-1e20", "not a date-time in years 1-9999"),
    ],
)
def test_what_is_refused_says_why(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_time(text)
