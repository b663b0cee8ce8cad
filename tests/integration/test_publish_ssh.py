"""Publishing to a remote image directory through a real OpenSSH sshd on 127.0.0.1."""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import stat
from pathlib import Path

import paramiko
import pytest

from imagegw.domain.errors import TransferFailed
from imagegw.publish import SshPublisher
from tests.support.services import refused_address
from tests.support.sshd import SshdServer

MIB = 1024 * 1024
META = b"FORMAT: squashfs\nENTRY: /bin/sh\n"


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("scratch") / "build.squashfs"
    path.write_bytes(os.urandom(5 * MIB + 123))
    return path


@pytest.fixture
def image_dir(sshd_target: SshdServer) -> Path:
    """A fresh, empty image directory owned by the ssh user for each test."""
    path = sshd_target.image_dir
    for entry in path.iterdir():
        shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() else entry.unlink()
    return path


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def leftovers(directory: Path) -> list[str]:
    return [name for name in os.listdir(directory) if name.endswith(".partial")]


def closed_port() -> int:
    return int(refused_address().rsplit(":", 1)[1])


@pytest.mark.parametrize("key_kind", ["ed25519", "rsa"])
def test_publish_lands_exact_bytes_readable_by_all(
    sshd_target: SshdServer, image_dir: Path, source: Path, key_kind: str
) -> None:
    key = sshd_target.ed25519_key if key_kind == "ed25519" else sshd_target.rsa_key
    publisher = SshPublisher(sshd_target.target(key=str(key)))

    publisher.publish(source, "abc.squashfs", META, "abc.meta")

    assert sha256(image_dir / "abc.squashfs") == sha256(source)
    assert (image_dir / "abc.meta").read_bytes() == META
    for name in ("abc.squashfs", "abc.meta"):
        assert stat.S_IMODE(os.stat(image_dir / name).st_mode) == 0o644
    assert leftovers(image_dir) == []
    assert publisher.has_image("abc.squashfs", "abc.meta", size=source.stat().st_size)
    assert publisher.image_size("abc.squashfs") == source.stat().st_size


def test_a_private_image_and_its_meta_land_0600(
    sshd_target: SshdServer, image_dir: Path, source: Path
) -> None:
    publisher = SshPublisher(sshd_target.target(key=str(sshd_target.ed25519_key)))

    publisher.publish(source, "abc-1.squashfs", META, "abc-1.meta", private=True)

    assert sha256(image_dir / "abc-1.squashfs") == sha256(source)
    for name in ("abc-1.squashfs", "abc-1.meta"):
        assert stat.S_IMODE(os.stat(image_dir / name).st_mode) == 0o600, name
    assert leftovers(image_dir) == []


def test_progress_counts_up_to_the_image_size(
    sshd_target: SshdServer, image_dir: Path, source: Path
) -> None:
    progress: list[tuple[int, int]] = []

    SshPublisher(sshd_target.target()).publish(
        source, "abc.squashfs", META, "abc.meta",
        on_bytes=lambda done, total: progress.append((done, total)),
    )

    size = source.stat().st_size
    assert progress[-1] == (size, size)
    assert [done for done, _ in progress] == sorted(done for done, _ in progress)


def test_unknown_host_key_is_refused(
    sshd_target: SshdServer, image_dir: Path, source: Path, tmp_path: Path
) -> None:
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    publisher = SshPublisher(sshd_target.target(known_hosts=str(empty)))

    with pytest.raises(TransferFailed, match="not in .*known_hosts") as failure:
        publisher.publish(source, "abc.squashfs", META, "abc.meta")

    assert not failure.value.retryable
    assert empty.read_text() == ""
    assert os.listdir(image_dir) == []


def test_changed_host_key_is_refused(
    sshd_target: SshdServer, image_dir: Path, source: Path, tmp_path: Path
) -> None:
    # Another ed25519 key under the server's name: what an impostor would present.
    impostor = " ".join(Path(f"{sshd_target.ed25519_key}.pub").read_text().split()[:2])
    wrong = tmp_path / "known_hosts"
    wrong.write_text(f"[127.0.0.1]:{sshd_target.port} {impostor}\n")
    publisher = SshPublisher(sshd_target.target(known_hosts=str(wrong)))

    with pytest.raises(TransferFailed, match="does not match"):
        publisher.publish(source, "abc.squashfs", META, "abc.meta")

    assert os.listdir(image_dir) == []


def test_key_not_authorized_is_refused(
    sshd_target: SshdServer, image_dir: Path, source: Path, tmp_path: Path
) -> None:
    stranger = tmp_path / "id_stranger"
    paramiko.RSAKey.generate(2048).write_private_key_file(str(stranger))
    publisher = SshPublisher(sshd_target.target(key=str(stranger)))

    with pytest.raises(TransferFailed, match="refused") as failure:
        publisher.publish(source, "abc.squashfs", META, "abc.meta")

    assert failure.value.hint and "authorized_keys" in failure.value.hint


def test_first_host_down_then_second_host_is_used(
    sshd_target: SshdServer, image_dir: Path, source: Path
) -> None:
    hosts = (f"127.0.0.1:{closed_port()}", "127.0.0.1")
    publisher = SshPublisher(sshd_target.target(hosts=hosts))

    publisher.publish(source, "abc.squashfs", META, "abc.meta")

    assert sha256(image_dir / "abc.squashfs") == sha256(source)


