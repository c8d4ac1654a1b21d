"""Call disposition: what the switch should do with a verified (or not) call. Pure.

A :class:`Policy` turns a verification :class:`~verifier.core.verify.Result` into a
:class:`Disposition`: ``action`` (``allow``, ``label`` or ``block``), a short display
``label``, the ``reasons`` (which entries fired, with their references) and, for a block,
the SIP response to send. The policy is a TOML file; without one, the defaults apply:
nothing is blocked, A passes as "verified", B and C are labelled "partial" and "gateway",
failures "unverified" (over-blocking legitimate calls is a harm too).

Order of decision, first match wins:

1. ``[[block]]``: a provider block-list entry (by SPC, certificate fingerprint, issuing CA
   or x5u host) in force at the verification time. A regulator's order outranks any
   allow-list entry.
2. ``[[allow]]``: a trusted partner (same keys) or a calling number (``tn``): the call is
   allowed, with the entry's label (default "verified").
3. ``[[rule]]``: in file order, matching on verstat, attestation, failure reason (slug or
   SIP code), signer, ``replayed`` and ``diversion`` (``absent``, ``passed``, ``failed``:
   the div chain of a forwarded call); sets action and label.
4. A replayed PASSporT (seen within its freshness window): action ``label``, label
   ``replayed``. Never blocked by default: forked INVITEs repeat one legitimately.
5. ``[labels]``: the default label for the verdict (A/B/C when passed, ``failed`` for
   TN-Validation-Failed, ``unverified`` for No-TN-Validation), with action ``allow`` for A
   and ``label`` otherwise.

Provider entries keyed by SPC or fingerprint match only a validated certificate: a failed
signature proves nothing about who signed. ``x5u_host`` entries match whatever x5u the
PASSporT named.
"""

from __future__ import annotations

import datetime as dt
import re
import tomllib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from .errors import TN_VALIDATION_FAILED, TN_VALIDATION_PASSED, VerifierError
from .result import Result
from .sip import reason_value
from .tn import CallInfo, same_tn, tn_from_uri

__all__ = [
    "BLOCK_RESPONSES",
    "Disposition",
    "Policy",
    "PolicyError",
    "ProviderEntry",
    "Rule",
]

Action = Literal["allow", "label", "block"]
ACTIONS: frozenset[str] = frozenset({"allow", "label", "block"})
BLOCK_RESPONSES = {603: "Decline", 608: "Rejected"}
_SIGNER_KEYS = ("spc", "fingerprint", "issuer", "x5u_host")
_LABEL = re.compile(r"[A-Za-z0-9][A-Za-z0-9 ._-]{0,31}")
_DEFAULT_LABELS = {
    "A": "verified",
    "B": "partial",
    "C": "gateway",
    "failed": "unverified",
    "unverified": "unverified",
    "replayed": "replayed",
}


class PolicyError(VerifierError, ValueError):
    """The policy file is invalid; the message names the file, the line and the problem."""


