"""The sshd fixture over testbed.sshd (a real OpenSSH sshd on a loopback high port), and
its names re-exported under the one the tests import them by. `sshd_target` is registered
for every test by tests/conftest.py: name it as a test's argument."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from testbed.sshd import SSH_KEYGEN, SSHD, USER, SshdServer, start_sshd

__all__ = ["SSHD", "SSH_KEYGEN", "USER", "SshdServer", "sshd_target", "start_sshd"]


@pytest.fixture(scope="module")
def sshd_target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SshdServer]:
    server = start_sshd(tmp_path_factory.mktemp("sshd"))
    try:
        yield server
    finally:
        server.stop()
