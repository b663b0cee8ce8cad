"""The image goes to its target as it is produced (publish/follow.py, worker/build.py).

Remote: a squashfs streamed to a real sshd while the real tar2sqfs writes it lands byte
for byte with its superblock patched last; a conversion that fails mid-stream leaves no
temporary on the remote side; bytes the writer rewrites after they were sent (tar2sqfs
drops a duplicate file's blocks) are sent again, or caught by the check before any
commit. Local, on another file system than the scratch: the converter writes the image
in the image directory itself; a failed conversion leaves nothing.
"""

from __future__ import annotations

import io
import os
import shutil
import signal
import socket
import tarfile
import tempfile
import threading
import time
from pathlib import Path
from typing import BinaryIO

import pytest

from imagegw.cache.layout import WorkerPaths
from imagegw.domain.config import ConverterOptions, parse_config
from imagegw.domain.errors import DigestMismatch, TransferFailed
from imagegw.domain.model import BuildJob
from imagegw.pipeline.squashfs import build_squashfs, partial_path
from imagegw.publish.follow import FollowingPublish
from imagegw.publish.openssh import OpenSshPublisher
from imagegw.worker import build as build_module
from imagegw.worker.build import Builder
from tests.support import layers as L
from tests.support.images import push_image
from tests.support.proxy import CorruptBody, RegistryProxy
from tests.support.squashfs_tree import read_squashfs, sha256
from tests.support.sshd import SshdServer

META = b"FORMAT: squashfs\n"
MIB = 1024 * 1024
OPTIONS = ConverterOptions(gzip_engine="zlib", jobs=1)


@pytest.fixture
def image_dir(sshd_target: SshdServer) -> Path:
    for entry in sshd_target.image_dir.iterdir():
        entry.unlink()
    return sshd_target.image_dir


def files(count: int, size: int) -> dict[str, bytes]:
    return {f"data/{number:03d}.bin": os.urandom(size) for number in range(count)}


def tar_writer(contents: dict[str, bytes], *, fail_after: int | None = None,
               pause: float = 0.0):
    def write_tar(out: BinaryIO) -> None:
        with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as tar:
            for number, (name, data) in enumerate(contents.items()):
                if fail_after is not None and number == fail_after:
                    raise RuntimeError("the layer is corrupt")
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
                time.sleep(pause)  # let the follower catch up with a growing file
    return write_tar


def test_an_image_streamed_while_built_lands_whole_with_its_superblock(
    sshd_target: SshdServer, image_dir: Path, tmp_path: Path
) -> None:
    contents = files(24, 256 * 1024)
    output = tmp_path / "abc.squashfs"
    follower = FollowingPublish(OpenSshPublisher(sshd_target.target()), partial_path(output),
                                "abc.squashfs", "abc.meta", lag=0)
    follower.start()
    build_squashfs(tar_writer(contents, pause=0.02), output, OPTIONS)

    assert follower.finish(output, META)

    landed = image_dir / "abc.squashfs"
    assert landed.read_bytes() == output.read_bytes()
    tree = read_squashfs(landed)
    assert {name: tree[name].sha256 for name in contents} == \
        {name: sha256(data) for name, data in contents.items()}
    assert (image_dir / "abc.meta").read_bytes() == META
    assert sorted(os.listdir(image_dir)) == ["abc.meta", "abc.squashfs"]


def test_an_image_of_duplicate_files_streamed_while_built_lands_whole(
    sshd_target: SshdServer, image_dir: Path, tmp_path: Path
) -> None:
    # tar2sqfs writes each duplicate's blocks, finds them equal to an earlier file's,
    # truncates them away and writes the next file over them: the follower, holding
    # nothing back, sent some of them and must send those bytes again.
    originals = files(6, 768 * 1024)
    contents = {}
    for number in range(24):
        name = f"data/{number:03d}.bin"
        contents[name] = originals[f"data/{number % 6:03d}.bin"] if number >= 6 else \
            originals[name]
    output = tmp_path / "abc.squashfs"
    follower = FollowingPublish(OpenSshPublisher(sshd_target.target()), partial_path(output),
                                "abc.squashfs", "abc.meta", lag=0)
    follower.start()
    # A short compressor queue: blocks reach the file while the tar still flows.
    build_squashfs(tar_writer(contents, pause=0.05), output,
                   ConverterOptions(gzip_engine="zlib", jobs=1, queue_backlog=2))

    assert output.stat().st_size < 7 * 768 * 1024  # the duplicates' blocks were dropped
    assert follower.finish(output, META)
    assert (image_dir / "abc.squashfs").read_bytes() == output.read_bytes()
    tree = read_squashfs(image_dir / "abc.squashfs")
    assert {name: tree[name].sha256 for name in contents} == \
        {name: sha256(data) for name, data in contents.items()}


