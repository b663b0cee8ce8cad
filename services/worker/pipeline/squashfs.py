"""Builds a squashfs image from a tar stream with tar2sqfs, and the one-call
layers-to-squashfs helper (index, merge, stream into tar2sqfs).

Checked against tar2sqfs 1.2.0 (squashfs-tools-ng) before relying on it:
- a directory entry that arrives AFTER files below it is accepted: the directory
  created implicitly for the files takes the entry's mode and mtime;
- a hardlink whose target arrived earlier is accepted (one inode, link count 2); so is
  one whose target arrives later (links are resolved at the end);
- the same path twice ("File exists") and unreadable records are errors, so we write
  each path once and pass --no-skip: since we write the tar ourselves, a record it
  cannot read is our bug and must fail the build rather than drop a file silently;
- with --defaults uid=0,gid=0,mode=0755 implicitly created directories (and the root,
  which we never emit) are root-owned 0755.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from imagegw.config import ConverterOptions, Limits
from imagegw.errors import ContentRejected, ConversionFailed

from .decompress import open_layer
from .flatten import LayerIndex, index_layer, merge_layers, write_flat_tar
from .members import MemberPolicy

log = logging.getLogger(__name__)

#: Seconds tar2sqfs may take to finish once its input has ended.
FINISH_TIMEOUT = 3600.0
#: Buffer between the tar writer and tar2sqfs's stdin: small members are gathered
#: into large pipe writes instead of two or three system calls each.
PIPE_BUFFER = 1 << 20
#: Progress is reported at most once per this many bytes of file data.
PROGRESS_STEP = 1 << 20
_STDERR_TAIL = 2000

__all__ = ["build_squashfs", "tar2sqfs_command", "flatten_to_squashfs", "FlattenStats"]


@dataclass(frozen=True)
class FlattenStats:
    """What went into the image."""

    files: int
    dirs: int
    symlinks: int
    hardlinks: int
    #: Members left out (devices, fifos, unknown types, aufs metadata, root entries).
    dropped: int
    data_bytes: int


def tar2sqfs_command(output: Path, options: ConverterOptions) -> list[str]:
    """The tar2sqfs command line: our safe defaults, then the site's extra arguments."""
    tool = shutil.which("tar2sqfs")
    if tool is None:
        raise ConversionFailed("tar2sqfs is not installed on this worker",
                               hint="install squashfs-tools-ng")
    command = [tool, "-q", "-f", "--no-skip", "-c", options.compressor]
    if options.level is not None:
        command += ["-X", f"level={options.level}"]
    command += [
        "-b", str(options.block_size),
        "-j", str(options.jobs or os.cpu_count() or 1),
        "--no-xattr",
        "--defaults", "uid=0,gid=0,mode=0755",
        *options.extra_args,
        str(output),
    ]
    return command


def build_squashfs(
    write_tar: Callable[[BinaryIO], None], output: Path, options: ConverterOptions,
    *, expected_bytes: int = 0,
) -> None:
    """Runs tar2sqfs with `write_tar` feeding its stdin; `output` appears only when done.

    `expected_bytes` (the file data going in) lets a failure name a file system that
    was too small: tar2sqfs removes its output and only says "I/O error"."""
    output = Path(output)
    partial = output.with_name(f".{output.name}.partial")
    free_before = _free_bytes(output.parent)
    command = tar2sqfs_command(partial, options)
    log.debug("running %s", command)
    with tempfile.TemporaryFile() as stderr:
        process = subprocess.Popen(command, stdin=subprocess.PIPE, bufsize=PIPE_BUFFER,
                                   stdout=subprocess.DEVNULL, stderr=stderr)
        assert process.stdin is not None
        try:
            try:
                write_tar(process.stdin)
                process.stdin.close()
            except BrokenPipeError:
                process.wait(timeout=FINISH_TIMEOUT)
                raise ConversionFailed(
                    f"tar2sqfs stopped reading its input (exit code {process.returncode}): "
                    f"{_tail(stderr)}", hint=_space_hint(output.parent, free_before, expected_bytes)
                ) from None
            try:
                code = process.wait(timeout=FINISH_TIMEOUT)
            except subprocess.TimeoutExpired as exc:
                raise ConversionFailed(
                    f"tar2sqfs did not finish within {FINISH_TIMEOUT:.0f}s after its input"
                ) from exc
            if code != 0:
                raise ConversionFailed(
                    f"tar2sqfs failed (exit code {code}): {_tail(stderr)}",
                    hint=_space_hint(output.parent, free_before, expected_bytes))
            os.replace(partial, output)
        except BaseException:
            _stop(process)
            partial.unlink(missing_ok=True)
            raise


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.kill()
        process.wait()
    if process.stdin is not None:
        with contextlib.suppress(BrokenPipeError):
            process.stdin.close()


