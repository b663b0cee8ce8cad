"""MUNGE credentials for gateway calls, one fresh credential per call.

`munge_credential_provider(socket)` returns a callable for `GatewayClient`; it
runs `munge -n -S <socket>` and answers None (an anonymous call) when munge is
missing or fails, so a site without MUNGE still works for public operations.
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

    def provide() -> str | None:
        try:
            done = subprocess.run(
                [command, "-n", "-S", socket],
                capture_output=True, text=True, timeout=timeout, check=False,
            )
        except FileNotFoundError:
            give_up(f"the {command!r} command is not installed")
            return None
        except subprocess.TimeoutExpired:
            give_up(f"{command} did not answer within {timeout:g}s (socket {socket})")
            return None
        if done.returncode != 0:
            detail = done.stderr.strip().splitlines()[-1:] or [f"exit status {done.returncode}"]
            give_up(f"{command} failed: {detail[0]}")
            return None
        return done.stdout.strip() or None

    return provide
