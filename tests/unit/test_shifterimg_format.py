"""What shifterimg shows and how it reads its arguments: tables, progress, JSON, references."""

from __future__ import annotations

import io
import json
from datetime import UTC, datetime, timedelta

import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from imagegw.client import ImageInfo, JobInfo, PullFailed, PullUpdate
from imagegw.client.client import ready_image
from imagegw.client.models import image_from_proto, update_from_proto
from imagegw.client.output import (
    display_tag,
    format_age,
    images_table,
    queue_table,
    to_json,
)
from imagegw.client.progress import (
    PullReporter,
    format_bytes,
    render_bar,
    render_progress,
    render_state_line,
)
from imagegw.client.shifterimg import UsageError, parse_image_argument, resolve_ids
from imagegw.v1 import gateway_service_pb2 as gw_pb2
from imagegw.v1 import image_pb2

PULLED = datetime(2024, 5, 6, 7, 8, 9, tzinfo=UTC)
IMAGE_ID = "0123456789abcdef" * 4


def _image(**changes: object) -> ImageInfo:
    fields: dict[str, object] = {
        "id": IMAGE_ID, "system": "perlmutter", "type": "docker",
        "reference": "registry-1.docker.io/library/ubuntu:24.04",
        "tags": ("registry-1.docker.io/library/ubuntu:24.04",), "state": "READY",
        "last_pull": PULLED,
    }
    fields.update(changes)
    return ImageInfo(**fields)  # type: ignore[arg-type]


