"""Builds a squashfs image from a tar stream with tar2sqfs, and the one-call
layers-to-squashfs helper (each layer read once, newest first, proven exact; or index,
merge, then copy; in C when the extensions are built).

Checked against tar2sqfs 1.2.0 (squashfs-tools-ng) before relying on it:
- a directory entry that arrives AFTER files below it is accepted: the directory
  created implicitly for the files takes the entry's mode and mtime;
- a hardlink whose target arrived earlier is accepted (one inode, link count 2); so is
  one whose target arrives later (links are resolved at the end);
- the same path twice ("File exists") and unreadable records are errors, so we write
  each path once and pass --no-skip: since we write the tar ourselves, a record it
  cannot read is our bug and must fail the build rather than drop a file silently;
- with --defaults uid=0,gid=0,mode=0755,mtime=0 implicitly created directories (and the
  root, which we never emit) are root-owned 0755 with mtime 0.
"""

from __future__ import annotations

import contextlib
import fcntl
import io
import logging
import os
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, BinaryIO, cast

from imagegw.domain.config import ConverterOptions, Limits
from imagegw.domain.errors import ContentRejected, ConversionFailed

from . import compact, heap, writer_malloc
from .decompress import open_layer_stream
from .flatten import FlatTree, LayerIndex, index_layer, merge_layers, write_flat_tar
from .gzip_engine import tar2sqfs_environment
from .inflate_ahead import LayersAhead
from .layer import Layer
from .members import MemberPolicy
from .runtime_files import BASE_LAYER, TOP_LAYER, AddedLayers
from .streaming import SpeculationFailed, StreamedFlatten, stream_flat_tar
from .writeback import EarlyWriteback

try:
    from . import native_flat
except ImportError:  # the extension is not built: the Python flatten runs
    native_flat = None  # type: ignore[assignment]
try:
    from . import native_onepass
except ImportError:  # the extensions are not built: the Python flatten runs
    native_onepass = None  # type: ignore[assignment]

log = logging.getLogger(__name__)

#: Seconds tar2sqfs may take to finish once its input has ended.
FINISH_TIMEOUT = 3600.0
#: Buffer between the tar writer and tar2sqfs's stdin: small members are gathered
#: into large pipe writes instead of two or three system calls each.
PIPE_BUFFER = 1 << 20
#: Progress is reported at most once per this many bytes of file data.
PROGRESS_STEP = 1 << 20
#: Layers indexed at once by the compiled two-pass flatten (as their downloads arrive).
INDEX_THREADS = 2
_STDERR_TAIL = 2000

__all__ = ["build_squashfs", "tar2sqfs_command", "flatten_to_squashfs", "FlattenStats",
           "partial_path"]


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
    #: Whether each layer was read once, newest first (False: merged, then copied).
    one_pass: bool = False
    #: Every layer's compact index (compact.py), oldest first (kept beside the blobs
    #: for the next conversion).
    indexes: tuple[bytes, ...] = field(default=(), repr=False, compare=False)
    #: Whether the compiled merge and writer made it (native_flat.py): how, not what.
    compiled: bool = field(default=False, compare=False)


def partial_path(output: Path) -> Path:
    """Where tar2sqfs writes `output` until it is complete (a reader may follow it)."""
    return output.with_name(f".{output.name}.partial")


def tar2sqfs_command(output: Path, options: ConverterOptions) -> list[str]:
    """The tar2sqfs command line: our safe defaults, then the site's extra arguments."""
    tool = shutil.which("tar2sqfs")
    if tool is None:
        raise ConversionFailed("tar2sqfs is not installed on this worker",
                               hint="install squashfs-tools-ng")
    command = [tool, "-q", "-f", "--no-skip", "-c", options.compressor]
    if options.level is not None:
        command += ["-X", f"level={options.level}"]
    jobs = options.jobs or os.cpu_count() or 1
    command += [
        "-b", str(options.block_size),
        "-j", str(jobs),
        "-Q", str(options.blocks_queued(jobs)),
        "--no-xattr",
        "--defaults", "uid=0,gid=0,mode=0755,mtime=0",
        *options.extra_args,
        str(output),
    ]
    return command


