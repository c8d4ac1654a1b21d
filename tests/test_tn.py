"""verifier.core.tn: canonical telephone numbers, TNs taken out of SIP/tel URIs, the call's
parties, and matching numbers."""

from __future__ import annotations

import pytest

from verifier.core import errors
from verifier.core.passport import ShakenClaims
from verifier.core.tn import (
    CallInfo,
    Party,
    canonical_tn,
    is_canonical,
    match_numbers,
    same_tn,
    tn_from_uri,
)


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


@pytest.mark.parametrize(
    ("given", "claimed", "nanp", "expected"),
    [
        ("12155551212", "12155551212", False, True),
        ("2155551212", "12155551212", True, True),
        ("12155551212", "2155551212", True, True),
        ("2155551212", "12155551212", False, False),
        ("12155551212", "2155551212", False, False),
        ("2155551212", "22155551212", True, False),  # only a leading 1 is national
        ("155551212", "1155551212", True, False),  # 9 digits: not a NANP number
        ("12155551212", "12155551213", True, False),
    ],
)
def test_same_tn(given: str, claimed: str, nanp: bool, expected: bool) -> None:
    assert expected == same_tn(given, claimed, nanp)


def test_call_info_takes_each_partys_tn_once() -> None:
    call = CallInfo(
        from_="sip:alice@example.com",
        pai="<tel:+1-215-555-1212>",
        to=("+1 215 555 1213", "sip:bob@example.com"),
        ruri="sip:+12155551214@example.com;user=phone",
    )
    assert (
        Party("pai", "<tel:+1-215-555-1212>", "12155551212"),
        Party("from", "sip:alice@example.com", None),
    ) == call.calling
    assert (
        Party("to", "+1 215 555 1213", "12155551213"),
        Party("to", "sip:bob@example.com", None),
        Party("ruri", "sip:+12155551214@example.com;user=phone", "12155551214"),
    ) == call.called
    assert ("12155551212", "12155551213") == (call.calling_tn, call.called_tn)
    assert ("12155551212", None, "2155551213", None) == (
        CallInfo(from_="12155551212").calling_tn,
        CallInfo(from_="12155551212").called_tn,
        CallInfo(to="sip:x@y", ruri="2155551213").called_tn,
        CallInfo(from_="", pai="sip:anonymous@anonymous.invalid").calling_tn,
    )
    assert CallInfo(from_="1", to="2") == CallInfo(from_="1", to="2")


def _claims(orig: str, *dest: str, uris: tuple[str, ...] = ()) -> ShakenClaims:
    return ShakenClaims("A", orig, tuple(dest), uris, 0, "origid", ())


def test_match_numbers_names_the_matching_parties() -> None:
    claims = _claims("12155551212", "12155551213", uris=("sip:bob@example.com",))
    call = CallInfo(from_="2155551212", to=("sip:Bob@Example.com;x=1",), ruri="12155551213")
    assert {"orig": "from", "dest": "to"} == match_numbers(claims, call.calling, call.called, True)
    assert {"orig": None, "dest": None} == match_numbers(claims, (), (), True)
    with pytest.raises(errors.OrigMismatch, match="from '2155551212'"):
        match_numbers(claims, call.calling, call.called, False)
    with pytest.raises(errors.DestMismatch, match="to '12155551299' nor ruri 'sip:x@y'"):
        other = CallInfo(to="12155551299", ruri="sip:x@y")
        match_numbers(claims, (), other.called, True)


# National match (ATIS-1000074): only a 10-digit number and 1 + that number are one number.
# Each given number below ends with (or is a suffix of) the claimed one, or the other way
# round, and is not the same number: a suffix rule would match them.
NOT_THE_SAME_NUMBER = [
    ("442155551212", "2155551212"),  # another country code, claimed national
    ("2155551212", "442155551212"),  # claimed with another country code
    ("3312155551212", "12155551212"),  # another country code before a NANP number
    ("12155551212", "3312155551212"),
    ("912155551212", "2155551212"),  # longer: 12 digits
    ("2155551212", "912155551212"),
    ("155551212", "2155551212"),  # shorter: 9 digits
    ("2155551212", "155551212"),
    ("5551212", "12155551212"),  # a 7-digit local number
    ("12155551212", "5551212"),
    ("21552155551212", "2155551212"),
]


@pytest.mark.parametrize("nanp", [True, False], ids=["nanp", "exact"])
@pytest.mark.parametrize(("given", "claimed"), NOT_THE_SAME_NUMBER)
def test_other_numbers_never_match(given: str, claimed: str, nanp: bool) -> None:
    assert not same_tn(given, claimed, nanp)
    call = CallInfo(from_=f"tel:+{given}", to=f"sip:+{given}@example.com;user=phone")
    with pytest.raises(errors.OrigMismatch):
        match_numbers(_claims(claimed, "19995550000"), call.calling, (), nanp)
    with pytest.raises(errors.DestMismatch):
        match_numbers(_claims("19995550000", claimed), (), call.called, nanp)
    with pytest.raises(errors.DestMismatch):  # a dest URI's number is matched the same way
        uri = f"tel:+{claimed}"
        match_numbers(_claims("19995550000", uris=(uri,)), (), call.called, nanp)


@pytest.mark.parametrize(
    ("given", "claimed"), [("2155551212", "12155551212"), ("12155551212", "2155551212")]
)
def test_national_match_orig_and_dest_only_with_nanp(given: str, claimed: str) -> None:
    call = CallInfo(from_=f"tel:{given}", to=f"tel:{given}")
    claims = _claims(claimed, claimed)
    assert {"orig": "from", "dest": "to"} == match_numbers(claims, call.calling, call.called, True)
    with pytest.raises(errors.OrigMismatch):
        match_numbers(claims, call.calling, call.called, False)
    with pytest.raises(errors.DestMismatch):
        match_numbers(claims, (), call.called, False)
