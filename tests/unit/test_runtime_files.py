"""The files enroot and Apptainer read inside an image: exact formats, and shells that
give back exactly the image's values and run Docker's ENTRYPOINT/CMD rules."""

from __future__ import annotations

import io
import json
import os
import subprocess

import pytest

from imagegw.domain.model import ImageMetadata
from imagegw.domain.runtimes import ENROOT_FILES, SINGULARITY_FILES
from imagegw.pipeline import runtime_files as R
from imagegw.pipeline.tarstream import DIRECTORY, TarReader

# Values a naive quoting breaks: quotes, backslashes, $-expansions, globs, newlines.
TRICKY = [
    "plain", "", "two words", "it's", 'say "hi"', "back\\slash\\\\n", "$HOME", "${HOME:-x}",
    "`id`", "$(id)", "*", "a\nb", "tab\there", "'", "'\\''", "ünï©ødé", "-n", "!bang",
]


def run_sh(shell: str, script: str, *args: str, env: dict[str, str] | None = None) -> str:
    result = subprocess.run([shell, "-c", script, "sh", *args], capture_output=True,
                            check=True, env=env if env is not None else {"PATH": os.defpath})
    return result.stdout.decode()


@pytest.mark.parametrize("value", TRICKY)
def test_shell_quote_gives_back_the_value_in_sh_and_bash(value: str) -> None:
    for shell in ("/bin/sh", "/bin/bash"):
        assert run_sh(shell, f"printf %s {R.shell_quote(value)}") == value


def env_after_sourcing(script: bytes, host: dict[str, str]) -> dict[str, str]:
    """The environment bash ends with after sourcing `script` (NUL-separated dump)."""
    out = subprocess.run(["/bin/bash", "-c", '. /dev/stdin && /usr/bin/env -0', "bash"], input=script,
                         capture_output=True, check=True, env=host).stdout
    return dict(item.split("=", 1) for item in out.decode().split("\0") if item)


def test_singularity_env_script_gives_every_value_back_exactly() -> None:
    env = [f"V{number}={value}" for number, value in enumerate(TRICKY)]
    env += ["PATH=/opt/app/bin:/usr/bin", "EQUALS=a=b=c", "bad name=skipped", "NOVALUE"]
    got = env_after_sourcing(R.singularity_env(env), {"PATH": "/host/bin"})
    for number, value in enumerate(TRICKY):
        assert got[f"V{number}"] == value
    assert got["PATH"] == "/opt/app/bin:/usr/bin"  # set outright, as Apptainer does
    assert got["EQUALS"] == "a=b=c"
    assert "NOVALUE" not in got


def test_singularity_env_keeps_a_value_the_host_set_but_not_path() -> None:
    script = R.singularity_env(["LANG=C.UTF-8", "EMPTY=image", "PATH=/image/bin"])
    got = env_after_sourcing(script, {"LANG": "de_DE.UTF-8", "EMPTY": "", "PATH": "/host"})
    assert got["LANG"] == "de_DE.UTF-8"
    assert got["EMPTY"] == "image"  # empty counts as unset, like ${K:-v}
    assert got["PATH"] == "/image/bin"


def test_base_env_appends_the_singularity_libs_to_ld_library_path() -> None:
    assert env_after_sourcing(R.singularity_base_env(), {})["LD_LIBRARY_PATH"] == \
        "/.singularity.d/libs"
    assert env_after_sourcing(R.singularity_base_env(), {"LD_LIBRARY_PATH": "/a:/b"})[
        "LD_LIBRARY_PATH"] == "/a:/b:/.singularity.d/libs"


PRINT = "/usr/bin/printf"
LAUNCHES = [
    # (entrypoint, cmd, arguments, expected argv run)
    ([PRINT, "[%s]"], ["default cmd"], [], [PRINT, "[%s]", "default cmd"]),
    ([PRINT, "[%s]"], ["default cmd"], ["given", "it's"], [PRINT, "[%s]", "given", "it's"]),
    ([], [PRINT, "<%s>", "x y"], [], [PRINT, "<%s>", "x y"]),
    ([], [PRINT, "<%s>", "x"], [PRINT, "{%s}", "$HOME"], [PRINT, "{%s}", "$HOME"]),
    ([PRINT, "(%s)", "only entrypoint"], [], [], [PRINT, "(%s)", "only entrypoint"]),
    ([PRINT, "(%s)"], [], ["a\nb"], [PRINT, "(%s)", "a\nb"]),
]


@pytest.mark.parametrize(("entrypoint", "cmd", "args", "argv"), LAUNCHES)
def test_runscript_follows_dockers_entrypoint_and_cmd_rules(entrypoint, cmd, args, argv) -> None:
    metadata = ImageMetadata(entrypoint=tuple(entrypoint), cmd=tuple(cmd))
    script = R.singularity_runscript(metadata).decode()
    expected = subprocess.run(argv, capture_output=True, check=True).stdout.decode()
    assert run_sh("/bin/sh", script, *args) == expected


def test_an_image_with_neither_entrypoint_nor_cmd_runs_bin_sh() -> None:
    script = R.singularity_runscript(ImageMetadata()).decode()
    assert "exec '/bin/sh'\n" in script
    assert run_sh("/bin/sh", script, "/usr/bin/printf", "%s", "args run as given") == \
        "args run as given"


