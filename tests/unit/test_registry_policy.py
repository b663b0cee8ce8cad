"""The registry allow-list: which hosts match AllowedRegistries, which addresses count as
public, and that a Location is never second-guessed (no resolution, no address check)."""

from __future__ import annotations

import socket

import pytest

from imagegw.domain.config import parse_config
from imagegw.domain.errors import ConfigError, PermissionDenied, RegistryUnavailable
from imagegw.domain.reference import parse_reference
from imagegw.registry.policy import AddressGuard, guard_for_reference, guard_for_url

PLATFORMS = {"c": {"local": {"imageDir": "/x"}}}


def resolver(*addresses: str):
    """A getaddrinfo that answers `addresses` for every name and records what it was asked."""
    asked: list[str] = []

    def resolve(host, port, type=0):  # noqa: A002 - getaddrinfo's keyword
        asked.append(host)
        family = socket.AF_INET6 if any(":" in a for a in addresses) else socket.AF_INET
        return [(family, socket.SOCK_STREAM, 6, "", (address, port)) for address in addresses]

    resolve.asked = asked  # type: ignore[attr-defined]
    return resolve


def config(*patterns: str):
    return parse_config({"AllowedRegistries": list(patterns), "Platforms": PLATFORMS,
                         "Locations": {"inside": {"url": "http://10.0.0.5:5000"}}})


@pytest.mark.parametrize("url, patterns, allowed", [
    ("https://ghcr.io", ["ghcr.io"], True),
    ("https://a.example.org", ["*.example.org"], True),
    ("https://example.org", ["*.example.org"], False),
    ("https://a.example.org:5000", ["*.example.org"], False),
    ("https://a.example.org:5000", ["*.example.org:5000"], True),
    ("https://a.example.org:5001", ["*.example.org:*"], True),
    ("https://evil.org", ["*.example.org"], False),
    ("https://ghcr.io", [], False),
])
def test_allowed_registries_patterns(url, patterns, allowed):
    guard = AddressGuard(resolver("140.82.112.34"))
    if allowed:
        assert guard_for_url(config(*patterns), url, guard) is guard
    else:
        with pytest.raises(PermissionDenied, match="AllowedRegistries"):
            guard_for_url(config(*patterns), url, guard)


@pytest.mark.parametrize("address, kind", [
    ("127.0.0.1", "loopback"), ("::1", "loopback"), ("10.1.2.3", "private"),
    ("192.168.0.1", "private"), ("169.254.169.254", "link-local"), ("fe80::1", "link-local"),
    ("100.64.0.1", "non-public"), ("0.0.0.0", "unspecified"), ("224.0.0.1", "multicast"),
    ("::ffff:127.0.0.1", "loopback"), ("fc00::1", "private"),
])
def test_non_public_addresses_are_refused_whatever_the_name(address, kind):
    guard = AddressGuard(resolver("140.82.112.34", address))
    with pytest.raises(PermissionDenied, match=rf"resolves to \S+ \({kind} address\)"):
        guard_for_url(config("*.example.org"), "https://registry.example.org", guard)


def test_a_location_is_reached_as_configured_without_resolving():
    resolve = resolver("127.0.0.1")
    site = config()
    reference = parse_reference("inside/team/app:1", site)
    assert guard_for_reference(site, reference, AddressGuard(resolve)) is None
    by_address = parse_reference("10.0.0.5:5000/team/app:1", site)
    assert by_address.registry_url == "http://10.0.0.5:5000"
    assert guard_for_reference(site, by_address, AddressGuard(resolve)) is None
    assert resolve.asked == []


def test_a_name_that_does_not_resolve_is_unavailable_not_allowed():
    def fail(*_args, **_kwargs):
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    with pytest.raises(RegistryUnavailable, match="cannot resolve"):
        guard_for_url(config("*.example.org"), "https://no.example.org", AddressGuard(fail))


@pytest.mark.parametrize("pattern", ["http://x.org", "a/b", "x.org:0", "x.org:70000", ""])
def test_bad_patterns_stop_start_up_naming_the_key(pattern):
    with pytest.raises(ConfigError, match="AllowedRegistries"):
        config(pattern)
