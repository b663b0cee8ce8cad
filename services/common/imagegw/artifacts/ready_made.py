"""Ready-made images: an OCI artifact whose layer is a squashfs (or SIF) file.

`parse_artifact` reads an artifact manifest; `fetch_ready_made` downloads its image
layer (size and sha256 verified while streaming), checks the bytes are what the media
type says and leaves a squashfs file ready to publish. The image id is the hex sha256
of the artifact's image layer: the squashfs file itself, or the SIF file it came from.
"""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from imagegw.cache.layout import WorkerPaths
from imagegw.domain.acl import acl_file_suffix
from imagegw.domain.config import Config, Limits
from imagegw.domain.errors import ContentRejected, InvalidRequest, RegistryProtocolError
from imagegw.domain.model import BuildJob, BuildResult, ImageMetadata, Progress, Stage
from imagegw.domain.reference import ImageReference
from imagegw.pipeline.meta import render_meta
from imagegw.publish import publisher_for
from imagegw.publish.access import readers_for
from imagegw.publish.sif import has_published, publish_sif
from imagegw.registry.client import RegistryClient
from imagegw.registry.manifest import INDEX_TYPES, Descriptor, check_digest_syntax

from .content import (
    IMAGE_LAYER_TYPES,
    SIF_MEDIA_TYPE,
    artifact_metadata,
    check_squashfs,
    extract_sif_squashfs,
)

log = logging.getLogger(__name__)

#: Progress sink of a job (the builder's throttle).
Report = Callable[[Progress], None]


@dataclass(frozen=True)
class Artifact:
    """An OCI artifact manifest: its config, layers and annotations."""

    manifest_digest: str
    config: Descriptor
    layers: tuple[Descriptor, ...]
    annotations: dict[str, str] = field(default_factory=dict)

    def layer_of(self, *media_types: str) -> Descriptor | None:
        """The one layer with one of `media_types`; ContentRejected when there are several."""
        found = [layer for layer in self.layers if layer.media_type in media_types]
        if len(found) > 1:
            raise ContentRejected(f"artifact {self.manifest_digest} has {len(found)} image layers",
                                  hint="an image artifact holds exactly one squashfs or SIF layer")
        return found[0] if found else None

    def image_layer(self) -> Descriptor:
        layer = self.layer_of(*IMAGE_LAYER_TYPES)
        if layer is None:
            shown = ", ".join(sorted({item.media_type for item in self.layers})) or "none"
            raise ContentRejected(
                f"artifact {self.manifest_digest} has no squashfs or SIF layer (layers: {shown})",
                hint=f"push the image file with media type {IMAGE_LAYER_TYPES[0]} "
                     f"or {IMAGE_LAYER_TYPES[1]}",
            )
        return layer


def parse_artifact(body: bytes, media_type: str, digest: str) -> Artifact:
    """Parses an OCI image manifest used as an artifact (any config and layer types)."""
    if media_type.split(";", 1)[0].strip() in INDEX_TYPES:
        raise ContentRejected(f"{digest} is an index, not an artifact manifest",
                              hint="name the artifact's own manifest by tag or digest")
    try:
        document = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RegistryProtocolError(f"artifact manifest {digest} is not JSON: {exc}") from exc
    if not isinstance(document, dict) or document.get("schemaVersion") != 2:
        raise RegistryProtocolError(f"artifact manifest {digest} is not a schema 2 manifest")
    if "manifests" in document:
        raise ContentRejected(f"{digest} is an index, not an artifact manifest")
    raw_layers = document.get("layers")
    if not isinstance(raw_layers, list):
        raise RegistryProtocolError(f"artifact manifest {digest} has no layers list")
    annotations = document.get("annotations") or {}
    if not isinstance(annotations, dict):
        raise RegistryProtocolError(f"artifact manifest {digest}: annotations is not an object")
    return Artifact(
        manifest_digest=digest,
        config=_descriptor(document.get("config"), "config"),
        layers=tuple(_descriptor(item, f"layers[{i}]") for i, item in enumerate(raw_layers)),
        annotations={str(k): str(v) for k, v in annotations.items()},
    )


def _descriptor(raw: Any, where: str) -> Descriptor:
    if not isinstance(raw, dict):
        raise RegistryProtocolError(f"artifact manifest field {where} is not an object")
    media_type, digest, size = raw.get("mediaType"), raw.get("digest"), raw.get("size")
    if not isinstance(media_type, str) or not isinstance(digest, str):
        raise RegistryProtocolError(f"artifact manifest field {where} lacks mediaType or digest")
    check_digest_syntax(digest)
    if isinstance(size, bool) or not isinstance(size, int) or size < 0:
        raise RegistryProtocolError(f"artifact manifest field {where} has no valid size")
    return Descriptor(media_type=media_type, digest=digest, size=size)


def get_artifact(client: RegistryClient, ref: str) -> Artifact:
    """The artifact manifest at tag or digest `ref` (its digest verified by the client)."""
    body, media_type, digest = client.get_manifest(ref)
    return parse_artifact(body, media_type, digest)


