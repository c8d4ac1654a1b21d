"""verifier.core.identity: Identity header values (RFC 8224 section 4): the PASSporT and
its parameters, as the pipeline reads them (step 2)."""

from __future__ import annotations

import pytest

from verifier.core import errors
from verifier.core.identity import (
    MAX_IDENTITY_LENGTH,
    parse_params,
    split_identity_values,
    split_value,
)
from verifier.testing import Signer

TOKEN = "eyJhIjoxfQ.eyJiIjoyfQ.c2ln"
INFO = "<https://cert.example.net/sp.pem>"


def parse(value: str) -> tuple[str, dict[str, str]]:
    """``(PASSporT, parameters)`` of one Identity header value, as the pipeline gets them."""
    token, suffix = split_value(value)
    return token, parse_params(suffix)


def test_parse_full_header(signer: Signer) -> None:
    value = signer.identity()
    token, params = parse(value)
    assert value.split(";")[0] == token
    assert {"info": f"<{signer.x5u}>", "alg": "ES256", "ppt": "shaken"} == params


def test_parse_minimal() -> None:
    assert (TOKEN, {"info": INFO}) == parse(f"{TOKEN};info={INFO}")


def test_no_parameters_at_all() -> None:
    assert (TOKEN, {}) == parse(TOKEN)
    assert (TOKEN, "") == split_value(f"  {TOKEN}  ")


@pytest.mark.parametrize("ppt", ['"shaken"', "shaken"])
def test_ppt_quoted_or_not(ppt: str) -> None:
    assert "shaken" == parse(f"{TOKEN};info={INFO};ppt={ppt}")[1]["ppt"]


def test_quoted_value_escapes() -> None:
    assert 'a"b;c,d' == parse(f'{TOKEN};info={INFO};x="a\\"b;c,d"')[1]["x"]


@pytest.mark.parametrize(
    "value",
    [
        f'{TOKEN} ; info = {INFO} ; alg = ES256 ; ppt = "shaken"',
        f"{TOKEN};\tinfo={INFO};alg=ES256;ppt=shaken   ",
        f"  {TOKEN};info={INFO} ;alg=ES256; ppt=shaken",
    ],
)
def test_whitespace_around_separators(value: str) -> None:
    assert (TOKEN, {"info": INFO, "alg": "ES256", "ppt": "shaken"}) == parse(value)


def test_parameter_names_are_case_insensitive() -> None:
    _, params = parse(f"{TOKEN};INFO={INFO};Alg=ES256;PPT=shaken")
    assert {"info": INFO, "alg": "ES256", "ppt": "shaken"} == params


def test_unknown_parameters_are_kept() -> None:
    _, params = parse(f"{TOKEN};info={INFO};ppt=shaken;x-carrier=abc;flag")
    assert {"info": INFO, "ppt": "shaken", "x-carrier": "abc", "flag": ""} == params


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
        parse(value)


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
        parse(value)
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
        parse(value)


def test_compact_form() -> None:
    with pytest.raises(errors.CompactForm):
        parse(f"..c2ln;info={INFO}")
    assert issubclass(errors.CompactForm, errors.InvalidIdentityHeader)


def test_oversize_refused() -> None:
    value = TOKEN + ";x=" + "a" * MAX_IDENTITY_LENGTH
    with pytest.raises(errors.MalformedIdentity, match="characters"):
        parse(value)
    parse(value[:MAX_IDENTITY_LENGTH])


def test_not_a_string() -> None:
    with pytest.raises(errors.MalformedIdentity):
        parse(b"a.b.c")  # type: ignore[arg-type]


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
