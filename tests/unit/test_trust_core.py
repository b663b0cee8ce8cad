"""Users and trust in the gateway core, on a real SQLite store and in-process queue:
ACL identities, visibility, per-user pull limits, expiry, the credential vault, the
audit log and the listen-address rule."""

from __future__ import annotations

import json
import logging
import stat
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from imagegw.domain.acl import acl_file_suffix, acl_key
from imagegw.domain.config import Config, parse_config
from imagegw.domain.errors import (
    ConfigError,
    ImageNotFound,
    InvalidRequest,
    PermissionDenied,
    ResourceExhausted,
    Unauthenticated,
)
from imagegw.domain.model import ImageMetadata, ImageState, RegistryCredentials
from imagegw.gateway.app import check_listen_security
from imagegw.gateway.core import audit
from imagegw.gateway.core.access import ANONYMOUS_CALLER, Caller
from imagegw.gateway.core.expiry import Expirer, check_interval
from imagegw.gateway.core.pulls import PullManager, PullRequest, import_reference
from imagegw.gateway.core.vault import CredentialVault
from imagegw.gateway.queue import MemoryJobQueue, MemoryProgressHub
from imagegw.gateway.records import ImageRecord
from imagegw.gateway.store import SqliteImageStore
from imagegw.publish import LocalPublisher
from imagegw.rpc.server import is_loopback

SYSTEM = "cluster"
ALICE = Caller(uid=1001, gid=100, user="alice", groups=(100,))
BOB = Caller(uid=1002, gid=200, user="bob", groups=(200, 300))
CAROL = Caller(uid=1003, gid=300, user="carol", groups=(300,))
ADMIN = Caller(uid=0, gid=0, user="root", groups=(0,), admin_of=frozenset({SYSTEM}))


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def make_config(tmp_path: Path, **top: object) -> Config:
    return parse_config({
        "ImageExpirationTimeout": "0:0:1:0",
        "Platforms": {SYSTEM: {"accesstype": "local", "mungeSocketPath": "/run/munge.sock",
                               "admins": ["root"], "local": {"imageDir": str(tmp_path / "img")}}},
        **top,
    }, data_dir=str(tmp_path / "data"))


@pytest.fixture
def world(tmp_path: Path) -> Iterator[tuple[PullManager, SqliteImageStore, Clock]]:
    store = SqliteImageStore(str(tmp_path / "records.sqlite3"))
    clock = Clock()
    pulls = PullManager(make_config(tmp_path, MaxConcurrentPullsPerUser=2), store,
                        MemoryJobQueue(), MemoryProgressHub(), clock=clock)
    yield pulls, store, clock
    store.close()


def pull(pulls: PullManager, caller: Caller, reference: str, users=(), groups=()):
    return pulls.request_pull(PullRequest(SYSTEM, reference, user_acl=tuple(users),
                                          group_acl=tuple(groups)), caller)


def finish(store: SqliteImageStore, ticket, image_id: str, now: float) -> ImageRecord:
    record = store.get_pull(ticket.key)
    assert record is not None
    suffix = acl_file_suffix(record.user_acl, record.group_acl)
    image = ImageRecord(
        system=SYSTEM, image_id=image_id, format="squashfs", manifest_digest="sha256:" + "1" * 64,
        metadata=ImageMetadata(), image_file=f"{image_id}{suffix}.squashfs",
        meta_file=f"{image_id}{suffix}.meta", size_bytes=4, tags=(ticket.key.reference,),
        user_acl=record.user_acl, group_acl=record.group_acl, acl_key=ticket.key.acl_key,
        last_pull=now, last_used=now)
    assert store.complete_pull(ticket.key, ticket.job_id, image, now)
    return image


# -- ACL identities ----------------------------------------------------------------------


def test_acl_key_and_file_suffix_are_the_same_for_any_order_and_empty_for_public() -> None:
    assert acl_key([3, 1, 1], [9]) == acl_key((1, 3), (9,)) == "u:1,3;g:9"
    assert acl_key([], []) == "" and acl_file_suffix([], []) == ""
    assert acl_file_suffix([1, 3], [9]) == acl_file_suffix([3, 1], [9])
    assert acl_file_suffix([1], []) != acl_file_suffix([2], [])
    assert len(acl_file_suffix([1], [])) == 13


def test_import_tags_become_import_references_and_bad_ones_are_refused() -> None:
    assert import_reference("mytools:1.0") == "import/mytools:1.0"
    assert import_reference("team/tools") == "import/team/tools:latest"
    for bad in ("", "Tools:1", "host.example.org/x:1", "x@sha256:" + "0" * 64):
        with pytest.raises(InvalidRequest):
            import_reference(bad)


