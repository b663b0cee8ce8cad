"""A failure keeps its kind of error from the worker to the records and the clients: the
kind is a name in the domain's error tree, mapped to a status code only at the edges."""

from __future__ import annotations

import grpc
import pytest

from imagegw.domain import errors
from imagegw.domain.model import Failure
from imagegw.gateway.core.workers import WorkerLost
from imagegw.gateway.store import codec
from imagegw.rpc import convert
from imagegw.rpc.status import ERROR_STATUS, kind_for_status, status_for_kind

TREE = sorted(ERROR_STATUS, key=lambda cls: cls.__name__)


@pytest.mark.parametrize("cls", TREE, ids=lambda cls: cls.__name__)
def test_every_error_of_the_tree_crosses_the_worker_boundary_as_itself(
        cls: type[errors.ImageGatewayError]) -> None:
    failure = Failure.of(cls("the registry said no", hint="log in first"))
    assert failure.kind == cls.__name__
    assert failure.message == "the registry said no (log in first)"
    message = convert.failure_to_proto(failure)
    assert message.code == ERROR_STATUS[cls].value[0]
    assert convert.failure_from_proto(message) == failure
    assert codec.failure_from_doc(codec.failure_to_doc(failure)) == failure


def test_a_subclass_outside_the_tree_is_its_nearest_ancestor() -> None:
    assert Failure.of(WorkerLost("worker gone")).kind == "WorkerUnavailable"
    assert status_for_kind("WorkerUnavailable") == grpc.StatusCode.UNAVAILABLE


def test_an_error_outside_the_tree_is_internal_with_its_message() -> None:
    failure = Failure.of(KeyError("layer"), "internal error in the worker: KeyError: 'layer'")
    assert failure == Failure(errors.INTERNAL_KIND, "internal error in the worker: KeyError: 'layer'")
    assert convert.failure_to_proto(failure).code == grpc.StatusCode.INTERNAL.value[0]


def test_an_unknown_kind_from_a_newer_peer_is_unknown_not_an_error() -> None:
    assert errors.error_class("SomethingNew") is None
    assert status_for_kind("SomethingNew") == grpc.StatusCode.UNKNOWN


def test_a_peer_without_kinds_gets_a_kind_from_its_status_number() -> None:
    message = convert.failure_to_proto(Failure("DigestMismatch", "bad blob"))
    message.kind = ""
    restored = convert.failure_from_proto(message)
    assert restored == Failure(kind_for_status(grpc.StatusCode.DATA_LOSS), "bad blob")
    assert restored.kind == "DigestMismatch"


def test_a_record_written_before_kinds_reads_with_a_kind_of_the_same_status() -> None:
    restored = codec.failure_from_doc({"code": 14, "message": "registry down"})
    assert restored is not None and restored.message == "registry down"
    assert status_for_kind(restored.kind) == grpc.StatusCode.UNAVAILABLE
