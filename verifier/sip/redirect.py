"""The answer to a verified INVITE: 302 with the verdict in headers the switch can copy, or
the policy's 603/608 for a block."""

from __future__ import annotations

from urllib.parse import quote

from ..core.sip import reason_header
from ..service import Outcome
from .config import SipSettings

__all__ = ["verdict_answer"]


def verdict_headers(outcome: Outcome) -> dict[str, str]:
    """Every verdict header that has a value: P-Asserted-Identity carries ``;verstat=`` on
    the calling number as verified (RFC 8224 section 6.2.3), Reason the RFC 9410 failure."""
    result, disposition, record = outcome.result, outcome.disposition, outcome.record
    found: dict[str, str | None] = {
        "P-Asserted-Identity": (
            f"<tel:+{record.orig};verstat={result.verstat}>" if record.orig else None
        ),
        "Reason": reason_header(result),
        "X-Verstat": result.verstat,
        "X-Attestation": result.attest,
        "X-Origid": result.origid,
        "X-Label": disposition.label,
    }
    return {name: value for name, value in found.items() if value is not None}


def verdict_answer(
    outcome: Outcome, ruri: str, settings: SipSettings
) -> tuple[int, str, list[tuple[str, str]]]:
    """(code, reason phrase, headers) of the final response to a verified INVITE."""
    response = outcome.disposition.response
    if outcome.disposition.action == "block" and response is not None:
        return int(response["code"]), str(response["text"]), [("Reason", str(response["reason"]))]
    values = verdict_headers(outcome)
    contact = ruri
    embedded = [
        f"{name}={quote(values[name], safe='')}"
        for name in settings.contact_headers
        if name in values
    ]
    if embedded:
        contact += ("&" if "?" in contact else "?") + "&".join(embedded)
    headers = [("Contact", f"<{contact}>")]
    headers += [(name, values[name]) for name in settings.redirect_headers if name in values]
    return 302, "Moved Temporarily", headers