def test_all_hosts_down_is_a_retryable_failure_naming_them(
    sshd_target: SshdServer, source: Path
) -> None:
    first, second = closed_port(), closed_port()
    hosts = (f"127.0.0.1:{first}", f"127.0.0.1:{second}")

    with pytest.raises(TransferFailed) as failure:
        SshPublisher(sshd_target.target(hosts=hosts)).publish(
            source, "abc.squashfs", META, "abc.meta")

    assert failure.value.retryable
    assert f"127.0.0.1:{first}" in str(failure.value)
    assert f"127.0.0.1:{second}" in str(failure.value)


def test_image_dir_with_spaces_quotes_and_shell_syntax_is_used_literally(
    sshd_target: SshdServer, image_dir: Path, source: Path
) -> None:
    odd = image_dir / "it's a \"dir\" $(touch pwned); `touch pwned2`"
    publisher = SshPublisher(sshd_target.target(image_dir=str(odd)))

    publisher.publish(source, "abc.squashfs", META, "abc.meta")

    assert sha256(odd / "abc.squashfs") == sha256(source)
    assert (odd / "abc.meta").read_bytes() == META
    assert sorted(os.listdir(image_dir)) == [odd.name]
    home = image_dir.parent
    assert not (home / "pwned").exists() and not (home / "pwned2").exists()


def test_unwritable_remote_directory_fails_without_leftovers(
    sshd_target: SshdServer, image_dir: Path, source: Path
) -> None:
    root_owned = image_dir / "root-owned"
    root_owned.mkdir(mode=0o755)  # the test runs as root; the ssh user may not write here

    with pytest.raises(TransferFailed, match="permission denied") as failure:
        SshPublisher(sshd_target.target(image_dir=str(root_owned))).publish(
            source, "abc.squashfs", META, "abc.meta")

    assert failure.value.hint and sshd_target.user in failure.value.hint
    assert os.listdir(root_owned) == []


def test_remove_deletes_meta_and_image(
    sshd_target: SshdServer, image_dir: Path, source: Path
) -> None:
    publisher = SshPublisher(sshd_target.target())
    publisher.publish(source, "abc.squashfs", META, "abc.meta")

    publisher.remove("abc.squashfs", "abc.meta")

    assert os.listdir(image_dir) == []
    assert not publisher.has_image("abc.squashfs", "abc.meta")
    publisher.remove("abc.squashfs", "abc.meta")  # already gone: no error


def test_cleanup_temporaries_removes_a_planted_partial_only(
    sshd_target: SshdServer, image_dir: Path
) -> None:
    (image_dir / ".x.squashfs.abc.partial").write_bytes(b"killed publish")
    (image_dir / "x.squashfs").write_bytes(b"image")

    removed = SshPublisher(sshd_target.target()).cleanup_temporaries()

    assert removed == 1
    assert os.listdir(image_dir) == ["x.squashfs"]


def test_a_stalled_server_fails_the_publish_after_the_stall_timeout(
    sshd_target: SshdServer, image_dir: Path, source: Path
) -> None:
    frozen: list[int] = []

    def freeze_server(done: int, total: int) -> None:
        if not frozen:
            frozen.extend(sshd_target.session_pids())
            for pid in frozen:
                os.kill(pid, signal.SIGSTOP)

    publisher = SshPublisher(sshd_target.target(), stall_timeout=1.0)
    try:
        with pytest.raises(TransferFailed, match="no progress for 1 s") as failure:
            publisher.publish(source, "abc.squashfs", META, "abc.meta", on_bytes=freeze_server)
    finally:
        for pid in frozen:
            os.kill(pid, signal.SIGCONT)

    assert frozen
    assert failure.value.retryable
    assert not (image_dir / "abc.squashfs").exists()


def test_an_apptainer_system_gets_the_sif_over_ssh_before_the_image(
    sshd_target: SshdServer, image_dir: Path, source: Path
) -> None:
    import subprocess

    from imagegw.domain.config import Platform
    from imagegw.publish.sif import has_published, publish_sif

    target = sshd_target.target(key=str(sshd_target.ed25519_key))
    platform = Platform(name="remote", access_type="remote", ssh=target,
                        runtimes=("shifter", "apptainer"))
    publisher = SshPublisher(target)
    publish_sif(publisher, platform, source, "abc.squashfs", META, "abc.meta", identity="abc")
    assert not has_published(publisher, platform, "abc.squashfs", "abc.meta")
    publisher.publish(source, "abc.squashfs", META, "abc.meta")
    assert has_published(publisher, platform, "abc.squashfs", "abc.meta")
    dumped = subprocess.run(["siftool", "dump", "1", str(image_dir / "abc.sif")],
                            capture_output=True, check=True).stdout
    assert dumped == source.read_bytes()
    assert stat.S_IMODE(os.stat(image_dir / "abc.sif").st_mode) == 0o644
    assert leftovers(image_dir) == [] and not list(source.parent.glob(".sif-*"))


def test_a_private_image_for_apptainer_gets_its_acl_over_ssh(
    sshd_target: SshdServer, image_dir: Path, source: Path
) -> None:
    import subprocess

    from imagegw.publish.access import Readers

    publisher = SshPublisher(sshd_target.target(key=str(sshd_target.ed25519_key)))
    publisher.publish(source, "abc-1.squashfs", META, "abc-1.meta",
                      readers=Readers(users=(40001, 40002), groups=(40100,)))
    image = image_dir / "abc-1.squashfs"
    assert sha256(image) == sha256(source)
    acl = subprocess.run(["getfacl", "-n", "-c", str(image)], capture_output=True, text=True,
                         check=True).stdout.split()
    assert acl == ["user::rw-", "user:40001:r--", "user:40002:r--", "group::---",
                   "group:40100:r--", "mask::r--", "other::---"]
    assert stat.S_IMODE(os.stat(image_dir / "abc-1.meta").st_mode) == 0o600
    assert leftovers(image_dir) == []
