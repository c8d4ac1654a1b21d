"""SIP Identity header values (RFC 8224 section 4) -> the PASSporT and its parameters. Pure.

Grammar (RFC 8224 section 4.1)::

    Identity = "Identity" HCOLON signed-identity-digest SEMI ident-info *( SEMI ident-info-params )
    signed-identity-digest = 1*(base64-char / ".")
    ident-info = "info" EQUAL ident-info-uri          ident-info-uri = LAQUOT absoluteURI RAQUOT
    ident-info-params = ident-info-alg / ident-type / ident-info-extension

What is checked here is the syntax only. Whether ``info`` is present and an absolute URI,
and whether ``alg``/``ppt`` are acceptable, are judged by the pipeline (``verify.py``), each
at its place in the order of checks. Parameter names are case-insensitive; values of
``ppt`` and ``alg`` may be quoted (real carriers send ``ppt="shaken"``); whitespace around
``;`` and ``=`` is tolerated; unknown parameters are kept and otherwise ignored.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from .errors import CompactForm, MalformedIdentity

__all__ = [
    "MAX_IDENTITY_LENGTH",
    "parse_params",
    "split_header_values",
    "split_identity_values",
    "split_value",
]

#: Longer values are refused unparsed: a SHAKEN Identity header is well under 1 KiB.
MAX_IDENTITY_LENGTH = 16384

_JWS = re.compile(r"[A-Za-z0-9+/=_-]+\.[A-Za-z0-9+/=_-]+\.[A-Za-z0-9+/=_-]+")
_PARAM = re.compile(
    r"""\s*;\s*([A-Za-z0-9.!%*_+`'~-]+)"""  # name
    r"""(?:\s*=\s*(<[^<>]*>|"(?:[^"\\\r\n]|\\.)*"|[^\s;,"<>=]+))?"""  # value
    r"""\s*"""
)


def split_header_values(line: str) -> list[str]:
    """The values on one SIP header line: commas separate them (RFC 3261 section 7.3.1),
    except inside ``<...>`` or a quoted string. Empty values are dropped."""
    if "," not in line:
        return [line.strip()] if line.strip() else []
    out: list[str] = []
    in_angle = quoted = escaped = False
    start = 0
    for i, ch in enumerate(line):
        if quoted:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                quoted = False
        elif ch == '"':
            quoted = True
        elif ch == "<":
            in_angle = True
        elif ch == ">":
            in_angle = False
        elif ch == "," and not in_angle:
            part = line[start:i].strip()
            if part:
                out.append(part)
            start = i + 1
    part = line[start:].strip()
    if part:
        out.append(part)
    return out


def split_identity_values(values: str | Iterable[str]) -> list[str]:
    """Each Identity header value, from a list of values or header lines holding several
    (see :func:`split_header_values`).

    Raises:
        MalformedIdentity: an item is not a string.
    """
    items = [values] if isinstance(values, str) else list(values)
    out: list[str] = []
    for item in items:
        if not isinstance(item, str):
            raise MalformedIdentity("an Identity header value must be a string")
        out.extend(split_header_values(item))
    return out


def split_value(value: str) -> tuple[str, str]:
    """``(token, parameters)`` of one Identity header value: the PASSporT, checked to be
    three base64-ish parts (not the compact form), and the raw ``;...`` parameter string.

    Raises:
        CompactForm: the PASSporT is in compact form (``..signature``); SHAKEN requires
            the full form.
        MalformedIdentity: anything else that does not follow the grammar.
    """
    if type(value) is not str:
        raise MalformedIdentity("an Identity header value must be a string")
    if len(value) > MAX_IDENTITY_LENGTH:
        raise MalformedIdentity(
            f"Identity header value is {len(value)} characters, over {MAX_IDENTITY_LENGTH}"
        )
    semi = value.find(";")
    if semi < 0:
        token, suffix = value.strip(), ""
    else:
        token, suffix = value[:semi].strip(), value[semi:].rstrip()
    if _JWS.fullmatch(token) is None:
        _diagnose_token(token)
    return token, suffix


def _diagnose_token(token: str) -> None:
    if not token:
        raise MalformedIdentity("Identity header value does not start with a PASSporT")
    parts = token.split(".")
    if len(parts) != 3:
        raise MalformedIdentity(
            f"PASSporT must have 3 dot-separated parts (header.payload.signature),"
            f" found {len(parts)}"
        )
    if not parts[0] and not parts[1]:
        raise CompactForm(
            "PASSporT is in compact form (empty header and payload); SHAKEN requires the full form"
        )
    if not parts[0] or not parts[1] or not parts[2]:
        raise MalformedIdentity("PASSporT has an empty header, payload or signature part")
    raise MalformedIdentity(
        "Identity header value: the PASSporT holds characters outside base64 and '.',"
        " or is not followed by ';' and parameters"
    )


def parse_params(suffix: str) -> dict[str, str]:
    """The parameters in ``;name=value...`` (names lower-cased, values unquoted).

    Raises:
        MalformedIdentity: the string does not follow the grammar; a name appears twice.
    """
    params: dict[str, str] = {}
    pos = 0
    end = len(suffix)
    while pos < end:
        m = _PARAM.match(suffix, pos)
        if m is None or m.end() == pos:
            snippet = suffix[pos : pos + 24]
            raise MalformedIdentity(f"Identity header parameters malformed near {snippet!r}")
        name = m.group(1).lower()
        raw = m.group(2)
        if name in params:
            raise MalformedIdentity(f"Identity header parameter {name!r} appears twice")
        params[name] = _unquote(raw) if raw is not None else ""
        pos = m.end()
    return params


def _unquote(raw: str) -> str:
    if len(raw) >= 2 and raw[0] == '"' and raw[-1] == '"':
        return re.sub(r"\\(.)", r"\1", raw[1:-1])
    return raw
