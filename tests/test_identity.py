"""verifier.core.identity: Identity header values (RFC 8224 section 4) -> IdentityHeader."""

from __future__ import annotations

import pytest

from verifier.core import errors
from verifier.core.identity import (
    MAX_IDENTITY_LENGTH,
    IdentityHeader,
    parse_identity,
    split_identity_values,
)
from verifier.testing import Signer

TOKEN = "eyJhIjoxfQ.eyJiIjoyfQ.c2ln"
INFO = "<https://cert.example.net/sp.pem>"


def test_parse_full_header(signer: Signer) -> None:
    value = signer.identity()
    ident = parse_identity(value)
    assert value == ident.raw
    assert value.split(";")[0] == ident.token
    assert f"<{signer.x5u}>" == ident.info
    assert "ES256" == ident.alg
    assert "shaken" == ident.ppt
    assert ident.token.rpartition(".")[2] == ident.signature_segment


def test_parse_minimal() -> None:
    ident = parse_identity(f"{TOKEN};info={INFO}")
    assert TOKEN == ident.token
    assert {"info": INFO} == dict(ident.params)
    assert ident.alg is None
    assert ident.ppt is None
    assert "c2ln" == ident.signature_segment


def test_no_parameters_at_all() -> None:
    assert {} == dict(parse_identity(TOKEN).params)


@pytest.mark.parametrize("ppt", ['"shaken"', "shaken"])
def test_ppt_quoted_or_not(ppt: str) -> None:
    assert "shaken" == parse_identity(f"{TOKEN};info={INFO};ppt={ppt}").ppt


def test_quoted_value_escapes() -> None:
    ident = parse_identity(f'{TOKEN};info={INFO};x="a\\"b;c,d"')
    assert 'a"b;c,d' == ident.params["x"]


@pytest.mark.parametrize(
    "value",
    [
        f'{TOKEN} ; info = {INFO} ; alg = ES256 ; ppt = "shaken"',
        f"{TOKEN};\tinfo={INFO};alg=ES256;ppt=shaken   ",
        f"  {TOKEN};info={INFO} ;alg=ES256; ppt=shaken",
    ],
)
def test_whitespace_around_separators(value: str) -> None:
    ident = parse_identity(value)
    assert TOKEN == ident.token
    assert {"info": INFO, "alg": "ES256", "ppt": "shaken"} == dict(ident.params)


def test_parameter_names_are_case_insensitive() -> None:
    ident = parse_identity(f"{TOKEN};INFO={INFO};Alg=ES256;PPT=shaken")
    assert INFO == ident.info
    assert "ES256" == ident.alg
    assert "shaken" == ident.ppt


def test_unknown_parameters_are_kept() -> None:
    ident = parse_identity(f"{TOKEN};info={INFO};ppt=shaken;x-carrier=abc;flag")
    assert "abc" == ident.params["x-carrier"]
    assert "" == ident.params["flag"]
    assert "shaken" == ident.ppt


@pytest.mark.parametrize(
    "value",
    [
        f"{TOKEN};info={INFO};ppt=shaken;ppt=shaken",
        f"{TOKEN};info={INFO};INFO={INFO}",
        f"{TOKEN};ppt=shaken;Ppt=div",
    ],
)
def test_duplicate_parameters_refused(value: str) -> None:
    with pytest.raises(errors.MalformedIdentity, match="twice"):
        parse_identity(value)


@pytest.mark.parametrize(
    "value",
    [
        f"{TOKEN};info={INFO}alg=ES256;ppt=shaken",  # Asterisk's legacy header (vector 019)
        f"{TOKEN} info={INFO}",
        f"{TOKEN}info={INFO}",
        f"{TOKEN};info={INFO};",
        f"{TOKEN};;info={INFO}",
        f"{TOKEN};info=<https://a.example/x",
        f"{TOKEN};=shaken",
        f'{TOKEN};ppt="shaken',
        f"{TOKEN};info={INFO},",
    ],
)
def test_malformed_parameters(value: str) -> None:
    with pytest.raises(errors.MalformedIdentity) as info:
        parse_identity(value)
    assert errors.MalformedIdentity is type(info.value)


@pytest.mark.parametrize(
    "value",
    [
        "",
        "   ",
        f";info={INFO}",
        "a.b",
        "a.b.c.d",
        "a.b.",
        ".b.c",
        "a..c",
        "!!!.b.c",
    ],
)
def test_malformed_token(value: str) -> None:
    with pytest.raises(errors.MalformedIdentity):
        parse_identity(value)


def test_compact_form() -> None:
    with pytest.raises(errors.CompactForm):
        parse_identity(f"..c2ln;info={INFO}")
    assert issubclass(errors.CompactForm, errors.InvalidIdentityHeader)


def test_oversize_refused() -> None:
    value = TOKEN + ";x=" + "a" * MAX_IDENTITY_LENGTH
    with pytest.raises(errors.MalformedIdentity, match="characters"):
        parse_identity(value)
    parse_identity(value[:MAX_IDENTITY_LENGTH])


def test_not_a_string() -> None:
    with pytest.raises(errors.MalformedIdentity):
        parse_identity(b"a.b.c")  # type: ignore[arg-type]


def test_identity_header_is_frozen() -> None:
    ident = IdentityHeader(raw=TOKEN, token=TOKEN, params={})
    with pytest.raises(AttributeError):
        ident.token = "x"  # type: ignore[misc]


# -- several values ----------------------------------------------------------------------------


def test_split_one_value() -> None:
    assert [f"{TOKEN};info={INFO}"] == split_identity_values(f"  {TOKEN};info={INFO}  ")


def test_split_several_values_on_one_line() -> None:
    line = f"{TOKEN};info={INFO};ppt=shaken, {TOKEN};info={INFO};ppt=div"
    assert [f"{TOKEN};info={INFO};ppt=shaken", f"{TOKEN};info={INFO};ppt=div"] == (
        split_identity_values(line)
    )


def test_split_keeps_commas_inside_brackets_and_quotes() -> None:
    a = f"{TOKEN};info=<https://a.example/x,y.pem>"
    b = f'{TOKEN};info={INFO};x="p,q";ppt=shaken'
    assert [a, b] == split_identity_values(f"{a},{b}")


def test_split_list_of_values() -> None:
    a = f"{TOKEN};info={INFO}"
    assert [a, a, a] == split_identity_values([a, f" {a} , {a}"])


def test_split_drops_empty_values() -> None:
    assert [] == split_identity_values(["", "  ", ",", " , "])
    assert [] == split_identity_values("")
    assert [] == split_identity_values([])


def test_split_refuses_non_strings() -> None:
    with pytest.raises(errors.MalformedIdentity):
        split_identity_values([TOKEN, None])  # type: ignore[list-item]
    with pytest.raises(errors.MalformedIdentity):
        split_identity_values(b"a.b.c")  # type: ignore[arg-type]
