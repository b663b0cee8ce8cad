"""Issue 21 (memory): a service loads an optional backend only when its configuration uses
it. paramiko, pymongo, redis-py, oras (requests, jsonschema) and aiohttp were ~34 MiB of
the 100 MiB an idle `imagegw serve` held, cryptography ~8 MiB more; each backend is
imported by one factory function when configured (MongoDBURI, Broker, a remote system,
SharedConversions.push, RestListen), cryptography when credentials or sigstore keys are
first used, and a backend that cannot be imported is a ConfigError naming the setting."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import grpc
import pytest

from imagegw.v1 import gateway_service_pb2 as pb
from imagegw.v1 import gateway_service_pb2_grpc, image_pb2
from tests.support import layers as L
from tests.support.images import push_image
from tests.support.services import embedded_config, start_service

#: Top-level packages of the optional backends, and what configures each.
OPTIONAL = {"paramiko": "a remote system", "pymongo": "MongoDBURI", "redis": "Broker",
            "oras": "SharedConversions.push", "jsonschema": "SharedConversions.push",
            "requests": "SharedConversions.push", "aiohttp": "RestListen"}
#: Libraries every configuration may use, imported at their first use only.
ON_FIRST_USE = {"cryptography": "stored registry credentials, or a signature policy's "
                                "sigstore keys"}

_IMPORT_LINE = re.compile(r"^import time:\s+\d+ \|\s+\d+ \|\s*([\w.]+)\s*$", re.MULTILINE)


def imported_packages(log: str) -> set[str]:
    """Top-level packages a process imported, from its PYTHONPROFILEIMPORTTIME lines."""
    return {name.partition(".")[0] for name in _IMPORT_LINE.findall(log)}


def test_serve_on_the_embedded_default_pulls_without_loading_optional_backends(
        tmp_path, registry):
    push_image(registry.url, "imports/small", "1", [L.layer(L.file("a", b"small image"))])
    service = start_service("serve", embedded_config(tmp_path, registry_url=registry.url),
                            tmp_path / "serve", extra_env={"PYTHONPROFILEIMPORTTIME": "1"})
    try:
        with grpc.insecure_channel(service.address) as channel:
            stub = gateway_service_pb2_grpc.GatewayServiceStub(channel)
            final = list(stub.PullImage(pb.PullImageRequest(
                system="default", reference="testreg/imports/small:1"), timeout=120))[-1]
        assert final.image.state == image_pb2.IMAGE_STATE_READY, final.image.failure.message
    finally:
        service.stop()
    loaded = imported_packages(service.log())
    # The profile is there (a serve that logs no imports would pass the check below).
    assert {"grpc", "imagegw", "sqlite3", "urllib3"} <= loaded
    unused = OPTIONAL | ON_FIRST_USE
    assert {name: unused[name] for name in loaded & unused.keys()} == {}


def _run(code: str, tmp_path: Path) -> dict:
    """Runs `code` in a fresh interpreter (nothing imported yet); it prints one JSON line."""
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


_CONFIG = textwrap.dedent("""
    import json, sys
    from imagegw.domain.config import parse_config
    def config(**extra):
        raw = {"CacheDirectory": "cache", "ExpandDirectory": "expand", "DataDirectory": "data",
               "Platforms": {"local": {"accesstype": "local", "local": {"imageDir": "images"}},
                             "far": {"accesstype": "remote", "host": ["127.0.0.1:22"],
                                     "ssh": {"username": "u", "key": "k", "imageDir": "/i"}}},
               **extra}
        return parse_config(raw, data_dir="data")
    def loaded():
        return sorted(name for name in OPTIONAL if name in sys.modules)
""") + f"OPTIONAL = {sorted(OPTIONAL)!r}\n"


def test_each_backend_is_loaded_by_its_factory_when_configured(tmp_path):
    result = _run(_CONFIG + textwrap.dedent("""
        steps = {}
        from imagegw.gateway.app import GatewayApp
        from imagegw.worker.app import WorkerApp
        steps["apps imported"] = loaded()
        from imagegw.publish import publisher_for
        publisher_for(config().platform("local"))
        steps["local publisher"] = loaded()
        publisher_for(config().platform("far"))
        steps["remote publisher"] = loaded()
        from imagegw.gateway.store import open_store
        open_store(config(MongoDBURI="mongodb://127.0.0.1:1/", MongoDB="imagegw"))
        steps["MongoDB store"] = loaded()
        from imagegw.gateway.queue import open_queue
        open_queue(config(Broker="redis://127.0.0.1:1/0"))
        steps["Redis queue"] = loaded()
        from imagegw.artifacts import shared
        shared._oras_push()
        steps["oras push"] = loaded()
        from imagegw.gateway import app
        try:
            app._rest_server(None, None, None)
        except AttributeError:  # no services: only the import is wanted here
            pass
        steps["REST API"] = loaded()
        print(json.dumps(steps))
    """), tmp_path)
    assert result == {
        "apps imported": [],
        "local publisher": [],
        "remote publisher": ["paramiko"],
        "MongoDB store": ["paramiko", "pymongo"],
        "Redis queue": ["paramiko", "pymongo", "redis"],
        "oras push": ["jsonschema", "oras", "paramiko", "pymongo", "redis", "requests"],
        "REST API": ["aiohttp", "jsonschema", "oras", "paramiko", "pymongo", "redis",
                     "requests"],
    }


@pytest.mark.parametrize(("package", "setup", "setting"), [
    ("pymongo", "from imagegw.gateway.store import open_store\n"
                "open_store(config(MongoDBURI='mongodb://127.0.0.1:1/', MongoDB='x'))",
     "MongoDBURI"),
    ("redis", "from imagegw.gateway.queue import open_queue\n"
              "open_queue(config(Broker='redis://127.0.0.1:1/0'))", "Broker"),
    ("paramiko", "from imagegw.publish import publisher_for\n"
                 "publisher_for(config().platform('far'))", "Platforms.far.accesstype"),
])
def test_a_configured_backend_that_cannot_be_imported_is_a_config_error_naming_the_key(
        tmp_path, package, setup, setting):
    result = _run(_CONFIG + textwrap.dedent(f"""
        sys.modules[{package!r}] = None  # as if it were not installed
        from imagegw.domain.errors import ConfigError
        try:
{textwrap.indent(setup, " " * 12)}
        except ConfigError as exc:
            print(json.dumps({{"message": str(exc), "hint": exc.hint}}))
        else:
            print(json.dumps({{"message": None}}))
    """), tmp_path)
    assert result["message"] is not None, f"no ConfigError without {package}"
    assert result["message"].startswith(f"{setting}: ")
    assert package in result["message"] + result["hint"]
