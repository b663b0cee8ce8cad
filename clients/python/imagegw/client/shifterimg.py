"""The `shifterimg` command: pull, lookup, images and queue against the gateway; login
and logout for registry credentials; expire and import for admins.

Argument parsing and exit codes live here (0 ok, 1 gateway or pull error, 2 usage);
the calls go through `GatewayClient` and the printing through `output`/`progress`.
"""

from __future__ import annotations

import argparse
import getpass
import grp
import logging
import os
import pwd
import shutil
import sys
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import TextIO

from imagegw.client.client import GatewayClient, ready_image
from imagegw.client.credentials import munge_credential_provider, munge_sealer
from imagegw.client.errors import GatewayError, PullFailed
from imagegw.client.models import ImageInfo
from imagegw.client.output import images_table, queue_table, to_json
from imagegw.client.progress import PullReporter, render_state_line
from imagegw.client.rest import RestGatewayClient
from imagegw.client.runtimes import RUNTIMES, image_directory, runtime_path
from imagegw.client.settings import CliSettings, resolve_settings

PROG = "shifterimg"
#: The same calls over gRPC (default) or Shifter's REST API (--rest, http(s):// URLs).
Client = GatewayClient | RestGatewayClient
EXIT_OK, EXIT_ERROR, EXIT_USAGE = 0, 1, 2


class UsageError(Exception):
    """A command line that cannot be carried out as written (exit status 2)."""


def parse_image_argument(text: str) -> tuple[str, str]:
    """("docker", "ubuntu:24.04") from "docker:ubuntu:24.04" or "ubuntu:24.04"; ("id", hex)
    from "id:<hex>"."""
    for kind in ("docker", "id"):
        if text.startswith(kind + ":"):
            return kind, text[len(kind) + 1:]
    return "docker", text


def resolve_ids(values: Sequence[str], lookup: Callable[[str], int], what: str) -> tuple[int, ...]:
    """Numbers from comma-separated names or numbers ("alice,1001"), using `lookup` for names."""
    ids: list[int] = []
    for value in values:
        for item in filter(None, (part.strip() for part in value.split(","))):
            if item.isdigit():
                ids.append(int(item))
                continue
            try:
                ids.append(lookup(item))
            except KeyError:
                raise UsageError(f"unknown {what} {item!r}") from None
    return tuple(dict.fromkeys(ids))


def _add_global_options(parser: argparse.ArgumentParser, *, defaults: bool) -> None:
    # Subcommands accept the same options; there they must not reset what was given before.
    def default(value: object) -> object:
        return value if defaults else argparse.SUPPRESS

    parser.add_argument("-s", "--system", default=default(None),
                        help="the system (platform) to use; default from IMAGEGW_SYSTEM or "
                             "udiRoot.conf 'system', else 'default'")
    parser.add_argument("-g", "--gateway", action="append", default=default(None),
                        metavar="HOST:PORT",
                        help="a gateway address; repeat or separate with commas to list "
                             "fallbacks (default from IMAGEGW_GATEWAY or udiRoot.conf "
                             "'imageGateway', else 127.0.0.1:7777)")
    parser.add_argument("-v", "--verbose", action="store_true", default=default(False),
                        help="print results as JSON")
    parser.add_argument("--timeout", type=float, default=default(30.0), metavar="SECONDS",
                        help="how long to wait for each gateway call (default 30)")
    parser.add_argument("--munge-socket", default=default(None), metavar="PATH",
                        help="the munged socket for credentials (default MUNGE_SOCKET or "
                             "/run/munge/munge.socket.2 when present)")
    parser.add_argument("--ca-cert", default=default(None), metavar="PEM",
                        help="talk TLS to the gateway, trusting this CA certificate "
                             "(default IMAGEGW_CA_CERT)")
    parser.add_argument("--rest", action="store_true", default=default(False),
                        help="talk Shifter's REST API (the gateway's RestListen) instead of "
                             "gRPC; implied by http(s):// gateway URLs")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG, description="Pull and look up container images on the Image Gateway."
    )
    _add_global_options(parser, defaults=True)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    pull = commands.add_parser("pull", help="pull an image and wait until it is ready")
    _add_global_options(pull, defaults=False)
    pull.add_argument("image", help="docker:REPO[:TAG], REPO[:TAG] or REPO@sha256:...")
    pull.add_argument("--no-wait", action="store_true", help="start the pull and return")
    pull.add_argument("--force", action="store_true",
                      help="pull again even when a recently pulled image is ready")
    pull.add_argument("--user", action="append", default=[], metavar="USERS",
                      help="make the image private to these users (names or uids, comma separated)")
    pull.add_argument("--group", action="append", default=[], metavar="GROUPS",
                      help="make the image private to these groups (names or gids)")

    lookup = commands.add_parser("lookup", help="print the name of a ready image (its id; "
                                 "<id>-<12 hex> when private)")
    _add_global_options(lookup, defaults=False)
    lookup.add_argument("image", help="docker:REPO[:TAG], REPO[:TAG] or id:<hex>")
    lookup.add_argument("--runtime", choices=RUNTIMES,
                        help="print the path of the file this runtime runs instead of the id")
    lookup.add_argument("--image-dir", metavar="DIR",
                        help="the image directory as this node sees it (default "
                             "IMAGEGW_IMAGE_DIR, else udiRoot.conf 'imagePath')")

    images = commands.add_parser("images", help="list the system's images")
    _add_global_options(images, defaults=False)

    queue = commands.add_parser("queue", help="list waiting, running and failed jobs")
    _add_global_options(queue, defaults=False)
    queue.add_argument("--all", action="store_true", help="jobs of every system")

    login = commands.add_parser("login", help="store your credentials for a registry")
    _add_global_options(login, defaults=False)
    login.add_argument("registry", nargs="?", default="registry-1.docker.io",
                       help="a location name or registry host (default Docker Hub)")
    login.add_argument("--username", "-u", help="registry user (asked for when not given)")
    login.add_argument("--password-stdin", action="store_true",
                       help="read the password from standard input instead of asking")

    logout = commands.add_parser("logout", help="forget your credentials for a registry")
    _add_global_options(logout, defaults=False)
    logout.add_argument("registry", nargs="?", default="registry-1.docker.io")

    expire = commands.add_parser("expire", help="expire an image now (admins)")
    _add_global_options(expire, defaults=False)
    expire.add_argument("image", nargs="?", help="docker:REPO[:TAG], REPO[:TAG] or id:<hex>")
    expire.add_argument("--unused", action="store_true",
                        help="expire every image unused for ImageExpirationTimeout instead")

    imported = commands.add_parser("import", help="upload a squashfs image (admins, ImportUsers)")
    _add_global_options(imported, defaults=False)
    imported.add_argument("file", help="the squashfs image file")
    imported.add_argument("tag", help="the name to look it up by, e.g. mytools:1.0 "
                          "(it becomes import/mytools:1.0)")
    imported.add_argument("--user", action="append", default=[], metavar="USERS",
                          help="make the image private to these users")
    imported.add_argument("--group", action="append", default=[], metavar="GROUPS",
                          help="make the image private to these groups")
    return parser


