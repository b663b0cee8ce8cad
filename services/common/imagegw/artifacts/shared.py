"""Converted images shared between gateways as OCI artifacts in one configured registry.

A conversion is keyed by (source manifest digest, image format, the converter options
that change the output, our conversion schema); its tag is `conv-<sha256 of the key>`.
`SharedConversions.fetch` looks for that tag and, when the artifact's annotations match
the key, downloads its squashfs layer (verified) instead of converting;
`SharedConversions.publish` pushes a fresh conversion (squashfs + meta layers, metadata
config, key annotations) with oras. Both are best effort: trouble with the shared
registry is logged and the job carries on (converting, or with its image published).
oras (with requests and jsonschema, ~6 MiB of modules) is imported by `_oras_push` at
the first push, not by importing this.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

from imagegw.domain.config import Config, ConverterOptions, Location, SharedConversions
from imagegw.domain.errors import ConfigError, ImageGatewayError, ImageNotFound
from imagegw.domain.model import ImageMetadata, RegistryCredentials
from imagegw.pipeline.meta import render_meta
from imagegw.registry.client import RegistryClient

from .content import (
    CONFIG_MEDIA_TYPE,
    META_MEDIA_TYPE,
    SQUASHFS_MEDIA_TYPE,
    check_squashfs,
    metadata_config,
)
from .ready_made import get_artifact

log = logging.getLogger(__name__)

#: Bump when the flattening rules change what a conversion contains.
CONVERSION_SCHEMA = "1"

ANNOTATION_SOURCE_DIGEST = "io.imagegw.source.manifest-digest"
ANNOTATION_SOURCE_REFERENCE = "io.imagegw.source.reference"
ANNOTATION_IMAGE_ID = "io.imagegw.image.id"
ANNOTATION_FORMAT = "io.imagegw.conversion.format"
ANNOTATION_OPTIONS = "io.imagegw.conversion.options"
ANNOTATION_KEY = "io.imagegw.conversion.key"


@dataclass(frozen=True)
class ConversionKey:
    """What makes two conversions byte-for-byte interchangeable."""

    manifest_digest: str
    image_format: str
    options: ConverterOptions
    #: The runtimes' files the image carries (domain.runtimes.added_files; () for Shifter)
    #: and the provenance written into them: a Shifter-only image keeps its old key.
    runtime_files: tuple[str, ...] = ()
    provenance: str = ""

    def options_text(self) -> str:
        """The converter settings that change the output, as canonical JSON
        (compressor threads and queue length do not). A gzip image compressed by libdeflate
        says so; one compressed by zlib keeps the key it had before there was a choice."""
        options = self.options
        text = {
            "schema": CONVERSION_SCHEMA, "compressor": options.compressor, "level": options.level,
            "blockSize": options.block_size, "extraArgs": list(options.extra_args),
            "keepSetuid": options.keep_setuid,
        }
        if options.compressor == "gzip" and options.gzip_engine != "zlib":
            if options.gzip_engine != "libdeflate":
                raise ValueError("a conversion key needs the gzip engine resolved (gzip_engine.resolve)")
            text["gzipEngine"] = options.gzip_engine
        if self.runtime_files:
            text["runtimeFiles"] = list(self.runtime_files)
            text["provenance"] = self.provenance
        return json.dumps(text, sort_keys=True, separators=(",", ":"))

    @property
    def digest(self) -> str:
        text = "\n".join((self.manifest_digest, self.image_format, self.options_text()))
        return hashlib.sha256(text.encode()).hexdigest()

    @property
    def tag(self) -> str:
        return f"conv-{self.digest}"

    def annotations(self) -> dict[str, str]:
        return {
            ANNOTATION_SOURCE_DIGEST: self.manifest_digest,
            ANNOTATION_FORMAT: self.image_format,
            ANNOTATION_OPTIONS: self.options_text(),
            ANNOTATION_KEY: self.digest,
        }


def read_auth_file(path: str, location: Location) -> RegistryCredentials | None:
    """The credentials for `location` in a Docker-style auth file (None when it has none)."""
    try:
        document = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ConfigError(f"SharedConversions.authFile: cannot read {path}: {exc}") from exc
    host = location.url.split("://", 1)[1].rstrip("/")
    auths = document.get("auths") if isinstance(document, dict) else None
    if not isinstance(auths, dict):
        return None
    entry = auths.get(host) or auths.get(location.url) or auths.get(location.name)
    if not isinstance(entry, dict) or not isinstance(entry.get("auth"), str):
        return None
    try:
        username, _, password = base64.b64decode(entry["auth"]).decode().partition(":")
    except (binascii.Error, UnicodeDecodeError) as exc:
        raise ConfigError(f"SharedConversions.authFile: the entry for {host} is not "
                          "base64 of user:password") from exc
    return RegistryCredentials(username=username, password=password)


class SharedConversionRegistry:
    """The configured shared-conversion registry: look up and publish conversions."""

    def __init__(self, settings: SharedConversions, config: Config) -> None:
        self.settings = settings
        self.config = config
        self.location = config.locations[settings.registry]
        self.credentials = (read_auth_file(settings.auth_file, self.location)
                            if settings.auth_file else None)

    def _client(self) -> RegistryClient:
        return RegistryClient(self.location.url, self.settings.repository,
                              credentials=self.credentials, limits=self.config.limits,
                              ca_bundle=self.location.sslcacert)

    def fetch(self, key: ConversionKey, image_id: str, output: Path) -> bool:
        """Downloads the shared conversion for `key` to `output`; False when there is none."""
        if not self.settings.pull:
            return False
        where = f"{self.location.name}/{self.settings.repository}:{key.tag}"
        try:
            with self._client() as client:
                artifact = get_artifact(client, key.tag)
                if not _matches(artifact.annotations, key, image_id):
                    log.warning("shared conversion %s does not match its key; converting", where)
                    return False
                layer = artifact.layer_of(SQUASHFS_MEDIA_TYPE)
                if layer is None or layer.size > self.config.limits.max_layer_bytes:
                    log.warning("shared conversion %s has no usable squashfs layer", where)
                    return False
                with open(output, "wb") as out:
                    client.fetch_blob(layer.digest, layer.size, out,
                                      max_bytes=self.config.limits.max_layer_bytes)
            check_squashfs(output)
        except ImageNotFound:
            log.info("no shared conversion at %s", where)
            output.unlink(missing_ok=True)
            return False
        except ImageGatewayError as exc:
            log.warning("shared conversion %s not used: %s", where, exc)
            output.unlink(missing_ok=True)
            return False
        log.info("using shared conversion %s (%s)", where, artifact.manifest_digest)
        return True

    def publish(self, key: ConversionKey, image_id: str, reference: str,
                metadata: ImageMetadata, squashfs: Path) -> str | None:
        """Pushes a conversion; returns the manifest digest, or None when it failed."""
        if not self.settings.push:
            return None
        image_name = f"{image_id}.{key.image_format}"
        try:
            # Only the small files are written; the squashfs is pushed from where it is.
            with tempfile.TemporaryDirectory(prefix="imagegw-share-") as staging:
                meta_file = Path(staging) / f"{image_id}.meta"
                config_file = Path(staging) / "config.json"
                meta_file.write_bytes(render_meta(key.image_format, metadata))
                config_file.write_bytes(metadata_config(metadata))
                annotations = {**key.annotations(), ANNOTATION_IMAGE_ID: image_id,
                               ANNOTATION_SOURCE_REFERENCE: reference}
                oras = _oras_push()
                return oras.push_artifact(
                    self.location, self.settings.repository, key.tag,
                    [oras.ArtifactFile(squashfs, SQUASHFS_MEDIA_TYPE, image_name),
                     oras.ArtifactFile(meta_file, META_MEDIA_TYPE, meta_file.name)],
                    (config_file, CONFIG_MEDIA_TYPE), annotations,
                    credentials=self.credentials, limits=self.config.limits)
        except (ImageGatewayError, OSError) as exc:
            log.warning("publishing the conversion of %s to %s/%s failed: %s", reference,
                        self.location.name, self.settings.repository, exc)
            return None


def _oras_push() -> ModuleType:
    """`oras_push` (the oras package), imported at the first push: the one place that does."""
    try:
        from . import oras_push
    except ImportError as exc:
        raise ConfigError(f"SharedConversions.push: oras cannot be loaded: {exc}",
                          hint="install oras (pip install 'oras>=0.2.43') or set "
                          "SharedConversions.push to false") from exc
    return oras_push


def _matches(annotations: dict[str, str], key: ConversionKey, image_id: str) -> bool:
    wanted = {**key.annotations(), ANNOTATION_IMAGE_ID: image_id}
    return all(annotations.get(name) == value for name, value in wanted.items())


def shared_conversions_for(config: Config) -> SharedConversionRegistry | None:
    """The shared-conversion registry the configuration names, if any."""
    if config.shared_conversions is None:
        return None
    return SharedConversionRegistry(config.shared_conversions, config)
