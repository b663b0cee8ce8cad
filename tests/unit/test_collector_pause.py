"""The cyclic garbage collector is off while build jobs run (worker/collector.py)."""

from __future__ import annotations

import gc
import threading
from collections.abc import Iterator

import pytest

from imagegw.worker import collector
from imagegw.worker.collector import collector_paused


@pytest.fixture(autouse=True)
def collector_on() -> Iterator[None]:
    was = gc.isenabled()
    gc.enable()
    yield
    gc.enable() if was else gc.disable()


def test_the_collector_is_off_during_a_build_and_on_after_it() -> None:
    with collector_paused():
        assert not gc.isenabled()
    assert gc.isenabled()


def test_overlapping_builds_keep_it_off_until_the_last_one_ends() -> None:
    first_in, second_in, first_done = threading.Event(), threading.Event(), threading.Event()
    seen: list[bool] = []

    def first() -> None:
        with collector_paused():
            first_in.set()
            second_in.wait(10)
        first_done.set()

    def second() -> None:
        with collector_paused():
            second_in.set()
            first_done.wait(10)
            seen.append(gc.isenabled())  # the first build ended; this one still runs

    threads = [threading.Thread(target=first), threading.Thread(target=second)]
    threads[0].start()
    first_in.wait(10)
    threads[1].start()
    for thread in threads:
        thread.join(10)
    assert seen == [False]
    assert gc.isenabled()


def test_a_build_that_fails_still_turns_it_back_on() -> None:
    with pytest.raises(RuntimeError), collector_paused():
        raise RuntimeError("conversion failed")
    assert gc.isenabled()


def test_a_collector_someone_turned_off_stays_off() -> None:
    gc.disable()
    with collector_paused():
        pass
    assert not gc.isenabled()


def test_a_worker_never_idle_still_collects(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(collector, "LONGEST_PAUSE", 0.0)
    collected: list[int] = []
    monkeypatch.setattr(collector.gc, "collect", lambda: collected.append(1) or 0)
    with collector_paused():
        with collector_paused():
            pass  # ends while the outer build runs, the pause being over its longest
        assert collected == [1] and not gc.isenabled()
    assert gc.isenabled()
