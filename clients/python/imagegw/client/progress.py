"""How a pull's progress is shown: a one-line bar on a terminal, state lines otherwise.

The formatting functions are pure; `PullReporter` decides when to write what.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import datetime
from typing import TextIO

from imagegw.client.models import PullUpdate

_UNITS = ("B", "KiB", "MiB", "GiB", "TiB", "PiB")
BAR_WIDTH = 24
# Redraw the bar at most this often; state changes are always drawn.
_REDRAW_SECONDS = 0.1


def format_bytes(count: int) -> str:
    """A byte count with a binary unit: "512 B", "1.5 KiB", "12.0 MiB"."""
    value = float(count)
    for unit in _UNITS:
        if value < 1024 or unit == _UNITS[-1]:
            return f"{int(value)} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def render_bar(done: int, total: int, width: int = BAR_WIDTH) -> str:
    """A text bar such as "[#####-----]" for done out of total (clamped to full)."""
    filled = width if total <= 0 else min(width, done * width // total)
    return "[" + "#" * filled + "-" * (width - filled) + "]"


def render_progress(update: PullUpdate, width: int = 80) -> str:
    """One terminal line: stage, layer i/n, bytes with units and a bar, cut to `width`."""
    parts = [update.stage or update.image.state or "WAITING"]
    if update.layer_count:
        parts.append(f"layer {update.layer_index}/{update.layer_count}")
    if update.bytes_total:
        percent = min(100, update.bytes_done * 100 // update.bytes_total)
        parts.append(f"{format_bytes(update.bytes_done)} / {format_bytes(update.bytes_total)}")
        parts.append(f"{render_bar(update.bytes_done, update.bytes_total)} {percent:3d}%")
    elif update.bytes_done:
        parts.append(format_bytes(update.bytes_done))
    elif update.message:
        parts.append(update.message)
    line = "  ".join(parts)
    return line[: max(0, width - 1)]


def render_state_line(label: str, state: str, when: datetime) -> str:
    """A plain state line, as Shifter prints them: "<time> Pulling Image: <ref>, status: <S>"."""
    return f"{when:%Y-%m-%dT%H:%M:%S} Pulling Image: {label}, status: {state}"


class PullReporter:
    """Shows pull updates on `stream`: a redrawn bar when interactive, else state lines."""

    def __init__(
        self,
        stream: TextIO,
        label: str,
        *,
        interactive: bool,
        width: int = 80,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._stream = stream
        self._label = label
        self._interactive = interactive
        self._width = width
        self._clock = clock
        self._last_state = ""
        self._last_draw = float("-inf")
        self._drawn = False

    def update(self, update: PullUpdate) -> None:
        state = update.image.state
        changed = state != self._last_state
        self._last_state = state
        if not self._interactive:
            if changed and state:
                self._stream.write(render_state_line(self._label, state, datetime.now()) + "\n")
                self._stream.flush()
            return
        now = self._clock()
        if not changed and now - self._last_draw < _REDRAW_SECONDS:
            return
        self._last_draw = now
        self._stream.write("\r" + render_progress(update, self._width) + "\x1b[K")
        self._stream.flush()
        self._drawn = True

    def finish(self) -> None:
        """Ends the bar's line so that later output starts on a fresh line."""
        if self._drawn:
            self._stream.write("\n")
            self._stream.flush()
            self._drawn = False
