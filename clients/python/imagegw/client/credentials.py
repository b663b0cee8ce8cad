"""MUNGE credentials for gateway calls, one fresh credential per call.

`munge_credential_provider(socket)` returns a callable for `GatewayClient`; it
runs `munge -n -S <socket>` and answers None (an anonymous call) when munge is
missing or fails, so a site without MUNGE still works for public operations.
`munge_sealer(socket)` makes credentials carrying a payload (registry passwords
for login travel sealed in them); it answers None in the same cases.
"""

from __future__ import annotations

import logging
import subprocess
from collections.abc import Callable

logger = logging.getLogger(__name__)

DEFAULT_MUNGE_SOCKET = "/run/munge/munge.socket.2"
MUNGE_TIMEOUT = 10.0


def munge_credential_provider(
    socket: str, *, command: str = "munge", timeout: float = MUNGE_TIMEOUT
) -> Callable[[], str | None]:
    """A provider making a new credential from the munged at `socket` on each call."""
    warned = False

    def give_up(reason: str) -> None:
        nonlocal warned
        if not warned:
            logger.warning("calling the gateway without a MUNGE credential: %s", reason)
            warned = True

    seal = munge_sealer(socket, command=command, timeout=timeout, on_failure=give_up)

    def provide() -> str | None:
        return seal(b"")

    return provide


def munge_sealer(
    socket: str, *, command: str = "munge", timeout: float = MUNGE_TIMEOUT,
    on_failure: Callable[[str], None] | None = None,
) -> Callable[[bytes], str | None]:
    """A callable making a credential that carries `payload` (stdin, never argv)."""

    def give_up(reason: str) -> None:
        if on_failure is not None:
            on_failure(reason)
        else:
            logger.warning("cannot make a MUNGE credential: %s", reason)

    def seal(payload: bytes) -> str | None:
        try:
            done = subprocess.run(
                [command, "-S", socket] + ([] if payload else ["-n"]),
                input=payload, capture_output=True, timeout=timeout, check=False,
            )
        except FileNotFoundError:
            give_up(f"the {command!r} command is not installed")
            return None
        except subprocess.TimeoutExpired:
            give_up(f"{command} did not answer within {timeout:g}s (socket {socket})")
            return None
        if done.returncode != 0:
            stderr = done.stderr.decode(errors="replace").strip()
            detail = stderr.splitlines()[-1:] or [f"exit status {done.returncode}"]
            give_up(f"{command} failed: {detail[0]}")
            return None
        return done.stdout.decode("ascii", errors="replace").strip() or None

    return seal
