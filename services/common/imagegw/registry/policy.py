"""Which registries the gateway and the worker may reach: `Locations` and `AllowedRegistries`.

A registry a `Locations` entry names (by its key, or by its URL) is the site's choice and is
reached wherever it is. Any other registry host must match an `AllowedRegistries` pattern and
resolve only to public addresses: never loopback, link-local, private, multicast or otherwise
non-global ones, judged on what the name resolves to (getaddrinfo), not on its spelling.
`AddressGuard` applies the address rule to every connection of such a registry (redirects and
token servers included) and hands back the address it checked, so the connection goes there.
"""

from __future__ import annotations

import fnmatch
import ipaddress
import socket
from collections.abc import Callable, Sequence

from imagegw.domain.config import Config
from imagegw.domain.errors import PermissionDenied, RegistryUnavailable
from imagegw.domain.reference import ImageReference

from .transport import origin

__all__ = ["AddressGuard", "guard_for_reference", "guard_for_url", "named_by_location"]

Resolver = Callable[..., Sequence[tuple]]


def named_by_location(config: Config, registry_url: str) -> bool:
    """Whether a `Locations` entry names the registry at `registry_url` (same URL)."""
    return any(location.url == registry_url for location in config.locations.values())


def _authority(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _pattern_allows(pattern: str, scheme: str, host: str, port: int) -> bool:
    """"*.example.org" matches its hosts on the scheme's default port; "host:5000" that
    port; "host:*" any port."""
    pattern = pattern.lower()
    if pattern.startswith("["):
        pattern_host, _, rest = pattern[1:].partition("]")
        pattern_port = rest.removeprefix(":")
    else:
        pattern_host, _, pattern_port = pattern.partition(":")
    if pattern_port != "*":
        wanted = int(pattern_port) if pattern_port else (443 if scheme == "https" else 80)
        if port != wanted:
            return False
    return fnmatch.fnmatchcase(host, pattern_host)


def _non_global(address: str) -> str | None:
    """What kind of address this is when a public registry may not live there, else None."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    for kind in ("unspecified", "loopback", "link_local", "private", "multicast", "reserved"):
        if getattr(ip, f"is_{kind}"):
            return kind.replace("_", "-")
    return None if ip.is_global else "non-public"


class AddressGuard:
    """Resolves a host and refuses it unless every address is public; used by the transport
    for registries no `Locations` entry names."""

    def __init__(self, resolve: Resolver = socket.getaddrinfo) -> None:
        self._resolve = resolve

    def address(self, host: str, port: int) -> str:
        """The address to connect to for host:port (checked), or PermissionDenied."""
        try:
            infos = self._resolve(host, port, type=socket.SOCK_STREAM)
        except (OSError, UnicodeError) as exc:
            raise RegistryUnavailable(
                f"cannot resolve registry host {host}: {exc}",
                hint="check the registry's name") from exc
        addresses = [info[4][0] for info in infos]
        if not addresses:
            raise RegistryUnavailable(f"registry host {host} resolves to no address")
        for address in addresses:
            kind = _non_global(address)
            if kind is not None:
                raise PermissionDenied(
                    f"registry {_authority(host, port)} resolves to {address} ({kind} "
                    "address); only a registry the site configures in Locations may be "
                    "reached there",
                    hint="a site admin can add the registry to Locations")
        return addresses[0]


def guard_for_url(config: Config, registry_url: str,
                  guard: AddressGuard | None = None) -> AddressGuard | None:
    """Checks a registry's base URL against the policy before anything connects to it.

    Returns None for a registry a Location names (reached as configured), else the guard
    every connection to it must pass (after checking its own addresses now). Raises
    PermissionDenied, naming the setting that would allow it, for any other registry."""
    if named_by_location(config, registry_url):
        return None
    scheme, host, port = origin(registry_url)
    authority = _authority(host, port)
    if not any(_pattern_allows(p, scheme, host, port) for p in config.allowed_registries):
        suggestion = host if port == (443 if scheme == "https" else 80) else authority
        raise PermissionDenied(
            f"registry {authority} is not one this gateway pulls from",
            hint=f"use a configured location, or ask the site to add it to Locations or "
                 f"to AllowedRegistries (e.g. \"{suggestion}\")")
    guard = guard or AddressGuard()
    guard.address(host, port)
    return guard


def guard_for_reference(config: Config, reference: ImageReference,
                        guard: AddressGuard | None = None) -> AddressGuard | None:
    """`guard_for_url` for the registry of a parsed reference."""
    return guard_for_url(config, reference.registry_url, guard)
