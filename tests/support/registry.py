"""Registry fixtures over testbed.registry (Debian's docker-registry on loopback ports),
and its names re-exported under the one the tests import them by.

Fixtures: `registry` (anonymous), `basic_registry`, `token_registry`, all module-scoped,
with the user alice/wonderland on the authenticated ones (tests/conftest.py registers them
for every test: name one as a test's argument).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from testbed.registry import (
    ISSUER,
    REGISTRY_BINARY,
    SERVICE,
    START_TIMEOUT,
    TEST_USERS,
    RegistryServer,
    TokenServer,
    free_port,
    start_registry,
)

__all__ = [
    "REGISTRY_BINARY", "START_TIMEOUT", "TEST_USERS", "SERVICE", "ISSUER", "RegistryServer",
    "free_port", "start_registry", "TokenServer", "registry", "basic_registry", "token_registry",
]


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryServer]:
    """An anonymous registry shared by one test module."""
    with start_registry(tmp_path_factory.mktemp("registry")) as server:
        yield server


@pytest.fixture(scope="module")
def basic_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryServer]:
    """A registry with htpasswd (bcrypt) Basic auth; user alice, password wonderland."""
    with start_registry(tmp_path_factory.mktemp("basic-registry"), auth="basic",
                        users=TEST_USERS) as server:
        yield server


@pytest.fixture(scope="module")
def token_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryServer]:
    """A registry with Bearer token auth; user alice, password wonderland."""
    with start_registry(tmp_path_factory.mktemp("token-registry"), auth="token",
                        users=TEST_USERS) as server:
        yield server
