"""Private images at the real gateway: visible only to their ACL (and the puller),
separate from the public copy of the same image down to the files, and their
ACLs changeable only by the puller or an admin."""


from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from imagegw.v1 import gateway_service_pb2 as pb
from imagegw.v1 import image_pb2
from tests.integration.trust_site import (
    SYSTEM,
    UIDS,
    call,
    push_small_image,
    rpc_error,
    start_trust_gateway,
)
from tests.support.registry import RegistryServer
from tests.support.services import ServiceProcess

REFERENCE = "testreg/private/app:1"


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory, registry: RegistryServer,
         munge_socket: str) -> Iterator[tuple[ServiceProcess, Path, str]]:
    push_small_image(registry.url, "private/app", "1", "private")
    workdir = tmp_path_factory.mktemp("private")
    service = start_trust_gateway(workdir, munge_socket, registry_url=registry.url)
    # daemon pulls it private to nobody (and, as the puller, to daemon).
    responses = call(service, munge_socket, "PullImage", pb.PullImageRequest(
        system=SYSTEM, reference=REFERENCE, user_acl=[UIDS["nobody"]]), user="daemon")
    assert responses[-1].image.state == image_pb2.IMAGE_STATE_READY, responses[-1]
    yield service, workdir / "images" / SYSTEM, munge_socket
    service.stop()


def lookup(site, user: str | None) -> image_pb2.Image:
    service, _images, socket = site
    return call(service, socket, "LookupImage",
                pb.LookupImageRequest(system=SYSTEM, reference=REFERENCE), user=user).image


def listed(site, user: str | None) -> list[image_pb2.Image]:
    service, _images, socket = site
    return list(call(service, socket, "ListImages", pb.ListImagesRequest(system=SYSTEM),
                     user=user).images)


def test_private_image_is_found_by_its_acl_users_only(site) -> None:
    for user in ("daemon", "nobody"):
        image = lookup(site, user)
        assert image.state == image_pb2.IMAGE_STATE_READY
        assert sorted(image.user_acl) == [UIDS["daemon"], UIDS["nobody"]]
    for stranger in ("bin", None):
        with pytest.raises(grpc.RpcError) as missing:
            lookup(site, stranger)
        assert rpc_error(missing)[0] == grpc.StatusCode.NOT_FOUND


def test_private_image_is_listed_for_its_acl_and_admins_only(site) -> None:
    assert [list(i.user_acl) for i in listed(site, "nobody")] == [[1, 65534]]
    assert listed(site, "bin") == [] and listed(site, None) == []
    assert len(listed(site, "root")) >= 1


def test_private_image_cannot_be_found_by_id_by_others(site) -> None:
    service, _images, socket = site
    image_id = lookup(site, "daemon").id
    with pytest.raises(grpc.RpcError) as missing:
        call(service, socket, "LookupImage",
             pb.LookupImageRequest(system=SYSTEM, type="id", reference=image_id), user="bin")
    assert rpc_error(missing)[0] == grpc.StatusCode.NOT_FOUND


def test_public_copy_of_the_same_image_is_separate_down_to_its_files(site) -> None:
    service, images, socket = site
    private = lookup(site, "nobody")
    responses = call(service, socket, "PullImage",
                     pb.PullImageRequest(system=SYSTEM, reference=REFERENCE), user="bin")
    public = responses[-1].image
    assert public.state == image_pb2.IMAGE_STATE_READY and list(public.user_acl) == []
    assert public.id == private.id and public.image_file != private.image_file
    public_meta = (images / public.image_file.replace(".squashfs", ".meta")).read_text()
    private_meta = (images / private.image_file.replace(".squashfs", ".meta")).read_text()
    assert "USERACL" not in public_meta
    assert "USERACL: 1,65534" in private_meta
    assert (images / public.image_file).exists() and (images / private.image_file).exists()
    # The ACL's users still get their private copy; everyone else the public one.
    assert lookup(site, "nobody").image_file == private.image_file
    assert lookup(site, "bin").image_file == public.image_file
    assert lookup(site, None).image_file == public.image_file


def test_only_the_puller_can_change_the_acls(site) -> None:
    service, _images, socket = site
    with pytest.raises(grpc.RpcError) as refused:
        call(service, socket, "PullImage", pb.PullImageRequest(
            system=SYSTEM, reference=REFERENCE, user_acl=[UIDS["bin"]]), user="nobody")
    code, message = rpc_error(refused)
    assert code == grpc.StatusCode.PERMISSION_DENIED and "only that user" in message
    responses = call(service, socket, "PullImage", pb.PullImageRequest(
        system=SYSTEM, reference=REFERENCE, user_acl=[UIDS["bin"]]), user="daemon")
    assert sorted(responses[-1].image.user_acl) == [UIDS["daemon"], UIDS["bin"]], responses[-1]


def test_private_pull_needs_a_credential(site) -> None:
    service, _images, socket = site
    with pytest.raises(grpc.RpcError) as refused:
        call(service, socket, "PullImage", pb.PullImageRequest(
            system=SYSTEM, reference=REFERENCE, user_acl=[1]), user=None)
    assert rpc_error(refused)[0] == grpc.StatusCode.UNAUTHENTICATED


def test_files_are_readable_only_by_whom_they_are_for(site) -> None:
    """Issue 18: private images were 0644 and hard-linked to the public copy; the records
    were 0644 in a 0755 data directory."""
    import os
    import stat

    service, images, socket = site
    call(service, socket, "PullImage", pb.PullImageRequest(system=SYSTEM, reference=REFERENCE),
         user="bin")
    private, public = lookup(site, "nobody"), lookup(site, None)
    assert private.image_file != public.image_file

    def mode(path: Path) -> int:
        return stat.S_IMODE(path.stat().st_mode)

    for image, wanted in ((private, 0o600), (public, 0o644)):
        assert mode(images / image.image_file) == wanted, image.image_file
        assert mode(images / image.image_file.replace(".squashfs", ".meta")) == wanted
    private_file = os.stat(images / private.image_file)
    assert private_file.st_ino != os.stat(images / public.image_file).st_ino
    assert private_file.st_nlink == 1, "a private image is a copy of its own, linked nowhere"
    workdir = images.parent.parent
    for directory in ("data", "cache", "expand"):
        assert mode(workdir / directory) == 0o700, directory
    records = sorted((workdir / "data").glob("*.sqlite3*"))
    assert records and {mode(path) for path in records} == {0o600}, records
