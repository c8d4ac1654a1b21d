"""verifier.core.sip: what the verifier reads from an INVITE, and the RFC 9410 Reason it returns."""

# STYLE.md: asserts read ``expected == actual``.

from __future__ import annotations

import pytest

from verifier.core import errors
from verifier.core.errors import NO_TN_VALIDATION, TN_VALIDATION_FAILED, TN_VALIDATION_PASSED
from verifier.core.sip import (
    MAX_SIP_HEADERS,
    SipError,
    SipRequest,
    header_reasons,
    invite_from_headers,
    parse_invite,
    reason_header,
    reason_value,
)
from verifier.core.verify import HeaderResult, Reason, Result

ID1 = 'aaa.bbb.sig1;info=<https://cert.example.org/sp.pem>;alg=ES256;ppt="shaken"'
ID2 = 'ccc.ddd.sig2;info=<https://cert.example.org/a,b.pem>;ppt="div"'


def _message(*lines: str) -> str:
    return "\r\n".join(lines) + "\r\n\r\n"


# -- parse_invite --------------------------------------------------------------------------------


def test_full_invite() -> None:
    text = (
        _message(
            "INVITE sip:+12155551213@example.com;user=phone SIP/2.0",
            "Via: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bK776asdhds",
            'From: "Alice" <sip:+12155551212@example.com;user=phone>;tag=1928301774',
            "To: <sip:+12155551213@example.com;user=phone>",
            "Call-ID: a84b4c76e66710",
            "Date: Tue, 14 Nov 2023 22:13:20 GMT",
            f"Identity: {ID1}",
            "Content-Type: application/sdp",
        )
        + "v=0\r\nIdentity: not-a-header-but-body\r\n"
    )
    request = parse_invite(text)
    assert (
        SipRequest(
            method="INVITE",
            ruri="sip:+12155551213@example.com;user=phone",
            identity=[ID1],
            from_='"Alice" <sip:+12155551212@example.com;user=phone>;tag=1928301774',
            to="<sip:+12155551213@example.com;user=phone>",
            date="Tue, 14 Nov 2023 22:13:20 GMT",
        )
        == request
    )
    assert 1700000000.0 == request.date_epoch()


def test_headers_already_split_read_as_their_text() -> None:
    headers = [
        ("v", "SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bK776asdhds"),
        ("f", "<sip:+12155551212@example.com;user=phone>;tag=1"),
        ("TO", "<sip:+12155551213@example.com;user=phone>"),
        ("y", ID1),
        ("identity", ID2),
        ("P-Asserted-Identity", "<sip:+12155551212@example.com>, <tel:+12155551212>"),
        ("date", "Tue, 14 Nov 2023 22:13:20 GMT"),
        ("Diversion", "<tel:+12155551214>;reason=unconditional"),
    ]
    text = _message("INVITE tel:+12155551213 SIP/2.0", *(f"{n}: {v}" for n, v in headers))
    expected = parse_invite(text)
    assert [ID1, ID2] == expected.identity
    assert expected == invite_from_headers("INVITE", "tel:+12155551213", headers)


def test_header_lines_only_with_bare_lf_and_leading_blank_lines() -> None:
    request = parse_invite("\n\nFrom: <tel:+12155551212>\nTo: tel:+12155551213\n")
    assert (None, None) == (request.method, request.ruri)
    assert ("<tel:+12155551212>", "tel:+12155551213") == (request.from_, request.to)
    assert None is request.date_epoch()


def test_request_line_alone() -> None:
    request = parse_invite("INVITE sip:bob@example.com SIP/2.0\r\n")
    assert ("INVITE", "sip:bob@example.com") == (request.method, request.ruri)
    assert [] == request.identity


def test_folded_lines_are_unfolded() -> None:
    request = parse_invite(
        _message(
            'From: "Alice"',
            " <sip:+12155551212@example.com>",
            "\t;tag=1",
            "Identity: aaa.bbb.sig1;info=<https://cert.example.org/sp.pem>",
            '  ;alg=ES256;ppt="shaken"',
        )
    )
    assert '"Alice" <sip:+12155551212@example.com> ;tag=1' == request.from_
    assert [
        'aaa.bbb.sig1;info=<https://cert.example.org/sp.pem> ;alg=ES256;ppt="shaken"'
    ] == request.identity


