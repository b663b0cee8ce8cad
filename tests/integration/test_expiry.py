"""Auto-expiry inside the real gateway: with a short ImageExpirationTimeout the
schedule removes unused images' files and marks them EXPIRED, while a pull that
runs meanwhile is unaffected; an admin expires one image by hand."""


from __future__ import annotations

import time
from pathlib import Path

import pytest

from imagegw.v1 import gateway_service_pb2 as pb
from imagegw.v1 import image_pb2
from tests.integration.trust_site import SYSTEM, call, push_small_image, start_trust_gateway
from tests.support.registry import RegistryServer

EXPIRY_SECONDS = 3


def pull(service, socket: str, reference: str) -> image_pb2.Image:
    responses = call(service, socket, "PullImage",
                     pb.PullImageRequest(system=SYSTEM, reference=reference), user="daemon")
    assert responses[-1].image.state == image_pb2.IMAGE_STATE_READY, responses[-1]
    return responses[-1].image


def state_of(service, socket: str, reference: str) -> int:
    return call(service, socket, "LookupImage",
                pb.LookupImageRequest(system=SYSTEM, reference=reference), user="daemon"
                ).image.state


def test_auto_expiry_removes_unused_images_and_leaves_a_concurrent_pull_alone(
    tmp_path: Path, registry: RegistryServer, munge_socket: str,
) -> None:
    push_small_image(registry.url, "expiry/old", "1", "old")
    push_small_image(registry.url, "expiry/new", "1", "new")
    service = start_trust_gateway(tmp_path, munge_socket, registry_url=registry.url,
                                  ImageExpirationTimeout=f"0:0:0:{EXPIRY_SECONDS}",
                                  ExpirationCheckInterval=1)
    try:
        images = tmp_path / "images" / SYSTEM
        old = pull(service, munge_socket, "testreg/expiry/old:1")
        assert (images / old.image_file).exists()
        time.sleep(EXPIRY_SECONDS - 1)
        new = pull(service, munge_socket, "testreg/expiry/new:1")  # while expiry runs
        deadline = time.monotonic() + 15
        while (images / old.image_file).exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not (images / old.image_file).exists()
        assert not (images / old.image_file.replace(".squashfs", ".meta")).exists()
        listed = call(service, munge_socket, "ListImages", pb.ListImagesRequest(
            system=SYSTEM, state=image_pb2.IMAGE_STATE_EXPIRED), user="root").images
        assert old.id in [image.id for image in listed]
        assert new.state == image_pb2.IMAGE_STATE_READY
        # Pulling an expired image brings it back.
        again = pull(service, munge_socket, "testreg/expiry/old:1")
        assert (images / again.image_file).exists()
        assert "auto-expiry" in service.log() or "expired image" in service.log()
    finally:
        service.stop()


def test_admin_expires_one_image_now(
    tmp_path: Path, registry: RegistryServer, munge_socket: str,
) -> None:
    push_small_image(registry.url, "expiry/hand", "1", "hand")
    service = start_trust_gateway(tmp_path, munge_socket, registry_url=registry.url)
    try:
        image = pull(service, munge_socket, "testreg/expiry/hand:1")
        expired = call(service, munge_socket, "ExpireImage", pb.ExpireImageRequest(
            system=SYSTEM, reference="testreg/expiry/hand:1"), user="root").image
        assert expired.id == image.id and expired.state == image_pb2.IMAGE_STATE_EXPIRED
        assert not (tmp_path / "images" / SYSTEM / image.image_file).exists()
        assert state_of(service, munge_socket, "testreg/expiry/hand:1") == (
            image_pb2.IMAGE_STATE_EXPIRED)
    finally:
        service.stop()


pytestmark = pytest.mark.timeout(120)