def read_metadata(client: RegistryClient, artifact: Artifact, limits: Limits) -> ImageMetadata:
    """The artifact's runtime metadata, from its (small, verified) config blob or annotations."""
    config = artifact.config
    body: bytes | None = None
    if config.size and config.size <= limits.max_config_bytes:
        buffer = io.BytesIO()
        client.fetch_blob(config.digest, config.size, buffer, max_bytes=limits.max_config_bytes)
        body = buffer.getvalue()
    return artifact_metadata(config.media_type, body, artifact.annotations)


def download_image_layer(
    client: RegistryClient, layer: Descriptor, scratch: Path, limits: Limits,
    on_bytes: Callable[[int], None] | None = None,
) -> Path:
    """Downloads the image layer into `scratch` and returns a checked squashfs file there."""
    if layer.size > limits.max_layer_bytes:
        raise ContentRejected(f"the artifact's image layer is {layer.size} bytes, more than "
                              f"the limit of {limits.max_layer_bytes}")
    blob = scratch / ("artifact.sif" if layer.media_type == SIF_MEDIA_TYPE else "artifact.squashfs")
    with open(blob, "wb") as out:
        client.fetch_blob(layer.digest, layer.size, out, on_bytes=on_bytes,
                          max_bytes=limits.max_layer_bytes)
    if layer.media_type == SIF_MEDIA_TYPE:
        squashfs = scratch / "artifact-partition.squashfs"
        extract_sif_squashfs(blob, squashfs)
        blob.unlink()
    else:
        squashfs = blob
    check_squashfs(squashfs)
    return squashfs


def build_ready_made(job: BuildJob, reference: ImageReference, client: RegistryClient, *,
                     config: Config, paths: WorkerPaths, emit: Report,
                     on_manifest: Callable[[bytes, str], None] | None = None) -> BuildResult:
    """Fetches, checks and publishes the ready-made image `reference` names; `on_manifest`
    sees the artifact manifest's exact bytes and digest before any blob is fetched."""
    platform = config.platform(job.system)
    emit(Progress(Stage.RESOLVING, message=f"resolving artifact {reference}"))
    body, media_type, digest = client.get_manifest(reference.manifest_ref)
    if on_manifest is not None:
        on_manifest(body, digest)
    artifact = parse_artifact(body, media_type, digest)
    layer = artifact.image_layer()
    metadata = read_metadata(client, artifact, config.limits)
    image_id = layer.digest.split(":", 1)[1]
    image_format = "squashfs"
    if job.format and job.format != image_format:
        raise InvalidRequest(f"{reference} is a ready-made squashfs image, not {job.format}")
    # A private copy has its own files (its own modes on enroot/Apptainer systems).
    suffix = acl_file_suffix(job.user_acl, job.group_acl)
    image_file, meta_file = f"{image_id}{suffix}.{image_format}", f"{image_id}{suffix}.meta"
    meta = render_meta(image_format, metadata, user_acl=job.user_acl, group_acl=job.group_acl)
    publisher = publisher_for(platform)

    def result(size: int, *, reused: bool = False, unchanged: bool = False) -> BuildResult:
        return BuildResult(
            image_id=image_id, manifest_digest=artifact.manifest_digest, format=image_format,
            metadata=metadata, image_file=image_file, meta_file=meta_file, size_bytes=size,
            reference=str(reference), reused=reused, unchanged=unchanged)

    if job.known_manifest_digest == artifact.manifest_digest and has_published(
            publisher, platform, image_file, meta_file):
        return result(publisher.image_size(image_file), unchanged=True)
    with paths.image_lock(image_id):
        if has_published(publisher, platform, image_file, meta_file):
            log.info("job %s: ready-made image %s already published", job.job_id, image_id)
            return result(publisher.image_size(image_file), reused=True)
        with paths.scratch(job.job_id) as scratch:
            done = 0

            def on_bytes(n: int) -> None:
                nonlocal done
                done += n
                emit(Progress(Stage.DOWNLOADING, layer_index=1, layer_count=1, bytes_done=done,
                              bytes_total=layer.size, message="downloading the image artifact"))

            emit(Progress(Stage.DOWNLOADING, layer_count=1, bytes_total=layer.size,
                          message=f"downloading {layer.media_type} ({layer.size} bytes)"))
            squashfs = download_image_layer(client, layer, scratch, config.limits, on_bytes)
            size = squashfs.stat().st_size
            emit(Progress(Stage.PUBLISHING, bytes_total=size,
                          message=f"publishing {image_file} to {job.system}"))
            readers = readers_for(platform, job.user_acl, job.group_acl)
            publish_sif(publisher, platform, squashfs, image_file, meta, meta_file,
                        identity=image_id, private=bool(job.user_acl or job.group_acl),
                        readers=readers)
            publisher.publish(squashfs, image_file, meta, meta_file, on_bytes=lambda d, t: emit(
                Progress(Stage.PUBLISHING, bytes_done=d, bytes_total=t,
                         message=f"publishing {image_file}")),
                private=bool(job.user_acl or job.group_acl), readers=readers)
    log.info("job %s: published ready-made %s as %s", job.job_id, reference, image_id)
    return result(size)
