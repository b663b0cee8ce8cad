"""Mutual TLS between the gateway and its workers (`WorkerTLS`), as real processes."""

from __future__ import annotations

import grpc
import pytest

from imagegw.domain.config import parse_config
from imagegw.domain.errors import ConfigError
from imagegw.v1 import gateway_service_pb2 as pb
from imagegw.v1 import image_pb2, worker_service_pb2, worker_service_pb2_grpc
from tests.support import layers as L
from tests.support.certs import ScratchCA
from tests.support.images import push_image
from tests.support.services import embedded_config, start_service


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    directory = tmp_path_factory.mktemp("pki")
    ca = ScratchCA(directory)
    return ca, ca.issue("worker"), ca.issue("gateway"), ScratchCA(directory / "other", "rogue CA")


def tls_section(ca, issued) -> dict:
    return {"ca": str(ca.certificate), "certificate": str(issued.certificate),
            "key": str(issued.key)}


def test_gateway_and_worker_talk_over_mutual_tls(tmp_path, registry, pki):
    ca, worker_cert, gateway_cert, rogue = pki
    push_image(registry.url, "tls/app", "1", [L.layer(L.file("t", b"over tls"))])
    worker_config = embedded_config(tmp_path, registry_url=registry.url,
                                    WorkerTLS=tls_section(ca, worker_cert))
    worker = start_service("worker", worker_config, tmp_path / "worker", expect_healthy=False)
    gateway_config = dict(worker_config, WorkerAddresses=[worker.address],
                          WorkerTLS=tls_section(ca, gateway_cert))
    gateway = start_service("gateway", gateway_config, tmp_path / "gateway")
    try:
        with grpc.insecure_channel(gateway.address) as channel:
            from imagegw.v1 import gateway_service_pb2_grpc

            stub = gateway_service_pb2_grpc.GatewayServiceStub(channel)
            final = list(stub.PullImage(pb.PullImageRequest(
                system="default", reference="testreg/tls/app:1"), timeout=120))[-1].image
        assert final.state == image_pb2.IMAGE_STATE_READY, final.failure.message

        request = worker_service_pb2.BuildImageRequest(job_id="x", system="default",
                                                       reference="testreg/tls/app:1")
        with grpc.insecure_channel(worker.address) as plain, pytest.raises(grpc.RpcError) as info:
            list(worker_service_pb2_grpc.WorkerServiceStub(plain).BuildImage(request, timeout=5))
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE, "plaintext is refused"

        no_client_cert = grpc.ssl_channel_credentials(root_certificates=ca.certificate.read_bytes())
        with grpc.secure_channel(worker.address, no_client_cert) as anonymous, \
                pytest.raises(grpc.RpcError) as info:
            list(worker_service_pb2_grpc.WorkerServiceStub(anonymous).BuildImage(request,
                                                                                 timeout=5))
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE, "a client certificate is required"

        rogue_cert = rogue.issue("intruder")
        forged = grpc.ssl_channel_credentials(
            root_certificates=ca.certificate.read_bytes(),
            private_key=rogue_cert.key.read_bytes(),
            certificate_chain=rogue_cert.certificate.read_bytes())
        with grpc.secure_channel(worker.address, forged) as intruder, \
                pytest.raises(grpc.RpcError) as info:
            list(worker_service_pb2_grpc.WorkerServiceStub(intruder).BuildImage(request, timeout=5))
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE, "only the site CA's certificates"
    finally:
        gateway.stop()
        worker.stop()


def test_worker_tls_needs_all_three_files():
    with pytest.raises(ConfigError, match="WorkerTLS: key missing"):
        parse_config({"WorkerTLS": {"ca": "/ca.pem", "certificate": "/c.pem"}})
