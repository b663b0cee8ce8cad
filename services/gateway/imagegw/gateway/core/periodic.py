"""A task the gateway runs on a schedule (auto-expiry, the file sweep): every `interval`
seconds on a daemon thread, never when the interval is 0 or less; a run that fails is
logged and the schedule goes on. The task returns how many things it did, and a
non-zero count is logged with `done` ("%d" in it)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

__all__ = ["Periodic"]


class Periodic:
    def __init__(self, name: str, interval: float, task: Callable[[], int], *, done: str,
                 logger: logging.Logger, level: int = logging.INFO) -> None:
        self.name = name
        self.interval = interval
        self._task = task
        self._done = done
        self._log = logger
        self._level = level
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> None:
        if self.interval > 0:
            self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                count = self._task()
            except Exception:  # the schedule must survive a bad run
                self._log.exception("%s failed", self.name)
                continue
            if count:
                self._log.log(self._level, self._done, count)
