"""The benchmark's own test images, made reproducibly from a seed.

`small-files`: ~500 MB in ~46k files over 5 layers (a distribution-like tree);
`large-files`: ~1.2 GB in a few dozen big files over 4 layers. Both carry whiteouts,
an opaque directory and symlinks; the small-files image also hardlinks. Layers are gzip (what registries serve
most). `scale` multiplies file counts and sizes, for a quick run.
`many-layers-<N>k`: N thousand small files over 40 layers that overwrite, white out and
make opaque what lower layers wrote (conda, spack, Python stacks): build_many_layers.
"""

from __future__ import annotations

import hashlib
import io
import itertools
import json
import random
import tarfile
from dataclasses import dataclass
from pathlib import Path

try:
    from isal import igzip as _gzip
except ImportError:  # the benchmark works without isal, layers are only slower to make
    import gzip as _gzip  # type: ignore[no-redef]

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
#: Bumped when the generated content changes (cached images are then remade).
GENERATOR_VERSION = 3
_POOL_BYTES = 48 * 1024 * 1024
_MTIME = 1_700_000_000


@dataclass
class LayerFile:
    path: Path
    digest: str
    diff_id: str
    size: int
    uncompressed: int


@dataclass
class BenchImage:
    name: str
    layers: list[LayerFile]
    files: int

    @property
    def compressed_bytes(self) -> int:
        return sum(layer.size for layer in self.layers)

    @property
    def uncompressed_bytes(self) -> int:
        return sum(layer.uncompressed for layer in self.layers)


class _Content:
    """File bytes: slices of a low-entropy pool (text-like, ~2.5x under gzip) mixed
    with incompressible runs (like compiled code and compressed assets)."""

    def __init__(self, seed: int) -> None:
        rng = random.Random(seed)
        self.rng = rng
        letters = b"etaoinsrhldcumfpgwybvkxjqz"
        words = [bytes(rng.choices(letters, k=rng.randint(2, 10)))
                 + rng.choice([b" ", b" ", b"\n", b", ", b"=", b"/"]) for _ in range(5000)]
        weights = list(itertools.accumulate(1 / (rank + 1) for rank in range(len(words))))
        parts, size = [], 0
        while size < _POOL_BYTES:
            part = b"".join(rng.choices(words, cum_weights=weights, k=200_000))
            parts.append(part)
            size += len(part)
        self.text = b"".join(parts)[:_POOL_BYTES]
        self.noise = rng.randbytes(_POOL_BYTES)

    def make(self, size: int, noise_share: float = 0.05) -> bytes:
        parts = []
        left = size
        while left:
            take = min(left, self.rng.randint(4096, 256 * 1024))
            pool = self.noise if self.rng.random() < noise_share else self.text
            start = self.rng.randrange(0, _POOL_BYTES - take)
            parts.append(pool[start:start + take])
            left -= take
        return b"".join(parts)


class _HashingWriter(io.RawIOBase):
    """Counts and hashes the uncompressed tar on its way into the gzip writer."""

    def __init__(self, out: io.BufferedIOBase) -> None:
        self.out = out
        self.hash = hashlib.sha256()
        self.count = 0

    def writable(self) -> bool:
        return True

    def write(self, data: bytes) -> int:  # type: ignore[override]
        self.hash.update(data)
        self.count += len(data)
        self.out.write(data)
        return len(data)


