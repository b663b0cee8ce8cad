"""What shifterimg prints: the images and queue tables, and JSON for `--verbose`.

Pure functions from SDK dataclasses to text, so the formats are tested directly.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime, tzinfo
from typing import Any

from imagegw.client.models import ImageInfo, JobInfo

_HUB_PREFIXES = ("registry-1.docker.io/", "index.docker.io/", "docker.io/")


def display_tag(tag: str) -> str:
    """A tag as a user writes it: Docker Hub's host and "library/" are left out."""
    for prefix in _HUB_PREFIXES:
        if tag.startswith(prefix):
            return tag[len(prefix):].removeprefix("library/")
    return tag


def format_time(when: datetime | None, tz: tzinfo | None = None) -> str:
    """"YYYY-MM-DDTHH:MM:SS" in `tz` (local time when None); "-" when unknown."""
    if when is None:
        return "-"
    return when.astimezone(tz).strftime("%Y-%m-%dT%H:%M:%S")


def images_table(images: Iterable[ImageInfo], tz: tzinfo | None = None) -> list[str]:
    """Shifter's `shifterimg images` lines: one per tag, sorted by tag, no header.

    Columns: system, type, status, the id's first 10 characters, last pull, tag."""
    rows: list[tuple[str, ImageInfo]] = []
    for image in images:
        tags = image.tags or ((image.reference,) if image.reference else ("-",))
        rows.extend((display_tag(tag), image) for tag in tags)
    rows.sort(key=lambda row: row[0])
    return [
        f"{image.system:<10} {image.type:<10} {image.state:<8} {image.id[:10]:<10}   "
        f"{format_time(image.last_pull, tz)} {tag}"
        for tag, image in rows
    ]


def format_age(seconds: float) -> str:
    """A short age: "42s", "7m", "5h", "3d"."""
    seconds = max(0, int(seconds))
    for size, unit in ((86400, "d"), (3600, "h"), (60, "m")):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def queue_table(jobs: Iterable[JobInfo], now: datetime | None = None) -> list[str]:
    """The `shifterimg queue` table: a header, then one aligned row per job."""
    now = now or datetime.now(UTC)
    rows = [("ID", "SYSTEM", "REFERENCE", "STATE", "AGE", "FAILURE")]
    for job in jobs:
        age = format_age((now - job.create_time).total_seconds()) if job.create_time else "-"
        state = job.state if job.state != "RUNNING" or not job.stage else f"{job.state}/{job.stage}"
        rows.append((job.id, job.system, display_tag(job.reference), state, age,
                     job.failure_message))
    widths = [max(len(row[col]) for row in rows) for col in range(5)]
    return [
        "  ".join(cell.ljust(width) for cell, width in zip(row[:5], widths, strict=True))
        + ("  " + row[5] if row[5] else "")
        for row in rows
    ]


def _jsonable(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, Mapping):
        return {key: _jsonable(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(item) for item in value]
    return value


def to_json(value: Any) -> str:
    """JSON for a dataclass or a list of them; datetimes as ISO 8601 strings."""
    if isinstance(value, list):
        data: Any = [dataclasses.asdict(item) for item in value]
    else:
        data = dataclasses.asdict(value)
    return json.dumps(_jsonable(data), indent=2, sort_keys=True)
