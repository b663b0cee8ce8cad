"""imagegw reconcile is safe while pulls run: on a real SQLite store and image directory,
a record whose files are gone but whose pull is in flight (republishing it) is left to that
pull, and a file younger than the grace period (a publish writing it) is not an orphan."""

from __future__ import annotations

from pathlib import Path

from imagegw.domain.config import parse_config
from imagegw.domain.model import ImageMetadata, ImageState
from imagegw.gateway.core.reconcile import MISSING, ORPHAN, Reconciler
from imagegw.gateway.records import ImageRecord, PullKey
from imagegw.gateway.store import SqliteImageStore

SYSTEM = "cluster"


def image(image_id: str, reference: str) -> ImageRecord:
    return ImageRecord(
        system=SYSTEM, image_id=image_id, format="squashfs", manifest_digest="sha256:" + "1" * 64,
        metadata=ImageMetadata(), image_file=f"{image_id}.squashfs", meta_file=f"{image_id}.meta",
        size_bytes=4, tags=(reference,), last_pull=1.0, last_used=1.0)


def test_reconcile_leaves_a_record_with_a_pull_in_flight_and_recent_files_alone(
    tmp_path: Path,
) -> None:
    images = tmp_path / "images"
    images.mkdir()
    config = parse_config({"Platforms": {SYSTEM: {
        "accesstype": "local", "local": {"imageDir": str(images)}}}},
        data_dir=str(tmp_path / "data"))
    store = SqliteImageStore(str(tmp_path / "records.sqlite3"))
    try:
        key = PullKey(SYSTEM, "reg/app:1")
        store.begin_pull(key, "job-1", 1.0)
        store.complete_pull(key, "job-1", image("a" * 64, key.reference), 1.0)
        store.begin_pull(key, "job-2", 2.0)  # a re-pull is running: it republishes "a"
        (images / ("b" * 64 + ".squashfs")).write_bytes(b"hsqs")  # being published now

        reconciler = Reconciler(config, store, grace=600.0)
        report = reconciler.repair(reconciler.survey(SYSTEM))

        assert [(f.kind, f.outcome) for f in report.findings] == [
            (MISSING, "skipped: a pull of this image is in flight")]
        assert not any(f.kind == ORPHAN for f in report.findings)
        assert (images / ("b" * 64 + ".squashfs")).exists()
        record = store.get_image(SYSTEM, "a" * 64)
        assert record is not None and record.state == ImageState.READY
    finally:
        store.close()
