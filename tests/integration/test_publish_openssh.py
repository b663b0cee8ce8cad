"""Publishing through the system's OpenSSH client to a real sshd on 127.0.0.1.

Every test of the paramiko publisher (test_publish_ssh) runs again here over
`OpenSshPublisher`'s stream; then what only the stream does: a sender that dies or
stops mid-image leaves nothing behind, a superblock patched last lands, and a copy
that does not match the local file (the remote `cksum` of what landed) never gets its
final name.
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

import tests.integration.test_publish_ssh as paramiko_suite
from imagegw.domain.errors import TransferFailed
from imagegw.publish import publisher_for
from imagegw.publish.openssh import OpenSshPublisher
from tests.integration.test_publish_ssh import (  # noqa: F401 - the tests they run
    META,
    MIB,
    leftovers,
    sha256,
    test_a_private_image_and_its_meta_land_0600,
    test_a_stalled_server_fails_the_publish_after_the_stall_timeout,
    test_all_hosts_down_is_a_retryable_failure_naming_them,
    test_changed_host_key_is_refused,
    test_first_host_down_then_second_host_is_used,
    test_image_dir_with_spaces_quotes_and_shell_syntax_is_used_literally,
    test_key_not_authorized_is_refused,
    test_progress_counts_up_to_the_image_size,
    test_publish_lands_exact_bytes_readable_by_all,
    test_unknown_host_key_is_refused,
    test_unwritable_remote_directory_fails_without_leftovers,
)
from tests.support.sshd import SshdServer

# The fixtures of the imported tests.
image_dir = paramiko_suite.image_dir
source = paramiko_suite.source


@pytest.fixture(autouse=True)
def over_openssh(monkeypatch: pytest.MonkeyPatch) -> None:
    """The imported tests build `SshPublisher`s: give them the OpenSSH stream instead."""
    monkeypatch.setattr(paramiko_suite, "SshPublisher", OpenSshPublisher)


def test_a_remote_platform_publishes_through_openssh(sshd_target: SshdServer) -> None:
    from imagegw.domain.config import Platform

    platform = Platform(name="cluster", access_type="remote", ssh=sshd_target.target())

    assert isinstance(publisher_for(platform), OpenSshPublisher)


def test_a_sender_that_stops_mid_image_leaves_no_temporary(
    sshd_target: SshdServer, image_dir: Path
) -> None:
    publisher = OpenSshPublisher(sshd_target.target())

    with pytest.raises(RuntimeError, match="conversion failed"), \
            publisher.stream("abc.squashfs", "abc.meta") as remote:
        remote.send(os.urandom(3 * MIB))
        assert leftovers(image_dir)  # the temporary is there while the bytes flow
        raise RuntimeError("conversion failed")

    assert _eventually_empty(image_dir)


def test_a_killed_sender_process_leaves_no_temporary(
    sshd_target: SshdServer, image_dir: Path, tmp_path: Path
) -> None:
    # A worker killed with SIGKILL: its ssh child sees end of input, never a commit.
    sender = tmp_path / "sender.py"
    sender.write_text(textwrap.dedent(f"""
        import os, sys, time
        from imagegw.domain.config import SshTarget
        from imagegw.publish.openssh import OpenSshPublisher
        target = SshTarget(**{sshd_target.target().__dict__!r})
        with OpenSshPublisher(target).stream("abc.squashfs", "abc.meta") as remote:
            remote.send(os.urandom(2 * 1024 * 1024))
            print("sent", flush=True)
            time.sleep(120)
    """))
    process = subprocess.Popen([sys.executable, str(sender)], stdout=subprocess.PIPE)
    try:
        assert process.stdout is not None
        assert process.stdout.readline() == b"sent\n"
        assert leftovers(image_dir)
        process.send_signal(signal.SIGKILL)
        process.wait(10)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()

    assert _eventually_empty(image_dir)


def test_a_sender_gone_after_the_data_ended_leaves_no_temporary(
    sshd_target: SshdServer, image_dir: Path
) -> None:
    # The remote side starts its flush and read-back when the data ends, before the
    # sender's CRC: a sender that fails while computing it never commits.
    publisher = OpenSshPublisher(sshd_target.target())

    with pytest.raises(RuntimeError, match="local cksum failed"), \
            publisher.stream("abc.squashfs", "abc.meta") as remote:
        remote.send(b"\0" * 96 + os.urandom(3 * MIB))
        remote.patch_head(os.urandom(96))
        remote.end_data()
        raise RuntimeError("local cksum failed")

    assert _eventually_empty(image_dir)


def test_an_end_line_cut_short_never_ends_the_data(
    sshd_target: SshdServer, image_dir: Path
) -> None:
    # A sender killed while writing the line that ends the data: "0" with no newline.
    publisher = OpenSshPublisher(sshd_target.target())

    with publisher.stream("abc.squashfs", "abc.meta") as remote:
        remote.send(os.urandom(MIB))
        remote._write(b"0")
        remote._close_stdin()
        remote._process.wait(10)

    assert remote._process.returncode == 24  # "the sender stopped before the end"
    assert _eventually_empty(image_dir)


def cksum_of(data: bytes) -> tuple[int, int]:
    """What coreutils' cksum says of `data` (CRC, size): the local side of the check."""
    crc, size = subprocess.run(["cksum"], input=data, capture_output=True, check=True
                               ).stdout.split()
    return int(crc), int(size)


