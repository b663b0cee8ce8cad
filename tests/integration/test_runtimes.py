"""Issue 22 end to end: one image from the test registry published for Shifter, enroot
and Apptainer; the runtime files run in an unpacked copy (chroot over the host's /usr),
the SIF read back by Debian's siftool, the images mounted with squashfuse; a
Shifter-only system keeps the exact OCI tree and its old conversion key."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from imagegw.artifacts import ConversionKey
from imagegw.cache.layout import WorkerPaths
from imagegw.domain.config import parse_config
from imagegw.domain.errors import ConfigError
from imagegw.domain.model import BuildJob
from imagegw.domain.runtimes import ENROOT_FILES, SINGULARITY_FILES
from imagegw.pipeline import runtime_files as R
from imagegw.pipeline.layer import FileLayer
from imagegw.pipeline.squashfs import flatten_to_squashfs
from imagegw.registry.manifest import parse_image_config
from imagegw.worker.build import Builder
from tests.support import layers as L
from tests.support.images import default_config, push_image
from tests.support.squashfs_tree import read_squashfs

ENTRY = b"""#!/bin/sh
printf 'pwd=%s\\n' "$(pwd)"
for arg in "$@"; do printf 'arg=%s\\n' "$arg"; done
printf 'GREETING=%s\\n' "$GREETING"
"""
GREETING = "it's \"$HOME\" \\n `id` ${X:-y}"
RUNTIME = {
    "Env": ["PATH=/usr/local/bin:/usr/bin:/bin", f"GREETING={GREETING}"],
    # A quote inside a Cmd item of a list Shifter's meta file cannot carry (test_meta.py):
    # the quoting of /etc/rc is tested with the spaces here and the Env value above.
    "Entrypoint": ["/app/entry.sh"], "Cmd": ["default", "two  words"],
    "WorkingDir": "/work/dir",  # not in the image's tree
    "Labels": {"org.example.team": "hpc"}, "Volumes": {"/data": {}},
}
# Merged-/usr symlinks: the chroot runs the host's /bin/sh through a bind of /usr.
BASE = L.layer(
    L.dir("usr"), L.symlink("bin", "usr/bin"), L.symlink("lib", "usr/lib"),
    L.symlink("lib64", "usr/lib64"), L.symlink("sbin", "usr/sbin"), L.dir("tmp", 0o1777),
    L.dir("etc"), L.file("etc/rc", b"the image's own /etc/rc\n"),
    L.file("etc/os-release", b"ID=test\n"),
    # enroot unpacks as the user: the owner gets access, as `enroot import` gives it.
    L.file("etc/shadow", b"secret", 0o000), L.dir("ro", 0o555), L.file("ro/x", b"x", 0o011),
)
APP = L.layer(L.dir("app"), L.file("app/entry.sh", ENTRY, 0o755))


@pytest.fixture(scope="module")
def pushed(registry):
    layers = [BASE, APP]
    config = default_config(layers)
    config["config"] = RUNTIME
    return push_image(registry.url, "runtimes/app", "1", layers, config)


def site(tmp_path: Path, url: str, **converter) -> dict:
    def system(name: str, runtimes: list[str] | None) -> dict:
        extra = {} if runtimes is None else {"runtimes": runtimes}
        return {"accesstype": "local", "local": {"imageDir": str(tmp_path / name)}, **extra}

    return {
        "CacheDirectory": str(tmp_path / "cache"), "ExpandDirectory": str(tmp_path / "expand"),
        "Locations": {"testreg": {"url": url}},
        "ConverterOptions": {"jobs": 2, **converter},
        "Platforms": {"shifter": system("shifter", None),
                      "all": system("all", ["shifter", "enroot", "apptainer"])},
    }


def builder_for(config: dict) -> Builder:
    parsed = parse_config(config)
    return Builder(parsed, WorkerPaths(parsed.cache_dir, parsed.expand_dir))


def build(builder: Builder, system: str):
    return builder.build(BuildJob(job_id=f"job-{system}", system=system,
                                  reference="testreg/runtimes/app:1"), lambda _: None)


@pytest.fixture(scope="module")
def built(tmp_path_factory, registry, pushed):
    tmp_path = tmp_path_factory.mktemp("runtimes")
    builder = builder_for(site(tmp_path, registry.url))
    return tmp_path, builder, build(builder, "shifter"), build(builder, "all")


def unpack(image: Path, where: Path) -> Path:
    root = where / "root"
    subprocess.run(["unsquashfs", "-q", "-n", "-d", str(root), str(image)], check=True,
                   stdout=subprocess.DEVNULL)
    return root


def run_rc(root: Path, *args: str) -> list[str]:
    """/etc/rc run with /bin/sh inside `root` the way enroot starts it: the environment
    from the image's /etc/environment, the arguments given, the host's /usr bound in."""
    env = dict(line.split("=", 1) for line in
               (root / "etc/environment").read_text().splitlines() if line)
    script = ('root=$1; shift; /usr/bin/mount --bind /usr "$root/usr" && '
              'exec /usr/sbin/chroot "$root" /bin/sh /etc/rc "$@"')
    result = subprocess.run(["/usr/bin/unshare", "--mount", "/bin/sh", "-c", script, "sh",
                             str(root), *args], capture_output=True, env=env, check=False)
    assert result.returncode == 0, result.stderr.decode()
    return result.stdout.decode().splitlines()


def test_enroot_rc_runs_the_entrypoint_in_workdir_with_the_image_env(built, tmp_path):
    tmp, _, _, result = built
    root = unpack(tmp / "all" / result.image_file, tmp_path)
    greeting = f"GREETING={GREETING}"
    assert run_rc(root) == ["pwd=/work/dir", "arg=default", "arg=two  words", greeting]
    assert run_rc(root, "given", "$HOME") == ["pwd=/work/dir", "arg=given", "arg=$HOME",
                                              greeting]
    # Pyxis --no-container-entrypoint: rc.local replaces the launch, still in WORKDIR.
    (root / "etc/rc.local").write_text('exec "$@"\n')
    assert run_rc(root, "/bin/sh", "-c", 'printf "%s %s\\n" "$(pwd)" "$GREETING"') == \
        [f"/work/dir {GREETING}"]


def test_published_files_are_enroots_and_apptainers_exactly(built, tmp_path):
    tmp, _, _, result = built
    root = unpack(tmp / "all" / result.image_file, tmp_path)
    metadata = parse_image_config(json.dumps({"config": RUNTIME}).encode())[1]
    provenance = (root / "etc/rc").read_text().splitlines()[0].removeprefix(
        "# enroot-provenance: ")
    assert provenance.startswith("docker://127.0.0.1:") and provenance.endswith(
        f"#runtimes/app@{result.manifest_digest}")
    for item in R.enroot_files(metadata, provenance) + R.singularity_files(metadata):
        assert (root / item.path).read_bytes() == item.data, item.path
        assert (root / item.path).stat().st_mode & 0o7777 == item.mode
    assert (root / "etc/fstab").read_text() == (
        "${ENROOT_ROOTFS}/data /data none x-create=dir,bind,rw,nosuid,nodev\n")
    for directory in ("work/dir", ".singularity.d/env", ".singularity.d/libs",
                      ".singularity.d/actions"):
        assert (root / directory).is_dir()
    env = subprocess.run(["/bin/bash", "-c", 'for f in "$1"/*.sh; do . "$f"; done; '
                          '/usr/bin/env -0', "bash", str(root / ".singularity.d/env")],
                         capture_output=True, check=True, env={}).stdout.decode()
    values = dict(item.split("=", 1) for item in env.split("\0") if item)
    assert values["GREETING"] == GREETING
    assert values["PATH"] == "/usr/local/bin:/usr/bin:/bin"
    assert values["LD_LIBRARY_PATH"] == "/.singularity.d/libs"


def test_the_runtime_image_is_the_shifter_tree_plus_only_the_runtime_files(built):
    tmp, _, shifter, everything = built
    assert shifter.image_id == everything.image_id
    exact = read_squashfs(tmp / "shifter" / shifter.image_file)
    extended = read_squashfs(tmp / "all" / everything.image_file)
    added = {"etc/environment", "etc/fstab", "etc/rc.local", "work", "work/dir",
             ".singularity.d", ".singularity.d/actions", ".singularity.d/env",
             ".singularity.d/libs", ".singularity.d/env/10-docker2singularity.sh",
             ".singularity.d/env/99-base.sh", ".singularity.d/labels.json",
             ".singularity.d/runscript"}
    assert set(extended) - set(exact) == added
    assert set(exact) <= set(extended)
    changed = {path for path in exact if exact[path] != extended[path]}
    # enroot's /etc/rc replaces the image's; owners get access to the rest
    assert changed == {"etc/rc", "etc/shadow", "ro", "ro/x"}
    assert [exact[p].mode for p in ("etc/shadow", "ro", "ro/x")] == [0o000, 0o555, 0o011]
    assert [extended[p].mode for p in ("etc/shadow", "ro", "ro/x")] == [0o400, 0o755, 0o511]
    assert not (tmp / "shifter" / (shifter.image_id + ".sif")).exists()


def test_shifter_only_images_are_the_exact_conversion_with_the_old_key(built, tmp_path,
                                                                       registry, pushed):
    tmp, builder, shifter, _ = built
    options = builder.config.converter
    old_key = ConversionKey(shifter.manifest_digest, "squashfs", options)
    assert "runtime" not in old_key.options_text()
    cached = builder.caches.conversions.lookup(old_key.digest, "squashfs")
    assert cached is not None
    assert cached.read_bytes() == (tmp / "shifter" / shifter.image_file).read_bytes()
    # The same layers converted without any runtime files give the same bytes.
    blobs = [tmp_path / "base", tmp_path / "app"]
    blobs[0].write_bytes(BASE)
    blobs[1].write_bytes(APP)
    direct = tmp_path / "direct.squashfs"
    flatten_to_squashfs([FileLayer.of(blob, name) for blob, name in
                         zip(blobs, pushed.layer_digests, strict=True)],
                        direct, options=options, limits=builder.config.limits)
    assert direct.read_bytes() == cached.read_bytes()
    with_files = ConversionKey(shifter.manifest_digest, "squashfs", options,
                               runtime_files=(ENROOT_FILES, SINGULARITY_FILES), provenance="p")
    assert with_files.digest != old_key.digest


def test_siftool_reads_the_sif_and_gives_back_the_squashfs(built, tmp_path):
    tmp, _, _, result = built
    sif = tmp / "all" / f"{result.image_id}.sif"
    listing = subprocess.run(["siftool", "list", str(sif)], capture_output=True, check=True,
                             text=True).stdout
    assert "FS (Squashfs/*System/amd64)" in listing
    dumped = subprocess.run(["siftool", "dump", "1", str(sif)], capture_output=True,
                            check=True).stdout
    assert dumped == (tmp / "all" / result.image_file).read_bytes()


def test_squashfuse_mounts_the_squashfs_and_the_sif(built, tmp_path):
    tmp, _, _, result = built
    squashfs = tmp / "all" / result.image_file
    sif = tmp / "all" / f"{result.image_id}.sif"
    offset = 32768  # sif.data_offset(): the squashfs partition
    for image, options in ((squashfs, []), (sif, ["-o", f"offset={offset}"])):
        mountpoint = tmp_path / image.suffix.lstrip(".")
        mountpoint.mkdir()
        subprocess.run(["squashfuse", *options, str(image), str(mountpoint)], check=True)
        try:
            assert (mountpoint / "etc/rc").read_text().startswith("# enroot-provenance: ")
            assert os.access(mountpoint / ".singularity.d/runscript", os.X_OK)
        finally:
            subprocess.run(["umount", str(mountpoint)], check=True)


def test_a_second_system_reuses_the_cached_conversion_and_sif(built, tmp_path, registry):
    tmp, builder, _, first = built
    config = site(tmp, registry.url)
    config["Platforms"]["more"] = {"accesstype": "local", "runtimes": ["singularity", "enroot"],
                                   "local": {"imageDir": str(tmp / "more")}}
    again = build(Builder(parse_config(config), builder.paths), "more")
    for name in (again.image_file, f"{again.image_id}.sif"):
        assert (tmp / "more" / name).read_bytes() == (tmp / "all" / name).read_bytes()
    assert again.image_file == first.image_file
    # enroot alone: another key, converted again from the layer indexes kept (two passes).
    config["Platforms"]["gpu"] = {"accesstype": "local", "runtimes": ["enroot"],
                                  "local": {"imageDir": str(tmp / "gpu")}}
    assert len(list((tmp / "cache").rglob("*.index-v*-nosetuid-owner.idx"))) == 2
    enroot = build(Builder(parse_config(config), builder.paths), "gpu")
    everything = read_squashfs(tmp / "all" / first.image_file)
    alone = read_squashfs(tmp / "gpu" / enroot.image_file)
    assert alone == {path: node for path, node in everything.items()
                     if not path.startswith(".singularity.d")}
    assert not (tmp / "gpu" / f"{enroot.image_id}.sif").exists()


def test_zstd_with_a_singularity_system_is_a_config_error(tmp_path):
    config = site(tmp_path, "http://127.0.0.1:1", compressor="zstd")
    with pytest.raises(ConfigError) as raised:
        parse_config(config)
    assert "ConverterOptions.compressor" in str(raised.value)
    assert "Platforms.all.runtimes" in str(raised.value)
    del config["Platforms"]["all"]
    config["Platforms"]["enroot"] = {"accesstype": "local", "runtimes": ["enroot"],
                                     "local": {"imageDir": str(tmp_path)}}
    assert parse_config(config).platforms["enroot"].runtimes == ("enroot",)
    config["Platforms"]["enroot"]["runtimes"] = ["docker"]
    with pytest.raises(ConfigError, match="Platforms.enroot.runtimes"):
        parse_config(config)



def test_a_private_pull_on_a_runtime_system_restricts_its_files_to_the_acl(built):
    tmp, builder, public, _ = built
    private = builder.build(BuildJob(job_id="job-private", system="all",
                                     reference="testreg/runtimes/app:1", user_acl=(40001,),
                                     group_acl=(40100,)), lambda _: None)
    assert private.image_file != public.image_file  # its own files
    for name in (private.image_file, private.image_file.replace(".squashfs", ".sif")):
        acl = subprocess.run(["getfacl", "-n", "-c", str(tmp / "all" / name)],
                             capture_output=True, text=True, check=True).stdout.split()
        assert acl == ["user::rw-", "user:40001:r--", "group::---", "group:40100:r--",
                       "mask::r--", "other::---"], name
    shifter = builder.build(BuildJob(job_id="job-private-shifter", system="shifter",
                                     reference="testreg/runtimes/app:1", user_acl=(40001,)),
                            lambda _: None)
    # Shifter enforces the ACL itself: 0600 for the service account, no POSIX ACL.
    assert os.stat(tmp / "shifter" / shifter.image_file).st_mode & 0o777 == 0o600
