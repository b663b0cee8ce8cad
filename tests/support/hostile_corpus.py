"""The corpus of hostile layers, manifests and configs (issue 4), built deterministically.

`cases()` returns every `Case`: the blobs, how they reach the registry (`push_case`,
plus a proxy fault for what a real registry refuses to store), and what must happen:
REJECTED with an error class and a message fragment, or NEUTRALISED with where each
member lands in the image. Every file a hostile input tries to create has `CANARY`
in its name, so a test can look for it anywhere on the host.

    python -m tests.support.hostile_corpus tests/fixtures/hostile   # (re)writes the corpus files
"""

from __future__ import annotations

import functools
import hashlib
import json
import random
import shutil
import sys
import tarfile
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import zstandard

from tests.support import layers as L
from tests.support.images import (
    DOCKER_MANIFEST,
    OCI_CONFIG,
    OCI_INDEX,
    OCI_MANIFEST,
    compression_of,
    digest_of,
    push_blob,
    push_image,
    push_manifest,
)
from tests.support.proxy import CorruptBody, Fault, Reply, Request

#: Every name a hostile member tries to create contains this.
CANARY = "PWNED"
#: The host directory that absolute and symlinked members aim at.
CANARY_DIR = "/tmp/imagegw-hostile-canary"
_AIM = CANARY_DIR.lstrip("/")  # where such members land inside the image

REJECTED = "rejected"
NEUTRALISED = "neutralised"
TAG = "1"
#: Limits (config keys) every hostile build runs with; cases may override some.
BASE_LIMITS: Mapping[str, int | float] = {
    "maxUnpackedBytes": 4 * 1024 * 1024, "httpTimeout": 10, "httpRetries": 2,
}
BOMB_BYTES = 64 * 1024 * 1024

__all__ = ["Case", "Lands", "cases", "case", "push_case", "faults_for", "write_corpus",
           "CANARY", "CANARY_DIR", "REJECTED", "NEUTRALISED", "BASE_LIMITS", "TAG"]


@dataclass(frozen=True)
class Lands:
    """Where a neutralised member must end up in the image: path, type and details."""

    path: str
    type: str  # "file", "dir" or "symlink"
    #: sha256 hex of a file's bytes, or a symlink's target ("" = not checked).
    detail: str = ""
    mode: int | None = None


