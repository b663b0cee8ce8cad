"""The progress a pull reports while it converts (worker/build.py's _PullProgress)."""

from __future__ import annotations

import threading

from imagegw.domain.model import Progress, Stage
from imagegw.worker.build import Throttle, _PullProgress


def converting(reports: list[Progress]) -> list[tuple[int, int]]:
    return [(p.bytes_done, p.bytes_total) for p in reports
            if p.stage == Stage.CONVERTING and p.bytes_total]


def all_layers_here(reports: list[Progress]) -> _PullProgress:
    progress = _PullProgress(Throttle(reports.append, interval=0.0), count=2, total=300)
    progress.start("image.squashfs")
    for index, size in enumerate((100, 200)):
        progress.layer_done(index, size, downloaded=True)
    return progress


def test_a_late_count_from_the_other_thread_never_moves_the_bar_back() -> None:
    reports: list[Progress] = []
    progress = all_layers_here(reports)
    progress.converted(400, 1000)
    progress.converted(350, 1000)  # counted before 400, reported after it
    progress.converted(600, 1000)
    assert converting(reports) == [(400, 1000), (600, 1000)]


def test_the_two_pass_flatten_starts_its_own_count() -> None:
    reports: list[Progress] = []
    progress = all_layers_here(reports)
    progress.converted(900, 1000)
    progress.converted(0, 700)  # the one pass was not exact: file data of the second
    progress.converted(300, 700)
    assert converting(reports) == [(900, 1000), (0, 700), (300, 700)]


def test_counts_from_two_threads_reach_the_bar_in_order() -> None:
    reports: list[Progress] = []
    progress = all_layers_here(reports)
    counter = iter(range(1, 20001))
    lock = threading.Lock()

    def count() -> None:
        for _ in range(10000):
            with lock:
                done = next(counter)
            progress.converted(done, 20000)

    threads = [threading.Thread(target=count) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    done = [done for done, _ in converting(reports)]
    assert done == sorted(done) and done[-1] == 20000