class _LayerWriter:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._raw = open(path, "wb")  # noqa: SIM115 - closed in close()
        self._gzip = _gzip.GzipFile(fileobj=self._raw, mode="wb", compresslevel=1, mtime=0)
        self._hashing = _HashingWriter(self._gzip)
        self.tar = tarfile.open(  # noqa: SIM115 - closed in close()
            fileobj=self._hashing, mode="w|", format=tarfile.PAX_FORMAT)

    def dir(self, name: str, mode: int = 0o755) -> None:
        info = tarfile.TarInfo(name)
        info.type, info.mode, info.mtime = tarfile.DIRTYPE, mode, _MTIME
        self.tar.addfile(info)

    def file(self, name: str, data: bytes, mode: int = 0o644) -> None:
        info = tarfile.TarInfo(name)
        info.size, info.mode, info.mtime = len(data), mode, _MTIME
        self.tar.addfile(info, io.BytesIO(data))

    def link(self, name: str, target: str, *, hard: bool = False) -> None:
        info = tarfile.TarInfo(name)
        info.type = tarfile.LNKTYPE if hard else tarfile.SYMTYPE
        info.linkname, info.mode, info.mtime = target, 0o777, _MTIME
        self.tar.addfile(info)

    def whiteout(self, name: str) -> None:
        parent, _, base = name.rpartition("/")
        self.file(f"{parent}/.wh.{base}" if parent else f".wh.{base}", b"")

    def opaque(self, directory: str) -> None:
        self.file(f"{directory}/.wh..wh..opq", b"")

    def close(self) -> LayerFile:
        self.tar.close()
        self._gzip.close()
        self._raw.close()
        data_hash = hashlib.sha256()
        with open(self.path, "rb") as blob:
            while chunk := blob.read(1 << 20):
                data_hash.update(chunk)
        return LayerFile(self.path, "sha256:" + data_hash.hexdigest(),
                         "sha256:" + self._hashing.hash.hexdigest(), self.path.stat().st_size,
                         self._hashing.count)


def _sizes(rng: random.Random, count: int, mean: int) -> list[int]:
    """File sizes with a long tail, like a distribution's (median ~ mean / 3)."""
    return [min(int(rng.lognormvariate(0, 1.4) * mean / 2.66), 64 * mean) for _ in range(count)]