def test_compact_header_names() -> None:
    request = parse_invite(
        _message("f: <tel:+12155551212>", "t: <tel:+12155551213>", f"y: {ID1}", "i: call-1")
    )
    assert ("<tel:+12155551212>", "<tel:+12155551213>") == (request.from_, request.to)
    assert [ID1] == request.identity


def test_header_names_are_case_insensitive_and_may_have_spaces_before_the_colon() -> None:
    request = parse_invite(_message(f"IDENTITY : {ID1}", "FROM:<tel:+12155551212>"))
    assert [ID1] == request.identity
    assert "<tel:+12155551212>" == request.from_


def test_several_identity_headers_and_comma_joined_values() -> None:
    request = parse_invite(_message(f"Identity: {ID1}", f"y: {ID2}, {ID1}", f"Identity:{ID2}"))
    # the comma inside <...> of ID2's info does not split it
    assert [ID1, ID2, ID1, ID2] == request.identity


def test_pai_prefers_the_tel_uri() -> None:
    sip_pai = "<sip:+12155551212@example.com;user=phone>"
    request = parse_invite(
        _message(
            f"P-Asserted-Identity: {sip_pai}",
            'P-Asserted-Identity: "Alice" <tel:+12155551212>',
        )
    )
    assert [sip_pai, '"Alice" <tel:+12155551212>'] == request.pai
    assert '"Alice" <tel:+12155551212>' == request.calling_pai()
    joined = parse_invite(_message(f"P-Asserted-Identity: {sip_pai}, tel:+12155551212"))
    assert [sip_pai, "tel:+12155551212"] == joined.pai
    assert "tel:+12155551212" == joined.calling_pai()
    only_sip = parse_invite(_message(f"P-Asserted-Identity: {sip_pai}"))
    assert sip_pai == only_sip.calling_pai()
    assert None is parse_invite(_message("From: x")).calling_pai()


def test_quoted_display_name_with_comma_does_not_split() -> None:
    request = parse_invite(_message('P-Asserted-Identity: "Doe, Jane" <sip:+12155551212@h>'))
    assert ['"Doe, Jane" <sip:+12155551212@h>'] == request.pai


@pytest.mark.parametrize(
    ("date", "epoch"),
    [
        ("Tue, 14 Nov 2023 22:13:20 GMT", 1700000000.0),
        ("Tue, 14 Nov 2023 17:13:20 -0500", 1700000000.0),
        ("14 Nov 2023 22:13:20 +0000", 1700000000.0),
    ],
)
def test_date(date: str, epoch: float) -> None:
    assert epoch == parse_invite(_message(f"Date: {date}")).date_epoch()


@pytest.mark.parametrize("date", ["yesterday", "", "Tue, 14 Nov 99999 22:13:20 GMT", "Tue, 32 Nov"])
def test_bad_date(date: str) -> None:
    request = parse_invite(_message(f"Date: {date}"))
    with pytest.raises(SipError, match="is not an RFC 1123 date"):
        request.date_epoch()


def test_diversion_and_history_info_are_collected() -> None:
    request = parse_invite(
        _message(
            "Diversion: <sip:+12155551214@example.com>;reason=unconditional;counter=1",
            "Diversion: <tel:+12155551215>;reason=no-answer, <tel:+12155551216>",
            "History-Info: <sip:+12155551213@example.com>;index=1,"
            " <sip:+12155551214@example.com?Reason=SIP%3Bcause%3D302>;index=1.1",
        )
    )
    assert [
        "<sip:+12155551214@example.com>;reason=unconditional;counter=1",
        "<tel:+12155551215>;reason=no-answer",
        "<tel:+12155551216>",
    ] == request.diversion
    assert [
        "<sip:+12155551213@example.com>;index=1",
        "<sip:+12155551214@example.com?Reason=SIP%3Bcause%3D302>;index=1.1",
    ] == request.history_info


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("From: a\x00b\r\n", "SIP message contains a NUL byte"),
        ("SIP/2.0 200 OK\r\nVia: x\r\n", "this is a SIP response, not a request"),
        ("hello world\r\n", "not a SIP header line: 'hello world'"),
        ("From <tel:+1>\r\n", "not a SIP header line: 'From <tel:+1>'"),
        ("Fr(om: x\r\n", "not a SIP header line: 'Fr(om: x'"),
        ("invite sip:a@b SIP/2.0\r\n", "not a SIP header line: 'invite sip:a@b SIP/2.0'"),
        (" folded: first\r\n", "a continuation line comes before any header"),
        ("", "no SIP request line and no header"),
        ("\r\n\r\n", "no SIP request line and no header"),
    ],
)
def test_not_a_sip_request(text: str, message: str) -> None:
    with pytest.raises(SipError) as caught:
        parse_invite(text)
    assert message == str(caught.value)


