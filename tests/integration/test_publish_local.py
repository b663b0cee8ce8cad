"""Publishing into a local image directory: atomic placement, order, failures, cleanup."""

from __future__ import annotations

import contextlib
import hashlib
import os
import stat
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from imagegw.domain.config import Platform, SshTarget
from imagegw.domain.errors import InvalidRequest, TransferFailed
from imagegw.publish import LocalPublisher, SshPublisher, publisher_for

MIB = 1024 * 1024
META = b"FORMAT: squashfs\nENTRY: /bin/sh\n"


def built_image(directory: Path, size: int) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "build.squashfs"
    path.write_bytes(os.urandom(size))
    return path


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def leftovers(directory: Path) -> list[str]:
    return sorted(name for name in os.listdir(directory) if name.endswith(".partial"))


@contextlib.contextmanager
def read_only_directory(path: Path) -> Iterator[None]:
    """Makes `path` unwritable, also for root (immutable flag) when running as root."""
    if os.geteuid() == 0:
        result = subprocess.run(["chattr", "+i", str(path)], capture_output=True, timeout=10)
        if result.returncode != 0:
            pytest.fail(f"cannot make a directory immutable here (chattr +i): {result.stderr!r}")
        try:
            yield
        finally:
            subprocess.run(["chattr", "-i", str(path)], check=True, timeout=10)
    else:
        path.chmod(0o555)
        try:
            yield
        finally:
            path.chmod(0o755)


@pytest.fixture
def small_filesystem(tmp_path: Path) -> Iterator[Path]:
    """A separate 4 MiB tmpfs: another file system, and one that fills up."""
    mountpoint = tmp_path / "small"
    mountpoint.mkdir()
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=4m,mode=0755", "tmpfs", str(mountpoint)],
        capture_output=True, timeout=10,
    )
    if result.returncode != 0:
        pytest.fail(f"cannot mount a tmpfs here (run the tests as root): {result.stderr!r}")
    try:
        yield mountpoint
    finally:
        subprocess.run(["umount", str(mountpoint)], check=True, timeout=10)


def test_same_filesystem_publish_links_the_built_image_without_copying(tmp_path: Path) -> None:
    source = built_image(tmp_path / "scratch", 3 * MIB)
    images = tmp_path / "images"
    progress: list[tuple[int, int]] = []

    LocalPublisher(images).publish(source, "abc.squashfs", META, "abc.meta",
                                   on_bytes=lambda done, total: progress.append((done, total)))

    assert os.stat(images / "abc.squashfs").st_ino == os.stat(source).st_ino
    assert (images / "abc.meta").read_bytes() == META
    assert progress == [(3 * MIB, 3 * MIB)]
    assert leftovers(images) == []


def test_a_private_image_is_a_0600_copy_never_a_link(tmp_path: Path) -> None:
    source = built_image(tmp_path / "scratch", 2 * MIB)
    images = tmp_path / "images"
    publisher = LocalPublisher(images)
    publisher.publish(source, "abc.squashfs", META, "abc.meta")
    publisher.publish(source, "abc-1.squashfs", META + b"USERACL: 1\n", "abc-1.meta",
                      private=True)

    private = os.stat(images / "abc-1.squashfs")
    assert private.st_ino not in (os.stat(source).st_ino, os.stat(images / "abc.squashfs").st_ino)
    assert private.st_nlink == 1 and sha256(images / "abc-1.squashfs") == sha256(source)
    for name in ("abc-1.squashfs", "abc-1.meta"):
        assert stat.S_IMODE(os.stat(images / name).st_mode) == 0o600, name
    for name in ("abc.squashfs", "abc.meta"):
        assert stat.S_IMODE(os.stat(images / name).st_mode) == 0o644, name
    assert leftovers(images) == []


def test_forced_copy_writes_identical_bytes_in_4mib_chunks(tmp_path: Path) -> None:
    source = built_image(tmp_path / "scratch", 9 * MIB + 7)
    images = tmp_path / "images"
    progress: list[tuple[int, int]] = []

    LocalPublisher(images, hardlink=False).publish(
        source, "abc.squashfs", META, "abc.meta",
        on_bytes=lambda done, total: progress.append((done, total)),
    )

    published = images / "abc.squashfs"
    assert os.stat(published).st_ino != os.stat(source).st_ino
    assert sha256(published) == sha256(source)
    total = 9 * MIB + 7
    assert progress == [(4 * MIB, total), (8 * MIB, total), (total, total)]
    assert leftovers(images) == []


