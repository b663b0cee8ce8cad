"""The distributions as a site installs them, not as the editable checkout runs them.

`python -m build` makes the sdist of each distribution and then the wheel from that sdist
(so a file the sdist misses breaks the wheel). The wheels go into new virtualenvs outside
the checkout (cwd and PYTHONPATH clean): the server with the client runs the main job
through its console scripts, the client alone looks an image up and imports nothing of
the server. Built once per module; the two virtualenvs are made at the same time.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
import zipfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.images import PushedImage, push_image
from tests.support.layers import executables
from tests.support.registry import RegistryServer
from tests.support.services import ServiceProcess, embedded_config, start_service

ROOT = Path(__file__).resolve().parents[2]
BUILD_TIMEOUT = 300.0
INSTALL_TIMEOUT = 600.0
RUN_TIMEOUT = 120.0
REPOSITORY = "site/hello"
REFERENCE = f"testreg/{REPOSITORY}:1"
SERVER_ONLY_MODULES = ("redis", "pymongo", "paramiko", "imagegw.gateway", "imagegw.worker",
                       "imagegw.pipeline")


@dataclass
class Dists:
    directory: Path
    build_output: str

    def one(self, pattern: str) -> Path:
        found = sorted(self.directory.glob(pattern))
        assert len(found) == 1, f"{pattern}: {found}"
        return found[0]

    @property
    def server_wheel(self) -> Path:
        return self.one("imagegw-*.whl")

    @property
    def server_sdist(self) -> Path:
        return self.one("imagegw-*.tar.gz")

    @property
    def client_wheel(self) -> Path:
        return self.one("imagegw_client-*.whl")

    @property
    def client_sdist(self) -> Path:
        return self.one("imagegw_client-*.tar.gz")


@dataclass
class Venv:
    root: Path

    def bin(self, name: str) -> str:
        return str(self.root / "bin" / name)

    def run(self, *args: str, env: dict[str, str] | None = None,
            timeout: float = RUN_TIMEOUT) -> subprocess.CompletedProcess[str]:
        return subprocess.run(list(args), cwd=self.root.parent, env=env or clean_env(),
                              capture_output=True, text=True, timeout=timeout, check=False)

    def importable(self, *modules: str) -> dict[str, bool]:
        script = ("import importlib, json, sys\n"
                  "found = {}\n"
                  "for name in sys.argv[1:]:\n"
                  "    try:\n"
                  "        importlib.import_module(name)\n"
                  "        found[name] = True\n"
                  "    except ImportError:\n"
                  "        found[name] = False\n"
                  "print(json.dumps(found))\n")
        done = self.run(self.bin("python"), "-c", script, *modules)
        assert done.returncode == 0, done.stderr
        found: dict[str, bool] = json.loads(done.stdout)
        return found


def clean_env(**extra: str) -> dict[str, str]:
    """Our environment without anything that points Python at the checkout or our venv."""
    env = {key: value for key, value in os.environ.items()
           if not key.startswith(("PYTHON", "IMAGEGW_", "MUNGE_"))
           and key not in ("VIRTUAL_ENV", "PYTEST_CURRENT_TEST")}
    env.update(extra)
    return env


def _checked(args: list[str], cwd: Path, timeout: float) -> str:
    done = subprocess.run(args, cwd=cwd, env=clean_env(), capture_output=True, text=True,
                          timeout=timeout, check=False)
    assert done.returncode == 0, f"{' '.join(args)} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done.stdout + done.stderr


def _new_venv(root: Path, *wheels: Path) -> Venv:
    # Without pip of its own (our pip installs into it: --python), which saves a few seconds.
    _checked([sys.executable, "-m", "venv", "--without-pip", str(root)], root.parent, RUN_TIMEOUT)
    # The wheels are named as files, so the server's `imagegw-client` requirement is met by
    # ours, never by an index; the rest of the dependencies come from the index (or cache).
    _checked([sys.executable, "-m", "pip", "--python", str(root / "bin" / "python"), "install",
              "-q", "--no-compile", "--disable-pip-version-check", *map(str, wheels)],
             root.parent, INSTALL_TIMEOUT)
    return Venv(root)


@pytest.fixture(scope="module")
def dists(tmp_path_factory: pytest.TempPathFactory) -> Dists:
    out = tmp_path_factory.mktemp("dist")
    log = ""
    for source in (ROOT, ROOT / "clients" / "python"):
        log += _checked([sys.executable, "-m", "build", "--outdir", str(out), str(source)],
                        out, BUILD_TIMEOUT)
    return Dists(out, log)


@pytest.fixture(scope="module")
def venvs(dists: Dists, tmp_path_factory: pytest.TempPathFactory) -> tuple[Venv, Venv]:
    """(server + client, client only), outside the checkout."""
    base = tmp_path_factory.mktemp("venvs")
    assert not base.is_relative_to(ROOT)
    with ThreadPoolExecutor(2) as pool:
        server = pool.submit(_new_venv, base / "server", dists.client_wheel, dists.server_wheel)
        client = pool.submit(_new_venv, base / "client", dists.client_wheel)
        return server.result(), client.result()


@dataclass
class Site:
    gateway: ServiceProcess
    workdir: Path
    image: PushedImage
    munge_socket: str

    @property
    def image_id(self) -> str:
        return self.image.config_digest.removeprefix("sha256:")

    def shifterimg_env(self) -> dict[str, str]:
        return clean_env(IMAGEGW_GATEWAY=self.gateway.address, IMAGEGW_SYSTEM="default",
                         MUNGE_SOCKET=self.munge_socket)


@pytest.fixture(scope="module")
def site(venvs: tuple[Venv, Venv], registry: RegistryServer,
         munge_socket: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    server, _ = venvs
    workdir = tmp_path_factory.mktemp("site")
    image = push_image(registry.url, REPOSITORY, "1", [
        executables({"bin/hello": b"#!/bin/sh\necho hello from the wheel\n"}),
        executables({"etc/motd": b"installed, not editable\n" * 2048}),
    ])
    config = embedded_config(workdir, registry_url=registry.url)
    config["Platforms"]["default"]["mungeSocketPath"] = munge_socket
    gateway = start_service("serve", config, workdir / "gateway", executable=server.bin("imagegw"))
    try:
        yield Site(gateway, workdir, image, munge_socket)
    finally:
        gateway.stop()


@pytest.fixture(scope="module")
def pulled(venvs: tuple[Venv, Venv], site: Site) -> subprocess.CompletedProcess[str]:
    server, _ = venvs
    return server.run(server.bin("shifterimg"), "pull", REFERENCE, env=site.shifterimg_env())


def test_the_wheel_is_built_from_the_sdist_and_ships_the_shim_source_and_units(dists: Dists) -> None:
    assert "Building wheel from sdist" in dists.build_output
    with tarfile.open(dists.server_sdist) as sdist:
        names = sdist.getnames()
    assert any(name.endswith("imagegw/pipeline/native/sqfs_libdeflate.c") for name in names)
    assert any(name.endswith("imagegw/pipeline/native/scan.c") for name in names)
    assert any(name.endswith("imagegw/pipeline/native/flat.c") for name in names)
    assert any(name.endswith("imagegw/cli/systemd/imagegw-worker@.service") for name in names)
    with zipfile.ZipFile(dists.server_wheel) as wheel:
        members = wheel.namelist()
    assert any(name.startswith("imagegw/pipeline/native/sqfs_libdeflate.") and name.endswith(".so")
               for name in members), "the shim is compiled into the platform wheel"
    assert any(name.startswith("imagegw/pipeline/native/_scan.") and name.endswith(".so")
               for name in members), "the compiled layer scanner is built into the wheel"
    assert any(name.startswith("imagegw/pipeline/native/_flat.") and name.endswith(".so")
               for name in members), "the compiled merge and writer are built into the wheel"
    assert "imagegw/cli/systemd/imagegw-gateway.service" in members
    assert not any(name.startswith(("imagegw/client/", "imagegw/v1/")) for name in members), \
        "the client's modules belong to imagegw-client only"
    with zipfile.ZipFile(dists.client_wheel) as wheel:
        client_members = wheel.namelist()
    assert {"imagegw/v1/gateway_service_pb2.pyi", "imagegw/client/py.typed"} <= set(client_members)


def test_installed_server_pulls_and_publishes_an_image_through_its_console_scripts(
    site: Site, pulled: subprocess.CompletedProcess[str]
) -> None:
    assert pulled.returncode == 0, pulled.stderr + site.gateway.log()[-3000:]
    assert pulled.stdout == f"Image ready: {site.image_id}\n"
    images = site.workdir / "images" / "default"
    squashfs, meta = images / f"{site.image_id}.squashfs", images / f"{site.image_id}.meta"
    assert meta.read_text().startswith("FORMAT: squashfs\n")
    listing = subprocess.run(["unsquashfs", "-l", str(squashfs)], capture_output=True, text=True,
                             timeout=RUN_TIMEOUT, check=True).stdout
    assert "squashfs-root/bin/hello" in listing and "squashfs-root/etc/motd" in listing


def test_installed_worker_compresses_with_the_shim_built_at_install(
    venvs: tuple[Venv, Venv], site: Site, pulled: subprocess.CompletedProcess[str]
) -> None:
    server, _ = venvs
    assert pulled.returncode == 0, pulled.stderr
    installed = server.root / "lib"
    log = site.gateway.log()
    assert f"tar2sqfs compresses gzip with libdeflate ({installed}/" in log, log[-3000:]
    assert str(ROOT) not in log, "the installed services must not run code from the checkout"


def test_installed_imagegw_lists_its_systemd_units(venvs: tuple[Venv, Venv]) -> None:
    server, _ = venvs
    listed = server.run(server.bin("imagegw"), "units")
    assert listed.returncode == 0, listed.stderr
    assert [line.split("\t")[0] for line in listed.stdout.splitlines()] == [
        "imagegw-gateway.service", "imagegw-worker@.service"]
    printed = server.run(server.bin("imagegw"), "units", "--print", "imagegw-gateway.service")
    assert f"ExecStart={server.bin('imagegw')} gateway " in printed.stdout



def test_every_installed_module_imports_with_the_declared_dependencies(
    venvs: tuple[Venv, Venv]
) -> None:
    """The dev virtualenv has the dev extra too; a module needing more than the
    distribution declares fails only here."""
    server, _ = venvs
    script = ("import importlib, json, pkgutil, imagegw\n"
              "failed, names = {}, []\n"
              "for module in pkgutil.walk_packages(imagegw.__path__, 'imagegw.'):\n"
              "    names.append(module.name)\n"
              "    try:\n"
              "        importlib.import_module(module.name)\n"
              "    except Exception as exc:\n"
              "        failed[module.name] = repr(exc)\n"
              "print(json.dumps({'names': names, 'failed': failed}))\n")
    done = server.run(server.bin("python"), "-c", script)
    assert done.returncode == 0, done.stderr
    found = json.loads(done.stdout)
    assert found["failed"] == {}
    assert {"imagegw.gateway.api.servicer", "imagegw.worker.app", "imagegw.cli.doctor",
            "imagegw.client.shifterimg", "imagegw.pipeline.gzip_engine",
            # the compiled scanner and flatten: their wrappers import only when built
            "imagegw.pipeline.native_scan", "imagegw.pipeline.native_flat"} <= set(found["names"])

def test_client_only_install_has_no_server_dependency(venvs: tuple[Venv, Venv]) -> None:
    _, client = venvs
    found = client.importable("imagegw.client", "imagegw.v1.gateway_service_pb2_grpc",
                              *SERVER_ONLY_MODULES)
    assert found == {"imagegw.client": True, "imagegw.v1.gateway_service_pb2_grpc": True,
                     **dict.fromkeys(SERVER_ONLY_MODULES, False)}
    assert not Path(client.bin("imagegw")).exists()


def test_client_only_shifterimg_looks_up_the_pulled_image(
    venvs: tuple[Venv, Venv], site: Site, pulled: subprocess.CompletedProcess[str]
) -> None:
    _, client = venvs
    assert pulled.returncode == 0, pulled.stderr
    found = client.run(client.bin("shifterimg"), "lookup", REFERENCE, env=site.shifterimg_env())
    assert (found.returncode, found.stdout, found.stderr) == (0, site.image_id + "\n", "")


def test_installed_doctor_finds_the_installed_shim(
    venvs: tuple[Venv, Venv], site: Site, pulled: subprocess.CompletedProcess[str]
) -> None:
    server, _ = venvs
    checked = server.run(server.bin("imagegw"), "doctor", "--config", str(site.gateway.config_path))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert f"OK   gzip engine: libdeflate: {server.root / 'lib'}/" in checked.stdout
    assert "OK   tar2sqfs allocator: jemalloc: /" in checked.stdout
    assert f"OK   MUNGE {site.munge_socket} (systems default): munged answers" in checked.stdout