def test_too_many_headers() -> None:
    at_limit = parse_invite("X: y\r\n" * MAX_SIP_HEADERS)
    assert [] == at_limit.identity
    with pytest.raises(SipError) as caught:
        parse_invite("X: y\r\n" * (MAX_SIP_HEADERS + 1))
    assert f"more than {MAX_SIP_HEADERS} header lines" == str(caught.value)


def test_sip_error_is_a_value_error() -> None:
    assert issubclass(SipError, ValueError)


# -- reason_header -------------------------------------------------------------------------------


def _reason(exc: errors.VerificationError) -> Reason:
    return Reason.of(exc)


def test_no_reason_when_passed() -> None:
    result = Result(
        verstat=TN_VALIDATION_PASSED,
        attest="A",
        identities=[HeaderResult(index=0, ppt="shaken", status="passed", ppi="sig1")],
    )
    assert None is reason_header(result)


def test_reason_for_a_failure() -> None:
    reason = _reason(errors.InvalidSignature("signature does not verify"))
    result = Result(
        verstat=TN_VALIDATION_FAILED,
        reason=reason,
        identities=[
            HeaderResult(index=0, ppt="shaken", status="failed", reason=reason, ppi="sig1")
        ],
    )
    # one Identity header: no ppi needed to say which
    assert 'STIR;cause=438;text="Invalid Identity Header"' == reason_header(result)


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (errors.NoIdentity("none"), 'STIR;cause=428;text="Use Identity Header"'),
        (errors.IatTooOld("old"), 'STIR;cause=403;text="Stale Date"'),
        (errors.X5uFetchFailed("404"), 'STIR;cause=436;text="Bad Identity Info"'),
        (errors.CertificateExpired("expired"), 'STIR;cause=437;text="Unsupported Credential"'),
    ],
)
def test_reason_codes(exc: errors.VerificationError, expected: str) -> None:
    result = Result(verstat=exc.verstat, reason=_reason(exc))
    assert expected == reason_header(result)


def test_ppi_names_the_failing_header_among_several() -> None:
    reason = _reason(errors.X5uFetchFailed("404"))
    not_verified = _reason(errors.InvalidPpt("div"))
    result = Result(
        verstat=NO_TN_VALIDATION,
        reason=reason,
        identities=[
            HeaderResult(index=0, ppt="div", status="not_verified", reason=not_verified, ppi="d1"),
            HeaderResult(index=1, ppt="shaken", status="failed", reason=reason, ppi="sig2"),
            HeaderResult(index=2, ppt="shaken", status="failed", reason=reason, ppi="sig3"),
        ],
    )
    assert 'STIR;cause=436;text="Bad Identity Info";ppi="sig2"' == reason_header(result)
    assert [
        'STIR;cause=436;text="Bad Identity Info";ppi="sig2"',
        'STIR;cause=436;text="Bad Identity Info";ppi="sig3"',
    ] == header_reasons(result)


def test_no_ppi_when_the_failure_is_not_one_header() -> None:
    reason = _reason(errors.NoShakenPassport("only div"))
    not_verified = _reason(errors.InvalidPpt("div"))
    result = Result(
        verstat=NO_TN_VALIDATION,
        reason=reason,
        identities=[
            HeaderResult(index=0, ppt="div", status="not_verified", reason=not_verified, ppi="d1"),
            HeaderResult(index=1, ppt="div", status="not_verified", reason=not_verified, ppi="d2"),
        ],
    )
    assert 'STIR;cause=438;text="Invalid Identity Header"' == reason_header(result)


def test_reason_value_keeps_caller_text_from_breaking_out_of_the_header() -> None:
    assert 'SIP;cause=608;text="court order 12"' == reason_value("SIP", 608, "court order 12")
    assert 'SIP;cause=603;text="a;b=c, d"' == reason_value("SIP", 603, 'a";b=\\c,\r\n d\u00e9')
    assert 100 == len(reason_value("SIP", 603, "x" * 500).split('"')[1])
    assert 'STIR;cause=437;text="t";ppi="abc"' == reason_value("STIR", 437, "t", ppi="abc")