def _free_bytes(directory: Path) -> int | None:
    try:
        stat = os.statvfs(directory)
    except OSError:
        return None
    return stat.f_bavail * stat.f_frsize


def _space_hint(directory: Path, free_before: int | None, expected_bytes: int) -> str | None:
    """Names a file system that was too small for the image, or is full now."""
    free_now = _free_bytes(directory)
    if free_before is None or free_now is None:
        return None
    if free_now < (1 << 20) or free_before < expected_bytes:
        return (f"No space left on device? {directory} had {free_before} bytes free for "
                f"{expected_bytes} bytes of file data; free space in ExpandDirectory or "
                "make it larger")
    return None


def _tail(stderr: BinaryIO) -> str:
    stderr.seek(0, os.SEEK_END)
    size = stderr.tell()
    stderr.seek(max(0, size - _STDERR_TAIL))
    text = stderr.read().decode("utf-8", "replace").strip()
    return text or "no message"


def flatten_to_squashfs(
    layer_paths: Sequence[Path],
    output: Path,
    *,
    options: ConverterOptions,
    limits: Limits,
    layer_names: Sequence[str],
    on_progress: Callable[[int, int], None] | None = None,
    indexes: Sequence[LayerIndex] | None = None,
) -> FlattenStats:
    """Indexes every layer (oldest first), merges them and builds the squashfs image.

    `indexes`, when given, are the layers' indexes made earlier (while downloading,
    or cached): then each layer is decompressed once, here, for its file data.
    `on_progress(bytes_done, bytes_total)` follows the file data written.
    """
    if len(layer_paths) != len(layer_names):
        raise ValueError("layer_paths and layer_names differ in length")
    if len(layer_paths) > limits.max_layers:
        raise ContentRejected(f"the image has {len(layer_paths)} layers; the limit is "
                              f"{limits.max_layers}")
    policy = MemberPolicy(keep_setuid=options.keep_setuid)
    cap = limits.max_unpacked_bytes
    if indexes is None:
        indexes = [_index(path, name, cap, policy)
                   for path, name in zip(layer_paths, layer_names, strict=True)]
    elif [index.layer for index in indexes] != list(layer_names):
        raise ValueError("indexes do not match layer_names")
    tree = merge_layers(indexes)
    total = tree.data_bytes
    if total > cap:
        raise ContentRejected(f"the image holds {total} bytes of file data; the limit is {cap}",
                              hint="the site's maxUnpackedBytes limit")
    progress = _Progress(total, on_progress)

    def open_for_write(number: int) -> BinaryIO:
        return open_layer(layer_paths[number], max_uncompressed=cap, layer=layer_names[number])

    def write_tar(out: BinaryIO) -> None:
        write_flat_tar(tree, open_for_write, out, on_bytes=progress.add)
        progress.finish()

    build_squashfs(write_tar, output, options, expected_bytes=total)
    stats = FlattenStats(
        files=len(tree.files), dirs=len(tree.directories), symlinks=len(tree.symlinks),
        hardlinks=tree.hardlinks, dropped=tree.dropped, data_bytes=total,
    )
    log.info("built %s: %s", output, stats)
    return stats


def _index(path: Path, name: str, cap: int, policy: MemberPolicy) -> LayerIndex:
    with open_layer(path, max_uncompressed=cap, layer=name) as stream:
        return index_layer(stream, layer=name, policy=policy)


class _Progress:
    """Turns per-chunk byte counts into throttled (done, total) reports."""

    def __init__(self, total: int, report: Callable[[int, int], None] | None) -> None:
        self.total = total
        self.done = 0
        self._reported = -PROGRESS_STEP
        self._report = report
        if report is not None:
            report(0, total)
            self._reported = 0

    def add(self, count: int) -> None:
        self.done += count
        if self._report is not None and self.done - self._reported >= PROGRESS_STEP:
            self._reported = self.done
            self._report(self.done, self.total)

    def finish(self) -> None:
        if self._report is not None and self._reported != self.done:
            self._reported = self.done
            self._report(self.done, self.total)