def build_squashfs(
    write_tar: Callable[[BinaryIO], None], output: Path, options: ConverterOptions,
    *, expected_bytes: int = 0, expected_what: str = "bytes of file data",
    check: Callable[[], None] | None = None,
) -> None:
    """Runs tar2sqfs with `write_tar` feeding its stdin; `output` appears only when done.

    `expected_bytes` (the file data going in, or what `expected_what` says) lets a
    failure name a file system that was too small: tar2sqfs removes its output and only
    says "I/O error". `check()`, when given, runs once the input is complete, while
    tar2sqfs finishes the image; if it raises, the image is thrown away."""
    output = Path(output)
    partial = partial_path(output)
    free_before = _free_bytes(output.parent)

    def space_hint() -> str | None:
        return _space_hint(output.parent, free_before, expected_bytes, expected_what)

    command = tar2sqfs_command(partial, options)
    environment = writer_malloc.preload(tar2sqfs_environment(options), options)
    log.debug("running %s (LD_PRELOAD %s)", command,
              (environment or {}).get("LD_PRELOAD") or "none")
    with tempfile.TemporaryFile() as stderr:
        process = subprocess.Popen(command, stdin=subprocess.PIPE, bufsize=PIPE_BUFFER,
                                   stdout=subprocess.DEVNULL, stderr=stderr, env=environment)
        assert process.stdin is not None
        _widen_pipe(process.stdin)
        try:
            with EarlyWriteback(partial):
                _feed(process, write_tar, check, stderr, space_hint)
            os.replace(partial, output)
        except BaseException:
            _stop(process)
            partial.unlink(missing_ok=True)
            raise


def _feed(process: subprocess.Popen[bytes], write_tar: Callable[[BinaryIO], None],
          check: Callable[[], None] | None, stderr: BinaryIO,
          space_hint: Callable[[], str | None]) -> None:
    """Writes the tar into tar2sqfs, runs `check` while it finishes, waits for it."""
    assert process.stdin is not None
    try:
        # Popen (bufsize > 0) opened it as an io.BufferedWriter; typeshed says IO[bytes].
        write_tar(cast(BinaryIO, process.stdin))
        process.stdin.close()
        if check is not None:
            check()
    except BrokenPipeError:
        process.wait(timeout=FINISH_TIMEOUT)
        raise ConversionFailed(
            f"tar2sqfs stopped reading its input (exit code {process.returncode}): "
            f"{_tail(stderr)}", hint=space_hint()
        ) from None
    try:
        code = process.wait(timeout=FINISH_TIMEOUT)
    except subprocess.TimeoutExpired as exc:
        raise ConversionFailed(
            f"tar2sqfs did not finish within {FINISH_TIMEOUT:.0f}s after its input"
        ) from exc
    if code != 0:
        raise ConversionFailed(f"tar2sqfs failed (exit code {code}): {_tail(stderr)}",
                               hint=space_hint())


def _widen_pipe(pipe: IO[bytes]) -> None:
    """Lets the tar writer run up to PIPE_BUFFER ahead of tar2sqfs (64 KiB by default):
    with a small pipe the two take turns instead of working at the same time."""
    with contextlib.suppress(OSError, AttributeError):
        fcntl.fcntl(pipe.fileno(), fcntl.F_SETPIPE_SZ, PIPE_BUFFER)


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


def _space_hint(directory: Path, free_before: int | None, expected_bytes: int,
                expected_what: str) -> str | None:
    """Names a file system that was too small for the image, or is full now."""
    free_now = _free_bytes(directory)
    if free_before is None or free_now is None:
        return None
    if free_now < (1 << 20) or free_before < expected_bytes:
        return (f"No space left on device? {directory} had {free_before} bytes free for "
                f"{expected_bytes} {expected_what}; free space in ExpandDirectory or "
                "make it larger")
    return None


def _tail(stderr: BinaryIO) -> str:
    stderr.seek(0, os.SEEK_END)
    size = stderr.tell()
    stderr.seek(max(0, size - _STDERR_TAIL))
    text = stderr.read().decode("utf-8", "replace").strip()
    return text or "no message"


