"""Crafted image layers: testbed.layers (shared with bench/ and scripts/demo.py), under the
name the tests import it by."""

from testbed.layers import (
    BLOCK,
    Member,
    compress,
    device,
    digest,
    dir,
    executables,
    fifo,
    file,
    hardlink,
    layer,
    opaque,
    raw_member,
    symlink,
    tar_bytes,
    whiteout,
    write_blob,
)

__all__ = [
    "BLOCK", "Member", "file", "dir", "symlink", "hardlink", "whiteout", "opaque", "device", "fifo",
    "raw_member", "tar_bytes", "compress", "layer", "executables", "digest", "write_blob",
]
