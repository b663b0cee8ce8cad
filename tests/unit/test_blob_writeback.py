"""A blob's disk writes start while it downloads (registry/blobcache.py, writeback.py)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import BinaryIO

import pytest

from imagegw.cache.layout import CacheLayout
from imagegw.registry import blobcache
from imagegw.registry.writeback import AVAILABLE, start_writeback

STEP = 64 * 1024
BLOB = os.urandom(5 * STEP + 1000)
DIGEST = "sha256:" + hashlib.sha256(BLOB).hexdigest()


def test_this_system_starts_writeback_early(tmp_path: Path) -> None:
    assert AVAILABLE  # Linux: the worker's platform
    with open(tmp_path / "file", "wb") as out:
        out.write(BLOB)
        out.flush()
        assert start_writeback(out.fileno(), 0, len(BLOB))


def test_each_step_of_a_download_is_queued_for_the_disk_before_its_fsync(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(blobcache, "WRITEBACK_STEP", STEP)
    queued: list[tuple[int, int]] = []
    def start_writeback(fd: int, offset: int, count: int) -> bool:
        queued.append((offset, count))
        return True

    monkeypatch.setattr(blobcache, "start_writeback", start_writeback)
    cache = CacheLayout(tmp_path).blob_cache()

    def fetch(out: BinaryIO) -> None:
        out.write(BLOB[:3 * STEP])  # then the download starts over (no ranges)
        out.seek(0)
        out.truncate()
        for offset in range(0, len(BLOB), 16 * 1024):
            out.write(BLOB[offset:offset + 16 * 1024])

    path, downloaded = cache.ensure_verified(DIGEST, len(BLOB), fetch)
    assert downloaded and path.read_bytes() == BLOB
    # The first attempt's 3 steps, then every whole step of the blob again from its start.
    assert queued == [(0, 3 * STEP), *[(n * STEP, STEP) for n in range(5)]]