def test_enroot_rc_is_exactly_enroots_layout_with_posix_quoting() -> None:
    metadata = ImageMetadata(
        entrypoint=("/entry.sh", "--flag"), cmd=("serve", "it's"), workdir="/srv/my app",
        labels={"org.opencontainers.image.title": "A\nB", "maintainer": "me"})
    assert R.enroot_rc(metadata, "docker://reg#repo@sha256:ab").decode() == (
        "# enroot-provenance: docker://reg#repo@sha256:ab\n"
        "# maintainer me\n"
        "# org.opencontainers.image.title A B\n"
        "\n"
        "mkdir -p '/srv/my app' 2> /dev/null\n"
        "cd '/srv/my app' && unset OLDPWD || exit 1\n"
        "\n"
        "if [ -s /etc/rc.local ]; then\n"
        "    . /etc/rc.local\n"
        "fi\n"
        "\n"
        "if [ $# -gt 0 ]; then\n"
        "    exec '/entry.sh' '--flag' \"$@\"\n"
        "else\n"
        "    exec '/entry.sh' '--flag' 'serve' 'it'\\''s'\n"
        "fi\n")


def test_enroot_rc_without_workdir_starts_in_the_root() -> None:
    rc = R.enroot_rc(ImageMetadata(cmd=("/bin/bash",)), "p").decode()
    assert "cd '/' && unset OLDPWD || exit 1\n" in rc
    assert "    exec \"$@\"\n" in rc and "    exec '/bin/bash'\n" in rc


def test_enroot_environment_and_fstab() -> None:
    env = ["PATH=/usr/bin", "QUOTED=say \"hi\" $HOME", "MULTI=a\nb", "bad name=x"]
    assert R.enroot_environment(env) == b'PATH=/usr/bin\nQUOTED=say "hi" $HOME\n'
    assert R.enroot_fstab(["/data", "/with space", "relative"]) == (
        b"${ENROOT_ROOTFS}/data /data none x-create=dir,bind,rw,nosuid,nodev\n")
    assert R.enroot_rc_local().startswith(b"# This file is sourced by /etc/rc")


def test_labels_json_holds_the_labels() -> None:
    labels = {"b": "2", "a": "quote \" and \\"}
    assert json.loads(R.labels_json(labels)) == labels


def members(blob: bytes) -> dict[str, tuple[str, int, bytes]]:
    reader = TarReader(io.BytesIO(blob), layer="test")
    found = {}
    for member in reader:
        out = io.BytesIO()
        if member.size:
            reader.copy_data(member, out)
        found[member.name] = (member.type, member.mode, out.getvalue())
    return found


def test_a_shifter_only_image_gets_no_layers() -> None:
    assert R.added_layers(ImageMetadata(env=("A=b",)), (), "p") is None


def test_added_layers_put_directories_below_and_files_above() -> None:
    metadata = ImageMetadata(env=("A=b",), workdir="/work/dir", cmd=("x",))
    layers = R.added_layers(metadata, (ENROOT_FILES, SINGULARITY_FILES), "prov")
    assert layers is not None
    base, top = members(layers.base), members(layers.top)
    assert set(base) == {"work", "work/dir", ".singularity.d", ".singularity.d/actions",
                         ".singularity.d/env", ".singularity.d/libs"}
    assert all(kind == DIRECTORY and mode == 0o755 for kind, mode, _ in base.values())
    assert top["etc/rc"][2] == R.enroot_rc(metadata, "prov")
    assert top["etc/environment"][2] == b"A=b\n"
    assert top[".singularity.d/runscript"][1] == 0o755
    assert set(top) == {"etc/environment", "etc/fstab", "etc/rc", "etc/rc.local",
                        ".singularity.d/env/10-docker2singularity.sh",
                        ".singularity.d/env/99-base.sh", ".singularity.d/labels.json",
                        ".singularity.d/runscript"}
    enroot_only = R.added_layers(metadata, (ENROOT_FILES,), "prov")
    assert enroot_only is not None and set(members(enroot_only.base)) == {"work", "work/dir"}


def test_our_sif_reader_takes_back_the_squashfs_our_writer_wrapped(tmp_path) -> None:
    from imagegw.artifacts import extract_sif_squashfs
    from imagegw.pipeline.sif import data_offset, write_sif

    squashfs = tmp_path / "image.squashfs"
    squashfs.write_bytes(b"hsqs" + bytes(range(256)) * 40)
    sif = tmp_path / "image.sif"
    write_sif(squashfs, sif, architecture="arm64", identity="abc", created=1)
    blob = sif.read_bytes()
    assert blob[32:42] == b"SIF_MAGIC\0" and blob[45:48] == b"04\0"
    assert data_offset() % 4096 == 0 and blob[data_offset():] == squashfs.read_bytes()
    back = tmp_path / "back.squashfs"
    extract_sif_squashfs(sif, back)
    assert back.read_bytes() == squashfs.read_bytes()
    again = tmp_path / "again.sif"
    write_sif(squashfs, again, architecture="arm64", identity="abc", created=1)
    assert again.read_bytes() == blob  # the same image gives the same SIF


@pytest.mark.parametrize("workdir", ["/a/../b", "/new\nline", "/" + "x" * 300])
def test_a_workdir_no_tar_member_may_name_is_left_to_rc(workdir: str) -> None:
    layers = R.added_layers(ImageMetadata(workdir=workdir), (ENROOT_FILES,), "p")
    assert layers is not None and members(layers.base) == {}
    assert f"cd {R.shell_quote(workdir)} && unset OLDPWD || exit 1\n" in \
        members(layers.top)["etc/rc"][2].decode()