# -- who may pull and see what -------------------------------------------------------------


def test_anonymous_pulls_are_refused_where_munge_is_configured(world) -> None:
    pulls, _store, _clock = world
    with pytest.raises(Unauthenticated, match="need a MUNGE credential"):
        pull(pulls, ANONYMOUS_CALLER, "ubuntu:24.04")


def test_private_pull_adds_the_puller_to_the_acl(world) -> None:
    pulls, store, _clock = world
    ticket = pull(pulls, ALICE, "ubuntu:24.04", users=[BOB.uid])
    record = store.get_pull(ticket.key)
    assert record is not None and record.user_acl == (ALICE.uid, BOB.uid)
    assert ticket.key.acl_key == acl_key([ALICE.uid, BOB.uid], [])


def test_private_image_is_visible_only_to_its_acl_and_admins(world) -> None:
    pulls, store, clock = world
    public = finish(store, pull(pulls, CAROL, "app:1"), "a" * 64, clock.now)
    private = finish(store, pull(pulls, ALICE, "app:1", users=[BOB.uid]), "a" * 64, clock.now)
    assert public.image_file != private.image_file

    assert pulls.lookup(SYSTEM, "docker", "app:1", ALICE).image.acl_key == private.acl_key
    assert pulls.lookup(SYSTEM, "docker", "app:1", BOB).image.acl_key == private.acl_key
    assert pulls.lookup(SYSTEM, "docker", "app:1", CAROL).image.acl_key == ""
    assert pulls.lookup(SYSTEM, "id", "a" * 64, CAROL).image.acl_key == ""

    def listed(caller: Caller) -> set[str]:
        statuses, _ = pulls.list_images(SYSTEM, None, 100, "", caller)
        return {s.image.acl_key for s in statuses if s.image}

    assert listed(BOB) == {"", private.acl_key}
    assert listed(CAROL) == {""}
    assert listed(ANONYMOUS_CALLER) == {""}
    assert listed(ADMIN) == {"", private.acl_key}


def test_private_image_not_naming_the_caller_is_not_found(world) -> None:
    pulls, store, clock = world
    finish(store, pull(pulls, ALICE, "secret:1", users=[BOB.uid]), "b" * 64, clock.now)
    for caller in (CAROL, ANONYMOUS_CALLER, ADMIN):
        with pytest.raises(ImageNotFound):
            pulls.lookup(SYSTEM, "docker", "secret:1", caller)
    with pytest.raises(ImageNotFound):
        pulls.lookup(SYSTEM, "id", "b" * 64, CAROL)


def test_group_acl_lets_group_members_see_the_image(world) -> None:
    pulls, store, clock = world
    finish(store, pull(pulls, ALICE, "team:1", groups=[300]), "c" * 64, clock.now)
    assert pulls.lookup(SYSTEM, "docker", "team:1", CAROL).image is not None


def test_only_the_puller_or_an_admin_can_change_a_private_images_acls(world) -> None:
    pulls, store, clock = world
    finish(store, pull(pulls, ALICE, "app:2", users=[BOB.uid]), "d" * 64, clock.now)
    with pytest.raises(PermissionDenied, match="only that user or an admin"):
        pull(pulls, BOB, "app:2", users=[CAROL.uid])
    assert pull(pulls, ALICE, "app:2", users=[CAROL.uid]).started
    assert pull(pulls, ADMIN, "app:3", users=[CAROL.uid]).started


def test_jobs_of_private_pulls_are_listed_only_for_those_who_may_see_them(world) -> None:
    pulls, _store, _clock = world
    pull(pulls, ALICE, "hidden:1", users=[BOB.uid])
    pull(pulls, CAROL, "open:1")
    assert {p.key.reference for p in pulls.list_jobs(SYSTEM, CAROL)} == {
        "registry-1.docker.io/library/open:1"}
    assert len(pulls.list_jobs(SYSTEM, BOB)) == 2
    assert len(pulls.list_jobs(SYSTEM, ADMIN)) == 2


def test_a_user_beyond_the_concurrent_pull_limit_is_refused_but_may_join(world) -> None:
    pulls, _store, _clock = world
    pull(pulls, ALICE, "one:1")
    pull(pulls, ALICE, "two:1")
    with pytest.raises(ResourceExhausted, match="at most 2"):
        pull(pulls, ALICE, "three:1")
    assert not pull(pulls, ALICE, "one:1").started  # joining its own pull
    assert not pull(pulls, BOB, "two:1").started  # joining someone else's
    assert pull(pulls, BOB, "three:1").started  # other users have their own budget


