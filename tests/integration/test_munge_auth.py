"""MUNGE authentication against real munged daemons (two keys, one that gets stopped)."""

from __future__ import annotations

import logging
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from imagegw.domain.config import Platform
from imagegw.domain.errors import Unauthenticated
from imagegw.gateway.auth import (
    AuthServiceUnavailable,
    MungeDecoder,
    authenticate,
    encode,
)
from tests.support.munge import (
    MungeDaemon,
    make_credential,
)

NOBODY = 65534


def _platform(socket: str | None) -> Platform:
    return Platform(name="perlmutter", access_type="local", munge_socket=socket,
                    admins=("root",), image_dir="/images")


def test_root_credential_decodes_to_uid_0(munge_socket: str) -> None:
    identity = MungeDecoder(munge_socket).decode(make_credential(munge_socket))
    assert (identity.uid, identity.gid) == (0, 0)


def test_credential_made_as_nobody_decodes_to_nobody(munge_socket: str) -> None:
    identity = MungeDecoder(munge_socket).decode(make_credential(munge_socket, as_user="nobody"))
    assert (identity.uid, identity.gid) == (NOBODY, NOBODY)


def test_payload_comes_back_unchanged(munge_socket: str) -> None:
    credential = make_credential(munge_socket, payload=b"pull ubuntu:22.04")
    assert MungeDecoder(munge_socket).decode(credential).payload == b"pull ubuntu:22.04"


def test_encode_makes_credential_the_decoder_accepts(munge_socket: str) -> None:
    credential = encode(b"\x00binary\xff", socket_path=munge_socket)
    identity = MungeDecoder(munge_socket).decode(credential.encode())
    assert (identity.uid, identity.payload) == (0, b"\x00binary\xff")


def test_credential_used_twice_is_rejected_as_replayed(munge_socket: str) -> None:
    decoder = MungeDecoder(munge_socket)
    credential = make_credential(munge_socket)
    decoder.decode(credential)
    with pytest.raises(Unauthenticated, match=r"already used \(replayed\); create a fresh one"):
        decoder.decode(credential)


@pytest.mark.parametrize("garbage", ["hello", "MUNGE:AwQFAAAA:", "MUNGE:é:", "MUNGE:a\x00b:"])
def test_garbage_is_not_a_valid_credential(munge_socket: str, garbage: str) -> None:
    with pytest.raises(Unauthenticated, match="not a valid MUNGE credential"):
        MungeDecoder(munge_socket).decode(garbage)


def test_empty_credential_is_rejected(munge_socket: str) -> None:
    with pytest.raises(Unauthenticated, match="empty"):
        MungeDecoder(munge_socket).decode("  ")


def test_credential_from_another_key_is_not_from_this_cluster(
    munge_socket: str, other_munge_socket: str
) -> None:
    foreign = make_credential(other_munge_socket)
    with pytest.raises(Unauthenticated, match="not issued by this cluster's MUNGE key"):
        MungeDecoder(munge_socket).decode(foreign)


def test_expired_credential_is_rejected_without_its_ids(
    munge_socket: str, caplog: pytest.LogCaptureFixture
) -> None:
    credential = make_credential(munge_socket, as_user="nobody", ttl=1)
    time.sleep(2.1)
    caplog.set_level(logging.DEBUG)
    with pytest.raises(Unauthenticated, match="expired; check clocks") as failure:
        MungeDecoder(munge_socket).decode(credential)
    # libmunge fills in uid/gid for expired credentials; they must go nowhere.
    assert str(NOBODY) not in str(failure.value)
    assert str(NOBODY) not in caplog.text


def test_stopped_daemon_is_a_retryable_service_error_naming_the_socket(
    munge_daemon: MungeDaemon,
) -> None:
    credential = make_credential(munge_daemon.socket)
    munge_daemon.stop()
    with pytest.raises(AuthServiceUnavailable) as failure:
        MungeDecoder(munge_daemon.socket).decode(credential)
    assert munge_daemon.socket in str(failure.value)
    assert failure.value.retryable


def test_crashed_daemon_with_stale_socket_is_a_service_error(munge_daemon: MungeDaemon) -> None:
    credential = make_credential(munge_daemon.socket)
    munge_daemon.kill()
    with pytest.raises(AuthServiceUnavailable, match="munged is running"):
        MungeDecoder(munge_daemon.socket).decode(credential)


def test_missing_socket_is_a_service_error_not_a_bad_credential(tmp_path) -> None:
    with pytest.raises(AuthServiceUnavailable, match="nothing-here.sock"):
        MungeDecoder(str(tmp_path / "nothing-here.sock")).decode("MUNGE:AwQFAAAA:")


def test_decoding_works_from_eight_threads_at_once(munge_socket: str) -> None:
    decoder = MungeDecoder(munge_socket)
    payloads = [f"request-{n}".encode() for n in range(400)]
    credentials = [encode(p, socket_path=munge_socket) for p in payloads]
    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(decoder.decode, credentials))
    assert [r.payload for r in results] == payloads
    assert {(r.uid, r.gid) for r in results} == {(0, 0)}


def test_authenticate_names_the_caller_from_metadata(munge_socket: str) -> None:
    metadata = [("user-agent", "shifterimg"),
                ("authentication", make_credential(munge_socket, as_user="nobody"))]
    identity = authenticate(metadata, _platform(munge_socket), {})
    assert (identity.uid, identity.user) == (NOBODY, "nobody")
    assert identity.groups[0] == NOBODY


def test_authenticate_reuses_one_decoder_per_socket(munge_socket: str) -> None:
    decoders: dict[str, MungeDecoder] = {}
    for _ in range(2):
        authenticate([("authentication", make_credential(munge_socket))],
                     _platform(munge_socket), decoders)
    assert list(decoders) == [munge_socket]


def test_authenticate_checks_with_the_requested_systems_daemon(
    munge_socket: str, other_munge_socket: str
) -> None:
    metadata = [("authentication", make_credential(munge_socket))]
    with pytest.raises(Unauthenticated, match="not issued by this cluster's MUNGE key"):
        authenticate(metadata, _platform(other_munge_socket), {})
