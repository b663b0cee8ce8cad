"""One build job, start to end: resolve -> fetch -> flatten -> publish.

`Builder.build(job, report)` only orchestrates the pipeline stages (each its own
module) and reports progress through `report`; it owns no format or protocol
details itself.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import BinaryIO

from imagegw import metrics
from imagegw.artifacts import ConversionKey, build_ready_made, shared_conversions_for
from imagegw.cache import WorkerCaches
from imagegw.cache.layout import WorkerPaths
from imagegw.domain.acl import acl_file_suffix
from imagegw.domain.config import Config
from imagegw.domain.errors import ConfigError
from imagegw.domain.model import BuildJob, BuildResult, Progress, Stage
from imagegw.domain.reference import parse_reference
from imagegw.domain.runtimes import added_files, sif_file, wants_sif
from imagegw.pipeline import gzip_engine, writer_malloc
from imagegw.pipeline.indexes import load_index, store_index
from imagegw.pipeline.layer import WaitedLayer
from imagegw.pipeline.members import MemberPolicy
from imagegw.pipeline.meta import render_meta
from imagegw.pipeline.runtime_files import AddedLayers, added_layers
from imagegw.pipeline.sif import write_sif
from imagegw.pipeline.squashfs import flatten_to_squashfs, partial_path
from imagegw.publish import (
    LocalPublisher,
    Publisher,
    following_publish,
    publisher_for,
    streams_while_written,
)
from imagegw.publish.access import readers_for
from imagegw.publish.sif import has_published
from imagegw.registry.client import RegistryClient
from imagegw.registry.following import DownloadRestarted, GrowingBlob
from imagegw.registry.policy import guard_for_reference
from imagegw.registry.resolve import ResolvedImage, resolve_image
from imagegw.signatures import load_site_trust
from imagegw.worker.collector import full_collections_deferred
from imagegw.worker.signature_check import SignatureCheck

log = logging.getLogger(__name__)

Report = Callable[[Progress], None]

#: How many layer downloads run at once per job.
DOWNLOAD_CONNECTIONS = 4


class Throttle:
    """Passes progress on at most every `interval` seconds, stage changes always."""

    def __init__(self, report: Report, interval: float = 0.25) -> None:
        self._report = report
        self._interval = interval
        self._last = 0.0
        self._stage: Stage | None = None
        self._lock = threading.Lock()

    def __call__(self, progress: Progress, *, force: bool = False) -> None:
        now = time.monotonic()
        with self._lock:
            if not force and progress.stage == self._stage and now - self._last < self._interval:
                return
            self._last = now
            self._stage = progress.stage
        self._report(progress)


class Builder:
    def __init__(self, config: Config, paths: WorkerPaths) -> None:
        # The gzip engine is settled once, here: conversion keys name the one really used.
        # So is tar2sqfs's allocator (the same image either way, so not in the key).
        converter = writer_malloc.resolve(gzip_engine.resolve(config.converter))
        self.config = replace(config, converter=converter)
        self.paths = paths
        self.caches = WorkerCaches(paths.layout, max_bytes=config.cache_max_bytes)
        self.cache = self.caches.blobs
        self.shared = shared_conversions_for(config)
        self.trust = load_site_trust(config)
        if any(platform.access_type == "remote" for platform in config.platforms.values()):
            # The SSH publishers (paramiko: 0.05-0.3 s to import) load beside the start-up,
            # not in the way of the first remote pull's conversion.
            threading.Thread(target=_load_ssh_publishers, name="ssh-import", daemon=True).start()
        for warning in self.trust.warnings:
            log.warning("signature policy: %s", warning)
        for system, judged in sorted(self.trust.systems.items()):
            log.info("system %s: images judged by signature policy %s (%s)", system,
                     judged.policy.path, judged.digest)

    def build(self, job: BuildJob, report: Report) -> BuildResult:
        emit = Throttle(report)
        platform = self.config.platform(job.system)
        reference = parse_reference(job.reference, self.config)
        location = self.config.locations.get(reference.location)
        client = RegistryClient(
            reference.registry_url, reference.repository, credentials=job.credentials,
            limits=self.config.limits, ca_bundle=location.sslcacert if location else None,
            address_check=guard_for_reference(self.config, reference),
        )
        with full_collections_deferred(), client:  # collector.py: they free nothing here
            check = SignatureCheck(self.trust, job, reference, client)
            if reference.artifact or (location is not None and location.remotetype == "oras"):
                return check.stamp(build_ready_made(job, reference, client, config=self.config,
                                                    paths=self.paths, emit=emit,
                                                    on_manifest=check))
            return check.stamp(self._build(job, reference, platform, client, emit, check))

    def _build(self, job: BuildJob, reference, platform, client: RegistryClient,
               emit: Throttle, check: SignatureCheck) -> BuildResult:
        emit(Progress(Stage.RESOLVING, message=f"resolving {reference}"), force=True)
        image = resolve_image(client, reference, platform, self.config.limits, cache=self.cache,
                              on_manifest=check)
        image_format = job.format or self.config.default_image_format
        image_file = f"{image.image_id}{acl_file_suffix(job.user_acl, job.group_acl)}.{image_format}"
        meta_file = f"{image.image_id}{acl_file_suffix(job.user_acl, job.group_acl)}.meta"
        meta = render_meta(image_format, image.metadata, user_acl=job.user_acl,
                           group_acl=job.group_acl)
        publisher = publisher_for(platform)
        # Runtimes other than Shifter: their files in the image, and a SIF for Apptainer.
        files = added_files(platform.runtimes)
        provenance = (f"docker://{reference.registry_url.partition('://')[2]}#"
                      f"{reference.repository}@{image.manifest_digest}") if files else ""
        sif_name = sif_file(image_file) if wants_sif(platform.runtimes) else None
        readers = readers_for(platform, job.user_acl, job.group_acl)

        def published() -> bool:
            return has_published(publisher, platform, image_file, meta_file)

        def result(size: int, *, reused: bool = False, unchanged: bool = False) -> BuildResult:
            return BuildResult(
                image_id=image.image_id, manifest_digest=image.manifest_digest,
                format=image_format, metadata=image.metadata, image_file=image_file,
                meta_file=meta_file, size_bytes=size, reference=str(reference),
                reused=reused, unchanged=unchanged,
            )

        if job.known_manifest_digest == image.manifest_digest and published():
            log.info("job %s: %s unchanged (%s)", job.job_id, reference, image.manifest_digest)
            return result(publisher.image_size(image_file), unchanged=True)

        # A conversion streamed to a remote system need not wait for its lookup there (an
        # SSH login, 0.1-0.2 s): the lookup runs beside the conversion's start, and its
        # answer is waited for before anything is published (a remote copy is committed).
        overlapped = image_format == "squashfs" and sif_name is None and readers is None \
            and streams_while_written(publisher)
        with self.paths.image_lock(image.image_id):
            lookup = _in_thread(published) if overlapped else None
            if lookup is None and published():
                log.info("job %s: image %s already published", job.job_id, image.image_id)
                return result(publisher.image_size(image_file), reused=True)
            key = ConversionKey(image.manifest_digest, image_format, self.config.converter,
                                runtime_files=files, provenance=provenance)
            with self.caches.lease(digests=[layer.digest for layer in image.layers],
                                   conversions=[key.digest]), \
                    self.paths.scratch(job.job_id) as scratch:
                output = self.caches.conversions.lookup(key.digest, image_format)
                shared = output is not None
                streamed = False
                private = bool(job.user_acl or job.group_acl)
                if output is not None:
                    log.info("job %s: %s converted before (%s); publishing that image",
                             job.job_id, reference, image.manifest_digest)
                else:
                    output = scratch / image_file
                    shared = self._fetch_shared_conversion(key, image, output, emit)
                    if not shared:
                        added = added_layers(image.metadata, files, provenance)
                        if sif_name is not None or readers is not None:
                            # The SIF is published first, and readers get their ACL in a
                            # whole publish: no streaming then.
                            self._download_and_convert(client, image, output, emit,
                                                       added=added)
                        else:
                            output, streamed = self._convert_and_stream(
                                client, image, output, emit, publisher,
                                (image_file, meta, meta_file, private), added=added,
                                lookup=lookup)
                    built = output
                    output = self.caches.conversions.store(key.digest, image_format, output)
                    if built.parent != scratch:  # converted in the image directory
                        built.unlink(missing_ok=True)
                if lookup is not None and lookup.result():
                    log.info("job %s: image %s already published", job.job_id, image.image_id)
                    return result(publisher.image_size(image_file), reused=True)
                if sif_name is not None:
                    sif = self._sif(key, output, scratch / sif_name, image, platform.architecture)
                    emit(Progress(Stage.PUBLISHING, message=f"publishing {sif_name}"), force=True)
                    # Before the squashfs: a published image always has its SIF beside it.
                    publisher.publish(sif, sif_name, meta, meta_file, private=private,
                                      readers=readers)
                size = output.stat().st_size
                if not streamed:
                    emit(Progress(Stage.PUBLISHING, bytes_total=size,
                                  message=f"publishing {image_file} to {job.system}"),
                         force=True)
                    publisher.publish(output, image_file, meta, meta_file,
                                      on_bytes=_publish_progress(emit, image_file),
                                      private=private, readers=readers)
                if not shared:
                    self._share_conversion(key, image, output)
        self.caches.evict()
        return result(size)

    def _fetch_shared_conversion(self, key: ConversionKey, image: ResolvedImage, output: Path,
                                 emit: Throttle) -> bool:
        """Downloads a conversion another gateway shared, when configured and present."""
        if self.shared is None or key.image_format != "squashfs":
            return False
        emit(Progress(Stage.DOWNLOADING, message="looking for a shared conversion"), force=True)
        return self.shared.fetch(key, image.image_id, output)

    def _share_conversion(self, key: ConversionKey, image: ResolvedImage, output: Path) -> None:
        """Pushes our conversion to the shared registry, when configured (best effort)."""
        if self.shared is None or key.image_format != "squashfs":
            return
        self.shared.publish(key, image.image_id, image.reference, image.metadata, output)

    def _sif(self, key: ConversionKey, squashfs: Path, output: Path, image: ResolvedImage,
             architecture: str) -> Path:
        """The SIF wrapping the converted squashfs, from the conversion cache or made now."""
        cached = self.caches.conversions.lookup(key.digest, "sif")
        if cached is not None:
            return cached
        write_sif(squashfs, output, architecture=architecture, identity=image.image_id)
        return self.caches.conversions.store(key.digest, "sif", output)

    def _convert_and_stream(self, client: RegistryClient, image: ResolvedImage, output: Path,
                            emit: Throttle, publisher: Publisher,
                            published: tuple[str, bytes, str, bool], *,
                            added: AddedLayers | None = None,
                            lookup: Future[bool] | None = None) -> tuple[Path, bool]:
        """Converts, and where it can publishes as the image is produced: a remote system
        gets the squashfs streamed while tar2sqfs writes it (publish/follow.py); a local
        image directory on another file system than `output` gets it written there, under
        a temporary name, then linked into place. Returns where the image is built, and
        whether it is published (else: publish it whole). A stream is committed only once
        `lookup` (the remote lookup, when it runs beside the conversion) says the image is
        not there yet."""
        image_file, meta, meta_file, private = published
        if isinstance(publisher, LocalPublisher) and not private:
            in_place = publisher.temporary_beside(image_file, other_than=output.parent)
            if in_place is not None:
                try:
                    self._download_and_convert(client, image, in_place, emit,
                                               added=added)
                    emit(Progress(Stage.PUBLISHING, bytes_total=in_place.stat().st_size,
                                  message=f"publishing {image_file} (written in place)"),
                         force=True)
                    publisher.publish(in_place, image_file, meta, meta_file,
                                      on_bytes=_publish_progress(emit, image_file))
                except BaseException:
                    in_place.unlink(missing_ok=True)
                    raise
                return in_place, True
        if not (output.suffix == ".squashfs" and streams_while_written(publisher)):
            self._download_and_convert(client, image, output, emit, added=added)
            return output, False
        follower = following_publish()(publisher, partial_path(output), image_file, meta_file,
                                       private=private,
                                       on_bytes=_publish_progress(emit, image_file))
        follower.start()
        try:
            self._download_and_convert(client, image, output, emit, added=added)
            if lookup is not None and lookup.result():
                follower.close()  # it is there already: the caller publishes nothing
                return output, False
        except BaseException:
            follower.close()  # no commit: the remote side drops its temporary
            raise
        emit(Progress(Stage.PUBLISHING, bytes_total=output.stat().st_size,
                      message=f"publishing {image_file} (streamed while converting)"),
             force=True)
        return output, follower.finish(output, meta)

    def _download_and_convert(self, client: RegistryClient, image: ResolvedImage,
                              output: Path, emit: Throttle, *,
                              added: AddedLayers | None = None) -> None:
        """Downloads the layers (newest first, in parallel) while converting them.

        The conversion reads each layer as it downloads (worker/following.py), newest
        first; layers converted before have their indexes kept, and when every layer has
        one the conversion merges first (see squashfs.flatten_to_squashfs). Nothing made
        from a layer (its index, the image) is kept before its download is verified.
        """
        layers = image.layers
        count = len(layers)
        policy = MemberPolicy(keep_setuid=self.config.converter.keep_setuid,
                              owner_access=added is not None and added.owner_access)
        indexes = [load_index(self.cache, layer.digest, policy) for layer in layers]
        progress = _PullProgress(emit, count, sum(layer.size for layer in layers))
        progress.start(output.name)

        stopped = threading.Event()
        blobs = [GrowingBlob(layer.digest, layer.size) for layer in layers]

        def fetch(index: int) -> Path:
            layer, blob = layers[index], blobs[index]

            def on_bytes(chunk: int) -> None:
                if stopped.is_set():
                    raise _DownloadStopped(layer.digest)
                blob.wrote(chunk)
                progress.downloaded(index, chunk)

            def download(out: BinaryIO) -> None:
                blob.attach(out)
                client.fetch_blob(layer.digest, layer.size, out, on_bytes=on_bytes)

            try:
                path, downloaded = self.cache.ensure_verified(layer.digest, layer.size, download)
            except BaseException as exc:
                blob.failed(exc)
                raise
            blob.finished(path)
            metrics.layer_cache(hit=not downloaded, size=layer.size)
            progress.layer_done(index, layer.size, downloaded=downloaded)
            return path

        read: dict[int, bytes] = {}
        # Compressing and writing an index (~5 ms a MB: 0.15 s for the 400k-file image's)
        # is kept off the conversion's thread, which reads the next layer meanwhile; every
        # index is written before this returns.
        keeper = ThreadPoolExecutor(max_workers=1, thread_name_prefix="index-store")

        def store(number: int, index: bytes) -> None:
            keeper.submit(store_index, self.cache, layers[number].digest, index,
                          policy).add_done_callback(_log_unkept)

        def keep(number: int, index: bytes) -> None:
            # As soon as a layer is read and verified: kept even when the conversion fails.
            if indexes[number] is None:
                read[number] = index
                _keep_verified(read, futures, store)

        workers = max(1, min(DOWNLOAD_CONNECTIONS, count))
        pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="fetch")
        futures: dict[int, Future[Path]] = {}
        convert = partial(
            flatten_to_squashfs, output=output, options=self.config.converter,
            limits=self.config.limits, indexes=indexes, on_progress=progress.converted,
            on_index=keep, added=added, policy=policy)
        try:
            # Newest first: the conversion starts with the newest layer.
            futures.update((index, pool.submit(fetch, index)) for index in reversed(range(count)))
            try:
                convert(blobs)  # each layer read as it downloads
            except DownloadRestarted as restarted:
                log.info("%s; converting again from the complete downloads", restarted)
                convert([WaitedLayer(layer.digest, layer.size, futures[number].result)
                         for number, layer in enumerate(layers)])
            except Exception as exc:
                error = _download_error(blobs, futures)
                if error is None:
                    raise
                raise error from exc
            for future in futures.values():
                future.result()  # every download verified, whatever the conversion read
        finally:
            # A conversion that failed does not wait for the other layers to download:
            # the downloads still running stop at their next chunk (nothing is cached).
            stopped.set()
            pool.shutdown(wait=True, cancel_futures=True)
            for blob in blobs:
                if not blob.done:  # never started: its readers must not wait for it
                    blob.failed(_DownloadStopped(blob.name))
            _keep_verified(read, futures, store)
            keeper.shutdown(wait=True)


def _log_unkept(stored: Future[None]) -> None:
    """store_index logs what it expects (a full disk...); anything else is logged here,
    since nothing waits for the answer (the index is only a saving for the next pull)."""
    error = stored.exception()
    if error is not None:
        log.error("could not keep a layer index: %r", error)


def _keep_verified(read: dict[int, bytes], futures: dict[int, Future[Path]],
                   store: Callable[[int, bytes], None]) -> None:
    """Stores the indexes of the layers read whose downloads are verified (once each)."""
    for number in list(read):
        future = futures.get(number)
        if future is not None and future.done() and not future.cancelled() \
                and future.exception() is None:
            store(number, read.pop(number))


def _download_error(blobs: Sequence[GrowingBlob], futures: dict[int, Future[Path]]
                    ) -> BaseException | None:
    """Why a conversion that read layers as they downloaded failed, when the cause may be
    a corrupt download: a layer read before its download was verified, and whose bytes
    are all here, is verified now, and its download's error is the one to report."""
    for number, blob in enumerate(blobs):
        if blob.read_early and blob.complete:
            try:
                futures[number].result()
            except Exception as error:  # noqa: BLE001 - returned to be raised
                if not isinstance(error, _DownloadStopped):
                    return error
    return None