@dataclass(frozen=True)
class Case:
    name: str
    #: What the input does, in one line (for the report).
    hostile: str
    layers: tuple[bytes, ...] = ()
    expect: str = REJECTED
    #: The error class (name in imagegw.domain.errors) and a fragment of its message.
    error: str = "ContentRejected"
    fragment: str = ""
    lands: tuple[Lands, ...] = ()
    #: Image paths that must not exist (dropped members).
    absent: tuple[str, ...] = ()
    #: The image config's runtime section ("config"); None: a plain PATH.
    runtime: Mapping[str, Any] | None = None
    #: Expected meta file lines (key -> values), checked exactly for these keys.
    meta: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    #: Limits overriding BASE_LIMITS for this case (config keys).
    limits: Mapping[str, int | float] = field(default_factory=dict)
    #: How the case reaches the worker (see push_case and faults_for).
    delivery: str = "image"
    #: Raw bytes for "raw_config" (the config blob) and "served_manifest" (what the proxy
    #: answers for the manifest, which a real registry refuses to store).
    raw: bytes = b""
    #: "size_lie": how many bytes the manifest's layer size differs from the real one.
    size_delta: int = 0

    def all_limits(self) -> dict[str, int | float]:
        return {**BASE_LIMITS, **self.limits}


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _stream_gzip(size: int) -> bytes:
    """gzip of a tar holding one `size`-byte file of zeros, without holding it in memory."""
    header = L.file(f"{CANARY}-bomb", b"").info
    header.size = size
    out = zlib.compressobj(9, zlib.DEFLATED, 31)
    parts = [out.compress(header.tobuf(tarfile.PAX_FORMAT))]
    zeros = bytes(1 << 20)
    for _ in range(size // len(zeros)):
        parts.append(out.compress(zeros))
    parts.append(out.compress(bytes(2 * L.BLOCK)))
    parts.append(out.flush())
    blob = b"".join(parts)
    # A fixed gzip header (mtime 0, no name), as gzip.compress(mtime=0) writes.
    assert blob[:4] == b"\x1f\x8b\x08\x00"
    return blob


def _zstd_bomb(size: int) -> bytes:
    header = L.file(f"{CANARY}-bomb", b"").info
    header.size = size
    compressor = zstandard.ZstdCompressor(level=3).compressobj()
    parts = [compressor.compress(header.tobuf(tarfile.PAX_FORMAT))]
    zeros = bytes(1 << 20)
    for _ in range(size // len(zeros)):
        parts.append(compressor.compress(zeros))
    parts.append(compressor.compress(bytes(2 * L.BLOCK)))
    parts.append(compressor.flush())
    return b"".join(parts)


def _random(size: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(size)


def _payload(tag: str) -> bytes:
    return f"{CANARY} payload: {tag}\n".encode()


def _rejected(name: str, hostile: str, fragment: str, *layers: bytes,
              error: str = "ContentRejected", **extra: Any) -> Case:
    return Case(name, hostile, tuple(layers), REJECTED, error, fragment, **extra)


def _neutralised(name: str, hostile: str, *layers: bytes, lands: tuple[Lands, ...] = (),
                 **extra: Any) -> Case:
    return Case(name, hostile, tuple(layers), NEUTRALISED, "", "", lands=lands, **extra)


def _member_cases() -> list[Case]:
    p = _payload
    return [
        _rejected("dotdot-member", "member name climbs out with ../../..",
                  "has a '..' component",
                  L.layer(L.raw_member(f"../../../../../..{CANARY_DIR}/{CANARY}-dotdot",
                                       data=p("dotdot")))),
        _rejected("dotdot-inside-name", "member name usr/../../x escapes mid-path",
                  "has a '..' component",
                  L.layer(L.dir("usr"), L.raw_member(f"usr/../../{CANARY}-mid", data=p("mid")))),
        _rejected("dotdot-pax-path", "PAX path record with .. (the ustar name is harmless)",
                  "has a '..' component",
                  L.layer(L.raw_member("harmless", data=p("pax"),
                                       pax={"path": f"../../{CANARY}-pax"}))),
        _neutralised("absolute-member", "absolute member name aimed at a host directory",
                     L.layer(L.raw_member(f"{CANARY_DIR}/{CANARY}-absolute",
                                          data=p("absolute"))),
                     lands=(Lands(f"{_AIM}/{CANARY}-absolute", "file", _sha(p("absolute"))),)),
        _neutralised("absolute-pax-path", "absolute PAX path record",
                     L.layer(L.raw_member("harmless", data=p("abs-pax"),
                                          pax={"path": f"/etc/{CANARY}-abs-pax"})),
                     lands=(Lands(f"etc/{CANARY}-abs-pax", "file", _sha(p("abs-pax"))),),
                     absent=("harmless",)),
        _neutralised("symlink-same-layer-absolute",
                     "symlink to a host dir, then a file through it (same layer)",
                     L.layer(L.symlink("escape", CANARY_DIR),
                             L.file(f"escape/{CANARY}-via-symlink", p("same-layer"))),
                     lands=(Lands("escape", "symlink", CANARY_DIR),
                            Lands(f"{_AIM}/{CANARY}-via-symlink", "file", _sha(p("same-layer"))))),
        _neutralised("symlink-same-layer-relative",
                     "relative symlink ../../../.. out of the root, then a file through it",
                     L.layer(L.symlink("up", "../../../../../.." + CANARY_DIR),
                             L.file(f"up/{CANARY}-relative", p("relative"))),
                     lands=(Lands("up", "symlink", "../../../../../.." + CANARY_DIR),
                            Lands(f"{_AIM}/{CANARY}-relative", "file", _sha(p("relative"))))),
        _neutralised("symlink-earlier-layer",
                     "symlink planted by layer 1, file written through it by layer 2",
                     L.layer(L.symlink("escape", CANARY_DIR)),
                     L.layer(L.file(f"escape/{CANARY}-layer2", p("layer2"))),
                     lands=(Lands("escape", "symlink", CANARY_DIR),
                            Lands(f"{_AIM}/{CANARY}-layer2", "file", _sha(p("layer2"))))),
        _neutralised("symlinked-parent-dir",
                     "layer 2 turns dir opt/app into a symlink; layer 3 writes opt/app/data/x",
                     L.layer(L.dir("opt"), L.dir("opt/app"), L.dir("opt/app/data"),
                             L.file("opt/app/data/keep", b"lower")),
                     L.layer(L.whiteout("opt/app"), L.symlink("opt/app", CANARY_DIR)),
                     L.layer(L.file(f"opt/app/data/{CANARY}-parent", p("parent"))),
                     lands=(Lands("opt/app", "symlink", CANARY_DIR),
                            Lands(f"{_AIM}/data/{CANARY}-parent", "file", _sha(p("parent")))),
                     absent=("opt/app/data/keep",)),
        _neutralised("symlink-to-root-then-dotdot",
                     "symlink to /../../.. (above the root), file through it",
                     L.layer(L.symlink("root", "/../../.."),
                             L.file(f"root/{CANARY}-at-root", p("root"))),
                     lands=(Lands(f"{CANARY}-at-root", "file", _sha(p("root"))),)),
        _rejected("symlink-loop", "a -> b, b -> a, then a file below a",
                  "symlink loop",
                  L.layer(L.symlink("a", "b"), L.symlink("b", "a"),
                          L.file(f"a/{CANARY}-loop", p("loop")))),
        _rejected("file-below-a-file", "a file, then a member below it as if it were a dir",
                  "which is not a directory",
                  L.layer(L.file("plain", b"x"), L.file(f"plain/{CANARY}-below", p("below")))),
        _rejected("hardlink-absolute-outside", "hardlink to /etc/shadow (not in the image)",
                  "does not exist at that point",
                  L.layer(L.hardlink(f"{CANARY}-shadow", "/etc/shadow"))),
        _rejected("hardlink-dotdot-outside", "hardlink to ../../../etc/shadow",
                  "hardlink to '../../../etc/shadow'",
                  L.layer(L.file("a", b"a"),
                          L.raw_member(f"{CANARY}-hl", type=b"1",
                                       linkname="../../../etc/shadow"))),
        _rejected("hardlink-to-later-member", "hardlink whose target comes later in the layer",
                  "only later in the layer",
                  L.layer(L.hardlink(f"{CANARY}-early", "later"), L.file("later", b"later"))),
        _rejected("hardlink-to-directory", "hardlink to a directory",
                  "is a hardlink to the directory",
                  L.layer(L.dir("d"), L.hardlink(f"{CANARY}-dirlink", "d"))),
        _neutralised("hardlink-through-symlink",
                     "hardlink target through a symlink to /etc resolves inside the image",
                     L.layer(L.dir("etc"), L.file("etc/shadow", b"image's own shadow"),
                             L.symlink("escape", "/etc"),
                             L.hardlink(f"{CANARY}-hl-sym", "escape/shadow")),
                     lands=(Lands(f"{CANARY}-hl-sym", "file", _sha(b"image's own shadow")),)),
        _neutralised("char-device", "character device node (1,3) /dev/PWNED-mem",
                     L.layer(L.dir("dev"), L.device(f"dev/{CANARY}-mem"), L.file("ok", b"ok")),
                     lands=(Lands("ok", "file", _sha(b"ok")),), absent=(f"dev/{CANARY}-mem",)),
        _neutralised("block-device", "block device node",
                     L.layer(L.dir("dev"), L.device(f"dev/{CANARY}-sda", block=True),
                             L.file("ok", b"ok")),
                     lands=(Lands("ok", "file", _sha(b"ok")),), absent=(f"dev/{CANARY}-sda",)),
        _neutralised("fifo", "named pipe",
                     L.layer(L.fifo(f"{CANARY}-fifo"), L.file("ok", b"ok")),
                     lands=(Lands("ok", "file", _sha(b"ok")),), absent=(f"{CANARY}-fifo",)),
        _neutralised("socket", "socket (tar has no socket type: an unknown type flag 's')",
                     L.layer(L.raw_member(f"{CANARY}-socket", type=b"s"), L.file("ok", b"ok")),
                     lands=(Lands("ok", "file", _sha(b"ok")),), absent=(f"{CANARY}-socket",)),
        _neutralised("setuid-setgid", "setuid/setgid files owned by uid 1000 (sticky dir kept)",
                     L.layer(L.dir("usr"), L.dir("usr/bin"),
                             L.file(f"usr/bin/{CANARY}-suid", p("suid"), 0o4755, uid=1000),
                             L.file(f"usr/bin/{CANARY}-sgid", p("sgid"), 0o2755, gid=1000),
                             L.dir("scratch", 0o1777)),
                     lands=(Lands(f"usr/bin/{CANARY}-suid", "file", _sha(p("suid")), 0o755),
                            Lands(f"usr/bin/{CANARY}-sgid", "file", _sha(p("sgid")), 0o755),
                            Lands("scratch", "dir", "", 0o1777))),
        _rejected("nul-in-name", "NUL byte in a PAX path", "contains a NUL byte",
                  L.layer(L.raw_member("x", data=b"x",
                                       pax={"path": f"etc/{CANARY}\x00-nul".encode()}))),
        _rejected("newline-in-name", "newline in a member name", "contains a newline",
                  L.layer(L.file(f"etc/{CANARY}\nENV: EVIL=1", b"x"))),
        _rejected("very-long-name", "4220-byte member name", "longer than 4096 bytes",
                  L.layer(L.file("/".join(["d" * 200] * 21) + f"/{CANARY}", b"x"))),
        _rejected("long-component", "300-byte path component",
                  "component longer than 255 bytes",
                  L.layer(L.file(f"{CANARY}-" + "c" * 300, b"x"))),
        _rejected("nul-in-symlink-target", "NUL byte in a PAX linkpath",
                  "target contains NUL",
                  L.layer(L.raw_member(f"{CANARY}-link", type=b"2", linkname="x",
                                       pax={"linkpath": b"/etc/\x00shadow"}))),
        _rejected("huge-pax-header", "a 2 MiB PAX extended header", "PAX header (limit",
                  L.layer(L.raw_member(f"{CANARY}-pax", data=b"x",
                                       pax={"comment": "A" * (2 << 20)}))),
        _rejected("huge-gnu-long-name", "a 2 MiB GNU long-name header",
                  "GNU long name header (limit",
                  L.layer(L.raw_member("././@LongLink", type=b"L", data=b"n" * (2 << 20)),
                          L.file(f"{CANARY}-short", b"x"))),
        _rejected("negative-pax-size", "PAX size=-1", "negative size",
                  L.layer(L.raw_member(f"{CANARY}-neg", data=b"x", pax={"size": "-1"}))),
        _rejected("bad-header-checksum", "tar header with a wrong checksum", "bad checksum",
                  L.layer(L.raw_member(f"{CANARY}-sum", data=b"x", checksum_delta=7))),
        _rejected("not-a-tar", "gzip of random bytes instead of a tar", "tar header with a bad",
                  L.compress(_random(4096, seed=4), "gzip")),
        _rejected("whiteout-of-parent", "whiteout .wh.. naming the parent directory",
                  "whiteout that names no sibling",
                  L.layer(L.dir("etc"), L.raw_member("etc/.wh..", data=b""))),
    ]


def _size_cases() -> list[Case]:
    three_mib = L.layer(L.file(f"{CANARY}-part", bytes(3 << 20)), compression="zstd")
    small = L.layer(L.file("f", _random(2000, seed=1)), compression="none")
    return [
        _rejected("gzip-bomb", "gzip layer inflating to 64 MiB (cap 4 MiB)",
                  "decompresses beyond the 4194304-byte cap", _stream_gzip(BOMB_BYTES)),
        _rejected("zstd-bomb", "zstd layer inflating to 64 MiB (cap 4 MiB)",
                  "decompresses beyond the 4194304-byte cap", _zstd_bomb(BOMB_BYTES)),
        _rejected("unpacked-total-over-cap", "two 3 MiB layers: each under the cap, 6 MiB total",
                  "bytes of file data; the limit is 4194304", three_mib,
                  L.layer(L.file(f"{CANARY}-part2", bytes(3 << 20)), compression="zstd")),
        _rejected("too-many-layers", "4 layers where the site allows 3",
                  "more than the limit of 3", *[L.layer(L.file(f"f{n}", b"x")) for n in range(4)],
                  limits={"maxLayers": 3}),
        _rejected("layer-over-size-cap", "a layer bigger than maxLayerBytes",
                  "more than the limit of 1024", small, limits={"maxLayerBytes": 1024}),
        _rejected("layer-larger-than-manifest", "manifest says 100 bytes less than the blob",
                  "larger than its manifest says", small, error="DigestMismatch",
                  delivery="size_lie", size_delta=-100),
        _rejected("layer-shorter-than-manifest", "manifest says 100 bytes more than the blob",
                  "the manifest says", small, error="DigestMismatch",
                  delivery="size_lie", size_delta=100),
        _rejected("truncated-gzip-layer", "gzip layer cut in half (its digest matches the cut)",
                  "ends in the middle of its gzip data",
                  L.layer(L.file("f", _random(64 << 10, seed=2)))[:30000]),
        _rejected("truncated-zstd-layer", "zstd layer cut in half",
                  "ends in the middle of its zstd data",
                  L.layer(L.file("f", _random(64 << 10, seed=3)), compression="zstd")[:30000]),
        _rejected("truncated-tar-layer", "plain tar cut in the middle of a member",
                  "ends in the middle of a tar member",
                  L.layer(L.file("f", _random(64 << 10, seed=5)), compression="none")[:30000]),
        _rejected("digest-mismatch-layer", "layer bytes altered in transit (same size)",
                  "corrupt download", small, error="DigestMismatch", delivery="corrupt_layer"),
        _rejected("digest-mismatch-config", "config bytes altered in transit",
                  "corrupt download", small, error="DigestMismatch", delivery="corrupt_config"),
    ]


def _document_cases() -> list[Case]:
    ok = L.layer(L.file("ok", b"ok"))
    evil_entry = ["/bin/sh", "-c", "echo 'it''s' \"quoted\" ]\nENV: EVIL=1\\"]
    evil_cmd = ["--flag=\"x\"", "'", "\r\nWORKDIR: /evil"]
    return [
        _rejected("manifest-over-cap", "manifest padded to 9 KiB (cap 4 KiB)",
                  "over 4096 bytes", ok, limits={"maxManifestBytes": 4096},
                  delivery="padded_manifest"),
        _rejected("config-over-cap", "config padded to 9 KiB (cap 4 KiB)",
                  "more than the limit of 4096", ok, limits={"maxConfigBytes": 4096},
                  runtime={"Labels": {"pad": "x" * 9000}}),
        _rejected("malformed-manifest-json", "manifest that is not JSON",
                  "manifest is not valid JSON", ok, error="RegistryProtocolError",
                  delivery="served_manifest", raw=b'{"schemaVersion": 2, "layers": ['),
        _rejected("manifest-wrong-types", "manifest whose layers field is a string",
                  "'layers' is missing or not a list", ok, error="RegistryProtocolError",
                  delivery="served_manifest", raw=json.dumps({
                      "schemaVersion": 2, "mediaType": OCI_MANIFEST,
                      "config": {"mediaType": OCI_CONFIG, "digest": "sha256:" + "0" * 64,
                                 "size": 2}, "layers": "all of them"}).encode()),
        _rejected("malformed-config-json", "config blob that is not JSON",
                  "image config is not valid JSON", ok, error="RegistryProtocolError",
                  delivery="raw_config", raw=b'{"architecture": "amd64", "config": {'),
        _rejected("config-not-an-object", "config blob that is a JSON list",
                  "image config is not a JSON object", ok, error="RegistryProtocolError",
                  delivery="raw_config", raw=b"[1, 2, 3]"),
        _rejected("config-env-not-strings", "config Env is a list of numbers",
                  "'Env' is not a list of strings", ok, runtime={"Env": [1, 2]}),
        _rejected("diff-ids-mismatch", "config lists 2 layers, the manifest 1",
                  "the config lists 2 layers", ok, delivery="extra_diff_id"),
        _rejected("index-no-matching-platform", "index with only arm64 and s390x images",
                  "has no manifest for linux/amd64", ok, error="PlatformNotFound",
                  delivery="index_other_platforms"),
        _rejected("env-with-newline", "Env value with a newline forging a meta line",
                  "Env entry 2 contains a newline", ok,
                  runtime={"Env": ["PATH=/bin", "A=1\nENTRY: ['/bin/evil']"]}),
        _rejected("workdir-with-newline", "WorkingDir with a newline forging a meta line",
                  "WorkingDir contains a newline", ok,
                  runtime={"WorkingDir": "/srv\nENV: EVIL=1"}),
        _rejected("env-without-equals", "Env entry without '='", "has no '='", ok,
                  runtime={"Env": ["JUSTANAME"]}),
        # Shifter's runtime reads ENTRY/CMD items between quotes with no escapes, and a
        # line per value: a newline in an item cannot be carried, so the pull is refused.
        _rejected("entrypoint-cmd-quotes-newlines",
                  "Entrypoint/Cmd with quotes, ], backslash, CR/LF forging meta lines",
                  "Entrypoint item 3 contains a newline", ok,
                  runtime={"Entrypoint": evil_entry, "Cmd": evil_cmd,
                           "Env": ["QUOTED=\"it's\" 'fine' ]"]}),
    ]


@functools.cache
def cases() -> tuple[Case, ...]:
    """Every case of the corpus, in report order (built once per process)."""
    found = (*_member_cases(), *_size_cases(), *_document_cases())
    names = [c.name for c in found]
    assert len(names) == len(set(names)), "case names must be unique"
    return found


def case(name: str) -> Case:
    return next(c for c in cases() if c.name == name)


# -- delivery ------------------------------------------------------------------------


def image_config(layers: tuple[bytes, ...], runtime: Mapping[str, Any] | None,
                 platform: Mapping[str, str] | None = None) -> dict[str, Any]:
    """A config for `layers`; diff_ids are placeholders (only their number is checked)."""
    platform = platform or {"os": "linux", "architecture": "amd64"}
    return {
        "architecture": platform["architecture"], "os": platform["os"],
        "config": dict(runtime) if runtime is not None else {"Env": ["PATH=/usr/bin:/bin"]},
        "rootfs": {"type": "layers", "diff_ids": [digest_of(layer) for layer in layers]},
    }


def _manifest(config: bytes, layers: tuple[bytes, ...], *, size_delta: int = 0,
              annotations: Mapping[str, str] | None = None) -> bytes:
    types = {"gzip": "application/vnd.oci.image.layer.v1.tar+gzip",
             "zstd": "application/vnd.oci.image.layer.v1.tar+zstd",
             "none": "application/vnd.oci.image.layer.v1.tar"}
    document: dict[str, Any] = {
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": digest_of(config), "size": len(config)},
        "layers": [{"mediaType": types[compression_of(layer)], "digest": digest_of(layer),
                    "size": len(layer) + size_delta} for layer in layers],
    }
    if annotations:
        document["annotations"] = dict(annotations)
    return json.dumps(document, indent=2).encode()


def documents(case: Case) -> tuple[bytes, bytes]:
    """(config bytes, manifest bytes) the case pushes (the manifest the registry stores)."""
    config_doc = image_config(case.layers, case.runtime)
    if case.delivery == "extra_diff_id":
        config_doc["rootfs"]["diff_ids"].append("sha256:" + "e" * 64)
    config = case.raw if case.delivery == "raw_config" else json.dumps(
        config_doc, sort_keys=True).encode()
    annotations = {"pad": "p" * 9000} if case.delivery == "padded_manifest" else None
    delta = case.size_delta if case.delivery == "size_lie" else 0
    return config, _manifest(config, case.layers, size_delta=delta, annotations=annotations)


def push_case(case: Case, registry_url: str) -> str:
    """Pushes the case to repository hostile/<name>, tag TAG; returns the repository."""
    repository = f"hostile/{case.name}"
    if case.delivery == "index_other_platforms":
        images = [push_image(registry_url, repository, None, list(case.layers),
                             image_config(case.layers, case.runtime, platform),
                             platform=platform)
                  for platform in ({"os": "linux", "architecture": "arm64", "variant": "v8"},
                                   {"os": "linux", "architecture": "s390x"})]
        body = json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [
            {"mediaType": image.media_type, "digest": image.manifest_digest,
             "size": len(image.manifest), "platform": image.platform} for image in images
        ]}).encode()
        push_manifest(registry_url, repository, TAG, body, OCI_INDEX)
        return repository
    config, manifest = documents(case)
    for blob in (*case.layers, config):
        push_blob(registry_url, repository, blob)
    push_manifest(registry_url, repository, TAG, manifest, OCI_MANIFEST)
    return repository


class ServeManifest(Fault):
    """Answers manifest GETs with fixed bytes: what a hostile registry could send."""

    canned = True

    def __init__(self, body: bytes, media_type: str = DOCKER_MANIFEST):
        super().__init__(r"/manifests/", times=None)
        self.body = body
        self.media_type = media_type

    def apply(self, request: Request, reply: Reply | None) -> Reply:
        return Reply(200, [("Content-Type", self.media_type)], self.body)


def faults_for(case: Case) -> list[Fault]:
    """The proxy faults that deliver the case (empty for most)."""
    if case.delivery == "served_manifest":
        return [ServeManifest(case.raw)]
    if case.delivery == "corrupt_layer":
        return [CorruptBody(rf"/blobs/{digest_of(case.layers[0])}$", times=None)]
    if case.delivery == "corrupt_config":
        config, _ = documents(case)
        return [CorruptBody(rf"/blobs/{digest_of(config)}$", times=None)]
    return []



# -- the corpus on disk --------------------------------------------------------------


def corpus_files() -> dict[str, bytes]:
    """Relative path -> bytes of every corpus file (blobs, documents, index)."""
    files: dict[str, bytes] = {}
    index = []
    for item in cases():
        config, manifest = documents(item)
        for number, blob in enumerate(item.layers):
            files[f"{item.name}/layer-{number}.{_extension(blob)}"] = blob
        files[f"{item.name}/config.json"] = config
        files[f"{item.name}/manifest.json"] = manifest
        if item.delivery == "served_manifest":
            files[f"{item.name}/served-manifest.json"] = item.raw
        index.append({
            "name": item.name, "hostile": item.hostile, "expect": item.expect,
            "error": item.error, "fragment": item.fragment, "delivery": item.delivery,
            "limits": item.all_limits(),
            "lands": [[x.path, x.type, x.detail, x.mode] for x in item.lands],
            "absent": list(item.absent),
        })
    files["index.json"] = json.dumps(index, indent=1, ensure_ascii=False).encode() + b"\n"
    return files


def _extension(blob: bytes) -> str:
    return {"gzip": "tar.gz", "zstd": "tar.zst", "none": "tar"}[compression_of(blob)]


def write_corpus(directory: Path) -> int:
    """Writes the corpus under `directory` (replacing what is there); returns bytes written."""
    directory = Path(directory)
    for child in directory.iterdir() if directory.exists() else ():
        if child.is_dir():
            shutil.rmtree(child)
        elif child.name != "README.md":
            child.unlink()
    total = 0
    for relative, data in corpus_files().items():
        path = directory / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        total += len(data)
    return total


if __name__ == "__main__":
    target = Path(sys.argv[1] if len(sys.argv) > 1 else "tests/fixtures/hostile")
    print(f"wrote {write_corpus(target)} bytes of {len(cases())} cases to {target}")
