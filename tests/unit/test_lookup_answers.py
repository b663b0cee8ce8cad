"""LookupImage answers shared while the gateway's lookup cache hands out the same status.

A READY status comes from the lookup cache (pulls.py) for up to a second, the same frozen
object each time: its answer is built once. Any other status gets an answer of its own.
"""

from __future__ import annotations

from types import SimpleNamespace

from imagegw.domain.model import ImageState
from imagegw.gateway.api import servicer as servicer_module
from imagegw.gateway.api.servicer import GatewayServicer
from imagegw.gateway.core.views import ImageStatus
from imagegw.v1 import image_pb2


def make_servicer() -> GatewayServicer:
    return GatewayServicer(SimpleNamespace(config=None, pulls=None, expirer=None,  # type: ignore[arg-type]
                                           importer=None, logins=None))


def status(reference: str, state: ImageState = ImageState.READY) -> ImageStatus:
    return ImageStatus(system="cluster", reference=reference, state=state)


def test_the_same_ready_status_gets_the_same_answer():
    servicer = make_servicer()
    ready = status("docker.io/library/ubuntu:24.04")
    first = servicer._lookup_answer(ready)
    assert first.image.reference == "docker.io/library/ubuntu:24.04"
    assert first.image.state == image_pb2.IMAGE_STATE_READY
    assert servicer._lookup_answer(ready) is first


def test_another_status_gets_its_own_answer_even_when_equal():
    servicer = make_servicer()
    first = servicer._lookup_answer(status("docker.io/library/ubuntu:24.04"))
    # A new status object (the cache entry expired, or another caller's view): built again.
    again = servicer._lookup_answer(status("docker.io/library/ubuntu:24.04"))
    assert again is not first and again == first
    other = servicer._lookup_answer(status("docker.io/library/debian:12"))
    assert other.image.reference == "docker.io/library/debian:12"


def test_statuses_in_flight_are_not_kept():
    servicer = make_servicer()
    pulling = status("docker.io/library/ubuntu:24.04", ImageState.PULLING)
    first = servicer._lookup_answer(pulling)
    assert first.image.state == image_pb2.IMAGE_STATE_PULLING
    assert servicer._lookup_answer(pulling) is not first
    assert servicer._answers == {}


def test_the_shared_answers_are_bounded(monkeypatch):
    monkeypatch.setattr(servicer_module, "MAX_SHARED_ANSWERS", 3)
    servicer = make_servicer()
    statuses = [status(f"docker.io/library/app:{n}") for n in range(10)]
    for each in statuses:
        servicer._lookup_answer(each)
        assert len(servicer._answers) <= 3
    assert servicer._lookup_answer(statuses[-1]).image.reference == "docker.io/library/app:9"
