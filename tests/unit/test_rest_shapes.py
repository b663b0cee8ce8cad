"""What the REST edge answers, as pure data: Shifter's image shape and words, its
parsing of Shifter's ACL strings and MUNGE payloads, the error table."""

import json
from http import HTTPStatus

import pytest

from imagegw.domain import errors
from imagegw.domain.model import Failure, ImageMetadata, ImageState
from imagegw.gateway.core.views import ImageStatus
from imagegw.gateway.records import ImageRecord, PullKey, PullRecord
from imagegw.gateway.rest.api import _ids, _offered_logins
from imagegw.gateway.rest.shapes import http_status_for, image_object

IMAGE = ImageRecord(system="s", image_id="ab" * 32, format="squashfs", manifest_digest="",
                    metadata=ImageMetadata(env=("A=1",), entrypoint=("/bin/sh",), workdir="/w"),
                    image_file="ab" * 32 + "-0123456789ab.squashfs", meta_file="", size_bytes=1,
                    tags=("registry-1.docker.io/library/ubuntu:24.04",), user_acl=(1000,),
                    last_pull=1700000000.0)


def test_image_object_has_shifters_fields_the_runtime_name_and_a_fractional_last_pull():
    data = image_object(ImageStatus("s", IMAGE.tags[0], ImageState.READY, image=IMAGE))
    assert data == {
        "id": "ab" * 32 + "-0123456789ab", "system": "s", "itype": "docker",
        "tag": ["ubuntu:24.04"], "status": "READY", "userACL": [1000], "groupACL": [],
        "ENV": ["A=1"], "ENTRY": ["/bin/sh"], "WORKDIR": "/w", "LABELS": {},
        "last_pull": 1700000000.0, "status_message": ""}
    assert '"last_pull": 1700000000.0' in json.dumps(data)


@pytest.mark.parametrize(("state", "word"), [
    (ImageState.QUEUED, "PENDING"), (ImageState.PULLING, "PULLING"),
    (ImageState.CONVERTING, "CONVERSION"), (ImageState.TRANSFERRING, "TRANSFER"),
    (ImageState.FAILED, "FAILURE")])
def test_pull_states_are_the_words_shifters_client_polls_on(state, word):
    pull = PullRecord(PullKey("s", "testreg/x:1"), state, "job", updated=5.0,
                      failure=Failure("ConversionFailed", "why") if state == ImageState.FAILED else None)
    data = image_object(ImageStatus("s", "testreg/x:1", state, pull=pull))
    assert data["status"] == word and data["id"] == "" and data["last_pull"] == 5.0
    assert data["status_message"] == ("why" if state == ImageState.FAILED else "")


def test_acl_strings_and_munge_payloads_are_read_as_shifter_sends_them():
    assert _ids({"allowed_uids": "1000, 1001,1000"}, "allowed_uids") == (1000, 1001)
    assert _ids({}, "allowed_gids") == ()
    with pytest.raises(errors.InvalidRequest, match="allowed_gids"):
        _ids({"allowed_gids": "staff"}, "allowed_gids")
    payload = b'{"authorized_locations": {"default": "alice:pa:ss"}}'
    assert _offered_logins(payload) == {"default": ("alice", "pa:ss")}
    assert _offered_logins(b"") == {}
    with pytest.raises(errors.InvalidRequest, match="user:password"):
        _offered_logins(b'{"authorized_locations": {"default": "nopassword"}}')


@pytest.mark.parametrize(("error", "status"), [
    (errors.InvalidReference("x"), HTTPStatus.BAD_REQUEST),
    (errors.UnknownSystem("x"), HTTPStatus.NOT_FOUND),
    (errors.Unauthenticated("x"), HTTPStatus.UNAUTHORIZED),
    (errors.PermissionDenied("x"), HTTPStatus.FORBIDDEN),
    (errors.ResourceExhausted("x"), HTTPStatus.TOO_MANY_REQUESTS),
    (errors.AuthServiceUnavailable("x"), HTTPStatus.SERVICE_UNAVAILABLE),
    (ValueError("x"), HTTPStatus.INTERNAL_SERVER_ERROR)])
def test_one_table_maps_our_errors_to_http(error, status):
    assert http_status_for(error) == status


def test_rest_listen_is_off_unless_configured_and_a_bad_address_names_the_key():
    from imagegw.domain.config import parse_config
    platforms = {"Platforms": {"c": {"local": {"imageDir": "/x"}}}}
    assert parse_config(platforms).rest_listen is None
    assert parse_config({**platforms, "RestListen": "[::1]:8000"}).rest_listen == "[::1]:8000"
    with pytest.raises(errors.ConfigError, match="RestListen"):
        parse_config({**platforms, "RestListen": "8000"})
