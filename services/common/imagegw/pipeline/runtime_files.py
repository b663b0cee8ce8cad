"""The files enroot and Apptainer/SingularityCE read inside an image, made from its config.

Pure functions from the image's metadata to file contents, and `added_layers`, which
puts them into two small synthetic layers that the conversion flattens with the
image's own (same streaming conversion, no unpacked tree):
- the *base* layer, below the image's oldest layer: only directories a runtime needs
  (WORKDIR, `/.singularity.d/{env,libs,actions}`); a directory or symlink the image
  has at the same path wins, so the image's own modes and times are kept;
- the *top* layer, above the image's newest layer: the runtime files (`/etc/rc`,
  `/etc/rc.local`, `/etc/environment`, `/etc/fstab`; `/.singularity.d/env/*.sh`,
  `runscript`, `labels.json`). Like `enroot import`, they replace files of the same
  name in the image.

Facts from the runtimes' sources (written here in our own words):
- enroot runs `/etc/rc` with /bin/sh and the `start` arguments; Pyxis writes
  `exec "$@"` into `/etc/rc.local` to skip the entrypoint, so `/etc/rc` sources it
  after `cd WORKDIR` and before launching; `/etc/environment` holds the image's Env
  lines (enroot substitutes `${VAR}` in them from the host); `/etc/fstab` binds every
  VOLUME with `x-create=dir`.
- Apptainer/SingularityCE source `/.singularity.d/env/*.sh` in order and exec
  `/.singularity.d/runscript` for `run`; the image's Env are defaults (a value set
  on the host wins) except PATH, which is set outright.

Every value is written in POSIX single quotes (a `'` as `'\\''`), so sh and bash give
back exactly the image's values: nothing inside is expanded.
"""

from __future__ import annotations

import io
import json
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import BinaryIO

from imagegw.domain.model import ImageMetadata
from imagegw.domain.runtimes import ENROOT_FILES, SINGULARITY_FILES

from .members import name_problem
from .tarstream import TarWriter

__all__ = [
    "AddedLayers", "RuntimeFile", "added_layers", "enroot_environment", "enroot_files",
    "enroot_fstab", "enroot_rc", "enroot_rc_local", "labels_json", "shell_quote",
    "singularity_base_env", "singularity_env", "singularity_files", "singularity_runscript",
]

#: Names of the synthetic layers (in error messages and the flatten's bookkeeping).
BASE_LAYER = "imagegw:runtime-directories"
TOP_LAYER = "imagegw:runtime-files"
#: mtime of every synthetic entry: the same image config always gives the same bytes.
MTIME = 0
FILE_MODE = 0o644
SCRIPT_MODE = 0o755
DIR_MODE = 0o755
SINGULARITY_DIR = ".singularity.d"

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


@dataclass(frozen=True)
class RuntimeFile:
    """One file of the top layer: a relative path, its bytes and its mode."""

    path: str
    data: bytes
    mode: int = FILE_MODE


@dataclass(frozen=True)
class AddedLayers:
    """The two synthetic layers as plain tar bytes (see the module docstring)."""

    base: bytes
    top: bytes
    #: enroot unpacks images as the user: every entry's owner gets access (MemberPolicy).
    owner_access: bool = False


def shell_quote(text: str) -> str:
    """`text` as one POSIX shell word that expands to exactly `text`."""
    return "'" + text.replace("'", "'\\''") + "'"


def _words(words: Iterable[str]) -> str:
    return " ".join(shell_quote(word) for word in words)


def _split_env(entry: str) -> tuple[str, str] | None:
    """("NAME", "value") of an Env entry whose name a shell can assign, else None."""
    name, sep, value = entry.partition("=")
    if not sep or not _NAME.match(name):
        return None
    return name, value


def _launch(metadata: ImageMetadata) -> str:
    """Docker's rules as sh: arguments replace CMD, ENTRYPOINT stays; none run
    ENTRYPOINT CMD; an image with neither runs /bin/sh."""
    entrypoint = list(metadata.entrypoint)
    cmd = list(metadata.cmd) or ([] if entrypoint else ["/bin/sh"])
    with_args = " ".join([*map(shell_quote, entrypoint), '"$@"'])
    without = _words([*entrypoint, *cmd])
    return (
        "if [ $# -gt 0 ]; then\n"
        f"    exec {with_args}\n"
        "else\n"
        f"    exec {without}\n"
        "fi\n"
    )


def _workdir(metadata: ImageMetadata) -> str:
    return metadata.workdir or "/"


# enroot ------------------------------------------------------------------------------

def enroot_environment(env: Sequence[str]) -> bytes:
    """`/etc/environment`: the image's Env lines. A value with a newline cannot be one
    line of this format; it is left out (the meta file and the SIF keep it)."""
    lines = [entry for entry in env if "\n" not in entry and _split_env(entry) is not None]
    return "".join(f"{line}\n" for line in lines).encode()


def enroot_rc(metadata: ImageMetadata, provenance: str) -> bytes:
    """`/etc/rc`: provenance and labels as comments, cd WORKDIR, source rc.local, launch."""
    lines = [f"# enroot-provenance: {_one_line(provenance)}\n"]
    lines += [f"# {_one_line(key)} {_one_line(value)}\n"
              for key, value in sorted(metadata.labels.items())]
    workdir = shell_quote(_workdir(metadata))
    lines += [
        "\n",
        f"mkdir -p {workdir} 2> /dev/null\n",
        f"cd {workdir} && unset OLDPWD || exit 1\n",
        "\n",
        "if [ -s /etc/rc.local ]; then\n",
        "    . /etc/rc.local\n",
        "fi\n",
        "\n",
        _launch(metadata),
    ]
    return "".join(lines).encode()


