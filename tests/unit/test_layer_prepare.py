"""Layers indexed while they download (IndexingTee), and indexes cached beside their blob."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import BinaryIO

import pytest

from imagegw.errors import ContentRejected, DigestMismatch
from imagegw.worker.pipeline.decompress import open_layer
from imagegw.worker.pipeline.flatten import index_layer
from imagegw.worker.pipeline.members import MemberPolicy
from imagegw.worker.pipeline.prepare import index_name, prepare_layer
from imagegw.worker.registry.blobcache import BlobCache
from tests.support import layers as L

CAP = 1 << 30
POLICY = MemberPolicy()


def blob_of(*members: L.Member, compression: str = "gzip") -> tuple[bytes, str]:
    data = L.layer(*members, compression=compression)
    return data, "sha256:" + hashlib.sha256(data).hexdigest()


def verifying_fetch(data: bytes, digest: str, calls: list[int], *, piece: int = 1000,
                    restart_after: int | None = None):
    """Writes `data` in pieces and checks size and sha256, like RegistryClient.fetch_blob;
    `restart_after` bytes in, it rewinds and starts over (a download without ranges)."""

    def fetch(out: BinaryIO) -> None:
        calls.append(1)
        start = out.tell()
        if restart_after is not None:
            out.write(data[:restart_after])
            out.seek(start)
            out.truncate()
        hasher = hashlib.sha256()
        for offset in range(0, len(data), piece):
            chunk = data[offset:offset + piece]
            out.write(chunk)
            hasher.update(chunk)
        if "sha256:" + hasher.hexdigest() != digest:
            raise DigestMismatch(f"blob {digest} hashes to something else")

    return fetch


MEMBERS = (L.dir("etc"), L.file("etc/hosts", b"127.0.0.1 localhost\n" * 500),
           L.file("bin/tool", b"\x7fELF" * 4000, 0o4755), L.symlink("bin/sh", "tool"),
           L.hardlink("bin/tool2", "bin/tool"), L.whiteout("old"))


@pytest.mark.parametrize("compression", ["gzip", "zstd", "none"])
def test_index_made_while_downloading_equals_the_index_of_the_finished_file(
        tmp_path: Path, compression: str) -> None:
    data, digest = blob_of(*MEMBERS, compression=compression)
    cache = BlobCache(tmp_path)
    prepared = prepare_layer(cache, digest, len(data), verifying_fetch(data, digest, []),
                             policy=POLICY, max_uncompressed=CAP)
    assert prepared.downloaded and prepared.indexed_while_downloading
    with open_layer(prepared.path, max_uncompressed=CAP, layer=digest) as stream:
        assert prepared.index == index_layer(stream, layer=digest, policy=POLICY)


def test_a_cached_layer_is_neither_downloaded_nor_indexed_again(tmp_path: Path) -> None:
    data, digest = blob_of(*MEMBERS)
    cache = BlobCache(tmp_path)
    calls: list[int] = []
    first = prepare_layer(cache, digest, len(data), verifying_fetch(data, digest, calls),
                          policy=POLICY, max_uncompressed=CAP)
    sidecar = cache.sidecar_path(digest, index_name(POLICY))
    assert sidecar.is_file()
    stamp = sidecar.stat().st_mtime_ns
    second = prepare_layer(cache, digest, len(data), verifying_fetch(data, digest, calls),
                           policy=POLICY, max_uncompressed=CAP)
    assert calls == [1]
    assert not second.downloaded and not second.indexed_while_downloading
    assert second.index == first.index
    assert sidecar.stat().st_mtime_ns == stamp


def test_indexes_differ_by_member_policy(tmp_path: Path) -> None:
    data, digest = blob_of(*MEMBERS)
    cache = BlobCache(tmp_path)
    fetch = verifying_fetch(data, digest, [])
    cleared = prepare_layer(cache, digest, len(data), fetch, policy=POLICY, max_uncompressed=CAP)
    kept = prepare_layer(cache, digest, len(data), fetch,
                         policy=MemberPolicy(keep_setuid=True), max_uncompressed=CAP)
    modes = {entry.path: entry.mode for entry in kept.index.entries}
    assert modes["bin/tool"] & 0o4000
    assert not {e.path: e.mode for e in cleared.index.entries}["bin/tool"] & 0o4000


def test_a_restarted_download_still_gets_the_right_index(tmp_path: Path) -> None:
    data, digest = blob_of(*MEMBERS)
    cache = BlobCache(tmp_path)
    prepared = prepare_layer(cache, digest, len(data),
                             verifying_fetch(data, digest, [], restart_after=len(data) // 2),
                             policy=POLICY, max_uncompressed=CAP)
    assert not prepared.indexed_while_downloading
    with open_layer(prepared.path, max_uncompressed=CAP, layer=digest) as stream:
        assert prepared.index == index_layer(stream, layer=digest, policy=POLICY)


def test_a_failed_download_leaves_neither_blob_nor_index(tmp_path: Path) -> None:
    data, digest = blob_of(*MEMBERS)
    cache = BlobCache(tmp_path)
    wrong = "sha256:" + "0" * 64
    with pytest.raises(DigestMismatch):
        prepare_layer(cache, wrong, len(data), verifying_fetch(data, wrong, []),
                      policy=POLICY, max_uncompressed=CAP)
    assert not cache.has(wrong)
    assert cache.sidecars(wrong) == []


def test_a_hostile_layer_is_refused_whether_indexed_streaming_or_not(tmp_path: Path) -> None:
    data, digest = blob_of(L.file("a", b"1" * 5000))
    cache = BlobCache(tmp_path)
    data2, digest2 = blob_of(L.raw_member("corrupt", data=b"x", checksum_delta=5))
    with pytest.raises(ContentRejected, match="bad checksum"):
        prepare_layer(cache, digest2, len(data2), verifying_fetch(data2, digest2, []),
                      policy=POLICY, max_uncompressed=CAP)
    # A bomb over the cap is refused while streaming as well as from the file.
    with pytest.raises(ContentRejected, match="cap"):
        prepare_layer(cache, digest, len(data), verifying_fetch(data, digest, []),
                      policy=POLICY, max_uncompressed=100)


def test_an_unreadable_cached_index_is_made_again(tmp_path: Path) -> None:
    data, digest = blob_of(*MEMBERS)
    cache = BlobCache(tmp_path)
    first = prepare_layer(cache, digest, len(data), verifying_fetch(data, digest, []),
                          policy=POLICY, max_uncompressed=CAP)
    cache.sidecar_path(digest, index_name(POLICY)).write_text("{not json")
    again = prepare_layer(cache, digest, len(data), verifying_fetch(data, digest, []),
                          policy=POLICY, max_uncompressed=CAP)
    assert again.index == first.index


def test_ensure_verified_trusts_the_fetchers_hash_but_still_checks_the_size(tmp_path: Path
                                                                             ) -> None:
    cache = BlobCache(tmp_path)
    digest = "sha256:" + hashlib.sha256(b"abc").hexdigest()
    with pytest.raises(DigestMismatch, match="2 bytes; expected 3"):
        cache.ensure_verified(digest, 3, lambda out: out.write(b"ab"))
    assert not cache.has(digest)
    path, downloaded = cache.ensure_verified(digest, 3, lambda out: out.write(b"abc"))
    assert downloaded and path.read_bytes() == b"abc"