def test_a_host_that_cannot_be_reached_fails_the_publish_not_the_start(
    sshd_target: SshdServer, image_dir: Path, tmp_path: Path
) -> None:
    # The converter does not wait for the connection: the follower makes it in its own
    # thread, and a failed one means the image is published whole, which says why.
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    publisher = OpenSshPublisher(sshd_target.target(port=closed_port, connect_timeout=1.0))
    growing = tmp_path / ".abc.squashfs.partial"
    follower = FollowingPublish(publisher, growing, "abc.squashfs", "abc.meta", lag=0)
    follower.start()  # no error here: the conversion goes on
    growing.write_bytes(os.urandom(MIB))
    final = tmp_path / "abc.squashfs"
    os.replace(growing, final)

    assert not follower.finish(final, META)
    with pytest.raises(TransferFailed, match="cannot reach any ssh host") as failure:
        publisher.publish(final, "abc.squashfs", META, "abc.meta")
    assert failure.value.retryable
    assert not os.listdir(image_dir)


def test_a_conversion_that_fails_mid_stream_leaves_no_remote_temporary(
    sshd_target: SshdServer, image_dir: Path, tmp_path: Path
) -> None:
    output = tmp_path / "abc.squashfs"
    follower = FollowingPublish(OpenSshPublisher(sshd_target.target()), partial_path(output),
                                "abc.squashfs", "abc.meta", lag=0)
    follower.start()
    streaming = threading.Event()

    def watch() -> None:
        while not any(name.endswith(".partial") for name in os.listdir(image_dir)):
            time.sleep(0.01)
        streaming.set()

    threading.Thread(target=watch, daemon=True).start()
    with pytest.raises(RuntimeError, match="corrupt"):
        try:
            build_squashfs(tar_writer(files(40, 256 * 1024), fail_after=30, pause=0.02),
                           output, OPTIONS)
        finally:
            follower.close()

    assert streaming.wait(5), "the remote temporary existed while the image was built"
    assert _eventually_empty(image_dir)
    assert not output.exists()


def test_bytes_rewritten_after_they_were_sent_are_sent_again_before_the_commit(
    sshd_target: SshdServer, image_dir: Path, tmp_path: Path
) -> None:
    growing = tmp_path / ".abc.squashfs.partial"
    follower = FollowingPublish(OpenSshPublisher(sshd_target.target()), growing,
                                "abc.squashfs", "abc.meta", lag=0)
    follower.start()
    with open(growing, "wb") as writer:
        writer.write(os.urandom(3 * MIB))
        writer.flush()
        deadline = time.monotonic() + 10
        while follower._sent < 3 * MIB and time.monotonic() < deadline:
            time.sleep(0.02)
        # What a writer deduplicating blocks does: truncate what it wrote, write on.
        writer.truncate(MIB)
        writer.seek(MIB)
        writer.write(os.urandom(3 * MIB))
        writer.flush()
        # Found while the writer runs: the frame's sample changed.
        deadline = time.monotonic() + 10
        while follower._resent == 0 and time.monotonic() < deadline:
            time.sleep(0.02)
        resent_while_writing = follower._resent
    final = tmp_path / "abc.squashfs"
    os.replace(growing, final)

    assert resent_while_writing >= 3 * MIB
    assert follower.finish(final, META)
    assert (image_dir / "abc.squashfs").read_bytes() == final.read_bytes()
    assert sorted(os.listdir(image_dir)) == ["abc.meta", "abc.squashfs"]


def test_bytes_rewritten_where_no_sample_sees_them_are_never_committed(
    sshd_target: SshdServer, image_dir: Path, tmp_path: Path
) -> None:
    # The samples only save sending the image again; the check is what keeps a copy that
    # differs from the finished file from ever being named.
    growing = tmp_path / ".abc.squashfs.partial"
    follower = FollowingPublish(OpenSshPublisher(sshd_target.target()), growing,
                                "abc.squashfs", "abc.meta", lag=0)
    follower.start()
    with open(growing, "wb") as writer:
        writer.write(os.urandom(3 * MIB))
        writer.flush()
        deadline = time.monotonic() + 10
        while follower._sent < 3 * MIB and time.monotonic() < deadline:
            time.sleep(0.02)
        writer.seek(MIB)  # the middle of the frame, far from its sampled end
        writer.write(os.urandom(100))
    final = tmp_path / "abc.squashfs"
    os.replace(growing, final)

    assert follower._sent >= 3 * MIB
    assert not follower.finish(final, META)
    assert _eventually_empty(image_dir)


