"""`imagegw-pyxis-importer`: Pyxis's importer interface over the Image Gateway.

Pyxis (>= 0.21, `importer=` in plugstack.conf) calls `importer get URI` with an enroot
URI (`docker://[USER@][REGISTRY#]IMAGE[:TAG]`) and runs the squashfs whose path the
importer prints; `importer release` cleans up after the job. Here `get` pulls through
the gateway (progress and errors on stderr as `shifterimg pull` shows them) and prints
the published image on the shared image directory, so every user and node reuses one
conversion; `release` has nothing to clean up (the gateway's expiry owns the files).
Gateway, system and image directory come from the environment and udiRoot.conf as for
shifterimg (IMAGEGW_GATEWAY, IMAGEGW_SYSTEM, IMAGEGW_IMAGE_DIR, udiRoot.conf).
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
from collections.abc import Mapping, Sequence
from typing import TextIO

from imagegw.client.client import GatewayClient
from imagegw.client.credentials import munge_credential_provider, munge_sealer
from imagegw.client.errors import GatewayError, PullFailed
from imagegw.client.progress import PullReporter
from imagegw.client.runtimes import image_directory, runtime_path
from imagegw.client.settings import CliSettings, resolve_settings

PROG = "imagegw-pyxis-importer"
EXIT_OK, EXIT_ERROR, EXIT_USAGE = 0, 1, 2
#: Seconds each gateway call may take (the pull itself streams for as long as it runs).
CALL_TIMEOUT = 60.0

__all__ = ["enroot_uri_to_reference", "main"]


class UsageError(Exception):
    pass


def enroot_uri_to_reference(uri: str) -> str:
    """`docker://[USER@][REGISTRY#]IMAGE[:TAG]` -> the gateway's `[REGISTRY/]IMAGE[:TAG]`."""
    scheme, sep, rest = uri.partition("://")
    if not sep:
        scheme, rest = "docker", uri
    if scheme != "docker":
        raise UsageError(f"{uri!r}: only docker:// images can be pulled through the gateway "
                         f"(not {scheme}://)")
    head = rest.split("#", 1)[0]
    if "@" in head and not head.split("@", 1)[1].startswith("sha256:"):
        rest = rest.split("@", 1)[1]  # USER@ names enroot credentials; the gateway has its own
    registry, hash_sign, image = rest.rpartition("#")
    reference = f"{registry}/{image}" if hash_sign else image
    if not image or not reference.strip("/"):
        raise UsageError(f"{uri!r}: no image named")
    return reference


def get(uri: str, environ: Mapping[str, str], out: TextIO, err: TextIO) -> int:
    reference = enroot_uri_to_reference(uri)
    settings = resolve_settings(gateways=None, system=None, munge_socket=None,
                                environ=environ, ca_cert=None)
    image_dir = image_directory(environ)
    if not image_dir:
        raise UsageError("no image directory: set IMAGEGW_IMAGE_DIR or imagePath in "
                         "udiRoot.conf")
    reporter = PullReporter(err, f"docker:{reference}", interactive=err.isatty(),
                            width=shutil.get_terminal_size().columns)
    with _client(settings) as client:
        try:
            image = client.pull_and_wait(settings.system, reference, type="docker",
                                         on_update=reporter.update)
        finally:
            reporter.finish()
    path = runtime_path(image.image_file, "enroot", image_dir)
    if not os.path.isfile(path):
        print(f"{PROG}: the gateway published {image.image_file}, but {path} is not there: "
              "is the image directory mounted here (IMAGEGW_IMAGE_DIR, imagePath)?", file=err)
        return EXIT_ERROR
    print(path, file=out)
    return EXIT_OK


def _client(settings: CliSettings) -> GatewayClient:
    socket = settings.munge_socket
    return GatewayClient(
        settings.addresses, timeout=CALL_TIMEOUT,
        credential_provider=munge_credential_provider(socket) if socket else None,
        sealer=munge_sealer(socket) if socket else None, ca_cert=settings.ca_cert)


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format=f"{PROG}: %(message)s")
    args = list(sys.argv[1:] if argv is None else argv)
    out, err = sys.stdout, sys.stderr
    try:
        if args == ["release"]:
            return EXIT_OK
        if len(args) != 2 or args[0] != "get":
            raise UsageError("usage: imagegw-pyxis-importer get IMAGE_URI | release")
        return get(args[1], os.environ, out, err)
    except UsageError as exc:
        print(f"{PROG}: {exc}", file=err)
        return EXIT_USAGE
    except PullFailed as exc:
        print(f"{PROG}: pull failed: {exc.message}", file=err)
    except (GatewayError, ValueError) as exc:
        print(f"{PROG}: {getattr(exc, 'message', exc)}", file=err)
    except OSError as exc:
        print(f"{PROG}: {exc}", file=err)
    return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