def test_a_head_patched_last_lands_and_is_checked(
    sshd_target: SshdServer, image_dir: Path
) -> None:
    body = os.urandom(MIB + 7)
    final_head = os.urandom(96)
    publisher = OpenSshPublisher(sshd_target.target())

    with publisher.stream("abc.squashfs", "abc.meta") as remote:
        remote.send(b"\0" * 96 + body[96:])  # provisional head, as tar2sqfs writes it
        remote.patch_head(final_head)
        remote.commit(META, cksum_of(final_head + body[96:]))

    landed = (image_dir / "abc.squashfs").read_bytes()
    assert landed == final_head + body[96:]
    assert (image_dir / "abc.meta").read_bytes() == META
    assert leftovers(image_dir) == []


def test_a_head_patched_other_than_the_local_file_is_not_renamed(
    sshd_target: SshdServer, image_dir: Path
) -> None:
    body = os.urandom(MIB)
    publisher = OpenSshPublisher(sshd_target.target())

    with pytest.raises(TransferFailed, match="different checksum"), \
            publisher.stream("abc.squashfs", "abc.meta") as remote:
        remote.send(body)
        remote.patch_head(b"\1" * 96)
        remote.commit(META, cksum_of(body))  # the local file kept its head

    assert _eventually_empty(image_dir)


