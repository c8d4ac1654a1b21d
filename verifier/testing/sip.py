"""SIP requests as a switch sends them and responses read back, for the SIP front end's
tests, benchmark and demo (plain text, no SIP stack)."""

from __future__ import annotations

import secrets

__all__ = ["RURI", "invite", "response_headers", "sipp_options_scenario", "sipp_scenario"]

RURI = "sip:+12155551213@switch.example.com;user=phone"


def invite(
    port: int,
    *,
    identity: str | None = None,
    branch: str | None = None,
    method: str = "INVITE",
    cseq_method: str | None = None,
    call_id: str | None = None,
    transport: str = "UDP",
    extra: str = "",
    ruri: str = RURI,
) -> bytes:
    """A request as a switch sends it (``identity``: an Identity header value)."""
    branch = branch or f"z9hG4bK-{secrets.token_hex(8)}"
    lines = [
        f"{method} {ruri} SIP/2.0",
        f"Via: SIP/2.0/{transport} 127.0.0.1:{port};branch={branch};rport",
        "Max-Forwards: 70",
        "From: <sip:+12155551212@origin.example.com;user=phone>;tag=from1",
        "To: <sip:+12155551213@switch.example.com;user=phone>",
        f"Call-ID: {call_id or secrets.token_hex(8)}@127.0.0.1",
        f"CSeq: 1 {cseq_method or method}",
        "Contact: <sip:caller@127.0.0.1>",
    ]
    if identity is not None:
        lines.append(f"Identity: {identity}")
    if extra:
        lines.append(extra)
    lines.append("Content-Length: 0")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def response_headers(data: bytes) -> tuple[int, dict[str, list[str]]]:
    """(status code, header name in lower case -> values) of a response."""
    text = data.decode()
    if not text.endswith("\r\n\r\n"):
        raise ValueError("not a whole SIP response")
    status, *lines = text[:-4].split("\r\n")
    found: dict[str, list[str]] = {}
    for line in lines:
        name, _, value = line.partition(":")
        found.setdefault(name.strip().lower(), []).append(value.strip())
    version, code, _ = status.split(" ", 2)
    if version != "SIP/2.0":
        raise ValueError("not a SIP/2.0 response")
    return int(code), found


def sipp_scenario(
    *,
    identity: str | None,
    expect: int = 302,
    check: str | None = None,
    retransmit: int = 0,
) -> str:
    """A SIPp scenario (XML) of one call: INVITE (with ``identity`` as its Identity header,
    which may be a SIPp keyword such as ``[field0]``), the final response ``expect`` whose
    headers must match the regular expression ``check``, then the ACK. ``retransmit``: SIPp
    resends the INVITE after that many milliseconds without an answer (0: never)."""
    branch = "z9hG4bK-[call_number]-sipp"
    invite_text = "\n".join(
        [
            "INVITE sip:+12155551213@[remote_ip]:[remote_port];user=phone SIP/2.0",
            f"Via: SIP/2.0/[transport] [local_ip]:[local_port];branch={branch}",
            "From: <sip:+12155551212@[local_ip];user=phone>;tag=[call_number]",
            "To: <sip:+12155551213@[remote_ip];user=phone>",
            "Call-ID: [call_id]",
            "CSeq: 1 INVITE",
            "Contact: <sip:sipp@[local_ip]:[local_port]>",
            "Max-Forwards: 70",
            *([f"Identity: {identity}"] if identity is not None else []),
            "Content-Length: [len]",
        ]
    )
    final = f'  <recv response="100" optional="true"/>\n  <recv response="{expect}"'
    if check is None:
        final += "/>\n"
    else:
        final += (
            ">\n    <action>\n"
            f'      <ereg regexp="{check}" search_in="msg" check_it="true" assign_to="1"/>\n'
            "    </action>\n  </recv>\n"
        )
    attribute = f' retrans="{retransmit}"' if retransmit else ""
    send = f"  <send{attribute}>\n    <![CDATA[\n{invite_text}\n\n    ]]>\n  </send>\n"
    ack = "\n".join(
        [
            "ACK sip:+12155551213@[remote_ip]:[remote_port];user=phone SIP/2.0",
            f"Via: SIP/2.0/[transport] [local_ip]:[local_port];branch={branch}",
            "[last_From:]",
            "[last_To:]",
            "Call-ID: [call_id]",
            "CSeq: 1 ACK",
            "Max-Forwards: 70",
            "Content-Length: 0",
        ]
    )
    body = send + final
    body += f"  <send>\n    <![CDATA[\n{ack}\n\n    ]]>\n  </send>\n"
    if check is not None:
        body += '  <Reference variables="1"/>\n'
    head = '<?xml version="1.0" encoding="ISO-8859-1" ?>\n<scenario name="verify">\n'
    return f"{head}{body}</scenario>\n"


def sipp_options_scenario() -> str:
    """A SIPp scenario: one OPTIONS, answered 200."""
    options = "\n".join(
        [
            "OPTIONS sip:[remote_ip]:[remote_port] SIP/2.0",
            "Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]",
            "From: <sip:sipp@[local_ip]>;tag=[call_number]",
            "To: <sip:verifier@[remote_ip]>",
            "Call-ID: [call_id]",
            "CSeq: 1 OPTIONS",
            "Max-Forwards: 70",
            "Content-Length: 0",
        ]
    )
    return (
        '<?xml version="1.0" encoding="ISO-8859-1" ?>\n<scenario name="options">\n'
        f"  <send>\n    <![CDATA[\n{options}\n\n    ]]>\n  </send>\n"
        '  <recv response="200"/>\n</scenario>\n'
    )