def _eventually_empty(directory: Path) -> bool:
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if not os.listdir(directory):
            return True
        time.sleep(0.1)
    return False


def remote_builder(tmp_path: Path, url: str, sshd: SshdServer) -> Builder:
    config = parse_config({
        "CacheDirectory": str(tmp_path / "cache"), "ExpandDirectory": str(tmp_path / "expand"),
        "Locations": {"testreg": {"url": url}},
        "Platforms": {"cluster": {
            "accesstype": "remote", "host": [f"127.0.0.1:{sshd.port}"],
            "ssh": {"username": sshd.user, "key": str(sshd.ed25519_key),
                    "imageDir": str(sshd.image_dir), "knownHosts": str(sshd.known_hosts)}}},
    })
    return Builder(config, WorkerPaths(config.cache_dir, config.expand_dir))


def test_a_worker_pull_streams_the_image_and_a_failed_one_leaves_nothing(
    tmp_path: Path, registry, sshd_target: SshdServer, image_dir: Path
) -> None:
    contents = files(8, 64 * 1024)
    push_image(registry.url, "stream/good", "1",
               [L.layer(*(L.file(name, data) for name, data in contents.items()))])
    push_image(registry.url, "stream/corrupt", "1", [L.layer(L.file("f", os.urandom(5000)))])
    builder = remote_builder(tmp_path, registry.url, sshd_target)

    events: list = []
    result = builder.build(BuildJob(job_id="good", system="cluster",
                                    reference="testreg/stream/good:1"), events.append)

    tree = read_squashfs(image_dir / result.image_file)
    assert {name: tree[name].sha256 for name in contents} == \
        {name: sha256(data) for name, data in contents.items()}
    assert sorted(os.listdir(image_dir)) == sorted([result.image_file, result.meta_file])
    assert any("streamed while converting" in (event.message or "") for event in events)

    proxy = RegistryProxy(registry.url)
    proxy.faults.append(CorruptBody(times=None))
    try:
        with pytest.raises(DigestMismatch):
            remote_builder(tmp_path / "second", proxy.url, sshd_target).build(
                BuildJob(job_id="corrupt", system="cluster",
                         reference="testreg/stream/corrupt:1"), lambda event: None)
    finally:
        proxy.stop()
    assert _eventually_empty_but(image_dir, {result.image_file, result.meta_file})


def test_a_pull_whose_image_is_already_on_the_remote_system_commits_no_second_copy(
    tmp_path: Path, registry, sshd_target: SshdServer, image_dir: Path
) -> None:
    """The remote lookup runs beside the conversion streamed to that system; the stream is
    committed only when the lookup says the image is not there."""
    contents = files(4, 64 * 1024)
    push_image(registry.url, "stream/there", "1",
               [L.layer(*(L.file(name, data) for name, data in contents.items()))])
    job = BuildJob(job_id="first", system="cluster", reference="testreg/stream/there:1")
    first = remote_builder(tmp_path / "first", registry.url, sshd_target).build(
        job, lambda event: None)
    published = image_dir / first.image_file
    inode = published.stat().st_ino

    # Another worker (no conversion cached): it converts, finds the image there, and
    # leaves the published copy as it was.
    events: list = []
    again = remote_builder(tmp_path / "second", registry.url, sshd_target).build(
        BuildJob(job_id="second", system="cluster", reference="testreg/stream/there:1"),
        events.append)

    assert again.reused and again.image_file == first.image_file
    assert again.size_bytes == published.stat().st_size
    assert published.stat().st_ino == inode
    assert _eventually_empty_but(image_dir, {first.image_file, first.meta_file})
    assert not any("streamed while converting" in (event.message or "") for event in events)