def build_small_files(out: Path, scale: float) -> BenchImage:
    """~500 MB * scale in ~46k * scale files, 5 layers."""
    content = _Content(seed=7)
    rng = content.rng
    total_files = max(50, int(46_000 * scale))
    shares = (0.45, 0.25, 0.15, 0.10, 0.05)
    layers: list[LayerFile] = []
    written: list[str] = []
    linked: set[str] = set()
    files = 0
    for number, share in enumerate(shares):
        writer = _LayerWriter(out / f"small-{number}.tar.gz")
        top = ("usr", "opt/app", "usr/share", "var/lib", "etc")[number]
        count = max(10, int(total_files * share))
        dirs = [f"{top}/d{index:03d}" for index in range(max(1, count // 60))]
        parent = ""
        for part in top.split("/"):
            parent = f"{parent}/{part}" if parent else part
            writer.dir(parent)
        for directory in dirs:
            writer.dir(directory)
        for index, size in enumerate(_sizes(rng, count, 10_900)):
            name = f"{rng.choice(dirs)}/f{number}_{index:05d}.dat"
            writer.file(name, content.make(size), 0o755 if index % 7 == 0 else 0o644)
            written.append(name)
            files += 1
            if index % 500 == 1:
                writer.link(f"{name}.link", name, hard=True)
                linked.add(name)
            if index % 300 == 2:
                writer.link(f"{name}.sym", name.rsplit("/", 1)[1])
        if number >= 2:
            # Whiteouts of files from lower layers, and one opaque directory.
            # (Not hardlink targets, so that Charliecloud's extraction is not tested on them.)
            candidates = [name for name in written[: len(written) // 2] if name not in linked]
            for victim in rng.sample(candidates, min(200, len(candidates) // 4)):
                writer.whiteout(victim)
            writer.dir("opt/app/d000")
            writer.opaque("opt/app/d000")
            writer.file("opt/app/d000/replaced", content.make(4096))
        layers.append(writer.close())
    return BenchImage("small-files", layers, files)


def build_large_files(out: Path, scale: float) -> BenchImage:
    """~1.2 GB * scale in big files, 4 layers."""
    content = _Content(seed=11)
    plan = ((450, 6), (380, 5), (280, 4), (90, 3))  # MB per layer, files per layer
    layers: list[LayerFile] = []
    written: list[str] = []
    files = 0
    for number, (megabytes, count) in enumerate(plan):
        writer = _LayerWriter(out / f"large-{number}.tar.gz")
        directory = f"data/part{number}"
        writer.dir("data")
        writer.dir(directory)
        per_file = int(megabytes * 1_000_000 * scale / count)
        for index in range(count):
            name = f"{directory}/blob{index}.bin"
            writer.file(name, content.make(per_file, noise_share=0.5))
            written.append(name)
            files += 1
        # No hardlink here: Charliecloud 0.31 fails to extract one (docs/performance.md).
        writer.link("data/latest", f"part{number}")
        if number >= 1:
            writer.whiteout(written[-count - 1])  # the last file of the layer below
        if number == 3:
            writer.dir("data/part1")
            writer.opaque("data/part1")
            writer.file("data/part1/README", b"replaced by layer 3\n")
        layers.append(writer.close())
    return BenchImage("large-files", layers, files)


def build_many_layers(out: Path, total_files: int, layer_count: int = 40) -> BenchImage:
    """A conda/spack-like image: `total_files` small files (~600 B mean) over `layer_count`
    layers; every later layer overwrites ~5% and whites out ~1% of the files still there,
    and every tenth makes an earlier directory opaque."""
    content = _Content(seed=13)
    rng = content.rng
    per_layer = max(20, total_files // layer_count)
    alive: list[str] = []  # files of lower layers still in the image
    layers: list[LayerFile] = []
    files = 0
    for number in range(layer_count):
        writer = _LayerWriter(out / f"many-{total_files}-{number:02d}.tar.gz")
        root = f"opt/env/pkg{number:02d}"
        for directory in ("opt", "opt/env", root):
            writer.dir(directory)
        dirs = [f"{root}/m{index:03d}" for index in range(max(1, per_layer // 100))]
        for directory in dirs:
            writer.dir(directory)
        if alive:
            for victim in rng.sample(alive, min(len(alive), per_layer // 20)):
                writer.file(victim, content.make(max(1, _sizes(rng, 1, 600)[0])))
            for _ in range(min(len(alive) // 2, per_layer // 100)):
                victim = alive.pop(rng.randrange(len(alive)))  # order does not matter
                writer.whiteout(victim)
        if number % 10 == 9:
            hidden = f"opt/env/pkg{number - 5:02d}/m000"
            writer.dir(hidden)
            writer.opaque(hidden)
            writer.file(f"{hidden}/replaced.txt", b"made opaque by a later layer\n")
            alive = [name for name in alive if not name.startswith(f"{hidden}/")]
        made = []
        for index, size in enumerate(_sizes(rng, per_layer, 600)):
            name = f"{dirs[index % len(dirs)]}/f{index:05d}.py"
            writer.file(name, content.make(max(1, size)), 0o755 if index % 9 == 0 else 0o644)
            made.append(name)
        alive += made
        files += len(made)
        layers.append(writer.close())
    return BenchImage(f"many-layers-{total_files // 1000}k", layers, files)


def build_many_layers_image(workdir: Path, total_files: int) -> BenchImage:
    """The many-layers image of `total_files` under `workdir`, reused when made before."""
    out = workdir / f"images-many-v{GENERATOR_VERSION}-{total_files}"
    marker = out / "image.json"
    if marker.exists():
        return _load(json.loads(marker.read_text()))
    out.mkdir(parents=True, exist_ok=True)
    image = build_many_layers(out, total_files)
    marker.write_text(json.dumps(_dump(image), indent=1))
    return image


def build_images(workdir: Path, scale: float) -> list[BenchImage]:
    """Both images under `workdir/images-<scale>`, reused when made before."""
    out = workdir / f"images-v{GENERATOR_VERSION}-{scale:g}"
    marker = out / "images.json"
    if marker.exists():
        return [_load(entry) for entry in json.loads(marker.read_text())]
    out.mkdir(parents=True, exist_ok=True)
    images = [build_small_files(out, scale), build_large_files(out, scale)]
    marker.write_text(json.dumps([_dump(image) for image in images], indent=1))
    return images


def _dump(image: BenchImage) -> dict:
    return {"name": image.name, "files": image.files,
            "layers": [{**layer.__dict__, "path": str(layer.path)} for layer in image.layers]}


def _load(data: dict) -> BenchImage:
    layers = [LayerFile(**{**layer, "path": Path(layer["path"])}) for layer in data["layers"]]
    return BenchImage(data["name"], layers, data["files"])


def image_config(image: BenchImage) -> bytes:
    return json.dumps({
        "architecture": "amd64", "os": "linux",
        "config": {"Env": ["PATH=/usr/bin:/bin"], "Cmd": ["/bin/sh"]},
        "rootfs": {"type": "layers", "diff_ids": [layer.diff_id for layer in image.layers]},
        "history": [{"created": "2023-11-14T22:13:20Z", "created_by": f"bench layer {number}"}
                    for number in range(len(image.layers))],
    }, sort_keys=True).encode()


def push(registry_url: str, repository: str, tag: str, image: BenchImage) -> str:
    """Pushes the image (one layer in memory at a time); returns the manifest digest."""
    from testbed.images import push_blob, push_manifest

    for layer in image.layers:
        push_blob(registry_url, repository, layer.path.read_bytes())
    config = image_config(image)
    config_digest = push_blob(registry_url, repository, config)
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": config_digest, "size": len(config)},
        "layers": [{"mediaType": OCI_LAYER_GZIP, "digest": layer.digest, "size": layer.size}
                   for layer in image.layers],
    }).encode()
    return push_manifest(registry_url, repository, tag, manifest, OCI_MANIFEST)


def warm_registry_blobs(storage: Path, image: BenchImage) -> None:
    """Reads the image's layer blobs, as a docker-registry with filesystem `storage` keeps
    them, into the page cache: each contender that pulls then starts with its source where
    the floor's and the bound's inputs are when they start (read just before). This
    machine pages out page cache left alone for a minute (DAMON), and a registry reading
    its blobs back from disk costs a pull 0.2-1 s (docs/performance.md)."""
    blobs = storage / "docker" / "registry" / "v2" / "blobs" / "sha256"
    buffer = bytearray(8 << 20)
    for layer in image.layers:
        hex_digest = layer.digest.removeprefix("sha256:")
        with open(blobs / hex_digest[:2] / hex_digest / "data", "rb", buffering=0) as blob:
            while blob.readinto(buffer):
                pass


def write_flat_tar(image: BenchImage, out: Path) -> None:
    """The image flattened to one tar (the floor's input), with the project's flattener."""
    from imagegw.domain.config import Limits
    from imagegw.pipeline.decompress import open_layer
    from imagegw.pipeline.flatten import index_layer, merge_layers
    from imagegw.pipeline.flatten import write_flat_tar as write_tar
    from imagegw.pipeline.members import MemberPolicy

    cap = Limits().max_unpacked_bytes
    names = [layer.digest for layer in image.layers]
    paths = [layer.path for layer in image.layers]
    indexes = []
    for path, name in zip(paths, names, strict=True):
        with open_layer(path, max_uncompressed=cap, layer=name) as stream:
            indexes.append(index_layer(stream, layer=name, policy=MemberPolicy()))
    tree = merge_layers(indexes)
    with open(out, "wb") as sink:
        write_tar(tree, lambda n: open_layer(paths[n], max_uncompressed=cap, layer=names[n]),
                  sink)
