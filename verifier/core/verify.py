"""The one ordered verification pipeline. Pure: every input, ``now`` included, is an argument.

Order of checks (cheap first; the first failure is the verdict)::

    1  Identity present                                  428
    2  Identity syntax, full form                        438
    3  JWS parts decode (strict base64url, JSON, R||S)   438
    4  alg parameter / header alg = ES256, typ passport  437
    5  ppt = shaken, div, rcd or rph (param and header)  438
    6  info = <absoluteURI>, x5u present and = info      436
    7  claims: attest, orig, dest, iat, origid           438  (div, rcd, rph: their own; rph.py)
    8  iat freshness                                     403
    9  orig / dest against the call's numbers            438  (tn.py; div chain: div.py)
    10 x5u URL rules, fetch                              436
    11 certificate chain, validity, TNAuthList SPC       437
    12 ES256 signature                                   438  (TN-Validation-Failed)

With a credential supplied out of band (``verifier verify --cert/--key``: forensic work on a
recorded call), the signature (12) is checked right after the algorithm (4): the first
question there is "did this key sign these bytes?", and a tampered PASSporT should say so
rather than hide behind its x5u. Steps 5-11 follow, so a PASSporT that could not have been
verified from the network still fails with its 436/437.

:class:`Verification` runs steps 1-9 for every Identity header when it is built; the caller
obtains a :class:`~verifier.core.certs.Credential` for each pending SHAKEN header's x5u (from a
cache, a fetch, or a file) and hands it to :meth:`Verification.settle`, which runs the rest.
:func:`verify_offline` does all of it with a supplied certificate or key. Step 12 is the
credential's ES256 check (:mod:`verifier.core.es256`; the service may hand in a faster one).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from cryptography import x509

from . import errors
from .certs import Credential, TrustStore, credential_from_public_key
from .div import DiversionCheck
from .errors import TN_VALIDATION_PASSED, VerificationError
from .es256 import BatchCheck, ES256Key, check_each
from .identity import parse_params, split_identity_values, split_value
from .passport import (
    ShakenClaims,
    check_algorithm,
    check_div_claims,
    check_freshness,
    check_ppt,
    check_rcd_claims,
    check_shaken_claims,
    check_x5u,
    decode_header,
    decode_payload,
    decode_signature,
    ppt_of,
    verify_es256,
)
from .result import SHAKEN, Claims, Entry, HeaderResult, Reason, Result, failed
from .rph import RPH, check_rph_claims
from .tn import CallInfo, match_numbers
from .x5u import DEFAULT_X5U_PORTS, check_x5u_url

__all__ = [
    "CallInfo",
    "CredentialSource",
    "DecodeCache",
    "HeaderResult",
    "Reason",
    "Result",
    "Verification",
    "VerifyOptions",
    "verify",
    "verify_many",
    "verify_offline",
]

DIV = "div"
RCD = "rcd"
KINDS = frozenset({SHAKEN, DIV, RCD, RPH})
MAX_IDENTITY_HEADERS = 32
PARALLEL_THRESHOLD = 32
"""Fewest verifications in a batch worth spreading over threads."""


@dataclass(frozen=True, slots=True, kw_only=True)
class VerifyOptions:
    """Tunables of the pure pipeline. Defaults follow ATIS-1000074."""

    max_iat_age: float = 60.0
    max_future_skew: float = 10.0
    nanp_national_match: bool = True
    x5u_ports: frozenset[int] = DEFAULT_X5U_PORTS
    max_identity_headers: int = MAX_IDENTITY_HEADERS
    max_div_hops: int = 5

    def __post_init__(self) -> None:
        if self.max_iat_age <= 0 or self.max_future_skew < 0:
            raise ValueError("max_iat_age must be > 0 and max_future_skew >= 0")
        if self.max_identity_headers < 1:
            raise ValueError("max_identity_headers must be at least 1")
        if self.max_div_hops < 1:
            raise ValueError("max_div_hops must be at least 1")


_NO_CALL = CallInfo()
_DEFAULT_OPTIONS = VerifyOptions()


class DecodeCache:
    """Bounded memo of what repeats across calls from one signer: the protected header
    and the Identity parameters, decoded and judged (steps 3-6 for those two parts).
    One per service (the app holds it); never module-level."""

    __slots__ = ("contexts", "max_size")

    def __init__(self, max_size: int = 4096) -> None:
        self.contexts: dict[tuple[str, str], _Context] = {}
        self.max_size = max_size

    def store(self, key: tuple[str, str], context: _Context) -> None:
        if len(self.contexts) >= self.max_size:
            self.contexts.clear()
        self.contexts[key] = context


class _Context:
    """What one (protected header, Identity parameters) pair yields. ``x5u`` is set once
    steps 4-6 passed for it; only then (or when the header is not SHAKEN) is it cached."""

    __slots__ = ("header", "kind", "params", "ppt", "x5u")

    def __init__(self, header: dict[str, Any], params: Mapping[str, str]) -> None:
        self.header = header
        self.params = params
        param_ppt = params.get("ppt")
        header_ppt = ppt_of(header)
        self.ppt = param_ppt if param_ppt is not None else header_ppt
        # A header is routed by its ppt parameter, else by the PASSporT's own ppt. One with
        # neither is taken as a SHAKEN candidate, so that it fails with its own reason.
        self.kind: str | None = (
            SHAKEN if self.ppt is None else (self.ppt if self.ppt in KINDS else None)
        )
        self.x5u: str | None = None


class Verification:
    """One verification of a request's Identity headers, advanced step by step.

    Build it with the request's values; then, for each entry of :meth:`pending`, obtain a
    Credential for its x5u and call :meth:`settle` (or :meth:`fail` with the error that
    obtaining it raised); then :meth:`result`.
    """

    def __init__(
        self,
        values: str | Iterable[str] | None,
        *,
        now: float,
        call: CallInfo | None = None,
        options: VerifyOptions | None = None,
        bare: bool = False,
        signature_key: Credential | None = None,
        cache: DecodeCache | None = None,
    ) -> None:
        self.now = now
        self.call = call or _NO_CALL
        self.options = options or _DEFAULT_OPTIONS
        self._signature_key = signature_key
        # Cached contexts were judged with no signature check between steps 4 and 5, and
        # for Identity headers (a bare PASSporT skips the info check of step 6).
        self._cache = cache if signature_key is None and not bare else None
        self._entries: list[Entry] = []
        self._top_error: VerificationError | None = None
        try:
            raw = self._split(values)
        except VerificationError as exc:
            self._top_error = exc
            return
        # With div PASSporTs in the request, a SHAKEN dest that does not match the call is
        # judged after the diversion chain (result()); "div" in a raw value is a cheap hint.
        self._diverted = len(raw) > 1 and any("div" in value for value in raw)
        for index, value in enumerate(raw):
            self._entries.append(self._check(index, value, bare))

    # -- steps 1-9 -------------------------------------------------------------------------

    def _split(self, values: str | Iterable[str] | None) -> list[str]:
        if values is None:
            raise errors.NoIdentity("no Identity header")
        raw = split_identity_values(values)
        if not raw:
            raise errors.NoIdentity("no Identity header")
        limit = self.options.max_identity_headers
        if len(raw) > limit:
            raise errors.MalformedIdentity(
                f"{len(raw)} Identity header values; at most {limit} are verified"
            )
        return raw

    def _check(self, index: int, value: str, bare: bool) -> Entry:
        result = HeaderResult(index=index, ppt=None, status="pending")
        entry = Entry(result)
        try:
            token, suffix = split_value(value)  # step 2
            if bare and suffix:
                raise errors.MalformedIdentity("a bare PASSporT carries no parameters")
            h64, p64, s64 = token.split(".")
            if not bare:
                result.ppi = s64
            key = (h64, suffix)
            cache = self._cache
            ctx = cache.contexts.get(key) if cache is not None else None
            if ctx is None:
                params = parse_params(suffix)
                param_ppt = params.get("ppt")
                if param_ppt is not None and param_ppt not in KINDS:
                    result.ppt = param_ppt
                    return self._not_verified(entry)
                ctx = _Context(decode_header(h64), params)  # step 3
            result.ppt = ctx.ppt
            entry.kind = kind = ctx.kind
            if kind is None:
                if cache is not None:
                    cache.store(key, ctx)
                return self._not_verified(entry)
            entry.payload = result.payload = payload = decode_payload(p64)  # step 3
            entry.signature = decode_signature(s64)
            entry.signing_input = f"{h64}.{p64}".encode("ascii")
            if ctx.x5u is None:
                check_algorithm(ctx.header, ctx.params.get("alg"))  # step 4
                if self._signature_key is not None:
                    verify_es256(self._signature_key.es256, entry.signing_input, entry.signature)
                check_ppt(ctx.header, ctx.params.get("ppt"), kind)  # step 5
                ctx.x5u = check_x5u(ctx.header, ctx.params.get("info"), require_info=not bare)
                if cache is not None:
                    cache.store(key, ctx)
            result.x5u = ctx.x5u
            claims: Claims  # step 7
            if kind == SHAKEN:
                claims = check_shaken_claims(payload)
            elif kind == DIV:
                claims = check_div_claims(payload)
            elif kind == RPH:
                claims = check_rph_claims(payload)
            else:
                claims = check_rcd_claims(payload)
            entry.claims = claims
            check_freshness(  # step 8
                claims.iat,
                self.now,
                max_age=self.options.max_iat_age,
                max_future_skew=self.options.max_future_skew,
            )
            if kind != DIV:  # step 9 (tn.py); a div hop is matched by the chain (div.py)
                call, nanp = self.call, self.options.nanp_national_match
                try:
                    entry.matched = match_numbers(claims, call.calling, call.called, nanp)
                except errors.DestMismatch as exc:
                    if kind != SHAKEN or not self._diverted:
                        raise
                    # The call was diverted: the chain of div PASSporTs may lead from this
                    # dest to the called number; result() decides.
                    entry.deferred = exc
                    entry.matched = match_numbers(claims, call.calling, (), nanp)
        except VerificationError as exc:
            entry.fail(exc)
        return entry

    @staticmethod
    def _not_verified(entry: Entry) -> Entry:
        entry.kind = None
        entry.result.status = "not_verified"
        entry.result.reason = Reason(
            sip_code=errors.InvalidPpt.sip_code,
            text=errors.InvalidPpt.text,
            slug="unsupported_ppt",
            detail=f"not verified: unsupported ppt {entry.result.ppt!r}",
        )
        return entry

    # -- steps 10-12 -----------------------------------------------------------------------

    def pending(self) -> list[Entry]:
        """The SHAKEN headers that passed steps 1-9 and wait for a credential."""
        return [e for e in self._entries if e.result.status == "pending"]

    @staticmethod
    def x5u_of(entry: Entry) -> str:
        if entry.result.x5u is None:
            raise RuntimeError("entry is not pending")
        return entry.result.x5u

    def settle(
        self, entry: Entry, credential: Credential, *, signature_ok: bool | None = None
    ) -> None:
        """Steps 11 (validity at ``now``) and 12 (signature) with a validated credential.

        ``signature_ok`` is the outcome of step 12 when the caller ran it elsewhere (on a
        signature thread); None runs it here.
        """
        entry.result.certificate = credential.certificate
        try:
            credential.check_time(self.now)
            if signature_ok is False:
                raise errors.InvalidSignature("ES256 signature does not verify")
            if signature_ok is None and self._signature_key is None:  # else done at step 4
                verify_es256(credential.es256, entry.signing_input, entry.signature)
        except VerificationError as exc:
            entry.fail(exc)
            return
        entry.credential = credential
        entry.result.status = "passed"

    @staticmethod
    def fail(entry: Entry, exc: VerificationError) -> None:
        """Record that no credential could be had for ``entry`` (436/437)."""
        entry.fail(exc)

    # -- the verdict -----------------------------------------------------------------------

    def result(self) -> Result:
        entries = self._entries
        identities = [e.result for e in entries]
        if self._top_error is not None:
            return failed(self._top_error, identities)
        chosen: Entry | None
        if len(entries) == 1 and entries[0].kind == SHAKEN:  # nearly every call: no choice
            only = entries[0]
            if only.result.status == "pending":
                raise RuntimeError("Verification.result() called with headers still pending")
            chosen, shaken = only, entries
            diversion = None  # (a deferred dest needs a div PASSporT: none here)
        else:
            if any(e.result.status == "pending" for e in entries):
                raise RuntimeError("Verification.result() called with headers still pending")
            shaken = [e for e in entries if e.kind == SHAKEN]
            divs = [e for e in entries if e.kind == DIV]
            check = DiversionCheck(
                self.call.called,
                nanp=self.options.nanp_national_match,
                max_hops=self.options.max_div_hops,
            )
            for e in shaken:
                if e.deferred is not None:
                    check.resolve_deferred(e, divs)
            chosen = next((e for e in shaken if e.result.status == "passed"), None)
            chosen = chosen or (shaken[0] if shaken else None)
            diversion = check.chain(chosen, divs) if divs else None
        if chosen is None:
            ppts = ", ".join(repr(e.result.ppt) for e in self._entries)
            result = failed(
                errors.NoShakenPassport(
                    f"no SHAKEN PASSporT among the Identity headers (ppt {ppts})"
                ),
                identities,
            )
            result.diversion = diversion
            return result
        claims = chosen.claims
        credential = chosen.credential
        warnings = list(claims.warnings) if claims else []
        if len(shaken) > 1:
            warnings.append(
                f"{len(shaken)} SHAKEN PASSporTs; the verdict is header {chosen.result.index}'s"
            )
        if credential is not None and credential.warnings:
            warnings.extend(credential.warnings)
        error = chosen.error
        shaken_claims = claims if isinstance(claims, ShakenClaims) else None
        return Result(
            verstat=error.verstat if error is not None else TN_VALIDATION_PASSED,
            reason=Reason.of(error) if error is not None else None,
            attest=shaken_claims.attest if shaken_claims else None,
            claims=chosen.payload if claims else None,
            certificate=credential.certificate if credential else None,
            x5u=chosen.result.x5u,
            origid=shaken_claims.origid if shaken_claims else None,
            matched=chosen.matched,
            identities=identities,
            warnings=warnings,
            diversion=diversion,
            rcd_sources=self._rcd_sources(chosen),
        )

    def _rcd_sources(self, chosen: Entry) -> list[dict[str, Any]]:
        sources: list[dict[str, Any]] = []
        for e in self._entries:
            carries = e.kind == RCD or (e is chosen and e.payload and "rcd" in e.payload)
            if not carries or e.payload is None:
                continue
            sources.append(
                {
                    "index": e.result.index,
                    "ppt": e.result.ppt or SHAKEN,
                    "passed": e.result.status == "passed",
                    "reason": e.result.reason.to_dict() if e.result.reason else None,
                    "payload": e.payload,
                }
            )
        return sources


# -- offline (forensic) verification -----------------------------------------------------------


def verify_offline(
    values: str | Iterable[str] | None,
    *,
    now: float,
    call: CallInfo | None = None,
    options: VerifyOptions | None = None,
    chain: Sequence[x509.Certificate] | None = None,
    chains: Mapping[str, Sequence[x509.Certificate]] | None = None,
    public_key: Any = None,
    trust: TrustStore | None = None,
    bare: bool = False,
) -> Result:
    """Verify with the signer's certificate chain (or a bare public key) supplied by the caller.

    ``chain`` (leaf first) is validated against ``trust`` at ``now``; ``public_key`` skips
    every certificate check (the result warns). ``chains`` gives each x5u its own chain
    (PASSporTs of several signers: a diverted call), looked up as a fetch would be, in the
    online order of the steps. Exactly one of the three must be given.
    ``bare`` takes each value as a bare PASSporT (JWS) rather than an Identity header.
    """
    if sum(given is not None for given in (chain, chains, public_key)) != 1:
        raise ValueError("give exactly one of chain, chains and public_key")
    options = options or VerifyOptions()
    key_cred: Credential | None = None
    try:
        if chain is not None:
            if not chain:
                raise errors.CertificateInvalid("no certificate supplied")
            key_cred = credential_from_public_key(chain[0].public_key())
        elif public_key is not None:
            key_cred = credential_from_public_key(public_key)
    except VerificationError as exc:
        verification = Verification(values, now=now, call=call, options=options, bare=bare)
        for entry in verification.pending():
            verification.fail(entry, exc)
        return verification.result()
    verification = Verification(
        values, now=now, call=call, options=options, bare=bare, signature_key=key_cred
    )
    for entry in verification.pending():
        x5u = Verification.x5u_of(entry)
        try:
            check_x5u_url(x5u, options.x5u_ports)
            given = chain if chains is None else chains.get(x5u)
            if given is None and key_cred is not None:
                credential = key_cred  # a bare public key
            else:
                if not given:  # an x5u that ``chains`` lacks: as if it could not be fetched
                    raise errors.X5uFetchFailed("no certificate chain given for this x5u")
                if trust is None:
                    raise errors.CertificateNotTrusted("no trust anchors configured")
                credential = trust.validate(given, now)
        except VerificationError as exc:
            verification.fail(entry, exc)
            continue
        verification.settle(entry, credential)
    return verification.result()


# -- online verification -----------------------------------------------------------------------


class CredentialSource(Protocol):
    """Where the network pipeline gets the validated credential for an x5u (``fetch.py``)."""

    async def get(self, x5u: str, *, now: float) -> Credential:
        """The validated Credential for ``x5u``, applying the x5u URL rules first.

        Raises:
            BadIdentityInfo: 436, the x5u is refused or cannot be fetched.
            UnsupportedCredential: 437, the chain is not trusted, revoked or has no SPC.
        """
        ...

    def vouched(self, x5u: str) -> None:
        """A PASSporT naming ``x5u`` passed under the credential :meth:`get` gave: its
        signature verified, so the chain is its signer's (a source may hold new chains
        apart until then: anyone can serve a copy of a real chain at a URL of their own)."""
        ...


SignatureCheck = Callable[[ES256Key, bytes, bytes], Awaitable[bool]]


async def verify(
    values: str | Iterable[str] | None,
    *,
    now: float,
    credentials: CredentialSource,
    call: CallInfo | None = None,
    options: VerifyOptions | None = None,
    cache: DecodeCache | None = None,
    signatures: SignatureCheck | None = None,
) -> Result:
    """The online pipeline: steps 1-9, then each pending header's credential, then 11-12.

    ``signatures`` (optional) runs step 12 elsewhere, e.g. batched with other requests'
    (the service hands in :meth:`verifier.accel.batcher.SignatureBatcher.check`); by
    default it runs inline.
    """
    verification = Verification(values, now=now, call=call, options=options, cache=cache)
    for entry in verification.pending():
        try:
            credential = await credentials.get(Verification.x5u_of(entry), now=now)
        except VerificationError as exc:
            verification.fail(entry, exc)
            continue
        if signatures is None:
            verification.settle(entry, credential)
        else:
            ok = await signatures(credential.es256, entry.signing_input, entry.signature)
            verification.settle(entry, credential, signature_ok=ok)
        if entry.result.status == "passed":
            credentials.vouched(Verification.x5u_of(entry))
    return verification.result()


async def verify_many(
    requests: Sequence[tuple[str | Iterable[str] | None, CallInfo | None]],
    *,
    now: float,
    credentials: CredentialSource,
    options: VerifyOptions | None = None,
    cache: DecodeCache | None = None,
    threads: int | Callable[[], int] = 1,
    batch_check: BatchCheck = check_each,
) -> list[Result]:
    """Many verifications at once (the batch API): steps 1-9 for all of them, one credential
    lookup per distinct x5u (concurrently), then steps 11-12.

    The signatures of a share are checked together by ``batch_check`` (the service hands
    in :func:`verifier.accel.es256.check_many`: hot keys share a scalar inversion).
    With ``threads`` > 1, enough work and some key without a table (``has_table()``),
    the signature checks run on that many threads, each on its own share: cryptography
    releases the GIL while it checks a signature and the event loop only awaits them, so
    the checks use more cores. A key's table checks keep the GIL: they stay on the loop.
    ``threads`` may be a function, asked once the credentials are in (the caller may
    know by then that the loop has other work)."""
    verifications = [
        Verification(values, now=now, call=call, options=options, cache=cache)
        for values, call in requests
    ]
    wanted = {Verification.x5u_of(e) for v in verifications for e in v.pending()}

    async def lookup(x5u: str) -> Credential | VerificationError:
        try:
            return await credentials.get(x5u, now=now)
        except VerificationError as exc:
            return exc

    found = dict(zip(wanted, await asyncio.gather(*map(lookup, wanted)), strict=True))

    def settle(share: Sequence[Verification]) -> None:
        # The signatures are checked together, then each entry is settled with its verdict.
        checks: list[tuple[Verification, Entry, Credential]] = []
        for verification in share:
            for entry in verification.pending():
                credential = found[Verification.x5u_of(entry)]
                if isinstance(credential, VerificationError):
                    verification.fail(entry, credential)
                else:
                    checks.append((verification, entry, credential))
        verdicts = batch_check(
            [(c.es256, entry.signing_input, entry.signature) for _, entry, c in checks]
        )
        for (verification, entry, credential), ok in zip(checks, verdicts, strict=True):
            verification.settle(entry, credential, signature_ok=ok)

    # A key's table checks keep the GIL: threads pay only for plain checks.
    plain = any(isinstance(c, Credential) and not c.es256.has_table() for c in found.values())
    if callable(threads):
        threads = threads()
    if threads > 1 and plain and len(verifications) >= PARALLEL_THRESHOLD:
        shares = [verifications[i::threads] for i in range(threads)]
        await asyncio.gather(*(asyncio.to_thread(settle, share) for share in shares))
    else:
        settle(verifications)
    results = [v.result() for v in verifications]
    passed = {h.x5u for r in results for h in r.identities if h.status == "passed" and h.x5u}
    for x5u in passed:
        credentials.vouched(x5u)  # here, on the loop: settle may have run on threads
    return results