@pytest.mark.parametrize(("count", "text"), [
    (0, "0 B"), (1023, "1023 B"), (1536, "1.5 KiB"), (12 * 1024**2, "12.0 MiB"),
    (3 * 1024**3 + 1024**3 // 10, "3.1 GiB"),
])
def test_byte_counts_use_binary_units(count: int, text: str) -> None:
    assert format_bytes(count) == text


def test_bar_fills_in_proportion_and_never_overflows() -> None:
    assert render_bar(5, 10, width=10) == "[#####-----]"
    assert render_bar(0, 10, width=4) == "[----]"
    assert render_bar(50, 10, width=4) == "[####]"


def test_progress_line_shows_stage_layer_bytes_bar_and_percent() -> None:
    update = PullUpdate(image=_image(state="PULLING"), stage="DOWNLOADING", layer_index=2,
                        layer_count=5, bytes_done=512 * 1024, bytes_total=2 * 1024**2)
    line = render_progress(update, width=200)
    assert line.startswith("DOWNLOADING  layer 2/5  512.0 KiB / 2.0 MiB  [")
    assert line.endswith("]  25%")


def test_progress_line_is_cut_to_the_terminal_width() -> None:
    update = PullUpdate(image=_image(state="PULLING"), stage="DOWNLOADING", layer_index=1,
                        layer_count=1, bytes_done=1, bytes_total=1024**3)
    assert len(render_progress(update, width=30)) == 29


def test_progress_line_falls_back_to_state_and_message_without_bytes() -> None:
    update = PullUpdate(image=_image(state="QUEUED"), message="waiting for a worker")
    assert render_progress(update) == "QUEUED  waiting for a worker"


def test_state_line_reads_like_shifters() -> None:
    line = render_state_line("docker:ubuntu:24.04", "PULLING", datetime(2024, 1, 2, 3, 4, 5))
    assert line == "2024-01-02T03:04:05 Pulling Image: docker:ubuntu:24.04, status: PULLING"


def test_reporter_without_terminal_prints_one_line_per_state_change() -> None:
    stream = io.StringIO()
    reporter = PullReporter(stream, "docker:ubuntu:24.04", interactive=False)
    for state in ("QUEUED", "PULLING", "PULLING", "CONVERTING", "READY"):
        reporter.update(PullUpdate(image=_image(state=state), stage="DOWNLOADING"))
    reporter.finish()
    lines = stream.getvalue().splitlines()
    assert [line.rsplit("status: ", 1)[1] for line in lines] == [
        "QUEUED", "PULLING", "CONVERTING", "READY"]
    assert "\r" not in stream.getvalue()


def test_reporter_on_terminal_redraws_one_line_and_ends_it() -> None:
    stream = io.StringIO()
    clock = iter([0.0, 1.0, 2.0])
    reporter = PullReporter(stream, "x", interactive=True, clock=lambda: next(clock))
    reporter.update(PullUpdate(image=_image(state="PULLING"), stage="DOWNLOADING",
                               bytes_done=1, bytes_total=2))
    reporter.update(PullUpdate(image=_image(state="READY"), stage="DONE"))
    reporter.finish()
    text = stream.getvalue()
    assert text.count("\r") == 2
    assert text.endswith("\n") and text.count("\n") == 1


def test_images_table_has_one_row_per_tag_sorted_by_tag() -> None:
    image = _image(tags=("registry-1.docker.io/library/ubuntu:24.04",
                         "registry-1.docker.io/library/ubuntu:latest"))
    other = _image(id="f" * 64, tags=("registry.example.org:5000/team/app:1",))
    lines = images_table([image, other], tz=UTC)
    assert lines == [
        "perlmutter docker     READY    ffffffffff   2024-05-06T07:08:09 "
        "registry.example.org:5000/team/app:1",
        "perlmutter docker     READY    0123456789   2024-05-06T07:08:09 ubuntu:24.04",
        "perlmutter docker     READY    0123456789   2024-05-06T07:08:09 ubuntu:latest",
    ]


def test_images_table_shows_untagged_image_by_reference_and_unknown_pull_time() -> None:
    lines = images_table([_image(tags=(), last_pull=None,
                                 reference="docker.io/library/busybox@sha256:" + "a" * 64)])
    assert lines[0].split()[4:] == ["-", "busybox@sha256:" + "a" * 64]


def test_docker_hub_tags_are_shown_as_users_write_them() -> None:
    assert display_tag("registry-1.docker.io/library/ubuntu:24.04") == "ubuntu:24.04"
    assert display_tag("docker.io/nersc/app:1") == "nersc/app:1"
    assert display_tag("localhost:5000/app:1") == "localhost:5000/app:1"


@pytest.mark.parametrize(("seconds", "text"), [
    (0, "0s"), (59, "59s"), (60, "1m"), (3599, "59m"), (7200, "2h"), (3 * 86400 + 5, "3d"),
    (-4, "0s"),
])
def test_ages_are_short(seconds: float, text: str) -> None:
    assert format_age(seconds) == text


def test_queue_table_aligns_columns_and_shows_failures() -> None:
    now = datetime(2024, 1, 1, 12, 0, 0, tzinfo=UTC)
    jobs = [
        JobInfo(id="job-1", system="perlmutter", reference="docker.io/library/ubuntu:24.04",
                state="RUNNING", stage="DOWNLOADING", create_time=now - timedelta(seconds=90)),
        JobInfo(id="job-22", system="dev", reference="localhost:5000/missing:1",
                state="FAILED", create_time=now - timedelta(hours=3),
                failure_message="manifest unknown"),
    ]
    header, running, failed = queue_table(jobs, now=now)
    assert header.split() == ["ID", "SYSTEM", "REFERENCE", "STATE", "AGE", "FAILURE"]
    assert running.split() == ["job-1", "perlmutter", "ubuntu:24.04", "RUNNING/DOWNLOADING", "1m"]
    assert failed.split()[:5] == ["job-22", "dev", "localhost:5000/missing:1", "FAILED", "3h"]
    assert failed.endswith("  manifest unknown")
    assert header.index("STATE") == running.index("RUNNING") == failed.index("FAILED")


def test_json_output_has_every_field_and_iso_times() -> None:
    data = json.loads(to_json(_image(labels={"a": "b"})))
    assert data["id"] == IMAGE_ID
    assert data["last_pull"] == "2024-05-06T07:08:09+00:00"
    assert data["labels"] == {"a": "b"}
    assert data["tags"] == ["registry-1.docker.io/library/ubuntu:24.04"]
    assert json.loads(to_json([_image()]))[0]["state"] == "READY"


@pytest.mark.parametrize(("text", "parsed"), [
    ("docker:ubuntu:24.04", ("docker", "ubuntu:24.04")),
    ("ubuntu:24.04", ("docker", "ubuntu:24.04")),
    ("localhost:5000/app:1", ("docker", "localhost:5000/app:1")),
    ("id:" + IMAGE_ID, ("id", IMAGE_ID)),
])
def test_image_arguments_take_shifters_type_prefix(text: str, parsed: tuple[str, str]) -> None:
    assert parse_image_argument(text) == parsed


def test_users_and_groups_accept_names_numbers_and_commas() -> None:
    names = {"alice": 1001, "bob": 1002}
    assert resolve_ids(["alice,42", "bob", "alice"], names.__getitem__, "user") == (1001, 42, 1002)


def test_unknown_user_name_is_a_usage_error() -> None:
    no_names: dict[str, int] = {}
    with pytest.raises(UsageError, match="unknown user 'mallory'"):
        resolve_ids(["mallory"], no_names.__getitem__, "user")


def _stamp(when: datetime) -> Timestamp:
    stamp = Timestamp()
    stamp.FromDatetime(when)
    return stamp


def test_image_proto_becomes_plain_data_with_names_and_utc_times() -> None:
    proto = image_pb2.Image(
        id=IMAGE_ID, system="perlmutter", type="docker", reference="r", tags=["r"],
        state=image_pb2.IMAGE_STATE_FAILED, user_acl=[1001], format="squashfs",
        metadata=image_pb2.ImageMetadata(env=["PATH=/bin"], entrypoint=["/init"],
                                         labels={"k": "v"}),
        last_pull_time=_stamp(PULLED),
        failure=image_pb2.Failure(code=5, message="manifest unknown"),
    )
    image = image_from_proto(proto)
    assert image.state == "FAILED"
    assert image.env == ("PATH=/bin",) and image.entrypoint == ("/init",)
    assert image.labels == {"k": "v"} and image.user_acl == (1001,)
    assert image.last_pull == PULLED and image.expire_time is None
    assert (image.failure_code, image.failure_message) == ("NOT_FOUND", "manifest unknown")


def test_pull_update_uses_the_image_progress_when_the_response_has_none() -> None:
    response = gw_pb2.PullImageResponse(image=image_pb2.Image(
        state=image_pb2.IMAGE_STATE_PULLING,
        progress=image_pb2.Progress(stage=image_pb2.STAGE_DOWNLOADING, layer_index=1,
                                    layer_count=3, bytes_done=10, bytes_total=20)))
    update = update_from_proto(response)
    assert (update.stage, update.layer_index, update.layer_count) == ("DOWNLOADING", 1, 3)
    assert (update.bytes_done, update.bytes_total) == (10, 20)


def test_a_pull_that_ended_failed_raises_with_its_cause() -> None:
    failed = PullUpdate(image=_image(state="FAILED", failure_message="manifest unknown",
                                     failure_code="NOT_FOUND"))
    with pytest.raises(PullFailed, match="manifest unknown") as caught:
        ready_image(failed)
    assert caught.value.code == "NOT_FOUND"
    assert ready_image(PullUpdate(image=_image())).id == IMAGE_ID


def test_listing_by_an_unknown_state_name_says_which_names_exist() -> None:
    from imagegw.client.models import image_state_value

    assert image_state_value("ready") == image_pb2.IMAGE_STATE_READY
    with pytest.raises(ValueError, match="expected one of QUEUED, PULLING"):
        image_state_value("DONE")
