"""Manifest, index and config parsing with crafted JSON (no registry)."""

from __future__ import annotations

import json

import pytest

from imagegw.domain.config import Limits, Platform
from imagegw.domain.errors import (
    ContentRejected,
    DigestMismatch,
    PlatformNotFound,
    RegistryProtocolError,
)
from imagegw.registry import (
    ImageIndex,
    ImageManifest,
    parse_image_config,
    parse_manifest,
    select_platform,
)
from imagegw.registry.manifest import (
    DOCKER_MANIFEST,
    DOCKER_MANIFEST_LIST,
    OCI_INDEX,
    OCI_MANIFEST,
    verify_digest,
)

D1 = "sha256:" + "1" * 64
D2 = "sha256:" + "2" * 64
D3 = "sha256:" + "3" * 64
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"


def image_manifest(media_type: str = OCI_MANIFEST, layers: list[dict] | None = None,
                   config_type: str = "application/vnd.oci.image.config.v1+json") -> dict:
    return {
        "schemaVersion": 2,
        "mediaType": media_type,
        "config": {"mediaType": config_type, "digest": D1, "size": 100},
        "layers": layers if layers is not None else [
            {"mediaType": OCI_LAYER_GZIP, "digest": D2, "size": 2000},
        ],
    }


def encode(document: dict) -> bytes:
    return json.dumps(document).encode()


def index(*platforms: dict, media_type: str = OCI_INDEX, annotations: dict | None = None) -> bytes:
    manifests = []
    for n, platform in enumerate(platforms):
        entry = {"mediaType": OCI_MANIFEST, "digest": f"sha256:{n:064x}", "size": 500 + n,
                 "platform": platform}
        if annotations and n in annotations:
            entry["annotations"] = annotations[n]
        manifests.append(entry)
    return encode({"schemaVersion": 2, "mediaType": media_type, "manifests": manifests})


def test_oci_manifest_gives_config_and_layers_oldest_first():
    layers = [
        {"mediaType": OCI_LAYER_GZIP, "digest": D2, "size": 10},
        {"mediaType": "application/vnd.oci.image.layer.v1.tar+zstd", "digest": D3, "size": 20},
        {"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": D1, "size": 30},
    ]
    parsed = parse_manifest(encode(image_manifest(layers=layers)), OCI_MANIFEST)
    assert isinstance(parsed, ImageManifest)
    assert parsed.config.digest == D1
    assert [(layer.digest, layer.size, layer.compression) for layer in parsed.layers] == [
        (D2, 10, "gzip"), (D3, 20, "zstd"), (D1, 30, "none")]


def test_docker_schema2_manifest_is_accepted():
    document = image_manifest(
        DOCKER_MANIFEST,
        layers=[{"mediaType": "application/vnd.docker.image.rootfs.diff.tar.gzip",
                 "digest": D2, "size": 5}],
        config_type="application/vnd.docker.container.image.v1+json",
    )
    parsed = parse_manifest(encode(document), DOCKER_MANIFEST)
    assert isinstance(parsed, ImageManifest)
    assert parsed.media_type == DOCKER_MANIFEST
    assert parsed.layers[0].compression == "gzip"


def test_foreign_layers_are_marked_and_keep_their_urls():
    layers = [{"mediaType": "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
               "digest": D2, "size": 5, "urls": ["https://example.invalid/layer"]},
              {"mediaType": "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
               "digest": D3, "size": 6}]
    parsed = parse_manifest(encode(image_manifest(layers=layers)), OCI_MANIFEST)
    assert isinstance(parsed, ImageManifest)
    assert [layer.foreign for layer in parsed.layers] == [True, True]
    assert parsed.layers[0].urls == ("https://example.invalid/layer",)


def test_generic_content_type_falls_back_to_the_body_media_type():
    parsed = parse_manifest(encode(image_manifest()), "application/json")
    assert isinstance(parsed, ImageManifest)


def test_manifest_without_any_media_type_is_recognised_by_shape():
    document = image_manifest()
    del document["mediaType"]
    assert isinstance(parse_manifest(encode(document), ""), ImageManifest)
    listing = json.loads(index({"os": "linux", "architecture": "amd64"}))
    del listing["mediaType"]
    assert isinstance(parse_manifest(encode(listing), ""), ImageIndex)