def test_publish_across_file_systems_copies_the_image(
    tmp_path: Path, small_filesystem: Path
) -> None:
    source = built_image(tmp_path / "scratch", MIB)

    LocalPublisher(small_filesystem).publish(source, "abc.squashfs", META, "abc.meta")

    assert sha256(small_filesystem / "abc.squashfs") == sha256(source)
    assert (small_filesystem / "abc.meta").read_bytes() == META


def test_published_files_are_0644_in_a_created_0755_directory(tmp_path: Path) -> None:
    source = built_image(tmp_path / "scratch", 1000)
    images = tmp_path / "new" / "images"
    old_umask = os.umask(0o077)
    try:
        LocalPublisher(images, hardlink=False).publish(source, "abc.squashfs", META, "abc.meta")
    finally:
        os.umask(old_umask)

    assert stat.S_IMODE(os.stat(images).st_mode) == 0o755
    assert stat.S_IMODE(os.stat(images / "abc.squashfs").st_mode) == 0o644
    assert stat.S_IMODE(os.stat(images / "abc.meta").st_mode) == 0o644


def test_meta_is_placed_only_after_the_image(tmp_path: Path) -> None:
    source = built_image(tmp_path / "scratch", 1000)
    images = tmp_path / "images"
    (images / "abc.meta" / "blocker").mkdir(parents=True)  # the meta rename must fail
    publisher = LocalPublisher(images)

    with pytest.raises(TransferFailed, match=str(images)):
        publisher.publish(source, "abc.squashfs", META, "abc.meta")

    assert sha256(images / "abc.squashfs") == sha256(source)
    assert not (images / "abc.meta").is_file()
    assert not publisher.has_image("abc.squashfs", "abc.meta")
    assert leftovers(images) == []


def test_failed_image_placement_never_writes_meta(tmp_path: Path) -> None:
    source = built_image(tmp_path / "scratch", 1000)
    images = tmp_path / "images"
    (images / "abc.squashfs" / "blocker").mkdir(parents=True)  # the image rename must fail

    with pytest.raises(TransferFailed):
        LocalPublisher(images).publish(source, "abc.squashfs", META, "abc.meta")

    assert not (images / "abc.meta").exists()
    assert leftovers(images) == []


def test_unwritable_directory_raises_transfer_failed_naming_it(tmp_path: Path) -> None:
    source = built_image(tmp_path / "scratch", 1000)
    images = tmp_path / "images"
    images.mkdir()

    with read_only_directory(images), pytest.raises(TransferFailed) as failure:
        LocalPublisher(images).publish(source, "abc.squashfs", META, "abc.meta")

    assert str(images) in str(failure.value)
    assert "not permitted" in str(failure.value) or "denied" in str(failure.value)
    assert failure.value.hint and "write access" in failure.value.hint
    assert os.listdir(images) == []


def test_full_disk_raises_transfer_failed_and_leaves_no_temporaries(
    tmp_path: Path, small_filesystem: Path
) -> None:
    source = built_image(tmp_path / "scratch", 6 * MIB)

    with pytest.raises(TransferFailed) as failure:
        LocalPublisher(small_filesystem).publish(source, "abc.squashfs", META, "abc.meta")

    assert str(small_filesystem) in str(failure.value)
    assert "No space left on device" in str(failure.value)
    assert os.listdir(small_filesystem) == []


def test_missing_built_image_is_named_in_the_failure(tmp_path: Path) -> None:
    missing = tmp_path / "scratch" / "gone.squashfs"

    with pytest.raises(TransferFailed, match="gone.squashfs"):
        LocalPublisher(tmp_path / "images").publish(missing, "abc.squashfs", META, "abc.meta")


def test_has_image_requires_both_files_and_the_right_size(tmp_path: Path) -> None:
    source = built_image(tmp_path / "scratch", 1000)
    publisher = LocalPublisher(tmp_path / "images")
    assert not publisher.has_image("abc.squashfs", "abc.meta")

    publisher.publish(source, "abc.squashfs", META, "abc.meta")

    assert publisher.has_image("abc.squashfs", "abc.meta")
    assert publisher.has_image("abc.squashfs", "abc.meta", size=1000)
    assert not publisher.has_image("abc.squashfs", "abc.meta", size=999)
    assert publisher.image_size("abc.squashfs") == 1000
    (tmp_path / "images" / "abc.meta").unlink()
    assert not publisher.has_image("abc.squashfs", "abc.meta")


