"""The configuration as text: the README's reference of every key, generated from
:mod:`verifier.settings`, and the effective configuration ``verifier config check`` prints."""

from __future__ import annotations

import itertools
import json
import math
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

from . import __version__
from .net.transport import HttpClientSettings
from .settings import ConfigError, Settings, TuningKeys, describe

__all__ = [
    "README_BEGIN",
    "README_END",
    "REGENERATE",
    "effective_toml",
    "reference",
    "update_reference",
]

README_BEGIN = "<!-- BEGIN configuration reference: generated from verifier/settings.py -->"
README_END = "<!-- END configuration reference -->"
REGENERATE = "python -m verifier config reference --update README.md"
"""The command that rewrites README.md's block."""

# The keys whose value, or the password in their URL, ``config check`` masks.
_SECRETS = {("api", "admin_token"), ("api", "verify_token"), ("trust", "list_token")}
_URL_SECRETS = {("redis", "url"), ("records", "database_url")}


def _toml_value(value: Any) -> str:
    """``value`` as a TOML value (never None: callers write an unset key as a comment)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:  # undecodable bytes from the environment
            return json.dumps(value)
        return json.dumps(value, ensure_ascii=False).replace("\x7f", "\\u007f")
    items = sorted(value) if isinstance(value, frozenset) else list(value)
    return "[" + ", ".join(_toml_value(v) for v in items) + "]"


def _markdown(text: str) -> str:
    return text.replace("``", "`").replace("|", "\\|")


_CAPTIONS = {
    "verification": "PASSporT checks",
    "api": "the HTTP API",
    "x5u": "certificate retrieval",
    "rcd": "Rich Call Data content",
    "records": "traceback records",
    "redis": "shared tier for many instances",
    "trust": "the STI-PA trust list and CRLs, kept current",
    "sip": "the SIP front end: verdicts by 302 redirect",
}


def reference() -> str:
    """The Markdown reference of every key: the README's block between its markers."""
    notes = {"http_client": HttpClientSettings.__doc__, "tuning": TuningKeys.__doc__}
    lines = [README_BEGIN, f"<!-- edit the docs in the code, then run: {REGENERATE} -->"]
    for table, group in itertools.groupby(describe(), key=lambda k: k.table):
        if not table:
            lines += ["", "**top level**"]
        elif table in _CAPTIONS:
            lines += ["", f"**[{table}]** ({_CAPTIONS[table]})"]
        else:
            lines += ["", f"**[{table}]**"]
        if table in notes:  # the docstring's first paragraph, less its "``[table]``: " opening
            paragraph = (notes[table] or "").split("\n\n", 1)[0]
            note = " ".join(paragraph.split()).split(": ", 1)[1]
            lines += ["", _markdown(note[0].upper() + note[1:])]
        lines += ["", "| key | environment | default | meaning |", "|---|---|---|---|"]
        for k in group:
            value = k.default
            if isinstance(value, str):  # the version changes with each release, not the rule
                value = value.replace(f"verifier/{__version__}", "verifier/<version>")
            default = "(unset)" if value is None else f"`{_toml_value(value)}`"
            row = f"| `{k.name}` | `{k.env}` | {_markdown(default)} | {_markdown(k.doc)} |"
            lines.append(row)
    return "\n".join([*lines, "", README_END])


def update_reference(text: str) -> str:
    """``text`` (a README) with the block between its markers replaced by :func:`reference`.

    Raises:
        ConfigError: the markers are missing or out of order.
    """
    begin, end = text.find(README_BEGIN), text.find(README_END)
    if begin < 0 or end < begin:
        raise ConfigError(f"no {README_BEGIN!r} ... {README_END!r} block")
    return text[:begin] + reference() + text[end + len(README_END) :]


def _mask_url(url: str) -> str:
    """``url`` with its password (userinfo or ``password=`` query item) as ``***``; the rest
    of the text is kept as written (urlunsplit would drop the ``//`` of ``unix:///path``)."""
    try:
        parts = urlsplit(url)
        has_password = parts.password is not None
    except ValueError:  # not a URL the parser can split: hide it all
        return "***"
    if has_password:
        userinfo, _, hostport = parts.netloc.rpartition("@")
        masked = f"{userinfo.partition(':')[0]}:***@{hostport}"
        url = url.replace(f"//{parts.netloc}", f"//{masked}", 1)
    head, question, rest = url.partition("?")
    query, hash_, fragment = rest.partition("#")
    pairs = parse_qsl(query, keep_blank_values=True)
    if any(name == "password" for name, _ in pairs):
        items = [(n, "***" if n == "password" else v) for n, v in pairs]
        url = head + question + urlencode(items, safe="*/:") + hash_ + fragment
    return url


def effective_toml(settings: Settings) -> str:
    """Every key's value in ``settings`` as a TOML document in the file's layout, secrets
    (tokens, passwords in the Redis and database URLs) masked; unset keys are comments, and a
    value that is not the default says the default."""
    out = ["# verifier: effective configuration (defaults < file < VERIFIER_* < options)"]
    for table, group in itertools.groupby(describe(), key=lambda k: k.table):
        if table:
            out += ["", f"[{table}]"]
        for k in group:
            part, field_name = k.targets[0]
            value = getattr(getattr(settings, part) if part else settings, field_name)
            if value is None:
                out.append(f"# {k.name}: unset")
                continue
            line = f"{k.name} = {{}}"
            if value != k.default:
                default = "unset" if k.default is None else _toml_value(k.default)
                line += f"  # default: {default}"
            if (k.table, k.name) in _SECRETS:
                value = "***"
            elif (k.table, k.name) in _URL_SECRETS:
                value = _mask_url(value)
            out.append(line.format(_toml_value(value)))
    return "\n".join(out) + "\n"