def enroot_rc_local() -> bytes:
    """`/etc/rc.local`: only comments (Pyxis replaces it to override the entrypoint)."""
    return (b"# This file is sourced by /etc/rc when the container starts.\n"
            b"# It can change the entrypoint or the command of the container.\n")


def enroot_fstab(volumes: Sequence[str]) -> bytes:
    """`/etc/fstab`: one bind of the container's own directory per VOLUME (paths with
    blanks cannot be written in fstab's fields and are left out)."""
    lines = [f"${{ENROOT_ROOTFS}}{path} {path} none x-create=dir,bind,rw,nosuid,nodev\n"
             for path in volumes if path.startswith("/") and not re.search(r"\s", path)]
    return "".join(lines).encode()


def enroot_files(metadata: ImageMetadata, provenance: str) -> list[RuntimeFile]:
    return [
        RuntimeFile("etc/environment", enroot_environment(metadata.env)),
        RuntimeFile("etc/fstab", enroot_fstab(metadata.volumes)),
        RuntimeFile("etc/rc", enroot_rc(metadata, provenance)),
        RuntimeFile("etc/rc.local", enroot_rc_local()),
    ]


def _one_line(text: str) -> str:
    return text.replace("\r", " ").replace("\n", " ")


# Apptainer / SingularityCE -----------------------------------------------------------

def singularity_env(env: Sequence[str]) -> bytes:
    """`env/10-docker2singularity.sh`: each Env value as a default (a value already set
    and not empty wins), PATH set outright, each quoted so that it comes back exactly."""
    lines = ["#!/bin/sh\n", "# The image's environment (Env of its OCI config).\n"]
    for entry in env:
        pair = _split_env(entry)
        if pair is None:
            continue
        name, value = pair
        if name == "PATH":
            lines.append(f"PATH={shell_quote(value)}\n")
        else:
            lines.append(f'if [ -z "${{{name}:-}}" ]; then {name}={shell_quote(value)}; fi\n')
        lines.append(f"export {name}\n")
    return "".join(lines).encode()


def singularity_base_env() -> bytes:
    """`env/99-base.sh`: the libraries `--nv` binds into /.singularity.d/libs come last
    on LD_LIBRARY_PATH."""
    return (b"#!/bin/sh\n"
            b'if [ -z "${LD_LIBRARY_PATH:-}" ]; then\n'
            b"    LD_LIBRARY_PATH=/.singularity.d/libs\n"
            b"else\n"
            b'    LD_LIBRARY_PATH="$LD_LIBRARY_PATH:/.singularity.d/libs"\n'
            b"fi\n"
            b"export LD_LIBRARY_PATH\n")


def singularity_runscript(metadata: ImageMetadata) -> bytes:
    """`runscript`: the image's ENTRYPOINT and CMD with Docker's rules (no cd: Apptainer
    starts in the caller's directory and ignores WORKDIR)."""
    return ("#!/bin/sh\n# Runs the image's ENTRYPOINT and CMD.\n" + _launch(metadata)).encode()


def labels_json(labels: dict[str, str]) -> bytes:
    return (json.dumps(dict(sorted(labels.items())), indent=4) + "\n").encode()


def singularity_files(metadata: ImageMetadata) -> list[RuntimeFile]:
    base = SINGULARITY_DIR
    return [
        RuntimeFile(f"{base}/env/10-docker2singularity.sh", singularity_env(metadata.env),
                    SCRIPT_MODE),
        RuntimeFile(f"{base}/env/99-base.sh", singularity_base_env(), SCRIPT_MODE),
        RuntimeFile(f"{base}/labels.json", labels_json(metadata.labels)),
        RuntimeFile(f"{base}/runscript", singularity_runscript(metadata), SCRIPT_MODE),
    ]


# The layers --------------------------------------------------------------------------

def added_layers(metadata: ImageMetadata, files: Sequence[str], provenance: str
                 ) -> AddedLayers | None:
    """The synthetic layers for the sets of runtime `files` (domain.runtimes.added_files);
    None when there are none (a Shifter-only image: the exact OCI tree)."""
    if not files:
        return None
    directories: list[str] = []
    top: list[RuntimeFile] = []
    if ENROOT_FILES in files:
        workdir = _workdir(metadata).strip("/")
        if workdir and name_problem(workdir) is None:  # else /etc/rc's mkdir -p makes it
            directories.append(workdir)
        top += enroot_files(metadata, provenance)
    if SINGULARITY_FILES in files:
        directories += [f"{SINGULARITY_DIR}/{name}" for name in ("actions", "env", "libs")]
        top += singularity_files(metadata)
    return AddedLayers(base=_directories_tar(directories), top=_files_tar(top),
                       owner_access=ENROOT_FILES in files)


def _directories_tar(paths: Sequence[str]) -> bytes:
    out = io.BytesIO()
    writer = TarWriter(out)
    written: set[str] = set()
    for path in paths:
        parts = [part for part in path.split("/") if part and part != "."]
        for depth in range(1, len(parts) + 1):
            directory = "/".join(parts[:depth])
            if directory not in written:
                written.add(directory)
                writer.directory(directory, mode=DIR_MODE, mtime=MTIME)
    writer.close()
    return out.getvalue()


def _files_tar(files: Sequence[RuntimeFile]) -> bytes:
    out = io.BytesIO()
    writer = TarWriter(out)
    for item in files:
        writer.file(item.path, mode=item.mode, mtime=MTIME, size=len(item.data),
                    copy=_writes(item.data))
    writer.close()
    return out.getvalue()


def _writes(data: bytes) -> Callable[[BinaryIO], None]:
    def copy(sink: BinaryIO) -> None:
        sink.write(data)

    return copy