def test_a_copy_that_differs_from_the_local_file_is_not_renamed(
    sshd_target: SshdServer, image_dir: Path
) -> None:
    publisher = OpenSshPublisher(sshd_target.target())
    local = bytearray(os.urandom(MIB))

    with pytest.raises(TransferFailed, match="different checksum") as failure, \
            publisher.stream("abc.squashfs", "abc.meta") as remote:
        remote.send(bytes(local))
        local[MIB // 2] ^= 1  # one bit the remote copy does not have
        remote.commit(META, cksum_of(bytes(local)))

    assert failure.value.retryable
    assert not (image_dir / "abc.squashfs").exists()
    assert _eventually_empty(image_dir)


def test_a_copy_damaged_on_the_remote_file_system_is_not_renamed(
    sshd_target: SshdServer, image_dir: Path
) -> None:
    # What the check is for: the bytes crossed the wire intact (SSH's MAC), but the copy
    # on the remote file system is not what was sent. It reads the file, not the stream.
    publisher = OpenSshPublisher(sshd_target.target())
    local = os.urandom(MIB)

    with pytest.raises(TransferFailed, match="different checksum"), \
            publisher.stream("abc.squashfs", "abc.meta") as remote:
        remote.send(local)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            (temporary,) = leftovers(image_dir)
            if (image_dir / temporary).stat().st_size == MIB:
                break
            time.sleep(0.02)
        with open(image_dir / temporary, "r+b") as copy:
            copy.seek(MIB // 3)
            copy.write(bytes([local[MIB // 3] ^ 0x40]))
        remote.commit(META, cksum_of(local))

    assert not (image_dir / "abc.squashfs").exists()
    assert _eventually_empty(image_dir)


def test_a_copy_shorter_than_the_local_file_is_not_renamed(
    sshd_target: SshdServer, image_dir: Path
) -> None:
    publisher = OpenSshPublisher(sshd_target.target())
    local = os.urandom(MIB)

    with pytest.raises(TransferFailed, match="different size") as failure, \
            publisher.stream("abc.squashfs", "abc.meta") as remote:
        remote.send(local[:-1])
        remote.commit(META, cksum_of(local))

    assert failure.value.retryable
    assert _eventually_empty(image_dir)


def test_an_image_larger_than_a_frame_lands_exact_through_sendfile(
    sshd_target: SshdServer, image_dir: Path, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import imagegw.publish.openssh as openssh

    monkeypatch.setattr(openssh, "FRAME_SIZE", MIB)  # several frames, one short last one
    source = tmp_path / "abc.squashfs"
    source.write_bytes(os.urandom(3 * MIB + 12345))
    progress: list[tuple[int, int]] = []

    OpenSshPublisher(sshd_target.target()).publish(
        source, "abc.squashfs", META, "abc.meta",
        on_bytes=lambda done, total: progress.append((done, total)))

    assert (image_dir / "abc.squashfs").read_bytes() == source.read_bytes()
    assert [done for done, _ in progress] == [MIB, 2 * MIB, 3 * MIB, 3 * MIB + 12345]
    assert leftovers(image_dir) == []


def test_a_missing_local_cksum_fails_before_connecting(
    sshd_target: SshdServer, image_dir: Path, source: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import imagegw.publish.openssh as openssh

    monkeypatch.setattr(openssh, "CKSUM", "/nonexistent/cksum")
    before = sshd_target.log.read_text(errors="replace").count("Accepted publickey")

    with pytest.raises(TransferFailed, match="cksum.* is not installed") as failure:
        OpenSshPublisher(sshd_target.target()).publish(source, "abc.squashfs", META,
                                                       "abc.meta")

    assert failure.value.hint == "install coreutils"
    assert sshd_target.log.read_text(errors="replace").count("Accepted publickey") == before
    assert os.listdir(image_dir) == []


def test_a_publish_is_one_ssh_login(
    sshd_target: SshdServer, image_dir: Path, source: Path
) -> None:
    before = sshd_target.log.read_text(errors="replace").count("Accepted publickey")

    OpenSshPublisher(sshd_target.target()).publish(source, "abc.squashfs", META, "abc.meta")

    log = sshd_target.log.read_text(errors="replace")
    assert log.count("Accepted publickey") == before + 1
    assert sha256(image_dir / "abc.squashfs") == hashlib.sha256(source.read_bytes()).hexdigest()


def _eventually_empty(directory: Path) -> bool:
    """The remote script removes its temporaries when its session ends: wait for it."""
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if not os.listdir(directory):
            return True
        time.sleep(0.1)
    return False


def test_a_key_others_may_read_is_refused_with_the_fix(
    sshd_target: SshdServer, image_dir: Path, source: Path, tmp_path: Path
) -> None:
    key = tmp_path / "id_ed25519"
    key.write_bytes(sshd_target.ed25519_key.read_bytes())
    key.chmod(0o644)  # OpenSSH ignores such a key (paramiko did not)

    with pytest.raises(TransferFailed, match="others may read it") as failure:
        OpenSshPublisher(sshd_target.target(key=str(key))).publish(
            source, "abc.squashfs", META, "abc.meta")

    assert failure.value.hint == f"chmod 600 {key} (owned by the service account)"
    assert os.listdir(image_dir) == []


def test_a_known_hosts_path_with_blanks_is_one_file(
    sshd_target: SshdServer, image_dir: Path, source: Path, tmp_path: Path
) -> None:
    known = tmp_path / "site keys" / "known hosts"
    known.parent.mkdir()
    known.write_text(sshd_target.known_hosts.read_text())

    OpenSshPublisher(sshd_target.target(known_hosts=str(known))).publish(
        source, "abc.squashfs", META, "abc.meta")

    assert sha256(image_dir / "abc.squashfs") == hashlib.sha256(source.read_bytes()).hexdigest()
