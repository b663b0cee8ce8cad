"""What a failed gRPC call tells its caller, typed for the tests' assertions."""

from __future__ import annotations

import grpc

__all__ = ["details"]


def details(error: grpc.RpcError) -> str:
    """The status message of a failed call: grpc types it `str | None`, and every status
    our services set carries one, so a missing message fails the test here."""
    message = error.details()
    assert message is not None, f"{error.code()} came without a message"
    return message
