"""Diversion (RFC 8946): div PASSporTs chained from the SHAKEN PASSporT's dest to the
called number. Pure.

Each div PASSporT says "the call for ``div`` went on to ``dest``". The chain starts at the
SHAKEN dest, each hop's ``div`` is the previous hop's dest, every hop keeps the SHAKEN
orig, and the last dest is the called number (To or Request-URI), when the call gives one.
A SHAKEN dest that does not match the call stands if the chain leads from it to the called
number.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from . import errors
from .errors import TN_VALIDATION_PASSED, VerificationError
from .passport import DivClaims, ShakenClaims
from .result import Entry, Reason
from .tn import Party, dest_matches, same_tn

__all__ = ["DiversionCheck"]


class DiversionCheck:
    """The div chain rules for one call: its called parties, NANP matching, the hop limit."""

    __slots__ = ("called", "max_hops", "nanp")

    def __init__(self, called: Sequence[Party], *, nanp: bool, max_hops: int) -> None:
        self.called = called
        self.nanp = nanp
        self.max_hops = max_hops

    def resolve_deferred(self, entry: Entry, divs: list[Entry]) -> None:
        """Settle a SHAKEN entry whose dest did not match the call: it passes if the chain
        leads from its dest to the called number, else it fails with DestMismatch."""
        deferred, entry.deferred = entry.deferred, None
        if deferred is None or entry.result.status != "passed":
            return
        chain = self.chain(entry, divs)
        if chain["verstat"] == TN_VALIDATION_PASSED:
            entry.matched["dest"] = "diversion"
            return
        why = chain["reason"]["detail"] if chain["reason"] else "no div PASSporT links to it"
        entry.fail(errors.DestMismatch(f"{deferred.detail}; diversion: {why}"))
        entry.credential = None

    def chain(self, anchor: Entry | None, divs: list[Entry]) -> dict[str, Any]:
        """The result's ``diversion``: the chain's verstat, each hop, and what broke."""
        chain: list[Entry] = []
        problem: VerificationError | None = None
        anchor_claims = anchor.claims if anchor is not None else None
        broken = next((d for d in divs if not isinstance(d.claims, DivClaims)), None)
        if not isinstance(anchor_claims, ShakenClaims):
            problem = errors.DiversionUnanchored(
                "div PASSporTs without a SHAKEN PASSporT to link them to"
            )
        elif broken is not None and broken.error is not None:
            problem = broken.error
        else:
            problem = self._link(anchor_claims, divs, chain)
        hop_failure = problem is not None and any(problem is d.error for d in divs)
        if problem is None:
            problem = next((d.error for d in chain if d.error is not None), None)
            hop_failure = problem is not None
        if problem is None:
            problem = self._reaches_the_call(chain)
        if problem is None:
            verstat = TN_VALIDATION_PASSED
        elif hop_failure:
            verstat = problem.verstat
        else:
            verstat = errors.NO_TN_VALIDATION
        hops = [_hop(d, linked=True) for d in chain]
        hops.extend(_hop(d, linked=False) for d in divs if d not in chain)
        return {
            "verstat": verstat,
            "hops": hops,
            "reason": Reason.of(problem).to_dict() if problem is not None else None,
        }

    def _link(
        self, anchor: ShakenClaims, divs: list[Entry], chain: list[Entry]
    ) -> VerificationError | None:
        """Order ``divs`` from the SHAKEN dest onwards into ``chain``; the first problem."""
        nanp = self.nanp
        targets: tuple[str, ...] = anchor.dest_tns
        seen = list(targets)
        remaining = [d for d in divs if isinstance(d.claims, DivClaims)]
        while remaining:
            step = [
                d
                for d in remaining
                if isinstance(d.claims, DivClaims)
                and any(same_tn(d.claims.div_tn, t, nanp) for t in targets)
            ]
            if not step:
                break
            if len(step) > 1:
                which = ", ".join(str(d.result.index) for d in step)
                return errors.DiversionBroken(
                    f"headers {which} all divert the call from {', '.join(targets)}"
                )
            hop = step[0]
            remaining.remove(hop)
            chain.append(hop)
            if len(chain) > self.max_hops:
                return errors.DiversionTooLong(f"more than {self.max_hops} diversions")
            claims = hop.claims
            if not isinstance(claims, DivClaims):  # pragma: no cover - filtered above
                break
            if any(same_tn(t, s, nanp) for t in claims.dest_tns for s in seen):
                return errors.DiversionLoop(
                    f"header {hop.result.index} diverts back to {', '.join(claims.dest_tns)}"
                )
            seen.extend(claims.dest_tns)
            targets = claims.dest_tns
        if remaining:
            hop = remaining[0]
            div_tn = hop.claims.div_tn if isinstance(hop.claims, DivClaims) else "?"
            return errors.DiversionBroken(
                f"header {hop.result.index} diverts from {div_tn}, which is neither the SHAKEN"
                " dest nor the dest of another div PASSporT"
            )
        for hop in chain:
            claims = hop.claims
            if isinstance(claims, DivClaims) and not same_tn(claims.orig_tn, anchor.orig_tn, nanp):
                return errors.DiversionBroken(
                    f"header {hop.result.index} has orig {claims.orig_tn}, the SHAKEN"
                    f" PASSporT {anchor.orig_tn}"
                )
        return None

    def _reaches_the_call(self, chain: list[Entry]) -> VerificationError | None:
        """The last hop's dest must be the called number (To or Request-URI), if given."""
        last = chain[-1].claims if chain else None
        called = self.called
        if (
            isinstance(last, DivClaims)
            and called
            and not any(dest_matches(party, last, self.nanp) for party in called)
        ):
            return errors.DiversionBroken(
                f"the last diversion goes to {', '.join(last.dest_tns)}, not to the"
                f" called number {', '.join(p.raw for p in called)}"
            )
        return None


def _hop(entry: Entry, *, linked: bool) -> dict[str, Any]:
    claims = entry.claims if isinstance(entry.claims, DivClaims) else None
    return {
        "index": entry.result.index,
        "div": claims.div_tn if claims else None,
        "dest": list(claims.dest_tns) if claims else None,
        "linked": linked,
        "status": entry.result.status,
        "reason": entry.result.reason.to_dict() if entry.result.reason else None,
    }
