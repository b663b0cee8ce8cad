"""The gateway's side of a worker's job stream (gateway/workers.py).

After the final event the worker ends the call at once; the gateway reads the stream to
that end before acting on the event, so that the call completes on both sides instead of
being cancelled under the worker when the gateway drops it (the worker then counted the
call as CANCELLED, and a metrics test failed now and then under load).
"""

from __future__ import annotations

from collections.abc import Iterator

from imagegw.domain.model import BuildEvent, BuildResult, Failure, ImageMetadata, Progress, Stage
from imagegw.gateway.workers import WorkerPool
from imagegw.worker.service import event_to_proto

RESULT = BuildResult(image_id="ab" * 32, manifest_digest="sha256:" + "cd" * 32,
                     format="squashfs", metadata=ImageMetadata(), image_file="x.squashfs",
                     meta_file="x.meta", size_bytes=4096)


class Stream:
    """A job stream as grpc gives it: messages, then the end of the call."""

    def __init__(self, final: BuildEvent) -> None:
        self.ended = False
        self._events = [BuildEvent(progress=Progress(Stage.DOWNLOADING)), final]

    def __iter__(self) -> Iterator:
        for event in self._events:
            yield event_to_proto(event)
        self.ended = True


def test_the_stream_is_read_to_its_end_before_the_result_is_acted_on():
    stream = Stream(BuildEvent(result=RESULT))
    events = WorkerPool._events("127.0.0.1:1", stream)
    assert next(events).progress is not None and not stream.ended
    final = next(events)
    assert final.result == RESULT
    assert stream.ended, "the call was still open when the gateway got the result"


def test_the_stream_is_read_to_its_end_before_a_failure_is_acted_on():
    stream = Stream(BuildEvent(failure=Failure("ContentRejected", "refused")))
    final = [event for event in WorkerPool._events("127.0.0.1:1", stream)][-1]
    assert final.failure == Failure("ContentRejected", "refused")
    assert stream.ended