def test_remove_deletes_meta_and_image_and_tolerates_missing_files(tmp_path: Path) -> None:
    source = built_image(tmp_path / "scratch", 1000)
    images = tmp_path / "images"
    publisher = LocalPublisher(images)
    publisher.publish(source, "abc.squashfs", META, "abc.meta")

    publisher.remove("abc.squashfs", "abc.meta")
    publisher.remove("abc.squashfs", "abc.meta")

    assert os.listdir(images) == []
    with pytest.raises(TransferFailed, match="No such file"):
        publisher.image_size("abc.squashfs")


def test_cleanup_temporaries_removes_only_leftover_partials(tmp_path: Path) -> None:
    images = tmp_path / "images"
    images.mkdir()
    for name in (".x.squashfs.abc.partial", ".x.meta.0f1e.partial", "x.squashfs",
                 "x.meta", "notes.partial"):
        (images / name).write_bytes(b"data")

    removed = LocalPublisher(images).cleanup_temporaries()

    assert removed == 2
    assert sorted(os.listdir(images)) == ["notes.partial", "x.meta", "x.squashfs"]


def test_cleanup_temporaries_keeps_partials_younger_than_asked(tmp_path: Path) -> None:
    images = tmp_path / "images"
    images.mkdir()
    fresh, old = images / ".a.squashfs.1.partial", images / ".b.squashfs.2.partial"
    fresh.write_bytes(b"in flight")
    old.write_bytes(b"killed")
    an_hour_ago = time.time() - 3600
    os.utime(old, (an_hour_ago, an_hour_ago))

    assert LocalPublisher(images).cleanup_temporaries(older_than=600) == 1
    assert os.listdir(images) == [fresh.name]


def test_file_names_that_leave_the_image_directory_are_rejected(tmp_path: Path) -> None:
    source = built_image(tmp_path / "scratch", 10)
    publisher = LocalPublisher(tmp_path / "images")

    for name in ("../escape.squashfs", "a/b.squashfs", ".hidden", ".."):
        with pytest.raises(InvalidRequest):
            publisher.publish(source, name, META, "abc.meta")
    assert not (tmp_path / "escape.squashfs").exists()


def test_publisher_for_picks_the_system_access_type(tmp_path: Path) -> None:
    local = Platform(name="local", access_type="local", image_dir=str(tmp_path))
    target = SshTarget(username="u", key="/k", image_dir="/images", hosts=("h",))
    remote = Platform(name="remote", access_type="remote", ssh=target)

    assert isinstance(publisher_for(local), LocalPublisher)
    assert isinstance(publisher_for(remote), SshPublisher)


def read_as(path: Path, uid: int, *groups: int) -> bool:
    """Whether uid (with only `groups` as its groups) can read `path`."""
    group_args = [f"--groups={','.join(map(str, groups))}"] if groups else ["--clear-groups"]
    done = subprocess.run(["setpriv", f"--reuid={uid}", f"--regid={groups[0] if groups else uid}",
                           *group_args, "cat", str(path)], capture_output=True, check=False)
    return done.returncode == 0


def test_a_private_image_for_enroot_or_apptainer_is_readable_only_by_its_acl() -> None:
    import shutil
    import tempfile

    from imagegw.publish.access import readers_for

    # Under /tmp (not pytest's 0700 directory) so that other uids can reach the files.
    top = Path(tempfile.mkdtemp(prefix="imagegw-acl-"))
    try:
        os.chmod(top, 0o755)
        source = built_image(top, 4096)
        images = top / "images"
        platform = Platform(name="gpu", access_type="local", image_dir=str(images),
                            runtimes=("shifter", "enroot"))
        readers = readers_for(platform, (40001,), (40100,))
        assert readers is not None
        publisher = LocalPublisher(images)
        publisher.publish(source, "abc-acl.squashfs", b"META\n", "abc-acl.meta", readers=readers)
        image = images / "abc-acl.squashfs"
        assert image.read_bytes() == source.read_bytes()
        assert os.stat(image).st_ino != os.stat(source).st_ino  # copied, not linked
        acl = subprocess.run(["getfacl", "-n", "-c", str(image)], capture_output=True,
                             text=True, check=True).stdout.split()
        assert acl == ["user::rw-", "user:40001:r--", "group::---", "group:40100:r--",
                       "mask::r--", "other::---"]
        assert read_as(image, 40001) and read_as(image, 40002, 40100)
        assert not read_as(image, 40002) and not read_as(image, 40003, 40101)
        assert not read_as(images / "abc-acl.meta", 40001)  # private meta files are 0600
        # Public images, and private ones on Shifter-only systems, stay 0644.
        shifter = Platform(name="s", access_type="local", image_dir=str(images))
        assert readers_for(shifter, (40001,), ()) is None
        assert readers_for(platform, (), ()) is None
    finally:
        shutil.rmtree(top)