def flatten_to_squashfs(
    layers: Sequence[Layer],
    output: Path,
    *,
    options: ConverterOptions,
    limits: Limits,
    on_progress: Callable[[int, int], None] | None = None,
    indexes: Sequence[bytes | None] | None = None,
    on_index: Callable[[int, bytes], None] | None = None,
    added: AddedLayers | None = None,
    policy: MemberPolicy | None = None,
) -> FlattenStats:
    """Flattens the layers (oldest first) into the squashfs image `output`.

    Indexes are compact (compact.py). With every index known (`indexes`, from earlier
    conversions) the layers are merged first and each is decompressed once for its file
    data; otherwise each layer is decompressed once, newest first, writing what no newer
    layer hides as it goes, and when that result cannot be proven exact the partial
    image is dropped and the two-pass flatten runs with the indexes made (the layers not
    read yet are indexed first). With the extensions built all of it runs in C
    (native_onepass.py, native_flat.py); without them in Python (streaming.py,
    flatten.py). A layer's blob may still be downloading (its reads wait).
    `on_progress(bytes_done, bytes_total)` follows the compressed layer bytes read
    (indexing, or the one pass; the layers' sizes give the total without waiting for
    the downloads), then the file data written; it never goes back. `on_index(i, index)` gets the compact
    index of layer i as soon as it is made here (a layer read to its end), to keep it.
    `added`, when given, are the runtime files' layers (runtime_files.py): flattened
    below and above the image's layers in the same conversion. `policy` overrides the
    member rules the options give (enroot's owner access: runtime_files.py).
    """
    if added is not None:
        if len(layers) + 2 > limits.max_layers:
            raise ContentRejected(f"the image has {len(layers)} layers; the limit is "
                                  f"{limits.max_layers - 2} with the runtime files")
        return _with_added_layers(added, layers, output, options=options, limits=limits,
                                  on_progress=on_progress, indexes=indexes,
                                  on_index=on_index, policy=policy)
    if len(layers) > limits.max_layers:
        raise ContentRejected(f"the image has {len(layers)} layers; the limit is "
                              f"{limits.max_layers}")
    known: list[bytes | None] = list(indexes) if indexes is not None else [None] * len(layers)
    if len(known) != len(layers):
        raise ValueError("indexes do not match the layers")
    flatten = _Flatten(layers, options, limits, on_progress, on_index, policy)
    if native_flat is not None and all(index is not None for index in known):
        return flatten.compiled(known, output)
    if native_flat is not None and native_onepass is not None:
        return flatten.compiled_one_pass(output)
    decoded = [None if index is None else compact.decode(index) for index in known]
    if any(index is not None and index.layer != layer.name
           for index, layer in zip(decoded, layers, strict=True)):
        raise ValueError("indexes do not match the layers")
    if all(index is not None for index in decoded):
        return flatten.two_passes([index for index in decoded if index is not None], output)
    try:
        return flatten.one_pass(output, [layer.size for layer in layers])
    except SpeculationFailed as failed:
        log.info("one-pass flatten of %s not exact (%s); flattening in two passes",
                 output.name, failed.reason)
        for number, index in failed.indexes.items():
            decoded[number] = index
    made = [index if index is not None else flatten.index(number)
            for number, index in enumerate(decoded)]
    return flatten.two_passes(made, output)


@dataclass(frozen=True)
class _BytesLayer:
    """A synthetic layer held in memory (a `Layer`)."""

    name: str
    data: bytes

    @property
    def size(self) -> int:
        return len(self.data)

    def open(self) -> BinaryIO:
        return io.BytesIO(self.data)


def _with_added_layers(
    added: AddedLayers, layers: Sequence[Layer], output: Path, *,
    indexes: Sequence[bytes | None] | None,
    on_index: Callable[[int, bytes], None] | None, **rest: Any,
) -> FlattenStats:
    """The image's layers with the runtime layers around them: layer 0 is `added.base`,
    the last `added.top`; the image's layers keep their numbers (shifted by one) when
    passed back to `on_index`."""
    base, top = _BytesLayer(BASE_LAYER, added.base), _BytesLayer(TOP_LAYER, added.top)
    ours = MemberPolicy()  # our own members: plain files and directories
    known = list(indexes) if indexes is not None else [None] * len(layers)
    made = [compact.scan_layer(io.BytesIO(layer.data), layer=layer.name, policy=ours)
            for layer in (base, top)]

    def index_made(number: int, index: bytes) -> None:
        if on_index is not None and 0 < number <= len(layers):
            on_index(number - 1, index)

    return flatten_to_squashfs([base, *layers, top], output, indexes=[made[0], *known, made[1]],
                               on_index=index_made, **rest)