@dataclass(frozen=True, slots=True)
class Disposition:
    action: Action
    label: str
    reasons: tuple[dict[str, Any], ...] = ()
    response: dict[str, Any] | None = None
    _dict: dict[str, Any] | None = field(default=None, init=False, repr=False, compare=False)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: made once, then the same dict (a default disposition is shared by
        every call it applies to). Do not change it."""
        made = self._dict
        if made is None:
            made = {
                "action": self.action,
                "label": self.label,
                "reasons": list(self.reasons),
                "response": self.response,
            }
            object.__setattr__(self, "_dict", made)
        return made


@dataclass(frozen=True, slots=True, kw_only=True)
class ProviderEntry:
    """One block- or allow-list entry: exactly one signer key (or ``tn`` for allow)."""

    kind: Literal["block", "allow"]
    key: str
    value: str
    reference: str = ""
    label: str | None = None
    effective: float | None = None
    expires: float | None = None
    line: int = 0

    def active(self, now: float) -> bool:
        if self.effective is not None and now < self.effective:
            return False
        return self.expires is None or now < self.expires

    def describe(self) -> dict[str, Any]:
        out: dict[str, Any] = {"list": self.kind, self.key: self.value, "line": self.line}
        if self.reference:
            out["reference"] = self.reference
        return out


@dataclass(frozen=True, slots=True, kw_only=True)
class Rule:
    name: str
    action: Action
    label: str
    verstat: frozenset[str] = frozenset()
    attest: frozenset[str] = frozenset()
    reason: frozenset[str] = frozenset()
    signer: tuple[tuple[str, str], ...] = ()
    replayed: bool | None = None
    diversion: str | None = None
    line: int = 0

    def matches(self, result: Result, facts: Mapping[str, tuple[str, ...]]) -> bool:
        if self.replayed is not None and result.replayed != self.replayed:
            return False
        if self.diversion is not None and _diversion_state(result) != self.diversion:
            return False
        if self.verstat and result.verstat not in self.verstat:
            return False
        if self.attest and (result.attest or "") not in self.attest:
            return False
        if self.reason:
            if result.reason is None:
                return False
            if (
                result.reason.slug not in self.reason
                and str(result.reason.sip_code) not in self.reason
            ):
                return False
        return all(_signer_match(key, value, facts) for key, value in self.signer)


@dataclass(frozen=True, slots=True, kw_only=True)
class Policy:
    """A loaded policy. Build it with :meth:`load`, :meth:`from_text` or :meth:`default`."""

    labels: Mapping[str, str] = field(default_factory=lambda: dict(_DEFAULT_LABELS))
    block_response: int = 603
    blocks: tuple[ProviderEntry, ...] = ()
    allows: tuple[ProviderEntry, ...] = ()
    rules: tuple[Rule, ...] = ()
    source: str = "(defaults)"
    _defaults: dict[tuple[str, str | None], Disposition] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )
    """The default dispositions, made once each (no entry or rule applied)."""

    @classmethod
    def default(cls) -> Policy:
        return cls()

    @classmethod
    def load(cls, path: str | Path) -> Policy:
        """Read and validate a policy file.

        Raises:
            PolicyError: unreadable, not TOML, or an invalid entry (naming its line).
        """
        try:
            text = Path(path).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise PolicyError(f"{path}: cannot read: {exc}") from None
        return cls.from_text(text, source=str(path))

    @classmethod
    def from_text(cls, text: str, *, source: str = "<policy>") -> Policy:
        """Parse and validate policy TOML.

        Raises:
            PolicyError: see :meth:`load`.
        """
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise PolicyError(f"{source}: not valid TOML: {exc}") from None
        return _Parser(text, source).parse(data)

    def decide(
        self,
        result: Result,
        call: CallInfo | None = None,
        *,
        now: float,
        nanp_national_match: bool = True,
    ) -> Disposition:
        """The disposition of one verification at ``now`` (epoch seconds). An allow-list
        ``tn`` is compared with the calling number as step 9 compares it
        (``nanp_national_match``: the verification option of that name)."""
        facts = _facts(result) if self.blocks or self.allows or self.rules else {}
        for entry in self.blocks:
            if entry.active(now) and _signer_match(entry.key, entry.value, facts):
                code = self.block_response
                reference = entry.reference or f"{entry.key} {entry.value} blocked"
                return Disposition(
                    action="block",
                    label="blocked",
                    reasons=(entry.describe(),),
                    response={
                        "code": code,
                        "text": BLOCK_RESPONSES[code],
                        "reason": reason_value("SIP", code, reference),
                    },
                )
        calling = call.calling_tn if call is not None else None
        for entry in self.allows:
            if not entry.active(now):
                continue
            if (
                entry.key == "tn"
                and calling is not None
                and same_tn(calling, entry.value, nanp_national_match)
            ) or (entry.key != "tn" and _signer_match(entry.key, entry.value, facts)):
                return Disposition(
                    action="allow",
                    label=entry.label or "verified",
                    reasons=(entry.describe(),),
                )
        for rule in self.rules:
            if rule.matches(result, facts):
                return Disposition(
                    action=rule.action,
                    label=rule.label,
                    reasons=({"rule": rule.name, "line": rule.line},),
                )
        key = ("replayed", None) if result.replayed else (result.verstat, result.attest)
        made = self._defaults.get(key)
        if made is None:
            if len(self._defaults) >= 64:  # verstat x attestation: a handful, but bounded
                self._defaults.clear()
            made = self._defaults[key] = self._default(result)
        return made

    def _default(self, result: Result) -> Disposition:
        if result.replayed:
            # A repeat within the freshness window: forked INVITEs carry one legitimately,
            # so it is labelled, never blocked by default.
            return Disposition(
                action="label",
                label=self.labels["replayed"],
                reasons=({"default": "replayed"},),
            )
        if result.verstat == TN_VALIDATION_PASSED:
            attest = result.attest or "C"
            return Disposition(
                action="allow" if attest == "A" else "label",
                label=self.labels[attest],
                reasons=({"default": f"passed, attestation {attest}"},),
            )
        key = "failed" if result.verstat == TN_VALIDATION_FAILED else "unverified"
        return Disposition(
            action="label", label=self.labels[key], reasons=({"default": result.verstat},)
        )


# -- matching ----------------------------------------------------------------------------------


def _facts(result: Result) -> dict[str, tuple[str, ...]]:
    facts: dict[str, tuple[str, ...]] = {}
    cert = result.certificate
    if cert is not None:
        facts["spc"] = tuple(s.upper() for s in cert.spc)
        facts["fingerprint"] = (cert.fingerprint_sha256.lower(),)
        cn = re.search(r"(?:^|,)CN=([^,]*)", cert.issuer)
        facts["issuer"] = (cert.issuer.lower(), *((cn.group(1).lower(),) if cn else ()))
    if result.x5u:
        try:
            host = urlsplit(result.x5u).hostname
        except ValueError:
            host = None
        if host:
            facts["x5u_host"] = (host.lower(),)
    return facts


def _diversion_state(result: Result) -> str:
    """``absent`` (no div PASSporT), ``passed`` (the chain holds) or ``failed``."""
    if result.diversion is None:
        return "absent"
    return "passed" if result.diversion.get("verstat") == TN_VALIDATION_PASSED else "failed"


def _signer_match(key: str, value: str, facts: Mapping[str, tuple[str, ...]]) -> bool:
    have = facts.get(key, ())
    if key == "x5u_host" and value.startswith("."):
        return any(h.endswith(value) or h == value[1:] for h in have)
    return value in have


# -- parsing -----------------------------------------------------------------------------------


class _Parser:
    def __init__(self, text: str, source: str) -> None:
        self.text = text
        self.source = source
        self.lines = text.splitlines()

    def fail(self, line: int, message: str) -> PolicyError:
        where = f"{self.source}:{line}" if line else self.source
        return PolicyError(f"{where}: {message}")

    def line_of(self, header: str, index: int) -> int:
        """The line number of the ``index``-th ``[[header]]`` (or ``[header]``)."""
        pattern = re.compile(rf"^\s*\[\[?\s*{re.escape(header)}\s*\]\]?\s*(#.*)?$")
        seen = -1
        for number, line in enumerate(self.lines, 1):
            if pattern.match(line):
                seen += 1
                if seen == index:
                    return number
        return 0

    def parse(self, data: dict[str, Any]) -> Policy:
        known = {"block_response", "labels", "block", "allow", "rule"}
        for key in data:
            if key not in known:
                raise self.fail(self._key_line(key), f"unknown setting {key!r}")
        block_response = data.get("block_response", 603)
        if block_response not in BLOCK_RESPONSES or isinstance(block_response, bool):
            raise self.fail(
                self._key_line("block_response"),
                "block_response must be 603 (Decline) or 608 (Rejected, RFC 8688)",
            )
        labels = dict(_DEFAULT_LABELS)
        given = data.get("labels", {})
        if not isinstance(given, dict):
            raise self.fail(self.line_of("labels", 0), "[labels] must be a table")
        for key, value in given.items():
            line = self._key_line(key) or self.line_of("labels", 0)
            if key not in _DEFAULT_LABELS:
                raise self.fail(
                    line, f"[labels] {key!r}: expected one of {', '.join(_DEFAULT_LABELS)}"
                )
            labels[key] = self._label(value, line, f"[labels] {key}")
        return Policy(
            labels=labels,
            block_response=block_response,
            blocks=tuple(self._entries(data, "block")),
            allows=tuple(self._entries(data, "allow")),
            rules=tuple(self._rules(data)),
            source=self.source,
        )

    def _key_line(self, key: str) -> int:
        pattern = re.compile(rf"^\s*{re.escape(key)}\s*=")
        return next((n for n, line in enumerate(self.lines, 1) if pattern.match(line)), 0)

    def _label(self, value: Any, line: int, what: str) -> str:
        if not isinstance(value, str) or _LABEL.fullmatch(value) is None:
            raise self.fail(
                line, f"{what}: a label is 1-32 letters, digits, spaces, '.', '_' or '-'"
            )
        return value

    def _tables(self, data: dict[str, Any], name: str) -> list[tuple[int, dict[str, Any]]]:
        tables = data.get(name, [])
        if not isinstance(tables, list) or not all(isinstance(t, dict) for t in tables):
            raise self.fail(self.line_of(name, 0), f"{name} entries must be [[{name}]] tables")
        return [(self.line_of(name, i), t) for i, t in enumerate(tables)]

    def _entries(
        self, data: dict[str, Any], kind: Literal["block", "allow"]
    ) -> Iterable[ProviderEntry]:
        keys = (*_SIGNER_KEYS, "tn") if kind == "allow" else _SIGNER_KEYS
        for line, table in self._tables(data, kind):
            allowed = {*keys, "reference", "effective", "expires", "label"}
            for key in table:
                if key not in allowed:
                    raise self.fail(line, f"[[{kind}]] unknown key {key!r}")
            present = [k for k in keys if k in table]
            if len(present) != 1:
                raise self.fail(line, f"[[{kind}]] needs exactly one of {', '.join(keys)}")
            key = present[0]
            value = table[key]
            if not isinstance(value, str) or not value.strip():
                raise self.fail(line, f"[[{kind}]] {key} must be a non-empty string")
            value = self._normalise(key, value.strip(), line, kind)
            reference = table.get("reference", "")
            if not isinstance(reference, str):
                raise self.fail(line, f"[[{kind}]] reference must be a string")
            label = table.get("label")
            if label is not None:
                if kind == "block":
                    raise self.fail(line, "[[block]] takes no label (a blocked call is 'blocked')")
                label = self._label(label, line, f"[[{kind}]] label")
            effective = self._when(table.get("effective"), line, kind, "effective")
            expires = self._when(table.get("expires"), line, kind, "expires")
            if effective is not None and expires is not None and expires <= effective:
                raise self.fail(line, f"[[{kind}]] expires must come after effective")
            yield ProviderEntry(
                kind=kind,
                key=key,
                value=value,
                reference=reference,
                label=label,
                effective=effective,
                expires=expires,
                line=line,
            )

    def _normalise(self, key: str, value: str, line: int, kind: str) -> str:
        if key == "spc":
            return value.upper()
        if key == "fingerprint":
            hexa = value.replace(":", "").lower()
            if re.fullmatch(r"[0-9a-f]{64}", hexa) is None:
                raise self.fail(line, f"[[{kind}]] fingerprint must be a SHA-256 (64 hex digits)")
            return hexa
        if key == "tn":
            tn = tn_from_uri(value)
            if tn is None:
                raise self.fail(line, f"[[{kind}]] tn {value!r} is not a telephone number")
            return tn
        return value.lower()

    def _when(self, value: Any, line: int, kind: str, name: str) -> float | None:
        if value is None:
            return None
        if isinstance(value, dt.datetime):
            if value.tzinfo is None:
                raise self.fail(
                    line, f"[[{kind}]] {name}: give a UTC offset (2024-05-01T00:00:00Z)"
                )
            return value.timestamp()
        if isinstance(value, dt.date):
            return dt.datetime(value.year, value.month, value.day, tzinfo=dt.UTC).timestamp()
        raise self.fail(line, f"[[{kind}]] {name} must be a TOML date or date-time")

    def _rules(self, data: dict[str, Any]) -> Iterable[Rule]:
        for index, (line, table) in enumerate(self._tables(data, "rule")):
            allowed = {
                "name",
                "action",
                "label",
                "verstat",
                "attest",
                "reason",
                "replayed",
                "diversion",
                *_SIGNER_KEYS,
            }
            for key in table:
                if key not in allowed:
                    raise self.fail(line, f"[[rule]] unknown key {key!r}")
            action = table.get("action")
            if action not in ACTIONS:
                raise self.fail(line, "[[rule]] action must be allow, label or block")
            if action == "block":
                raise self.fail(
                    line,
                    "[[rule]] cannot block: blocking is for [[block]] entries, which name the"
                    " provider and the reference that authorizes it",
                )
            label = self._label(table.get("label"), line, "[[rule]] label")
            name = table.get("name", f"rule {index + 1}")
            if not isinstance(name, str):
                raise self.fail(line, "[[rule]] name must be a string")
            verstat = self._strings(table.get("verstat"), line, "verstat")
            valid = {TN_VALIDATION_PASSED, TN_VALIDATION_FAILED, "No-TN-Validation"}
            if not verstat <= valid:
                raise self.fail(line, f"[[rule]] verstat must be among {', '.join(sorted(valid))}")
            attest = self._strings(table.get("attest"), line, "attest")
            if not attest <= {"A", "B", "C"}:
                raise self.fail(line, "[[rule]] attest must be among A, B, C")
            reason = self._strings(table.get("reason"), line, "reason", numbers=True)
            signer = tuple(
                (key, self._normalise(key, str(table[key]), line, "rule"))
                for key in _SIGNER_KEYS
                if key in table
            )
            replayed = table.get("replayed")
            if replayed is not None and not isinstance(replayed, bool):
                raise self.fail(line, "[[rule]] replayed must be true or false")
            diversion = table.get("diversion")
            if diversion is not None and diversion not in ("absent", "passed", "failed"):
                raise self.fail(line, "[[rule]] diversion must be absent, passed or failed")
            yield Rule(
                name=name,
                replayed=replayed,
                diversion=diversion,
                action=action,
                label=label,
                verstat=verstat,
                attest=attest,
                reason=reason,
                signer=signer,
                line=line,
            )

    def _strings(
        self, value: Any, line: int, name: str, *, numbers: bool = False
    ) -> frozenset[str]:
        if value is None:
            return frozenset()
        items: Sequence[Any] = value if isinstance(value, list) else [value]
        out: set[str] = set()
        for item in items:
            if isinstance(item, str) or (
                numbers and isinstance(item, int) and not isinstance(item, bool)
            ):
                out.add(str(item))
            else:
                raise self.fail(line, f"[[rule]] {name} must be a string or a list of strings")
        return frozenset(out)
