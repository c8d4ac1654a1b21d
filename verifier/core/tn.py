"""Telephone numbers: RFC 8224 section 8.3 canonical form, and TNs taken out of SIP/tel URIs.

Canonical form: the digits (and the ``*`` / ``#`` keys) only. A leading ``+`` and the
RFC 3966 visual separators (``-`` ``.`` ``(`` ``)``) and spaces are dropped; any other
character means "not a telephone number". E.164 allows at most 15 digits.
"""

from __future__ import annotations

import re

__all__ = ["CANONICAL_TN", "canonical_tn", "is_canonical", "tn_from_uri"]

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
    match = _NAME_ADDR.match(text)
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
