"""A gateway that enforces MUNGE, for the users-and-trust integration tests.

`start_trust_gateway` runs `imagegw serve` with a real munged: anonymous pulls
off, admin root, ImportUsers daemon, a `testreg` location (anonymous registry)
and a `private` location (basic-auth registry). `call` makes a fresh credential
as a given user (root, daemon, nobody, bin) for every RPC."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import grpc

from tests.support import layers as L
from tests.support.images import PushedImage, push_image
from tests.support.munge import make_credential
from tests.support.services import ServiceProcess, embedded_config, start_service

SYSTEM = "default"
#: Users with fixed uids on Debian; each can make MUNGE credentials through runuser.
UIDS = {"root": 0, "daemon": 1, "bin": 2, "nobody": 65534}


def trust_config(workdir: Path, munge_socket: str, *, registry_url: str,
                 private_url: str | None = None, **top: Any) -> dict:
    config = embedded_config(workdir, registry_url=registry_url)
    platform = config["Platforms"][SYSTEM]
    platform["mungeSocketPath"] = munge_socket
    del platform["allowAnonymousPull"]  # the secure default: a munge socket is configured
    config["ImportUsers"] = ["daemon"]
    if private_url:
        config["Locations"]["private"] = {"remotetype": "dockerv2", "url": private_url}
    config.update(top)
    return config


def start_trust_gateway(workdir: Path, munge_socket: str, **kwargs: Any) -> ServiceProcess:
    return start_service("serve", trust_config(workdir, munge_socket, **kwargs), workdir)


def metadata(munge_socket: str, user: str | None) -> tuple[tuple[str, str], ...]:
    if user is None:
        return ()
    as_user = None if user == "root" else user
    return (("authentication", make_credential(munge_socket, as_user=as_user)),)


def call(service: ServiceProcess, munge_socket: str, method: str, request: Any,
         user: str | None = "root", timeout: float = 120.0) -> Any:
    """One RPC as `user` (None: anonymous). Streams are read to the end into a list."""
    with service.channel() as channel:
        stub_method = getattr(_stub(channel), method)
        result = stub_method(request, timeout=timeout, metadata=metadata(munge_socket, user))
        return list(result) if method == "PullImage" else result


def _stub(channel: grpc.Channel) -> Any:
    from imagegw.v1 import gateway_service_pb2_grpc
    return gateway_service_pb2_grpc.GatewayServiceStub(channel)


def push_small_image(registry_url: str, repository: str, tag: str, marker: str,
                     auth: tuple[str, str] | None = None) -> PushedImage:
    layer = L.layer(L.file(f"etc/{marker}", marker.encode()))
    return push_image(registry_url, repository, tag, [layer], auth=auth)


def rpc_error(excinfo: Any) -> tuple[grpc.StatusCode, str]:
    error = excinfo.value
    return error.code(), error.details()