def _print_image(image: ImageInfo, verbose: bool, out: TextIO) -> None:
    print(to_json(image) if verbose else f"Image ready: {image.name or image.id}", file=out)


def _pull(client: Client, args: argparse.Namespace, system: str, out: TextIO,
          err: TextIO) -> int:
    kind, reference = parse_image_argument(args.image)
    if kind != "docker":
        raise UsageError("pull takes an image reference; to find an image by id use lookup")
    users = resolve_ids(args.user, lambda name: pwd.getpwnam(name).pw_uid, "user")
    groups = resolve_ids(args.group, lambda name: grp.getgrnam(name).gr_gid, "group")
    label = f"{kind}:{reference}"
    options = {"type": kind, "force": args.force, "user_acl": users, "group_acl": groups}
    if args.no_wait:
        update = next(iter(client.pull(system, reference, no_wait=True, **options)), None)
        if update is not None and update.image.state not in ("READY", "FAILED"):
            print(to_json(update.image) if args.verbose
                  else render_state_line(label, update.image.state, datetime.now()), file=out)
            return EXIT_OK
        _print_image(ready_image(update), args.verbose, out)
        return EXIT_OK
    width = shutil.get_terminal_size().columns
    reporter = PullReporter(err, label, interactive=err.isatty(), width=width)
    try:
        image = client.pull_and_wait(system, reference, on_update=reporter.update, **options)
    finally:
        reporter.finish()
    _print_image(image, args.verbose, out)
    return EXIT_OK


def _lookup(client: Client, args: argparse.Namespace, system: str, out: TextIO,
            err: TextIO) -> int:
    kind, reference = parse_image_argument(args.image)
    if kind == "id":
        image = client.lookup_id(system, reference)
    else:
        image = client.lookup(system, reference, type=kind)
    if args.verbose:
        print(to_json(image), file=out)
    if image.state != "READY" or not (image.name or image.id):
        cause = f": {image.failure_message}" if image.failure_message else ""
        again = (f"; pull it again to put it back: {PROG} -s {system} pull {args.image}"
                 if image.state in ("EXPIRED", "FAILED") and kind == "docker" else "")
        print(f"{PROG}: {args.image} is not ready on {system} (state "
              f"{image.state or 'unknown'}{cause}){again}", file=err)
        return EXIT_ERROR
    if args.runtime and not args.verbose:
        try:
            path = runtime_path(image.image_file, args.runtime,
                                image_directory(os.environ, args.image_dir))
        except ValueError as exc:
            raise UsageError(str(exc)) from exc
        print(path, file=out)
    elif not args.verbose:
        print(image.name or image.id, file=out)
    return EXIT_OK


