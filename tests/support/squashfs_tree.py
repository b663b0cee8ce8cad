"""Reads a squashfs image (or a tar) back as a comparable tree, for tests.

`read_squashfs(path)` pipes `sqfs2tar` into tarfile and returns path -> Node with type,
mode, owner, link target and the sha256 of file bytes; hardlinked names share `inode`.
"""

from __future__ import annotations

import hashlib
import subprocess
import tarfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import IO, TypedDict

__all__ = ["Node", "read_squashfs", "read_tar", "sha256", "summary"]


@dataclass(frozen=True)
class Node:
    type: str  # "file", "dir" or "symlink"
    mode: int
    uid: int = 0
    gid: int = 0
    #: A symlink's target.
    link: str = ""
    #: sha256 hex of a file's bytes.
    sha256: str = ""
    size: int = 0
    #: For files: the first name of its hardlink group (itself when not linked).
    inode: str = ""


class _Owner(TypedDict):
    mode: int
    uid: int
    gid: int


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def read_squashfs(path: Path, *, timeout: float = 120.0) -> dict[str, Node]:
    """Every entry of the image except the root."""
    process = subprocess.Popen(["sqfs2tar", "--no-xattr", str(path)], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE)
    assert process.stdout is not None
    try:
        tree = read_tar(process.stdout)
    finally:
        process.stdout.close()
        _, stderr = process.communicate(timeout=timeout)
    if process.returncode != 0:
        raise RuntimeError(f"sqfs2tar failed: {stderr.decode(errors='replace')}")
    return tree


def read_tar(stream: IO[bytes]) -> dict[str, Node]:
    """A tar stream as a tree (hardlinks resolved to their group's file)."""
    tree: dict[str, Node] = {}
    with tarfile.open(fileobj=stream, mode="r|") as archive:
        for info in archive:
            name = _clean(info.name)
            if not name:
                continue
            owner: _Owner = {"mode": info.mode, "uid": info.uid, "gid": info.gid}
            if info.isdir():
                tree[name] = Node("dir", **owner)
            elif info.issym():
                tree[name] = Node("symlink", link=info.linkname, **owner)
            elif info.islnk():
                tree[name] = replace(tree[_clean(info.linkname)], **owner)
            elif info.isfile():
                digest = hashlib.sha256()
                reader = archive.extractfile(info)
                assert reader is not None
                while chunk := reader.read(1 << 20):
                    digest.update(chunk)
                tree[name] = Node("file", sha256=digest.hexdigest(), size=info.size,
                                  inode=name, **owner)
            else:
                tree[name] = Node(f"other:{info.type!r}", **owner)
    return tree


def _clean(name: str) -> str:
    return "/".join(part for part in name.split("/") if part not in ("", "."))


def summary(tree: dict[str, Node]) -> dict[str, tuple[str, int, str]]:
    """path -> (type, mode, symlink target or sha256): the usual thing to compare."""
    return {path: (node.type, node.mode, node.link or node.sha256)
            for path, node in tree.items()}