def _load_ssh_publishers() -> None:
    """Imports the SSH publishers; one that cannot load says why when a pull uses it."""
    with contextlib.suppress(ConfigError):
        following_publish()


def _in_thread(ask: Callable[[], bool]) -> Future[bool]:
    """`ask()` answered in a thread of its own from now on (the remote lookup); the
    future's result waits for the answer, or raises what `ask` raised."""
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="published-lookup")
    try:
        return pool.submit(ask)
    finally:
        pool.shutdown(wait=False)  # the thread ends with its one call


class _DownloadStopped(Exception):
    """Ends a layer download the conversion no longer needs (it failed)."""

    def __init__(self, digest: str) -> None:
        super().__init__(f"download of {digest} stopped: the conversion ended")


class _PullProgress:
    """One progress line for downloads and the conversion that overlaps them:
    DOWNLOADING (bytes downloaded) while a layer is still coming, then CONVERTING."""

    def __init__(self, emit: Throttle, count: int, total: int) -> None:
        self._emit = emit
        self._count = count
        self._total = total
        self._done = 0
        self._pending = count
        self._converted = (0, 0)  # (total, done) last reported
        self._lock = threading.Lock()

    def start(self, image_file: str) -> None:
        self._emit(Progress(Stage.DOWNLOADING, layer_count=self._count, bytes_total=self._total,
                            message=f"downloading {self._count} layers, converting them into "
                            f"{image_file} as they arrive"), force=True)

    def downloaded(self, index: int, count: int) -> None:
        with self._lock:
            self._done += count
            done = self._done
        self._emit(Progress(Stage.DOWNLOADING, layer_index=index + 1, layer_count=self._count,
                            bytes_done=done, bytes_total=self._total,
                            message=f"downloading layer {index + 1} of {self._count}"))

    def layer_done(self, index: int, size: int, *, downloaded: bool) -> None:
        with self._lock:
            if not downloaded:
                self._done += size
            self._pending -= 1
            last = self._pending == 0
        if last:
            self._emit(Progress(Stage.CONVERTING, layer_count=self._count,
                                message=f"all {self._count} layers here; converting"), force=True)

    def converted(self, done: int, total: int) -> None:
        with self._lock:
            if self._pending:
                return  # the download progress speaks until the last layer is here
            # Two threads count the conversion (a layer is read ahead beside the one
            # written); a count one of them was late to report would move the bar back.
            # (A new total is a new count: the two-pass flatten after the one pass.)
            last_total, last_done = self._converted
            if total == last_total and done < last_done:
                return
            self._converted = (total, done)
            self._emit(Progress(Stage.CONVERTING, layer_count=self._count, bytes_done=done,
                                bytes_total=total, message="converting"))


def _publish_progress(emit: Throttle, image_file: str) -> Callable[[int, int], None]:
    """Progress of a publish with its throughput (what an SSH copy runs at matters)."""
    started = time.monotonic()

    def on_bytes(done: int, total: int) -> None:
        seconds = max(time.monotonic() - started, 1e-6)
        emit(Progress(Stage.PUBLISHING, bytes_done=done, bytes_total=total,
                      message=f"publishing {image_file} at {done / seconds / 1e6:.1f} MB/s"),
             force=done == total)

    return on_bytes
