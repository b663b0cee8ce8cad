"""The embedded worker of `imagegw serve` takes jobs only from its gateway: it listens on a
Unix socket in a directory only the service account can enter, and even that account's
calls must carry the worker secret (issue 18: a direct BuildImage published an image)."""


from __future__ import annotations

import contextlib
import re
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from imagegw.v1 import gateway_service_pb2 as pb
from imagegw.v1 import image_pb2, worker_service_pb2, worker_service_pb2_grpc
from tests.support import layers as L
from tests.support.images import push_image
from tests.support.registry import RegistryServer
from tests.support.services import embedded_config, start_service

CONNECT = "import socket, sys; socket.socket(socket.AF_UNIX).connect(sys.argv[1])"


def test_embedded_worker_refuses_other_users_and_calls_without_the_secret(
        tmp_path: Path, registry: RegistryServer) -> None:
    push_image(registry.url, "door/app", "1", [L.layer(L.file("d", b"door"))])
    service = start_service("serve", embedded_config(tmp_path, registry_url=registry.url),
                            tmp_path)
    try:
        listening = re.search(r"worker listening on (\S+)", service.log())
        assert listening and listening[1].startswith("unix:"), service.log()[-2000:]
        socket_path = Path(listening[1].removeprefix("unix:"))
        assert stat.S_IMODE(socket_path.parent.stat().st_mode) == 0o700
        token_file = tmp_path / "data" / "worker.token"
        assert stat.S_IMODE(token_file.stat().st_mode) == 0o600

        # Another local user cannot even connect: the kernel refuses the directory.
        other = subprocess.run(["runuser", "-u", "nobody", "--", "/usr/bin/python3", "-c",
                                CONNECT, str(socket_path)], capture_output=True, text=True,
                               timeout=30, check=False)
        assert other.returncode != 0 and "PermissionError" in other.stderr, other.stderr

        # The service account itself (root here) without the secret: refused, nothing written.
        request = worker_service_pb2.BuildImageRequest(
            job_id="intruder", system="default", reference="testreg/door/app:1",
            user_acl=[4242], group_acl=[4242])
        with grpc.insecure_channel(f"unix:{socket_path}") as channel:
            stub = worker_service_pb2_grpc.WorkerServiceStub(channel)
            try:
                list(stub.BuildImage(request, timeout=30))
                raise AssertionError("the worker took a job without the secret")
            except grpc.RpcError as exc:
                assert exc.code() == grpc.StatusCode.UNAUTHENTICATED, exc
        images = tmp_path / "images" / "default"
        assert not images.exists() or not any(images.iterdir())

        # Its gateway still gets the image built.
        with service.channel() as channel:
            from imagegw.v1 import gateway_service_pb2_grpc

            final = list(gateway_service_pb2_grpc.GatewayServiceStub(channel).PullImage(
                pb.PullImageRequest(system="default", reference="testreg/door/app:1"),
                timeout=120))[-1].image
        assert final.state == image_pb2.IMAGE_STATE_READY, final.failure.message
    finally:
        service.stop()
    assert not socket_path.parent.exists(), "the socket's directory goes with the service"


@contextlib.contextmanager
def read_only(path: Path) -> Iterator[Path]:
    """`path` seen read-only (a read-only bind mount over itself), as the shipped worker
    unit sees the data directory (systemd ProtectSystem=strict)."""
    for args in (["mount", "--bind", str(path), str(path)],
                 ["mount", "-o", "remount,ro,bind", str(path)]):
        done = subprocess.run(args, capture_output=True, text=True, timeout=10, check=False)
        if done.returncode != 0:
            subprocess.run(["umount", str(path)], capture_output=True, timeout=10, check=False)
            pytest.fail(f"cannot bind-mount read-only here (run the tests as root): {done.stderr}")
    try:
        yield path
    finally:
        subprocess.run(["umount", str(path)], check=True, timeout=10)


def test_a_worker_with_a_read_only_data_directory_uses_the_gateways_secret(
        tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir(mode=0o750)
    data.chmod(0o750)
    config = {"DataDirectory": str(data), "CacheDirectory": str(tmp_path / "cache"),
              "ExpandDirectory": str(tmp_path / "expand"),
              "Platforms": {"default": {"local": {"imageDir": str(tmp_path / "images")}}}}
    with read_only(data), pytest.raises(RuntimeError, match="start the gateway first"):
        start_service("worker", config, tmp_path / "first", name="worker")
    (data / "worker.token").write_text("s" * 48 + "\n")  # what the gateway makes
    (data / "worker.token").chmod(0o600)
    with read_only(data):
        worker = start_service("worker", config, tmp_path / "second", name="worker")
        try:
            assert f"cannot make {data} 0700" in worker.log()
        finally:
            worker.stop()