class _Flatten:
    """The ways of flattening the same layers into one image."""

    def __init__(self, layers: Sequence[Layer], options: ConverterOptions, limits: Limits,
                 on_progress: Callable[[int, int], None] | None,
                 on_index: Callable[[int, bytes], None] | None = None,
                 policy: MemberPolicy | None = None) -> None:
        self.layers = layers
        self.layer_names = [layer.name for layer in layers]
        self.options = options
        self.cap = limits.max_unpacked_bytes
        self.policy = policy or MemberPolicy(keep_setuid=options.keep_setuid)
        self.on_progress = on_progress
        self.on_index = on_index

    def open(self, number: int, on_raw_bytes: Callable[[int], None] | None = None) -> BinaryIO:
        blob = self.layers[number].open()
        raw = blob if on_raw_bytes is None else _CountingReader(blob, on_raw_bytes)
        try:
            return open_layer_stream(raw, max_uncompressed=self.cap,
                                     layer=self.layer_names[number])
        except BaseException:
            raw.close()
            raise

    def open_ahead(self, on_raw_bytes: Callable[[int], None]) -> LayersAhead:
        """The layers as the one pass reads them (newest first), each decompressed ahead
        in a thread of its own (inflate_ahead.py); nothing is counted once it is closed
        (a fallback's progress goes on from the count it had)."""
        layers = LayersAhead(lambda number: self.open(number, counted),
                             reversed(range(len(self.layers))),
                             name=lambda number: self.layer_names[number])

        def counted(count: int) -> None:
            if not layers.closed:
                on_raw_bytes(count)

        return layers

    def index(self, number: int) -> LayerIndex:
        with self.open(number) as stream:
            index = index_layer(stream, layer=self.layer_names[number], policy=self.policy)
        if self.on_index is not None:
            self.on_index(number, compact.encode(index))
        return index

    def compiled_one_pass(self, output: Path) -> FlattenStats:
        """Each layer decompressed once, newest first, its visible entries written as it
        is indexed, then proven exact while tar2sqfs finishes (native_onepass.py); when
        that fails, the partial image is dropped and the compiled two-pass flatten runs
        with the indexes made.

        The proof is when tar2sqfs holds its whole tree: freed memory goes back to the
        kernel before the exact tree is built (heap.py), and the tree and the one pass's
        path table are freed as soon as the verdict is taken (docs/performance.md,
        "Memory of the service process")."""
        assert native_onepass is not None
        layer_bytes = sum(layer.size for layer in self.layers)
        progress = _Progress(layer_bytes, self.on_progress)
        streamed: list[native_onepass.CompiledStream] = []
        built: list[FlattenStats] = []
        zeroed: dict[int, list[int]] = {}

        def write_tar(out: BinaryIO) -> None:
            assert native_onepass is not None
            with self.open_ahead(progress.add) as ahead:

                def layer_read(number: int, index: bytes) -> None:
                    ahead.layer_read(number, index)  # what it hides is not held ahead
                    if self.on_index is not None:
                        self.on_index(number, index)

                streamed.append(native_onepass.stream_flat_tar(
                    self.layer_names, ahead.open, out, policy=self.policy,
                    max_data_bytes=self.cap, on_layer_index=layer_read))
                zeroed.update(ahead.zeroed())
            progress.finish()

        def check() -> None:
            heap.trim()  # the one pass's read buffers, before the exact tree is built
            tree = streamed[0].verify()
            _check_zeroed(tree, zeroed, streamed[0].indexes)
            built.append(FlattenStats(
                files=tree.files, dirs=tree.dirs, symlinks=tree.symlinks,
                hardlinks=tree.hardlinks, dropped=tree.dropped, data_bytes=tree.data_bytes,
                one_pass=True, indexes=tuple(streamed[0].indexes), compiled=True))
            del tree
            streamed[0].release()
            heap.trim()

        try:
            # The image is about as large as the compressed layers; the data is unknown.
            build_squashfs(write_tar, output, self.options, expected_bytes=layer_bytes,
                           expected_what="bytes of compressed layers", check=check)
        except native_onepass.SpeculationFailed as failed:
            log.info("one-pass flatten of %s not exact (%s); flattening in two passes",
                     output.name, failed.reason)
            if streamed:  # the two passes need none of it
                streamed[0].release()
            known = [failed.indexes.get(number) for number in range(len(self.layers))]
            return self.compiled(known, output, progress)
        finally:
            if streamed:  # an error's traceback keeps this frame, not the state
                streamed[0].release()
        log.info("built an image: %s", built[0])
        return built[0]

    def compiled(self, known: list[bytes | None], output: Path,
                 progress: _Progress | None = None) -> FlattenStats:
        """Indexes what is not known, merges and writes in C (native_flat.py); `progress`
        goes on from a one pass that failed."""
        assert native_flat is not None
        missing = [number for number, index in enumerate(known) if index is None]
        missing_bytes = sum(self.layers[number].size for number in missing)
        if progress is None:
            progress = _Progress(missing_bytes, self.on_progress)
        else:
            progress.then(missing_bytes)
        indexes = self.scan(known, missing, progress.add)
        tree = native_flat.merge(indexes)
        if list(tree.layers) != self.layer_names:
            raise ValueError("indexes do not match the layers")
        total = tree.data_bytes
        if total > self.cap:
            raise ContentRejected(f"the image holds {total} bytes of file data; the limit is "
                                  f"{self.cap}", hint="the site's maxUnpackedBytes limit")
        progress.then(total)

        def write_tar(out: BinaryIO) -> None:
            native_flat.write_tar(tree, self.open, out, on_bytes=progress.add)
            progress.finish()

        build_squashfs(write_tar, output, self.options, expected_bytes=total)
        stats = FlattenStats(files=tree.files, dirs=tree.dirs, symlinks=tree.symlinks,
                             hardlinks=tree.hardlinks, dropped=tree.dropped,
                             data_bytes=total, indexes=tuple(indexes), compiled=True)
        log.info("built an image: %s", stats)
        return stats

    def scan(self, known: list[bytes | None], missing: list[int],
             on_raw_bytes: Callable[[int], None]) -> list[bytes]:
        """The compact index of every layer: `known`, else made newest first, INDEX_THREADS
        at a time (a layer still downloading is indexed as its bytes arrive)."""
        made: dict[int, bytes] = {}
        one_at_a_time = threading.Lock()  # on_index is called from one thread at a time
        failed = False

        def scan_one(number: int) -> None:
            with self.open(number, on_raw_bytes) as stream:
                index = compact.scan_layer(stream, layer=self.layer_names[number],
                                           policy=self.policy)
            with one_at_a_time:
                if failed:
                    return
                made[number] = index
                if self.on_index is not None:
                    self.on_index(number, index)

        pool = ThreadPoolExecutor(max_workers=INDEX_THREADS, thread_name_prefix="index")
        futures = [pool.submit(scan_one, number) for number in reversed(missing)]
        try:
            wait(futures, return_when=FIRST_EXCEPTION)
            for future in futures:
                if future.done() and future.exception() is not None:
                    future.result()
        except BaseException:
            # A scan still running waits for its layer's download, which the caller
            # stops once this conversion has failed: it is not waited for here.
            with one_at_a_time:
                failed = True
            pool.shutdown(wait=False, cancel_futures=True)
            raise
        pool.shutdown()
        return [index if index is not None else made[number]
                for number, index in enumerate(known)]

    def one_pass(self, output: Path, layer_sizes: Sequence[int]) -> FlattenStats:
        # Progress counts compressed bytes read: the file data is known only at the end.
        progress = _Progress(sum(layer_sizes), self.on_progress)
        streamed: list[StreamedFlatten] = []
        trees: list[FlatTree] = []

        def on_layer_index(number: int, index: LayerIndex) -> None:
            if self.on_index is not None:
                self.on_index(number, compact.encode(index))

        def write_tar(out: BinaryIO) -> None:
            streamed.append(stream_flat_tar(
                self.layer_names, lambda number: self.open(number, progress.add), out,
                policy=self.policy, max_data_bytes=self.cap, on_layer_index=on_layer_index))
            progress.finish()

        def check() -> None:
            trees.append(streamed[0].verify())

        # The image is about as large as the compressed layers; the file data is unknown.
        build_squashfs(write_tar, output, self.options, expected_bytes=sum(layer_sizes),
                       expected_what="bytes of compressed layers", check=check)
        return _stats(trees[0], streamed[0].indexes, one_pass=True)

    def two_passes(self, indexes: list[LayerIndex], output: Path) -> FlattenStats:
        tree = merge_layers(indexes)
        total = tree.data_bytes
        if total > self.cap:
            raise ContentRejected(f"the image holds {total} bytes of file data; the limit is "
                                  f"{self.cap}", hint="the site's maxUnpackedBytes limit")
        progress = _Progress(total, self.on_progress)

        def write_tar(out: BinaryIO) -> None:
            write_flat_tar(tree, self.open, out, on_bytes=progress.add)
            progress.finish()

        build_squashfs(write_tar, output, self.options, expected_bytes=total)
        return _stats(tree, indexes, one_pass=False)


