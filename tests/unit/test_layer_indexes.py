"""Layers fetched into the blob cache, and layer indexes kept beside their blob (indexes.py)."""

from __future__ import annotations

import hashlib
import struct
import zlib
from pathlib import Path
from typing import BinaryIO

import pytest

from imagegw.cache.layout import CacheLayout
from imagegw.domain.errors import DigestMismatch
from imagegw.pipeline import compact
from imagegw.pipeline.decompress import open_layer
from imagegw.pipeline.indexes import index_name, load_index, store_index
from imagegw.pipeline.members import MemberPolicy
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


def index_of(path: Path, digest: str, policy: MemberPolicy = POLICY) -> bytes:
    """The layer's compact index (what the cache keeps)."""
    with open_layer(path, max_uncompressed=CAP, layer=digest) as stream:
        return compact.scan_layer(stream, layer=digest, policy=policy)


def test_a_cached_layer_is_not_downloaded_again(tmp_path: Path) -> None:
    data, digest = blob_of(*MEMBERS)
    cache = CacheLayout(tmp_path).blob_cache()
    calls: list[int] = []
    first, first_downloaded = cache.ensure_verified(digest, len(data),
                                                    verifying_fetch(data, digest, calls))
    second, second_downloaded = cache.ensure_verified(digest, len(data),
                                                      verifying_fetch(data, digest, calls))
    assert calls == [1]
    assert first_downloaded and not second_downloaded
    assert second == first and first.read_bytes() == data


def test_the_index_kept_by_one_conversion_is_found_by_the_next(tmp_path: Path) -> None:
    data, digest = blob_of(*MEMBERS)
    cache = CacheLayout(tmp_path).blob_cache()
    path = cache.ensure_verified(digest, len(data), verifying_fetch(data, digest, []))[0]
    assert load_index(cache, digest, POLICY) is None
    index = index_of(path, digest)
    store_index(cache, digest, index, POLICY)
    assert zlib.decompress(cache.sidecar_path(digest, index_name(POLICY)).read_bytes()) == index
    assert load_index(cache, digest, POLICY) == index
    assert [entry.path for entry in compact.decode(index).entries] == [
        "etc", "etc/hosts", "bin/tool", "bin/sh", "bin/tool2"]


def test_indexes_are_kept_per_member_policy(tmp_path: Path) -> None:
    data, digest = blob_of(*MEMBERS)
    cache = CacheLayout(tmp_path).blob_cache()
    path = cache.ensure_verified(digest, len(data), verifying_fetch(data, digest, []))[0]
    keep = MemberPolicy(keep_setuid=True)
    store_index(cache, digest, index_of(path, digest), POLICY)
    # The setuid bit differs between the two policies' indexes: one is not the other's.
    assert load_index(cache, digest, keep) is None
    store_index(cache, digest, index_of(path, digest, keep), keep)

    def modes(policy: MemberPolicy) -> dict[str, int]:
        index = load_index(cache, digest, policy)
        assert index is not None
        return {entry.path: entry.mode for entry in compact.decode(index).entries}

    kept, cleared = modes(keep), modes(POLICY)
    assert kept["bin/tool"] & 0o4000 and not cleared["bin/tool"] & 0o4000


def test_a_restarted_download_keeps_exactly_the_blob(tmp_path: Path) -> None:
    data, digest = blob_of(*MEMBERS)
    cache = CacheLayout(tmp_path).blob_cache()
    path, _ = cache.ensure_verified(digest, len(data),
                                    verifying_fetch(data, digest, [], restart_after=len(data) // 2))
    assert path.read_bytes() == data


def test_a_failed_download_leaves_neither_blob_nor_index(tmp_path: Path) -> None:
    data, digest = blob_of(*MEMBERS)
    cache = CacheLayout(tmp_path).blob_cache()
    wrong = "sha256:" + "0" * 64
    with pytest.raises(DigestMismatch):
        cache.ensure_verified(wrong, len(data), verifying_fetch(data, wrong, []))
    assert not cache.has(wrong)
    assert cache.sidecars(wrong) == []
    assert load_index(cache, wrong, POLICY) is None


def test_an_unreadable_or_foreign_index_is_not_used(tmp_path: Path) -> None:
    data, digest = blob_of(*MEMBERS)
    other, other_digest = blob_of(L.file("x", b"y"))
    cache = CacheLayout(tmp_path).blob_cache()
    path = cache.ensure_verified(digest, len(data), verifying_fetch(data, digest, []))[0]
    sidecar = cache.sidecar_path(digest, index_name(POLICY))
    for damaged in (b"{not json", zlib.compress(b"IGW"), b""):
        sidecar.write_bytes(damaged)
        assert load_index(cache, digest, POLICY) is None
    store_index(cache, digest, index_of(path, digest), POLICY)
    assert load_index(cache, digest, POLICY) is not None
    # An index claiming another layer (a copied or mixed-up file) is not trusted either.
    sidecar.write_bytes(zlib.compress(index_of(path, other_digest)))
    assert load_index(cache, digest, POLICY) is None


def test_an_index_in_the_previous_layout_is_made_again(tmp_path: Path) -> None:
    # IGWIDX1 (fixed-width entry fields) read as IGWIDX2 would misplace every field: a
    # sidecar that kept it under the current name reads as missing, and is redone.
    data, digest = blob_of(*MEMBERS)
    cache = CacheLayout(tmp_path).blob_cache()
    path = cache.ensure_verified(digest, len(data), verifying_fetch(data, digest, []))[0]
    name = digest.encode()
    old = struct.pack("<8sIIQI", b"IGWIDX1\0", 0, 0, 0, len(name)) + name
    sidecar = cache.sidecar_path(digest, index_name(POLICY))
    sidecar.write_bytes(zlib.compress(old))
    assert load_index(cache, digest, POLICY) is None
    assert "-v4-" in sidecar.name  # not the name the previous layout was kept under
    store_index(cache, digest, index_of(path, digest), POLICY)
    assert compact.decode(load_index(cache, digest, POLICY) or b"").layer == digest


def test_ensure_verified_trusts_the_fetchers_hash_but_still_checks_the_size(tmp_path: Path
                                                                             ) -> None:
    cache = CacheLayout(tmp_path).blob_cache()
    digest = "sha256:" + hashlib.sha256(b"abc").hexdigest()
    with pytest.raises(DigestMismatch, match="2 bytes; expected 3"):
        cache.ensure_verified(digest, 3, lambda out: out.write(b"ab"))
    assert not cache.has(digest)
    path, downloaded = cache.ensure_verified(digest, 3, lambda out: out.write(b"abc"))
    assert downloaded and path.read_bytes() == b"abc"
