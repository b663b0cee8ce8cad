"""Records against image directories: `imagegw reconcile` and the gateway's sweep.

`Reconciler.survey(system)` compares a system's READY records with the files of its
image directory (local, or over SFTP) and reports: records whose files are gone or
short, files no READY record knows, stale temporaries, meta files that differ from
their record. `repair(report)` fixes what a report found; the sweep repairs only
records whose files are gone. Safe while pulls run: nothing younger than the grace
period is touched, a record with a pull in flight is left to that pull, and every
record is read again right before its repair.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from imagegw.domain.config import Config, Platform
from imagegw.domain.errors import ImageGatewayError
from imagegw.domain.model import ImageState
from imagegw.domain.runtimes import sif_file, wants_sif
from imagegw.gateway.core.periodic import Periodic
from imagegw.gateway.core.presence import Retirement
from imagegw.gateway.records import ImageRecord
from imagegw.gateway.store.base import ImageStore
from imagegw.pipeline.meta import render_meta
from imagegw.publish import DirEntry, Publisher, is_temporary, publisher_for

__all__ = ["DEFAULT_GRACE_SECONDS", "Finding", "Reconciler", "Report", "SweepLoop"]

log = logging.getLogger(__name__)

#: Files changed less than this long ago belong to a publish that may still be running.
DEFAULT_GRACE_SECONDS = 600.0
_PAGE = 500

#: Finding kinds, in report order.
MISSING = "missing"            # a READY record whose image or meta file is gone
DAMAGED = "damaged"            # a READY record whose image file has another size
META_MISMATCH = "meta-mismatch"  # a meta file that is not what its record says
ORPHAN = "orphan"              # a file no READY record names
TEMPORARY = "temporary"        # a publish's leftover temporary
KINDS = (MISSING, DAMAGED, META_MISMATCH, ORPHAN, TEMPORARY)


@dataclass
class Finding:
    kind: str
    system: str
    #: The file concerned (the image file for record findings).
    name: str
    detail: str
    image: ImageRecord | None = None
    #: After repair: "repaired", "skipped: why", or "failed: why".
    outcome: str = ""


@dataclass
class Report:
    system: str
    where: str
    records: int = 0
    files: int = 0
    findings: list[Finding] = field(default_factory=list)
    #: Set when the survey could not run (the directory is not there, SSH failed).
    error: str = ""

    def count(self, kind: str) -> int:
        return sum(1 for finding in self.findings if finding.kind == kind)

    @property
    def clean(self) -> bool:
        return not self.error and all(f.outcome == "repaired" for f in self.findings)


def _where(platform: Platform) -> str:
    if platform.access_type == "remote" and platform.ssh is not None:
        return f"{','.join(platform.ssh.hosts)}:{platform.ssh.image_dir}"
    return platform.image_dir or ""


class Reconciler:
    def __init__(self, config: Config, store: ImageStore, *,
                 publishers: Callable[[Platform], Publisher] = publisher_for,
                 retirement: Retirement | None = None,
                 grace: float = DEFAULT_GRACE_SECONDS,
                 clock: Callable[[], float] = time.time) -> None:
        self.config = config
        self.store = store
        self.publishers = publishers
        self.retirement = retirement or Retirement(config, store, publishers=publishers)
        self.grace = grace
        self.clock = clock

    # -- looking ------------------------------------------------------------------------

    def ready_images(self, system: str) -> list[ImageRecord]:
        images: list[ImageRecord] = []
        token = ""
        while True:
            page, token = self.store.list_images(system, ImageState.READY, _PAGE, token)
            images += page
            if not token:
                return images

    def survey(self, system: str, *, check_meta: bool = True) -> Report:
        platform = self.config.platform(system)
        report = Report(system, _where(platform))
        publisher = self.publishers(platform)
        # Records first: a record READY now has its files in place before the listing.
        images = self.ready_images(system)
        try:
            entries = publisher.list_entries()
        except ImageGatewayError as exc:
            report.error = str(exc)
            return report
        if entries is None:
            report.error = f"the image directory {report.where} does not exist here"
            return report
        report.records, report.files = len(images), len(entries)
        files = {entry.name: entry for entry in entries}
        sif = wants_sif(platform.runtimes)
        known: set[str] = set()
        for image in images:
            known.update(_names(image, sif))
            finding = self._check_record(image, files, publisher if check_meta else None, sif)
            if finding is not None:
                report.findings.append(finding)
        recent = self.clock() - self.grace
        for entry in entries:
            if entry.name in known or entry.changed > recent:
                continue
            if is_temporary(entry.name):
                report.findings.append(Finding(TEMPORARY, system, entry.name,
                                               f"left by a publish ({entry.size} bytes)"))
            elif not entry.name.startswith("."):
                report.findings.append(Finding(ORPHAN, system, entry.name, _orphan_detail(
                    entry, self.store.find_images(system, _image_id_of(entry.name)))))
        report.findings.sort(key=lambda f: (KINDS.index(f.kind), f.name))
        return report

    def _check_record(self, image: ImageRecord, files: dict[str, DirEntry],
                      publisher: Publisher | None, sif: bool) -> Finding | None:
        gone = [name for name in _names(image, sif) if name not in files]
        if gone:
            return Finding(MISSING, image.system, image.image_file,
                           f"{' and '.join(gone)} gone; record READY "
                           f"({', '.join(image.tags) or 'untagged'})", image)
        size = files[image.image_file].size
        if image.size_bytes and size != image.size_bytes:
            return Finding(DAMAGED, image.system, image.image_file,
                           f"{size} bytes, the record says {image.size_bytes}", image)
        if publisher is not None:
            try:
                expected = expected_meta(image)
            except ImageGatewayError as exc:  # metadata Shifter's meta file cannot carry
                log.debug("no meta file to compare for %s: %s", image.image_id, exc)
                return None
            actual = publisher.read_file(image.meta_file, limit=len(expected) + 4096)
            if actual is not None and actual != expected:
                return Finding(META_MISMATCH, image.system, image.meta_file,
                               "differs from what the record says (ACLs, entrypoint or "
                               "environment)", image)
        return None

    # -- repairing ------------------------------------------------------------------------

    def repair(self, report: Report, *, kinds: tuple[str, ...] = KINDS,
               remove_leftovers: bool = True) -> Report:
        """Fixes the findings of `kinds`; each finding gets its outcome. With
        `remove_leftovers` False a record whose files are gone is retired without
        touching what is left of them (the sweep: a stale view of a file system must not
        cost files); short files always go."""
        if report.error:
            return report
        publisher = self.publishers(self.config.platform(report.system))
        for finding in report.findings:
            if finding.kind not in kinds:
                finding.outcome = "skipped: not asked to repair this kind"
                continue
            try:
                finding.outcome = self._repair_one(finding, publisher, remove_leftovers)
            except ImageGatewayError as exc:
                finding.outcome = f"failed: {exc}"
        if TEMPORARY in kinds and report.count(TEMPORARY):
            try:
                publisher.cleanup_temporaries(older_than=self.grace)
            except ImageGatewayError as exc:
                log.warning("removing temporaries on %s failed: %s", report.system, exc)
        return report

    def _repair_one(self, finding: Finding, publisher: Publisher, remove_leftovers: bool
                    ) -> str:
        if finding.kind in (MISSING, DAMAGED):
            assert finding.image is not None
            current = self._current(finding.image)
            if current is None:
                return "skipped: the record changed meanwhile"
            sif = wants_sif(self.config.platform(current.system).runtimes)
            if publisher.has_image(current.image_file, current.meta_file,
                                   current.size_bytes or None) and (
                    not sif or publisher.has_image(sif_file(current.image_file),
                                                   current.meta_file)):
                return "skipped: the files are back"
            if self.retirement.retire(current, why=f"retired ({finding.kind} files)",
                                      remove_files=remove_leftovers or finding.kind == DAMAGED):
                return "repaired"
            return "skipped: a pull of this image is in flight"
        if finding.kind == META_MISMATCH:
            assert finding.image is not None
            current = self._current(finding.image)
            if current is None or self.retirement.in_flight(current):
                return "skipped: the record changed or a pull is in flight"
            publisher.write_meta(expected_meta(current), current.meta_file,
                                 private=bool(current.acl_key))
            return "repaired"
        if finding.kind == ORPHAN:
            if finding.name in self._known_names(finding.system):
                return "skipped: a record names it now"
            publisher.remove_file(finding.name)
            log.info("removed %s from %s: no READY record names it", finding.name,
                     finding.system)
            return "repaired"
        return "repaired"  # temporaries: removed together after the loop

    def _current(self, image: ImageRecord) -> ImageRecord | None:
        """The record as it is now, if it is still READY with the same files."""
        now = self.store.get_image(image.system, image.image_id, image.acl_key)
        if now is None or now.state != ImageState.READY or now.image_file != image.image_file:
            return None
        return now

    def _known_names(self, system: str) -> set[str]:
        sif = wants_sif(self.config.platform(system).runtimes)
        names: set[str] = set()
        for image in self.ready_images(system):
            names.update(_names(image, sif))
        return names

    # -- the gateway's sweep ----------------------------------------------------------------

    def sweep(self) -> int:
        """Retires READY records whose files are gone, on every system (remote ones over
        SFTP), and removes temporaries older than the grace period (a worker killed while
        it wrote an image in place leaves one); returns how many records it retired. Meta
        files and orphans are left to `imagegw reconcile`."""
        retired = 0
        for system in sorted(self.config.platforms):
            try:
                report = self.survey(system, check_meta=False)
            except ImageGatewayError as exc:
                log.warning("file sweep of %s failed: %s", system, exc)
                continue
            if report.error:
                log.warning("file sweep of %s skipped: %s", system, report.error)
                continue
            self.repair(report, kinds=(MISSING, DAMAGED, TEMPORARY), remove_leftovers=False)
            for finding in report.findings:
                if finding.kind in (MISSING, DAMAGED):
                    log.warning("file sweep of %s: %s %s: %s -> %s", system, finding.kind,
                                finding.name, finding.detail, finding.outcome)
                    retired += finding.outcome == "repaired"
        return retired


def _names(image: ImageRecord, sif: bool) -> tuple[str, ...]:
    """The files a READY record stands for: image, meta file, and the SIF beside the image
    on a system publishing for Apptainer/SingularityCE."""
    return (image.image_file, image.meta_file, *((sif_file(image.image_file),) if sif else ()))


def expected_meta(image: ImageRecord) -> bytes:
    return render_meta(image.format, image.metadata, user_acl=image.user_acl,
                       group_acl=image.group_acl)


def _image_id_of(name: str) -> str:
    return name.split(".", 1)[0].split("-", 1)[0].lower()


def _orphan_detail(entry: DirEntry, records: list[ImageRecord]) -> str:
    states = sorted({ImageState(r.state).name for r in records if entry.name in
                     (r.image_file, r.meta_file)})
    known = f"its record is {'/'.join(states)}" if states else "no record names it"
    return f"{entry.size} bytes, {known}"


class SweepLoop(Periodic):
    """Runs `Reconciler.sweep` every `interval` seconds in a daemon thread (0: never)."""

    def __init__(self, reconciler: Reconciler, interval: float) -> None:
        super().__init__("file-sweep", interval, reconciler.sweep,
                         done="file sweep retired %d records whose files were gone",
                         logger=log, level=logging.WARNING)
        self.reconciler = reconciler
