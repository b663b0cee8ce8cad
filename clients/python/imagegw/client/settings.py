"""Where shifterimg finds its gateway, system and MUNGE socket.

Order: command-line option, then the environment (IMAGEGW_GATEWAY, IMAGEGW_SYSTEM,
MUNGE_SOCKET, IMAGEGW_CA_CERT), then udiRoot.conf (`imageGateway`, `system`; path from UDIROOT_CONF),
then the defaults 127.0.0.1:7777 and "default". The environment is passed in.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from imagegw.client.credentials import DEFAULT_MUNGE_SOCKET
from imagegw.client.udiroot import (
    DEFAULT_PATH,
    gateway_addresses,
    names_rest_gateways,
    read_udiroot,
    rest_urls,
)

DEFAULT_GATEWAY = "127.0.0.1:7777"
DEFAULT_SYSTEM = "default"


@dataclass(frozen=True)
class CliSettings:
    addresses: tuple[str, ...]
    system: str
    #: The munged socket to make credentials with; None for anonymous calls.
    munge_socket: str | None
    #: A PEM CA certificate: talk TLS to the gateway, verified against it.
    ca_cert: str | None = None
    #: Talk Shifter's REST API: `addresses` are base URLs ("http://host:port").
    rest: bool = False


def resolve_settings(
    *,
    gateways: Sequence[str] | None,
    system: str | None,
    munge_socket: str | None,
    environ: Mapping[str, str],
    ca_cert: str | None = None,
    exists: Callable[[str], bool] = os.path.exists,
    rest: bool = False,
) -> CliSettings:
    """Combines options, environment and udiRoot.conf into the settings to use. Gateways
    written as http(s):// URLs (as Shifter's udiRoot.conf has them), or `rest`, mean
    Shifter's REST API; host:port addresses mean gRPC."""
    udiroot: dict[str, str] | None = None

    def conf(key: str) -> str:
        nonlocal udiroot
        if udiroot is None:
            udiroot = read_udiroot(environ.get("UDIROOT_CONF") or DEFAULT_PATH)
        return udiroot.get(key, "")

    gateway_text = ",".join(gateways or ()) or environ.get("IMAGEGW_GATEWAY", "")
    text = gateway_text or conf("imageGateway") or DEFAULT_GATEWAY
    rest = rest or names_rest_gateways(text)
    addresses = rest_urls(text) if rest else gateway_addresses(text)
    chosen_system = system or environ.get("IMAGEGW_SYSTEM") or conf("system") or DEFAULT_SYSTEM
    socket = munge_socket or environ.get("MUNGE_SOCKET") or None
    if socket is None and exists(DEFAULT_MUNGE_SOCKET):
        socket = DEFAULT_MUNGE_SOCKET
    return CliSettings(addresses=tuple(addresses), system=chosen_system, munge_socket=socket,
                       ca_cert=ca_cert or environ.get("IMAGEGW_CA_CERT") or None, rest=rest)