def _images(client: Client, args: argparse.Namespace, system: str, out: TextIO,
            err: TextIO) -> int:
    images = list(client.list_images(system))
    lines = [to_json(images)] if args.verbose else images_table(images)
    for line in lines:
        print(line, file=out)
    return EXIT_OK


def _queue(client: Client, args: argparse.Namespace, system: str, out: TextIO,
           err: TextIO) -> int:
    jobs = client.list_jobs(None if args.all else system)
    lines = [to_json(jobs)] if args.verbose else queue_table(jobs)
    for line in lines:
        print(line, file=out)
    return EXIT_OK


def _login(client: Client, args: argparse.Namespace, system: str, out: TextIO,
           err: TextIO) -> int:
    username = args.username
    if args.password_stdin:
        if not username:
            raise UsageError("--password-stdin needs --username")
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        if not username:
            username = input(f"Username for {args.registry}: ").strip()
        password = getpass.getpass(f"Password for {username}@{args.registry}: ")
    if not username or not password:
        raise UsageError("a username and a password are needed")
    result = client.login(system, args.registry, username, password)
    print(f"Login succeeded: {result.message}", file=out)
    return EXIT_OK


def _logout(client: Client, args: argparse.Namespace, system: str, out: TextIO,
            err: TextIO) -> int:
    removed = client.logout(system, args.registry)
    print(f"Removed your credentials for {args.registry}" if removed
          else f"No credentials stored for {args.registry}", file=out)
    return EXIT_OK


def _expire(client: Client, args: argparse.Namespace, system: str, out: TextIO,
            err: TextIO) -> int:
    if args.unused:
        if args.image:
            raise UsageError("give an image or --unused, not both")
        for image_id in client.expire_unused(system):
            print(image_id, file=out)
        return EXIT_OK
    if not args.image:
        raise UsageError("expire needs an image (or --unused)")
    kind, reference = parse_image_argument(args.image)
    image = client.expire_image(system, reference, type=kind)
    print(to_json(image) if args.verbose else f"Image expired: {image.name or image.id}", file=out)
    return EXIT_OK


def _import(client: Client, args: argparse.Namespace, system: str, out: TextIO,
            err: TextIO) -> int:
    users = resolve_ids(args.user, lambda name: pwd.getpwnam(name).pw_uid, "user")
    groups = resolve_ids(args.group, lambda name: grp.getgrnam(name).gr_gid, "group")
    image = client.import_image(system, args.tag, args.file, user_acl=users, group_acl=groups)
    _print_image(image, args.verbose, out)
    return EXIT_OK


_COMMANDS = {"pull": _pull, "lookup": _lookup, "images": _images, "queue": _queue,
             "login": _login, "logout": _logout, "expire": _expire, "import": _import}


def _make_client(settings: CliSettings, timeout: float) -> Client:
    socket = settings.munge_socket
    if settings.rest:
        return RestGatewayClient(
            settings.addresses, timeout=timeout,
            credential_provider=munge_credential_provider(socket) if socket else None,
            ca_cert=settings.ca_cert)
    return GatewayClient(
        settings.addresses, timeout=timeout,
        credential_provider=munge_credential_provider(socket) if socket else None,
        sealer=munge_sealer(socket) if socket else None,
        ca_cert=settings.ca_cert)


def _settings(args: argparse.Namespace) -> CliSettings:
    try:
        settings = resolve_settings(gateways=args.gateway, system=args.system,
                                    munge_socket=args.munge_socket, environ=os.environ,
                                    ca_cert=args.ca_cert, rest=args.rest)
    except ValueError as exc:
        raise UsageError(str(exc)) from exc
    if not settings.addresses:
        raise UsageError("no gateway address given")
    return settings


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format=f"{PROG}: %(message)s")
    parser = build_parser()
    args = parser.parse_args(argv)
    out, err = sys.stdout, sys.stderr
    try:
        settings = _settings(args)
        with _make_client(settings, args.timeout) as client:
            return _COMMANDS[args.command](client, args, settings.system, out, err)
    except UsageError as exc:
        parser.error(str(exc))
    except PullFailed as exc:
        print(f"{PROG}: pull failed: {exc.message}", file=err)
    except GatewayError as exc:
        print(f"{PROG}: {exc.message}", file=err)
    except BrokenPipeError:
        # The reader went away (`shifterimg images | head`): stop quietly.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    except OSError as exc:
        print(f"{PROG}: {exc}", file=err)
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=err)
        return 130
    return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
