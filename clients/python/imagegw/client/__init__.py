"""The Image Gateway's Python SDK (`GatewayClient`) and its `shifterimg` command.

    from imagegw.client import GatewayClient
    with GatewayClient(["gw1:7777", "gw2:7777"]) as client:
        image = client.pull_and_wait("perlmutter", "ubuntu:24.04")
"""

from imagegw.client.client import GatewayClient, LoginResult
from imagegw.client.credentials import munge_credential_provider, munge_sealer
from imagegw.client.errors import (
    GatewayError,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    PullFailed,
    ResourceExhausted,
    Unauthenticated,
    Unavailable,
)
from imagegw.client.models import ImageInfo, JobInfo, PullUpdate, SignerInfo

__all__ = [
    "GatewayClient",
    "GatewayError",
    "ImageInfo",
    "InvalidArgument",
    "JobInfo",
    "LoginResult",
    "NotFound",
    "PermissionDenied",
    "PullFailed",
    "PullUpdate",
    "ResourceExhausted",
    "SignerInfo",
    "Unauthenticated",
    "Unavailable",
    "munge_credential_provider",
    "munge_sealer",
]
