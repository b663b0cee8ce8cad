"""Pushing test images to a registry: testbed.images (shared with bench/ and
scripts/demo.py), under the name the tests import it by."""

from testbed.images import (
    DOCKER_CONFIG,
    DOCKER_LIST,
    DOCKER_MANIFEST,
    OCI_CONFIG,
    OCI_INDEX,
    OCI_MANIFEST,
    PushedImage,
    PushedIndex,
    compression_of,
    default_config,
    diff_id,
    digest_of,
    index_entry,
    push_blob,
    push_image,
    push_index,
    push_manifest,
)

__all__ = [
    "OCI_MANIFEST", "OCI_INDEX", "OCI_CONFIG", "DOCKER_MANIFEST", "DOCKER_LIST", "DOCKER_CONFIG",
    "digest_of", "PushedImage", "PushedIndex", "push_blob", "push_manifest", "compression_of",
    "diff_id", "default_config", "push_image", "index_entry", "push_index",
]
