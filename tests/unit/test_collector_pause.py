"""Full garbage collections are deferred while build jobs run (worker/collector.py)."""

from __future__ import annotations

import gc
import threading
import weakref
from collections.abc import Iterator

import pytest

from imagegw.worker.collector import FULL_COLLECTION_EVERY, full_collections_deferred

DEFAULT = (700, 10, 10)


@pytest.fixture(autouse=True)
def cpython_thresholds() -> Iterator[None]:
    was = gc.get_threshold()
    gc.set_threshold(*DEFAULT)
    yield
    gc.set_threshold(*was)


def test_full_collections_wait_during_a_build_and_not_after_it() -> None:
    with full_collections_deferred():
        assert gc.get_threshold() == (700, 10, FULL_COLLECTION_EVERY)
    assert gc.get_threshold() == DEFAULT


def test_a_build_still_collects_cycles_of_the_young_generations() -> None:
    class Node:
        def __init__(self) -> None:
            self.me = self

    with full_collections_deferred():
        gc.collect()
        freed = threading.Event()
        node = Node()
        weakref.finalize(node, freed.set)
        del node  # a cycle: only the collector frees it
        kept: list[list[None]] = [[] for _ in range(3 * 700)]  # containers enough for a young collection
        assert freed.is_set()
        del kept


def test_overlapping_builds_keep_the_deferral_until_the_last_one_ends() -> None:
    first_in, second_in, first_done = threading.Event(), threading.Event(), threading.Event()
    seen: list[tuple[int, int, int]] = []

    def first() -> None:
        with full_collections_deferred():
            first_in.set()
            second_in.wait(10)
        first_done.set()

    def second() -> None:
        with full_collections_deferred():
            second_in.set()
            first_done.wait(10)
            seen.append(gc.get_threshold())  # the first build ended; this one still runs

    threads = [threading.Thread(target=first), threading.Thread(target=second)]
    threads[0].start()
    first_in.wait(10)
    threads[1].start()
    for thread in threads:
        thread.join(10)
    assert seen == [(700, 10, FULL_COLLECTION_EVERY)]
    assert gc.get_threshold() == DEFAULT


def test_a_build_that_fails_sets_the_thresholds_back() -> None:
    with pytest.raises(RuntimeError), full_collections_deferred():
        raise RuntimeError("conversion failed")
    assert gc.get_threshold() == DEFAULT


def test_a_site_s_own_thresholds_are_kept() -> None:
    gc.set_threshold(5000, 20, 2000)
    with full_collections_deferred():
        assert gc.get_threshold() == (5000, 20, 2000)
    assert gc.get_threshold() == (5000, 20, 2000)
