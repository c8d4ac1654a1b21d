"""verifier.net.ssrf: special-purpose ranges, operator allowances, vetted resolution. DNS answers
come from a fake resolver (they stand for other networks); nothing connects."""

# STYLE.md: asserts read ``expected == actual``.

from __future__ import annotations

import ipaddress

import pytest

from verifier.core import errors
from verifier.net.ssrf import (
    AddressPolicy,
    host_matches,
    resolve_vetted,
    special_range,
    system_resolver,
)


@pytest.mark.parametrize(
    ("address", "words"),
    [
        ("10.0.0.1", "private"),
        ("172.16.5.4", "private"),
        ("192.168.1.1", "private"),
        ("127.0.0.1", "loopback"),
        ("169.254.169.254", "link-local"),
        ("100.64.0.1", "CGNAT"),
        ("192.0.0.8", "IETF protocol assignments"),
        ("198.18.0.1", "benchmarking"),
        ("192.0.2.1", "documentation"),
        ("198.51.100.7", "documentation"),
        ("203.0.113.9", "documentation"),
        ("224.0.0.1", "multicast"),
        ("255.255.255.255", "broadcast"),
        ("240.0.0.1", "reserved"),
        ("0.0.0.0", "this network"),  # noqa: S104
        ("::", "unspecified"),
        ("::1", "loopback"),
        ("fe80::1", "link-local"),
        ("fd00::1", "unique local"),
        ("ff02::1", "multicast"),
        ("2001:db8::1", "documentation"),
        ("::ffff:10.0.0.1", "IPv4-mapped private"),
        ("::ffff:169.254.169.254", "IPv4-mapped link-local"),
        ("64:ff9b::a9fe:a9fe", "NAT64 link-local"),
        ("2002:0a00:0001::1", "6to4 private"),
        ("2001:0:4136:e378:8000:63bf:f5ff:fffe", "Teredo private"),  # client 10.0.0.1
        ("100::1", "discard"),
    ],
)
def test_special_ranges(address: str, words: str) -> None:
    found = special_range(ipaddress.ip_address(address))
    assert found is not None and words in found


@pytest.mark.parametrize(
    "address", ["8.8.8.8", "1.1.1.1", "2606:4700:4700::1111", "::ffff:8.8.8.8", "64:ff9b::808:808"]
)
def test_global_addresses_pass(address: str) -> None:
    assert special_range(ipaddress.ip_address(address)) is None


def test_policy_allowances() -> None:
    loopback = ipaddress.ip_address("127.0.0.1")
    assert "loopback" == AddressPolicy().refusal("repo", loopback)
    assert AddressPolicy(allow_private=True).refusal("repo", loopback) is None
    assert AddressPolicy(allow=("127.0.0.0/8",)).refusal("repo", loopback) is None
    assert AddressPolicy(allow=(".test.example",)).refusal("a.test.example", loopback) is None
    assert "loopback" == AddressPolicy(allow=("10.0.0.0/8",)).refusal("repo", loopback)
    # never a repository, whatever the operator says
    never = ipaddress.ip_address("0.0.0.0")  # noqa: S104
    assert AddressPolicy(allow_private=True).refusal("repo", never) is not None


def test_policy_refuses_bad_cidr() -> None:
    with pytest.raises(ValueError, match="not a valid address or CIDR"):
        AddressPolicy(allow=("10.0.0.0/33",))


@pytest.mark.parametrize(
    ("host", "patterns", "expected"),
    [
        ("certs.example.com", ("certs.example.com",), True),
        ("CERTS.example.com.", ("certs.example.com",), True),
        ("a.certs.example.com", (".example.com",), True),
        ("example.com", (".example.com",), True),
        ("badexample.com", (".example.com",), False),
        ("other.example", ("certs.example.com",), False),
    ],
)
def test_host_matches(host: str, patterns: tuple[str, ...], expected: bool) -> None:
    assert expected == host_matches(host, patterns)


async def test_one_refused_answer_refuses_the_host() -> None:
    async def dns(host: str, port: int) -> list[str]:
        return ["8.8.8.8", "10.0.0.1"]

    with pytest.raises(errors.X5uRefused, match=r"resolves to 10\.0\.0\.1, which is private"):
        await resolve_vetted("mixed.example", 443, policy=AddressPolicy(), resolver=dns)


async def test_vetted_answers_returned() -> None:
    async def dns(host: str, port: int) -> list[str]:
        return ["8.8.8.8", "2606:4700:4700::1111"]

    got = await resolve_vetted("ok.example", 443, policy=AddressPolicy(), resolver=dns)
    assert [ipaddress.ip_address("8.8.8.8"), ipaddress.ip_address("2606:4700:4700::1111")] == got


async def test_literal_is_not_resolved() -> None:
    async def dns(host: str, port: int) -> list[str]:
        raise AssertionError("a literal must not be resolved")

    with pytest.raises(errors.X5uRefused, match="refused before connecting"):
        await resolve_vetted("169.254.169.254", 443, policy=AddressPolicy(), resolver=dns)


@pytest.mark.parametrize("answer", [[], ["not-an-ip"]])
async def test_bad_answers_are_os_errors(answer: list[str]) -> None:
    async def dns(host: str, port: int) -> list[str]:
        return answer

    with pytest.raises(OSError):
        await resolve_vetted("x.example", 443, policy=AddressPolicy(), resolver=dns)


async def test_system_resolver_localhost() -> None:
    # /etc/hosts, no query leaves the machine
    assert {"127.0.0.1", "::1"} >= set(await system_resolver("localhost", 443))
