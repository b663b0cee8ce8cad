"""Crafted image layers: testbed.layers (shared with bench/ and scripts/demo.py), under the
name the tests import it by, and layer stacks the flatten tests share."""

import random

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
    "overlapping_layers",
]


def overlapping_layers(count: int, seed: int) -> list[bytes]:
    """`count` layer tars over one small tree: each overwrites files of the older ones,
    every 5th whites out a directory, every 11th makes `usr` opaque."""
    rng = random.Random(seed)
    layers = []
    for number in range(count):
        members: list[Member] = [dir("usr"), dir(f"usr/l{number % 7}")]
        members += [file(f"usr/l{rng.randrange(7)}/f{rng.randrange(40)}", f"{number}".encode())
                    for _ in range(6)]
        if number % 5 == 4:
            members.append(whiteout(f"usr/l{rng.randrange(7)}"))
        if number % 11 == 10:
            members.append(opaque("usr"))
        layers.append(tar_bytes(*members))
    return layers
