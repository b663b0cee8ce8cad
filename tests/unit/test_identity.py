"""Identity, admin checks and the metadata rules of authenticate (no daemon needed)."""

from __future__ import annotations

import pwd

import pytest

from imagegw.domain.config import Platform
from imagegw.domain.errors import Unauthenticated
from imagegw.gateway.auth import ANONYMOUS, Identity, authenticate, is_admin


def _platform(*admins: str, socket: str | None = None) -> Platform:
    return Platform(name="perlmutter", access_type="local", munge_socket=socket,
                    admins=admins, image_dir="/images")


def _unknown_uid() -> int:
    uid = 4_000_000
    while True:
        try:
            pwd.getpwuid(uid)
        except KeyError:
            return uid
        uid += 1


def test_root_is_named_and_has_its_primary_group_first() -> None:
    identity = Identity.from_uid(0, 0)
    assert identity.user == "root"
    assert identity.groups[0] == 0


def test_nobody_is_named_from_the_user_database() -> None:
    assert Identity.from_uid(65534, 65534).user == "nobody"


def test_unknown_uid_is_named_by_number_with_only_its_primary_group() -> None:
    uid = _unknown_uid()
    assert Identity.from_uid(uid, 4242) == Identity(uid, 4242, f"uid{uid}", (4242,))


def test_negative_ids_are_refused() -> None:
    with pytest.raises(ValueError):
        Identity.from_uid(-1, 0)


def test_admin_is_an_exact_user_name_match() -> None:
    platform = _platform("root", "alice")
    assert is_admin(Identity(0, 0, "root", (0,)), platform)
    assert not is_admin(Identity(1, 1, "roo", (1,)), platform)
    assert not is_admin(Identity(2, 2, "rootx", (2,)), platform)
    assert not is_admin(Identity(3, 3, "Root", (3,)), platform)


def test_admin_names_are_not_matched_as_substrings_of_a_bare_string() -> None:
    platform = _platform()
    object.__setattr__(platform, "admins", "root")
    assert not is_admin(Identity(1, 1, "roo", (1,)), platform)


def test_anonymous_is_never_admin() -> None:
    platform = _platform(ANONYMOUS.user, "anonymous", "")
    assert ANONYMOUS.is_anonymous
    assert not is_admin(ANONYMOUS, platform)


def test_missing_credential_means_anonymous() -> None:
    metadata = [("user-agent", "grpc-python")]
    assert authenticate(metadata, _platform(socket="/nonexistent.sock"), {}) is ANONYMOUS


def test_credential_for_system_without_munge_socket_grants_nothing() -> None:
    assert authenticate([("authentication", "MUNGE:xyz:")], _platform(), {}) is ANONYMOUS


def test_two_credentials_in_one_request_are_refused() -> None:
    metadata = [("authentication", "MUNGE:a:"), ("authentication", "MUNGE:b:")]
    with pytest.raises(Unauthenticated, match="exactly one"):
        authenticate(metadata, _platform(socket="/nonexistent.sock"), {})