def _check_zeroed(tree: native_flat.Tree, zeroed: dict[int, list[int]],
                  indexes: list[bytes]) -> None:
    """Raises SpeculationFailed when the one pass wrote data the read-ahead handed out
    as zeros (`LayersAhead.zeroed`): its hiding rules and onepass.c's disagreed, and the
    two passes, which read every layer afresh, make the image instead."""
    for number, offsets in zeroed.items():
        kept = set(tree.data_offsets(number)).intersection(offsets)
        if kept:
            assert native_onepass is not None
            raise native_onepass.SpeculationFailed(
                f"the read-ahead skipped data the image keeps (layer {number}, "
                f"{len(kept)} file(s))", dict(enumerate(indexes)))


def _stats(tree: FlatTree, indexes: list[LayerIndex], *, one_pass: bool) -> FlattenStats:
    stats = FlattenStats(
        files=len(tree.files), dirs=len(tree.directories), symlinks=len(tree.symlinks),
        hardlinks=tree.hardlinks, dropped=tree.dropped, data_bytes=tree.data_bytes,
        one_pass=one_pass, indexes=tuple(compact.encode(index) for index in indexes),
    )
    log.info("built an image: %s", stats)
    return stats


class _CountingReader:
    """A file whose reads are counted (compressed-bytes progress of the one-pass flatten)."""

    def __init__(self, raw: BinaryIO, on_bytes: Callable[[int], None]) -> None:
        self._raw = raw
        self._on_bytes = on_bytes

    def read(self, size: int = -1) -> bytes:
        data = self._raw.read(size)
        self._on_bytes(len(data))
        return data

    def close(self) -> None:
        self._raw.close()


class _Progress:
    """Turns per-chunk byte counts into throttled (done, total) reports (counts may come
    from two threads: a layer is read ahead while another is written)."""

    def __init__(self, total: int, report: Callable[[int, int], None] | None) -> None:
        self.total = total
        self.done = 0
        self._reported = -PROGRESS_STEP
        self._report = report
        self._lock = threading.Lock()
        if report is not None:
            report(0, total)
            self._reported = 0

    def add(self, count: int) -> None:
        with self._lock:
            self.done += count
            if self._report is None or self.done - self._reported < PROGRESS_STEP:
                return
            self._reported = done = self.done
        self._report(done, self.total)

    def then(self, more: int) -> None:
        """A second stage of `more` to do (bytes done stay counted: progress never goes
        back)."""
        self.finish()
        with self._lock:
            self.total = self.done + more

    def finish(self) -> None:
        if self._report is not None and self._reported != self.done:
            self._reported = self.done
            self._report(self.done, self.total)
