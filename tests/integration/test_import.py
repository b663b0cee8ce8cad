"""Imports at the real gateway: an admin (or an ImportUsers user) uploads a squashfs
image in chunks; it is checked (size, sha256, squashfs content), published like any
image and found as "import/<tag>"; anything else is refused and nothing published."""


from __future__ import annotations

import hashlib
import os
import struct
import subprocess
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from imagegw.client import GatewayClient, GatewayError, PermissionDenied
from imagegw.v1 import gateway_service_pb2 as pb
from imagegw.v1 import image_pb2
from tests.integration.trust_site import SYSTEM, UIDS, call, start_trust_gateway
from tests.support.munge import make_credential
from tests.support.registry import RegistryServer
from tests.support.rpc import details
from tests.support.services import ServiceProcess


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory, registry: RegistryServer,
         munge_socket: str) -> Iterator[tuple[ServiceProcess, Path, str]]:
    workdir = tmp_path_factory.mktemp("import")
    service = start_trust_gateway(workdir, munge_socket, registry_url=registry.url)
    yield service, workdir, munge_socket
    service.stop()


@pytest.fixture(scope="module")
def squashfs_image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("tree")
    (root / "bin").mkdir()
    (root / "bin" / "tool").write_text("#!/bin/sh\necho tool\n")
    image = root.parent / "tool.squashfs"
    subprocess.run(["mksquashfs", str(root), str(image), "-noappend", "-quiet", "-no-progress"],
                   check=True, capture_output=True, timeout=60)
    return image


def client_as(site, user: str) -> GatewayClient:
    service, _workdir, socket = site
    as_user = None if user == "root" else user
    return GatewayClient([service.address],
                         credential_provider=lambda: make_credential(socket, as_user=as_user))


def published(site) -> set[str]:
    _service, workdir, _socket = site
    images = workdir / "images" / SYSTEM
    return {p.name for p in images.iterdir()} if images.exists() else set()


def test_admin_imports_a_squashfs_image_that_everyone_can_look_up(site, squashfs_image) -> None:
    service, workdir, socket = site
    with client_as(site, "root") as client:
        image = client.import_image(SYSTEM, "tools:1.0", squashfs_image, chunk_size=4096)
    digest = hashlib.sha256(squashfs_image.read_bytes()).hexdigest()
    assert image.state == "READY" and image.id == digest
    assert image.tags == ("import/tools:1.0",)
    published_file = workdir / "images" / SYSTEM / image.image_file
    assert published_file.read_bytes() == squashfs_image.read_bytes()
    found = call(service, socket, "LookupImage", pb.LookupImageRequest(
        system=SYSTEM, reference="import/tools:1.0"), user=None).image
    assert found.id == digest and found.state == image_pb2.IMAGE_STATE_READY


def test_import_users_may_import_privately(site, squashfs_image) -> None:
    service, _workdir, socket = site
    with client_as(site, "daemon") as client:
        image = client.import_image(SYSTEM, "mine:1", squashfs_image, user_acl=[UIDS["nobody"]])
    assert sorted(image.user_acl) == [UIDS["daemon"], UIDS["nobody"]]
    with pytest.raises(grpc.RpcError, match="not on system"):
        call(service, socket, "LookupImage", pb.LookupImageRequest(
            system=SYSTEM, reference="import/mine:1"), user="bin")


def test_other_users_may_not_import(site, squashfs_image) -> None:
    before = published(site)
    with client_as(site, "nobody") as client, pytest.raises(PermissionDenied,
                                                             match="may not import"):
        client.import_image(SYSTEM, "nope:1", squashfs_image)
    assert published(site) == before


def test_an_upload_that_is_not_squashfs_is_refused_and_nothing_published(
    site, tmp_path: Path,
) -> None:
    fake = tmp_path / "fake.squashfs"
    fake.write_bytes(b"this is not a file system\n" * 100)
    truncated = tmp_path / "truncated.squashfs"
    truncated.write_bytes(b"hsqs" + b"\0" * 200)
    before = published(site)
    with client_as(site, "root") as client:
        for path, reason in ((fake, "no 'hsqs'"), (truncated, "not a valid squashfs")):
            with pytest.raises(GatewayError, match=reason) as refused:
                client.import_image(SYSTEM, "bad:1", path)
            assert refused.value.code == "FAILED_PRECONDITION"
    assert published(site) == before


