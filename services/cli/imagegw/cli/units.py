"""`imagegw units`: the systemd units shipped with the package, ready to install.

The unit files live beside this module (`systemd/`), so an installed wheel has them and a
source checkout shows them at services/cli/imagegw/cli/systemd/. Printed, their ExecStart
names the `imagegw` command that runs this (the site's virtualenv), not a guessed path.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

UNIT_DIR = Path(__file__).resolve().parent / "systemd"
#: The command path written in the shipped files; replaced by the installed one when printed.
PLACEHOLDER = "/opt/imagegw/bin/imagegw"

__all__ = ["UNIT_DIR", "add_arguments", "installed_command", "render", "run", "unit_names"]


def unit_names() -> list[str]:
    return sorted(path.name for path in UNIT_DIR.glob("*.service"))


def installed_command() -> str:
    """The absolute path of the `imagegw` script of this installation."""
    beside_python = Path(sys.executable).parent / "imagegw"
    return str(beside_python if beside_python.is_file() else Path(sys.argv[0]).resolve())


def render(name: str, command: str) -> str:
    """The unit `name` with its ExecStart running `command`."""
    if name not in unit_names():
        raise KeyError(name)
    return (UNIT_DIR / name).read_text().replace(PLACEHOLDER, command)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--print", dest="unit", metavar="NAME",
                        help="print this unit, ready for /etc/systemd/system/NAME")
    parser.add_argument("--exec", dest="exec_path", metavar="PATH",
                        help="the imagegw command ExecStart runs (default: this installation's)")


def run(args: argparse.Namespace) -> int:
    command = args.exec_path or installed_command()
    if args.unit is None:
        for name in unit_names():
            print(f"{name}\t{UNIT_DIR / name}")
        print(f"# install: imagegw units --print NAME > /etc/systemd/system/NAME "
              f"(ExecStart: {command})", file=sys.stderr)
        return 0
    try:
        sys.stdout.write(render(args.unit, command))
    except KeyError:
        print(f"imagegw units: no unit named {args.unit!r}; there are: {', '.join(unit_names())}",
              file=sys.stderr)
        return 2
    return 0