def test_malformed_json_is_a_protocol_error():
    with pytest.raises(RegistryProtocolError, match="not valid JSON"):
        parse_manifest(b"{not json", OCI_MANIFEST)


def test_manifest_that_is_not_an_object_is_a_protocol_error():
    with pytest.raises(RegistryProtocolError, match="not a JSON object"):
        parse_manifest(b"[1, 2]", OCI_MANIFEST)


@pytest.mark.parametrize("field,match", [("config", "config"), ("layers", "layers")])
def test_manifest_missing_a_field_names_it(field, match):
    document = image_manifest()
    del document[field]
    with pytest.raises(RegistryProtocolError, match=match):
        parse_manifest(encode(document), OCI_MANIFEST)


def test_layer_without_size_is_a_protocol_error():
    layers = [{"mediaType": OCI_LAYER_GZIP, "digest": D2}]
    with pytest.raises(RegistryProtocolError, match=r"layers\[0\] has no valid size"):
        parse_manifest(encode(image_manifest(layers=layers)), OCI_MANIFEST)


def test_layer_with_malformed_digest_is_rejected():
    layers = [{"mediaType": OCI_LAYER_GZIP, "digest": "sha256:../../etc", "size": 1}]
    with pytest.raises(ContentRejected, match="digest"):
        parse_manifest(encode(image_manifest(layers=layers)), OCI_MANIFEST)


def test_schema1_manifest_is_rejected_as_not_supported():
    body = encode({"schemaVersion": 1, "name": "x", "tag": "y", "fsLayers": []})
    with pytest.raises(ContentRejected, match="schema 1 manifests are not supported"):
        parse_manifest(body, "application/vnd.docker.distribution.manifest.v1+prettyjws")


def test_artifact_config_type_is_not_a_container_image():
    document = image_manifest(config_type="application/vnd.cncf.helm.config.v1+json")
    with pytest.raises(ContentRejected, match="not a container image"):
        parse_manifest(encode(document), OCI_MANIFEST)


def test_unknown_layer_media_type_is_rejected():
    layers = [{"mediaType": "application/x-something", "digest": D2, "size": 1}]
    with pytest.raises(ContentRejected, match="unsupported media type"):
        parse_manifest(encode(image_manifest(layers=layers)), OCI_MANIFEST)


def test_more_layers_than_the_limit_are_rejected():
    layers = [{"mediaType": OCI_LAYER_GZIP, "digest": D2, "size": 1}] * 4
    with pytest.raises(ContentRejected, match="4 layers, more than the limit of 3"):
        parse_manifest(encode(image_manifest(layers=layers)), OCI_MANIFEST, Limits(max_layers=3))


def test_layer_bigger_than_the_limit_is_rejected():
    layers = [{"mediaType": OCI_LAYER_GZIP, "digest": D2, "size": 1001}]
    with pytest.raises(ContentRejected, match="more than the limit of 1000"):
        parse_manifest(encode(image_manifest(layers=layers)), OCI_MANIFEST,
                       Limits(max_layer_bytes=1000))


AMD64 = {"os": "linux", "architecture": "amd64"}
ARM64 = {"os": "linux", "architecture": "arm64", "variant": "v8"}
ARMV7 = {"os": "linux", "architecture": "arm", "variant": "v7"}
ATTESTATION = {"os": "unknown", "architecture": "unknown"}


def platform(architecture: str, variant: str = "") -> Platform:
    return Platform(name="sys", access_type="local", image_dir="/x", architecture=architecture,
                    variant=variant)


def test_index_selects_the_manifest_of_the_system_architecture():
    parsed = parse_manifest(index(AMD64, ARM64), OCI_INDEX)
    assert isinstance(parsed, ImageIndex)
    assert select_platform(parsed, platform("amd64")).digest == f"sha256:{0:064x}"
    assert select_platform(parsed, platform("arm64")).digest == f"sha256:{1:064x}"