def test_a_pull_streamed_to_a_remote_system_converts_without_waiting_for_the_lookup(
    tmp_path: Path, registry, sshd_target: SshdServer, image_dir: Path, monkeypatch
) -> None:
    """The lookup there (an SSH login) is answered while tar2sqfs already writes the
    image: here it answers only once the image being built exists, which would never
    happen (until its deadline) if the conversion waited for it."""
    contents = files(4, 64 * 1024)
    push_image(registry.url, "stream/lookup", "1",
               [L.layer(*(L.file(name, data) for name, data in contents.items()))])
    builder = remote_builder(tmp_path, registry.url, sshd_target)
    seen_building: list[bool] = []
    has_image = OpenSshPublisher.has_image
    converting = threading.Event()
    convert = build_module.flatten_to_squashfs

    def flatten_to_squashfs(*args, **kwargs):
        converting.set()
        return convert(*args, **kwargs)

    def after_the_conversion_started(self, image_file, meta_file, size=None):
        # The conversion may end (and its local partial go) before this thread runs:
        # what is checked is that it started without this answer.
        seen_building.append(converting.wait(timeout=60))
        return has_image(self, image_file, meta_file, size)

    monkeypatch.setattr(build_module, "flatten_to_squashfs", flatten_to_squashfs)
    monkeypatch.setattr(OpenSshPublisher, "has_image", after_the_conversion_started)
    result = builder.build(BuildJob(job_id="lookup", system="cluster",
                                    reference="testreg/stream/lookup:1"), lambda event: None)

    assert seen_building == [True]
    assert not result.reused
    assert sorted(os.listdir(image_dir)) == sorted([result.image_file, result.meta_file])


def _eventually_empty_but(directory: Path, kept: set[str]) -> bool:
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if set(os.listdir(directory)) == kept:
            return True
        time.sleep(0.1)
    return False


@pytest.fixture
def other_file_system(tmp_path: Path):
    """An image directory on another file system than tmp_path (scratch): /dev/shm."""
    shm = Path("/dev/shm")
    assert shm.is_dir() and shm.stat().st_dev != tmp_path.stat().st_dev, \
        "this test needs /dev/shm on its own file system (tmpfs)"
    directory = Path(tempfile.mkdtemp(prefix="imagegw-test-", dir=shm))
    try:
        yield directory / "images"
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def local_builder(tmp_path: Path, url: str, image_dir: Path) -> Builder:
    config = parse_config({
        "CacheDirectory": str(tmp_path / "cache"), "ExpandDirectory": str(tmp_path / "expand"),
        "Locations": {"testreg": {"url": url}},
        "Platforms": {"cluster": {"accesstype": "local", "local": {"imageDir": str(image_dir)}}},
    })
    return Builder(config, WorkerPaths(config.cache_dir, config.expand_dir))


def test_a_local_image_directory_on_another_file_system_gets_the_image_built_in_place(
    tmp_path: Path, registry, other_file_system: Path
) -> None:
    contents = files(8, 64 * 1024)
    push_image(registry.url, "inplace/good", "1",
               [L.layer(*(L.file(name, data) for name, data in contents.items()))])
    push_image(registry.url, "inplace/corrupt", "1", [L.layer(L.file("f", os.urandom(5000)))])
    builder = local_builder(tmp_path, registry.url, other_file_system)

    events: list = []
    result = builder.build(BuildJob(job_id="good", system="cluster",
                                    reference="testreg/inplace/good:1"), events.append)

    image = other_file_system / result.image_file
    tree = read_squashfs(image)
    assert {name: tree[name].sha256 for name in contents} == \
        {name: sha256(data) for name, data in contents.items()}
    assert sorted(os.listdir(other_file_system)) == sorted([result.image_file, result.meta_file])
    assert any("written in place" in (event.message or "") for event in events)
    cached = list((tmp_path / "cache").rglob("*.squashfs"))
    assert [path.read_bytes() for path in cached] == [image.read_bytes()], \
        "the conversion cache keeps its own copy"
    assert not list((tmp_path / "expand").rglob("*.squashfs")), "no copy in the scratch"

    proxy = RegistryProxy(registry.url)
    proxy.faults.append(CorruptBody(times=None))
    try:
        with pytest.raises(DigestMismatch):
            local_builder(tmp_path / "second", proxy.url, other_file_system).build(
                BuildJob(job_id="corrupt", system="cluster",
                         reference="testreg/inplace/corrupt:1"), lambda event: None)
    finally:
        proxy.stop()
    assert sorted(os.listdir(other_file_system)) == sorted([result.image_file, result.meta_file])