def test_an_upload_that_does_not_match_its_checksum_is_refused(site, squashfs_image) -> None:
    service, _workdir, socket = site
    data = squashfs_image.read_bytes()
    header = pb.ImportHeader(system=SYSTEM, tag="sum:1", format="squashfs",
                             size_bytes=len(data), sha256="0" * 64)
    requests = [pb.ImportImageRequest(header=header), pb.ImportImageRequest(chunk=data)]
    with pytest.raises(grpc.RpcError, match="sha256"):
        call(service, socket, "ImportImage", iter(requests), user="root")
    short = pb.ImportHeader(system=SYSTEM, tag="sum:1", format="squashfs",
                            size_bytes=len(data) - 1, sha256=hashlib.sha256(data).hexdigest())
    with pytest.raises(grpc.RpcError, match="larger than the announced"):
        call(service, socket, "ImportImage",
             iter([pb.ImportImageRequest(header=short), pb.ImportImageRequest(chunk=data)]),
             user="root")


def test_shifterimg_import_and_expire_as_an_admin(site, squashfs_image) -> None:
    import os

    from tests.support.services import SHIFTERIMG

    service, workdir, socket = site
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("IMAGEGW_")},
           "IMAGEGW_GATEWAY": service.address, "IMAGEGW_SYSTEM": SYSTEM,
           "MUNGE_SOCKET": socket}

    def shifterimg(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([SHIFTERIMG, *args], env=env, capture_output=True, text=True,
                              timeout=60, check=False)

    done = shifterimg("import", str(squashfs_image), "cli:1")
    assert done.returncode == 0, done.stderr
    digest = hashlib.sha256(squashfs_image.read_bytes()).hexdigest()
    assert done.stdout == f"Image ready: {digest}\n"
    assert shifterimg("lookup", "import/cli:1").stdout == f"{digest}\n"
    expired = shifterimg("expire", "import/cli:1")
    assert expired.returncode == 0 and expired.stdout == f"Image expired: {digest}\n"


def raw_import(site, tag: str, data: bytes, **metadata) -> image_pb2.Image:
    service, _workdir, socket = site
    header = pb.ImportHeader(system=SYSTEM, tag=tag, format="squashfs", size_bytes=len(data),
                             sha256=hashlib.sha256(data).hexdigest(),
                             metadata=image_pb2.ImageMetadata(**metadata))
    requests = [pb.ImportImageRequest(header=header), pb.ImportImageRequest(chunk=data)]
    return call(service, socket, "ImportImage", iter(requests), user="root").image


def test_a_truncated_squashfs_with_matching_size_and_sha256_is_refused(
        site, tmp_path: Path) -> None:
    """Issue 18: the first half of a valid image, announced with that half's size and sha256."""
    root = tmp_path / "tree"
    (root / "data").mkdir(parents=True)
    (root / "data" / "blob").write_bytes(os.urandom(300_000))
    image = tmp_path / "whole.squashfs"
    subprocess.run(["mksquashfs", str(root), str(image), "-noappend", "-quiet", "-no-progress"],
                   check=True, capture_output=True, timeout=60)
    whole = image.read_bytes()
    before = published(site)
    (bytes_used,) = struct.unpack_from("<Q", whole, 40)  # the superblock's image size
    for cut in (len(whole) // 2, bytes_used - 1):
        with pytest.raises(grpc.RpcError) as refused:
            raw_import(site, "half:1", whole[:cut])
        assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "truncated squashfs image" in details(refused.value)
    assert published(site) == before
    # The same image whole is fine: the check is not a false alarm.
    assert raw_import(site, "half:1", whole).state == image_pb2.IMAGE_STATE_READY


def test_importing_the_same_bytes_under_another_tag_leaves_the_first_alone(
        site, squashfs_image) -> None:
    service, workdir, socket = site
    data = squashfs_image.read_bytes()
    first = raw_import(site, "meta:first", data, env=["FIRST=1"], entrypoint=["/bin/tool"])
    second = raw_import(site, "meta:second", data, env=["SECOND=2"], entrypoint=["/bin/sh"])
    assert first.id != second.id
    looked_up = call(service, socket, "LookupImage", pb.LookupImageRequest(
        system=SYSTEM, reference="import/meta:first"), user=None).image
    assert looked_up.id == first.id
    assert list(looked_up.metadata.env) == ["FIRST=1"]
    assert list(looked_up.metadata.entrypoint) == ["/bin/tool"]
    meta = (workdir / "images" / SYSTEM / looked_up.image_file).with_suffix(".meta").read_text()
    assert "FIRST=1" in meta and "SECOND" not in meta
    assert list(looked_up.tags) == ["import/meta:first"]
