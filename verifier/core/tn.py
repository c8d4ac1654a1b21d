"""Telephone numbers: RFC 8224 section 8.3 canonical form, TNs taken out of SIP/tel URIs,
the call's parties, and matching them against a PASSporT's orig and dest (step 9). Pure.

Canonical form: the digits (and the ``*`` / ``#`` keys) only. A leading ``+`` and the
RFC 3966 visual separators (``-`` ``.`` ``(`` ``)``) and spaces are dropped; any other
character means "not a telephone number". E.164 allows at most 15 digits.

A number is normalised once, at the edge: :class:`CallInfo` takes each party's canonical
TN when it is built, and :func:`same_tn` is the one comparison of two numbers.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import NamedTuple, Protocol

from . import errors

__all__ = [
    "CANONICAL_TN",
    "CallInfo",
    "Party",
    "canonical_tn",
    "dest_matches",
    "is_canonical",
    "match_numbers",
    "same_tn",
    "tn_from_uri",
]

_MAX_DIGITS = 15
CANONICAL_TN = re.compile(rf"[0-9*#]{{1,{_MAX_DIGITS}}}")
_DROPPED = str.maketrans("", "", "-.() ")
_NAME_ADDR = re.compile(r'^\s*(?:"(?:[^"\\]|\\.)*"|[^<"]*)?\s*<([^>]*)>')


def is_canonical(value: str) -> bool:
    return CANONICAL_TN.fullmatch(value) is not None


def canonical_tn(value: str) -> str | None:
    """The canonical form of ``value``, or None when it is not a telephone number."""
    if CANONICAL_TN.fullmatch(value):
        return value
    text = value.strip()
    if text.startswith("+"):
        text = text[1:]
    text = text.translate(_DROPPED)
    if CANONICAL_TN.fullmatch(text):
        return text
    return None


def tn_from_uri(value: str) -> str | None:
    """The telephone number in a From / P-Asserted-Identity / To / Request-URI value.

    Accepts a bare number, ``tel:`` URIs, and ``sip:``/``sips:`` URIs whose user part is a
    telephone number (with or without ``user=phone``: real traffic often omits it), also
    inside a name-addr (``"Alice" <sip:+1215...@host;user=phone>;tag=x``). Returns None for
    anything else (``sip:anonymous@anonymous.invalid``, an email-like user part...).
    """
    if CANONICAL_TN.fullmatch(value):
        return value
    text = value.strip()
    match = _NAME_ADDR.match(text) if "<" in text else None  # a bare URI: no scan for "<"
    if match:
        text = match.group(1).strip()
    lower = text[:5].lower()
    if lower.startswith("tel:"):
        number = text[4:].split(";", 1)[0]
        return canonical_tn(number)
    if lower.startswith(("sip:", "sips:")):
        rest = text[text.index(":") + 1 :]
        user, at, _host = rest.partition("@")
        if not at:
            return None
        number = user.split(";", 1)[0]
        return canonical_tn(_percent_decode_visual(number))
    if ":" in text or "@" in text:
        return None
    return canonical_tn(text.split(";", 1)[0])


def _percent_decode_visual(user: str) -> str:
    # Only the escapes a dialled number can carry; anything else stays and fails the check.
    return user.replace("%2B", "+").replace("%2b", "+").replace("%20", " ")


def same_tn(given: str, claimed: str, nanp: bool) -> bool:
    """Whether two canonical TNs are one number: equal, or with ``nanp`` (North American
    national match) a 10-digit number and ``1`` followed by it."""
    if given == claimed:
        return True
    if nanp:
        if len(given) == 10 and claimed == "1" + given:
            return True
        if len(claimed) == 10 and given == "1" + claimed:
            return True
    return False


# -- the call ----------------------------------------------------------------------------------


class Party(NamedTuple):
    """One party of the call as the switch gave it."""

    name: str
    """``pai``, ``from``, ``to`` or ``ruri``."""
    raw: str
    tn: str | None
    """The canonical TN in ``raw`` (:func:`tn_from_uri`), None when it holds none."""


def _party(name: str, raw: str) -> Party:
    return Party(name, raw, tn_from_uri(raw))


@dataclass(frozen=True, slots=True, kw_only=True)
class CallInfo:
    """What the switch says about the call: calling (From, PAI) and called (To, R-URI) parties.

    Each is a bare TN or a SIP/tel URI (name-addr allowed). None means "not given": that
    side is then not compared. Built once per request: ``calling`` (PAI, then From) and
    ``called`` (each To, then the Request-URI) hold each given party with its canonical TN.
    """

    from_: str | None = None
    pai: str | None = None
    to: str | tuple[str, ...] | None = None
    """One value, or several (ATIS ``to.tn`` is an array): any of them may match."""
    ruri: str | None = None
    calling: tuple[Party, ...] = field(init=False, repr=False, compare=False)
    called: tuple[Party, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        calling = [_party(n, v) for n, v in (("pai", self.pai), ("from", self.from_)) if v]
        to = (self.to,) if isinstance(self.to, str) else (self.to or ())
        called = [_party("to", v) for v in to if v]
        if self.ruri:
            called.append(_party("ruri", self.ruri))
        object.__setattr__(self, "calling", tuple(calling))
        object.__setattr__(self, "called", tuple(called))

    @property
    def calling_tn(self) -> str | None:
        """The calling number: the first canonical TN among PAI and From."""
        for party in self.calling:
            if party.tn is not None:
                return party.tn
        return None

    @property
    def called_tn(self) -> str | None:
        """The called number: the first canonical TN among the To values and the R-URI."""
        for party in self.called:
            if party.tn is not None:
                return party.tn
        return None


# -- step 9: the PASSporT's numbers against the call's ---------------------------------------------


class Claimed(Protocol):
    """The numbers a PASSporT claims (SHAKEN, div and rcd claims all have them)."""

    @property
    def orig_tn(self) -> str: ...
    @property
    def dest_tns(self) -> tuple[str, ...]: ...
    @property
    def dest_uris(self) -> tuple[str, ...]: ...


def match_numbers(
    claims: Claimed, calling: Sequence[Party], called: Sequence[Party], nanp: bool
) -> dict[str, str | None]:
    """Which party matched orig and which dest (None: that side was not given).

    Raises:
        OrigMismatch, DestMismatch: 438.
    """
    orig: str | None = None
    if calling:
        for party in calling:
            if party.tn is not None and same_tn(party.tn, claims.orig_tn, nanp):
                orig = party.name
                break
        else:
            given = " nor ".join(f"{p.name} {p.raw!r}" for p in calling)
            raise errors.OrigMismatch(f"orig.tn {claims.orig_tn!r} does not match {given}")
    dest: str | None = None
    if called:
        for party in called:
            if dest_matches(party, claims, nanp):
                dest = party.name
                break
        else:
            given = " nor ".join(f"{p.name} {p.raw!r}" for p in called)
            targets = list(claims.dest_tns) + list(claims.dest_uris)
            raise errors.DestMismatch(f"dest {targets!r} does not match {given}")
    return {"orig": orig, "dest": dest}


def dest_matches(party: Party, claims: Claimed, nanp: bool) -> bool:
    """Whether a called party is one of the claimed dest TNs or URIs."""
    tn = party.tn
    if tn is not None:
        if tn in claims.dest_tns or any(same_tn(tn, t, nanp) for t in claims.dest_tns):
            return True
        if any(t is not None and same_tn(tn, t, nanp) for t in map(tn_from_uri, claims.dest_uris)):
            return True
    if claims.dest_uris:
        key = _uri_key(party.raw)
        return any(_uri_key(u) == key for u in claims.dest_uris)
    return False


def _uri_key(value: str) -> str:
    text = value.strip()
    if "<" in text and ">" in text:
        text = text[text.index("<") + 1 : text.index(">")]
    return text.split(";", 1)[0].lower()