def test_a_converter_that_pauses_longer_than_the_stall_timeout_still_publishes(
    sshd_target: SshdServer, image_dir: Path, tmp_path: Path
) -> None:
    # A stall is a write that does not move; waiting for the converter is not one.
    growing = tmp_path / ".abc.squashfs.partial"
    publisher = OpenSshPublisher(sshd_target.target(), stall_timeout=0.5)
    follower = FollowingPublish(publisher, growing, "abc.squashfs", "abc.meta", lag=0)
    follower.start()
    body = os.urandom(2 * MIB)
    with open(growing, "wb") as writer:
        writer.write(body[:MIB])
        writer.flush()
        time.sleep(2.0)  # four stall timeouts without a byte to send
        writer.write(body[MIB:])
    final = tmp_path / "abc.squashfs"
    os.replace(growing, final)

    assert follower.finish(final, META)
    assert (image_dir / "abc.squashfs").read_bytes() == body


def test_a_stream_cut_while_converting_leaves_the_image_to_be_published_whole(
    sshd_target: SshdServer, image_dir: Path, tmp_path: Path
) -> None:
    growing = tmp_path / ".abc.squashfs.partial"
    publisher = OpenSshPublisher(sshd_target.target())
    follower = FollowingPublish(publisher, growing, "abc.squashfs", "abc.meta", lag=0)
    follower.start()
    body = os.urandom(2 * MIB)
    with open(growing, "wb") as writer:
        writer.write(body[:MIB])
        writer.flush()
        deadline = time.monotonic() + 10
        while follower._sent < MIB and time.monotonic() < deadline:
            time.sleep(0.02)
        # The connection breaks: the server's side of the session goes away.
        listener_children = Path(
            f"/proc/{sshd_target.process.pid}/task/{sshd_target.process.pid}/children"
        ).read_text().split()
        for pid in listener_children:
            os.kill(int(pid), signal.SIGTERM)
        writer.write(body[MIB:])
    final = tmp_path / "abc.squashfs"
    os.replace(growing, final)

    assert not follower.finish(final, META)
    assert _eventually_empty(image_dir)
    publisher.publish(final, "abc.squashfs", META, "abc.meta")  # what the worker does then
    assert (image_dir / "abc.squashfs").read_bytes() == body


def test_a_conversion_started_over_is_never_committed_from_the_first_attempt(
    sshd_target: SshdServer, image_dir: Path, tmp_path: Path
) -> None:
    # The one-pass flatten may drop its partial image and run tar2sqfs again (two passes):
    # the follower holds the first file; the second is published whole.
    growing = tmp_path / ".abc.squashfs.partial"
    follower = FollowingPublish(OpenSshPublisher(sshd_target.target()), growing,
                                "abc.squashfs", "abc.meta", lag=0)
    follower.start()
    growing.write_bytes(os.urandom(MIB))
    deadline = time.monotonic() + 10
    while follower._sent < MIB and time.monotonic() < deadline:
        time.sleep(0.02)
    growing.unlink()
    second = os.urandom(MIB)
    growing.write_bytes(second)
    final = tmp_path / "abc.squashfs"
    os.replace(growing, final)

    assert not follower.finish(final, META)
    assert _eventually_empty(image_dir)


def test_a_file_growing_in_small_writes_lands_whole_behind_its_lag(
    sshd_target: SshdServer, image_dir: Path, tmp_path: Path
) -> None:
    # Frames wait for MIN_FRAME bytes (or the lag) while the writer runs; the finish sends
    # what is left, and the final superblock patched last.
    growing = tmp_path / ".abc.squashfs.partial"
    follower = FollowingPublish(OpenSshPublisher(sshd_target.target()), growing,
                                "abc.squashfs", "abc.meta", lag=MIB)
    follower.start()
    body = bytearray(os.urandom(5 * MIB + 4321))
    with open(growing, "wb") as writer:
        writer.write(b"\0" * 96)  # a provisional superblock, as tar2sqfs writes it
        for start in range(96, len(body), 64 * 1024):
            writer.write(body[start:start + 64 * 1024])
            writer.flush()
        deadline = time.monotonic() + 10
        while follower._sent < 3 * MIB and time.monotonic() < deadline:
            time.sleep(0.02)
        sent_while_writing = follower._sent
        writer.seek(0)
        writer.write(body[:96])
    final = tmp_path / "abc.squashfs"
    os.replace(growing, final)

    assert MIB <= sent_while_writing <= len(body) - MIB
    assert follower.finish(final, META)
    assert (image_dir / "abc.squashfs").read_bytes() == bytes(body)
    assert sorted(os.listdir(image_dir)) == ["abc.meta", "abc.squashfs"]