def test_docker_manifest_list_is_an_index():
    parsed = parse_manifest(index(AMD64, media_type=DOCKER_MANIFEST_LIST), DOCKER_MANIFEST_LIST)
    assert isinstance(parsed, ImageIndex)
    assert parsed.media_type == DOCKER_MANIFEST_LIST


def test_arm64_empty_variant_and_v8_are_the_same():
    no_variant = parse_manifest(index({"os": "linux", "architecture": "arm64"}), OCI_INDEX)
    with_variant = parse_manifest(index(ARM64), OCI_INDEX)
    assert isinstance(no_variant, ImageIndex) and isinstance(with_variant, ImageIndex)
    assert select_platform(no_variant, platform("arm64", "v8"))
    assert select_platform(with_variant, platform("arm64", ""))


def test_variant_must_match_when_the_system_sets_one():
    parsed = parse_manifest(index(ARMV7), OCI_INDEX)
    assert isinstance(parsed, ImageIndex)
    assert select_platform(parsed, platform("arm", "v7"))
    with pytest.raises(PlatformNotFound):
        select_platform(parsed, platform("arm", "v6"))


def test_x86_64_is_an_alias_of_amd64():
    parsed = parse_manifest(index(AMD64), OCI_INDEX)
    assert isinstance(parsed, ImageIndex)
    assert select_platform(parsed, platform("x86_64"))


def test_missing_platform_lists_what_the_image_has():
    parsed = parse_manifest(index(AMD64, ARM64, ATTESTATION), OCI_INDEX)
    assert isinstance(parsed, ImageIndex)
    with pytest.raises(PlatformNotFound) as caught:
        select_platform(parsed, platform("s390x"))
    assert "linux/s390x" in str(caught.value)
    assert "linux/amd64, linux/arm64/v8" in str(caught.value)
    assert "unknown" not in str(caught.value)


def test_attestation_manifests_are_never_selected():
    annotated = {0: {"vnd.docker.reference.type": "attestation-manifest"}}
    parsed = parse_manifest(index(AMD64, AMD64, annotations=annotated), OCI_INDEX)
    assert isinstance(parsed, ImageIndex)
    assert select_platform(parsed, platform("amd64")).digest == f"sha256:{1:064x}"


def test_index_entry_without_digest_is_a_protocol_error():
    body = encode({"schemaVersion": 2, "mediaType": OCI_INDEX,
                   "manifests": [{"mediaType": OCI_MANIFEST, "size": 1, "platform": AMD64}]})
    with pytest.raises(RegistryProtocolError, match=r"manifests\[0\] has no digest"):
        parse_manifest(body, OCI_INDEX)


def test_config_gives_runtime_metadata():
    body = encode({"architecture": "amd64", "os": "linux", "config": {
        "Env": ["PATH=/usr/bin", "LANG=C"], "Entrypoint": ["/bin/app"], "Cmd": ["--help"],
        "WorkingDir": "/srv", "User": "1000:1000", "Labels": {"org.example": "yes"}}})
    config, metadata = parse_image_config(body)
    assert config["architecture"] == "amd64"
    assert metadata.env == ("PATH=/usr/bin", "LANG=C")
    assert metadata.entrypoint == ("/bin/app",)
    assert metadata.cmd == ("--help",)
    assert metadata.workdir == "/srv"
    assert metadata.user == "1000:1000"
    assert metadata.labels == {"org.example": "yes"}


def test_config_with_null_or_missing_fields_gives_empty_metadata():
    _, metadata = parse_image_config(encode({"config": {"Env": None, "Labels": None,
                                                        "Entrypoint": None}}))
    assert metadata.env == () and metadata.entrypoint == () and metadata.labels == {}
    _, bare = parse_image_config(encode({"architecture": "amd64"}))
    assert bare.cmd == () and bare.workdir == "" and bare.user == ""


def test_config_with_wrong_types_is_rejected():
    with pytest.raises(ContentRejected, match="'Env' is not a list of strings"):
        parse_image_config(encode({"config": {"Env": [1, 2]}}))


ABC_SHA256 = "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"


def test_digest_verification_catches_changed_bytes():
    verify_digest(b"abc", ABC_SHA256, "blob")
    with pytest.raises(DigestMismatch):
        verify_digest(b"abd", ABC_SHA256, "blob")