def test_imported_references_cannot_be_pulled(world) -> None:
    pulls, _store, _clock = world
    with pytest.raises(InvalidRequest, match="imported image"):
        pull(pulls, ALICE, "import/tools:1")


# -- expiry --------------------------------------------------------------------------------


def publish(tmp_path: Path, image: ImageRecord) -> LocalPublisher:
    publisher = LocalPublisher(tmp_path / "img")
    source = tmp_path / "source.sqfs"
    source.write_bytes(b"hsqs")
    publisher.publish(source, image.image_file, b"FORMAT: squashfs\n", image.meta_file)
    return publisher


def test_auto_expiry_removes_unused_images_and_marks_them_expired(world, tmp_path) -> None:
    pulls, store, clock = world
    image = finish(store, pull(pulls, ALICE, "old:1"), "e" * 64, clock.now)
    publish(tmp_path, image)
    expirer = Expirer(pulls.config, store, pulls, clock=clock)
    clock.now += 59
    assert expirer.expire_unused(SYSTEM) == []
    clock.now += 2
    assert [i.image_id for i in expirer.expire_unused(SYSTEM)] == [image.image_id]
    assert store.get_image(SYSTEM, image.image_id).state == ImageState.EXPIRED
    assert not (tmp_path / "img" / image.image_file).exists()
    assert not (tmp_path / "img" / image.meta_file).exists()
    assert pulls.lookup(SYSTEM, "docker", "old:1", ALICE).state == ImageState.EXPIRED


def test_a_lookup_keeps_an_image_from_expiring(world, tmp_path) -> None:
    pulls, store, clock = world
    image = finish(store, pull(pulls, ALICE, "used:1"), "f" * 64, clock.now)
    publish(tmp_path, image)
    expirer = Expirer(pulls.config, store, pulls, clock=clock)
    clock.now += 50
    pulls.lookup(SYSTEM, "docker", "used:1", BOB)
    clock.now += 50
    assert expirer.expire_unused(SYSTEM) == []


def test_an_image_with_a_pull_in_flight_is_never_expired(world, tmp_path) -> None:
    pulls, store, clock = world
    image = finish(store, pull(pulls, ALICE, "busy:1"), "9" * 64, clock.now)
    publish(tmp_path, image)
    expirer = Expirer(pulls.config, store, pulls, clock=clock)
    clock.now += 3600
    ticket = pulls.request_pull(PullRequest(SYSTEM, "busy:1", force=True), ALICE)
    assert ticket.started
    assert expirer.expire_unused(SYSTEM) == []
    assert (tmp_path / "img" / image.image_file).exists()
    with pytest.raises(ImageNotFound, match="in flight"):
        expirer.expire_image(SYSTEM, "docker", "busy:1", ADMIN)


def test_expiring_by_hand_is_for_admins_only(world, tmp_path) -> None:
    pulls, store, clock = world
    image = finish(store, pull(pulls, ALICE, "hand:1"), "8" * 64, clock.now)
    publish(tmp_path, image)
    expirer = Expirer(pulls.config, store, pulls, clock=clock)
    with pytest.raises(PermissionDenied, match="only admins"):
        expirer.expire_image(SYSTEM, "docker", "hand:1", ALICE)
    with pytest.raises(PermissionDenied):
        expirer.expire_unused(SYSTEM, ALICE)
    assert [i.image_id for i in expirer.expire_image(SYSTEM, "id", "8" * 64, ADMIN)] == [
        image.image_id]


def test_expiry_interval_follows_the_timeout_unless_configured(tmp_path) -> None:
    assert check_interval(make_config(tmp_path)) == 6.0
    assert check_interval(make_config(tmp_path, ImageExpirationTimeout="90:00:00:00")) == 300.0
    assert check_interval(make_config(tmp_path, ExpirationCheckInterval=2)) == 2.0


# -- credentials at rest ---------------------------------------------------------------------


