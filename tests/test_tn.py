"""verifier.core.tn: canonical telephone numbers, and TNs taken out of SIP/tel URIs."""

from __future__ import annotations

import pytest

from verifier.core.tn import canonical_tn, is_canonical, tn_from_uri


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("12155551212", "12155551212"),
        ("+12155551212", "12155551212"),
        ("+1 215-555-1212", "12155551212"),
        ("+1 (215) 555.1212", "12155551212"),
        (" 12155551212 ", "12155551212"),
        ("*67", "*67"),
        ("1001", "1001"),
        ("123456789012345", "123456789012345"),  # 15 digits: the E.164 maximum
        ("", None),
        ("+", None),
        ("Bob", None),
        ("1215555121a", None),
        ("1234567890123456", None),
        ("++12155551212", None),
        ("1215/5551212", None),
        ("١٢٣", None),  # Arabic-Indic digits are not [0-9]
    ],
)
def test_canonical_tn(value: str, expected: str | None) -> None:
    assert expected == canonical_tn(value)


def test_is_canonical() -> None:
    assert is_canonical("12155551212")
    assert not is_canonical("+12155551212")
    assert not is_canonical("")


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("12155551212", "12155551212"),
        ("+1-215-555-1212", "12155551212"),
        ("tel:+12155551212", "12155551212"),
        ("tel:+1-215-555-1212;ext=7", "12155551212"),
        ("TEL:+12155551212", "12155551212"),
        ("<tel:+12155551212>", "12155551212"),
        ("sip:+12155551212@example.com;user=phone", "12155551212"),
        ("sip:+12155551212@example.com", "12155551212"),  # user=phone is often omitted
        ("sip:12155551212;npdi@example.com", "12155551212"),
        ("sips:+12155551212@example.com:5061;user=phone", "12155551212"),
        ("SIP:2155551212@10.0.0.1", "2155551212"),
        ("sip:%2B12155551212@example.com", "12155551212"),
        ("<sip:+12155551212@example.com;user=phone>;tag=abc", "12155551212"),
        ('"Alice" <sip:+12155551212@example.com;user=phone>;tag=abc', "12155551212"),
        ('"Smith, \\"Al\\"" <sip:+12155551212@example.com>', "12155551212"),
        ("Alice <tel:+12155551212>;tag=1", "12155551212"),
        ("  <sip:1001@pbx.example>  ", "1001"),
        ("sip:anonymous@anonymous.invalid", None),
        ('"Anonymous" <sip:anonymous@anonymous.invalid>;tag=1', None),
        ("sip:alice@example.com", None),
        ("sip:example.com", None),  # no user part
        ("mailto:alice@example.com", None),
        ("alice@example.com", None),
        ("tel:", None),
        ("", None),
        ("<>", None),
    ],
)
def test_tn_from_uri(value: str, expected: str | None) -> None:
    assert expected == tn_from_uri(value)