def test_vault_keeps_credentials_encrypted_per_user_and_registry(tmp_path: Path) -> None:
    vault = CredentialVault(tmp_path / "creds", tmp_path / "key")
    vault.put(1001, "registry.example.org:443", RegistryCredentials("alice", "s3cret-pw"))
    assert vault.get(1001, "registry.example.org:443") == RegistryCredentials("alice", "s3cret-pw")
    assert vault.get(1002, "registry.example.org:443") is None
    assert vault.get(1001, "other.example.org:443") is None
    assert vault.get(-1, "registry.example.org:443") is None
    assert stat.S_IMODE((tmp_path / "key").stat().st_mode) == 0o600
    files = [p for p in (tmp_path / "creds").rglob("*") if p.is_file()]
    assert len(files) == 1 and stat.S_IMODE(files[0].stat().st_mode) == 0o600
    assert b"s3cret-pw" not in files[0].read_bytes()
    assert "s3cret-pw" not in repr(vault.get(1001, "registry.example.org:443"))
    assert vault.remove(1001, "registry.example.org:443")
    assert not vault.remove(1001, "registry.example.org:443")


def test_vault_refuses_a_key_file_others_can_read(tmp_path: Path) -> None:
    key = tmp_path / "key"
    CredentialVault(tmp_path / "c", key).put(1, "r:443", RegistryCredentials("u", "p"))
    key.chmod(0o644)
    with pytest.raises(ConfigError, match="readable by others"):
        CredentialVault(tmp_path / "c", key).get(1, "r:443")


# -- audit ---------------------------------------------------------------------------------------


def test_audit_writes_one_json_line_with_who_what_and_the_result(caplog) -> None:
    caplog.set_level(logging.INFO, logger=audit.AUDIT_LOGGER)
    with audit.audited("pull", ALICE, system=SYSTEM, image="app:1") as details:
        details["job"] = "j1"
    with pytest.raises(PermissionDenied), audit.audited("expire", BOB, system=SYSTEM,
                                                         image="app:1"):
        raise PermissionDenied("only admins")
    lines = [json.loads(r.getMessage()) for r in caplog.records if r.name == audit.AUDIT_LOGGER]
    assert [(line["action"], line["uid"], line["result"]) for line in lines] == [
        ("pull", 1001, "ok"), ("expire", 1002, "PermissionDenied: only admins")]
    assert lines[0]["job"] == "j1" and lines[0]["image"] == "app:1"


# -- configuration and listening -------------------------------------------------------------------


def test_anonymous_pulls_default_to_allowed_only_without_munge(tmp_path: Path) -> None:
    config = parse_config({"Platforms": {
        "a": {"local": {"imageDir": "/a"}},
        "b": {"local": {"imageDir": "/b"}, "mungeSocketPath": "/run/m"},
        "c": {"local": {"imageDir": "/c"}, "mungeSocketPath": "/run/m", "allowAnonymousPull": True},
    }})
    assert [config.platforms[n].allow_anonymous_pull for n in "abc"] == [True, False, True]


@pytest.mark.parametrize(("top", "key"), [
    ({"TLSCertificate": "/c.pem"}, "TLSKey"),
    ({"TLSClientCA": "/ca.pem"}, "TLSClientCA"),
    ({"MaxConcurrentPullsPerUser": 0}, "MaxConcurrentPullsPerUser"),
    ({"ExpirationCheckInterval": -1}, "ExpirationCheckInterval"),
    ({"AllowInsecureListen": "yes"}, "AllowInsecureListen"),
])
def test_bad_trust_settings_name_the_key(top: dict, key: str) -> None:
    with pytest.raises(ConfigError, match=key):
        parse_config(top)


def test_loopback_addresses_are_recognised() -> None:
    assert all(map(is_loopback, ["127.0.0.1:7777", "[::1]:7777", "localhost:1", "unix:/s"]))
    assert not any(map(is_loopback, ["0.0.0.0:7777", "10.0.0.1:7777", "gw.example.org:7777"]))


def test_listening_beyond_loopback_needs_tls_and_munge_or_an_explicit_override(tmp_path) -> None:
    plain = make_config(tmp_path)
    check_listen_security(plain, "127.0.0.1:7777")
    with pytest.raises(ConfigError, match="AllowInsecureListen") as refused:
        check_listen_security(plain, "0.0.0.0:7777")
    assert "TLSCertificate" in str(refused.value)
    check_listen_security(replace(plain, allow_insecure_listen=True), "0.0.0.0:7777")
    tls = replace(plain, tls_certificate="/c.pem", tls_key="/k.pem")
    check_listen_security(tls, "0.0.0.0:7777")
    no_munge = parse_config({"TLSCertificate": "/c", "TLSKey": "/k", "Platforms": {
        "x": {"local": {"imageDir": "/x"}}}})
    with pytest.raises(ConfigError, match="mungeSocketPath on x"):
        check_listen_security(no_munge, "0.0.0.0:7777")
