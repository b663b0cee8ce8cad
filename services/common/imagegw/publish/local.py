"""Publishing into an image directory on a file system the worker mounts.

A built image on the same file system is hard-linked in (no copy); otherwise it is
copied in 4 MiB chunks. Every file is fsynced, then renamed into place: image first.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import stat
import time
from pathlib import Path

from imagegw.domain.errors import TransferFailed
from imagegw.publish.access import ACL_XATTR, PRIVATE_MODE, Readers
from imagegw.publish.base import (
    CHUNK_SIZE,
    DIR_MODE,
    FILE_MODE,
    PRIVATE_FILE_MODE,
    DirEntry,
    ProgressCallback,
    check_file_name,
    is_temporary,
    temporary_name,
)

log = logging.getLogger(__name__)

_NO_ACCESS = {errno.EACCES, errno.EPERM, errno.EROFS}
_NO_SPACE = {errno.ENOSPC, errno.EDQUOT}


class LocalPublisher:
    """A `Publisher` for a local (or mounted) image directory."""

    def __init__(self, image_dir: str | os.PathLike[str], *, hardlink: bool = True) -> None:
        #: `hardlink=False` always copies, even on the same file system.
        self.image_dir = Path(image_dir)
        self._hardlink = hardlink

    def has_image(self, image_file: str, meta_file: str, size: int | None = None) -> bool:
        try:
            image = os.stat(self._path(image_file))
            meta = os.stat(self._path(meta_file))
        except (FileNotFoundError, NotADirectoryError):
            return False
        except OSError as exc:
            raise self._failed(f"cannot look for {image_file}", exc) from exc
        if not (stat.S_ISREG(image.st_mode) and stat.S_ISREG(meta.st_mode)):
            return False
        return size is None or image.st_size == size

    def image_size(self, image_file: str) -> int:
        try:
            return os.stat(self._path(image_file)).st_size
        except OSError as exc:
            raise self._failed(f"looking for {image_file}", exc) from exc

    def publish(
        self,
        source: Path,
        image_file: str,
        meta: bytes,
        meta_file: str,
        *,
        on_bytes: ProgressCallback | None = None,
        private: bool = False,
        readers: Readers | None = None,
    ) -> None:
        image_path, meta_path = self._path(image_file), self._path(meta_file)
        source = Path(source)
        # A link would share one inode (and its mode) with the public copy and the cache.
        private = private or readers is not None
        mode, link = (PRIVATE_FILE_MODE, False) if private else (FILE_MODE, self._hardlink)
        try:
            source.stat()
        except OSError as exc:
            raise _unreadable(source, exc) from exc
        temporaries: list[Path] = []
        try:
            self._ensure_directory()
            image_tmp = self._place_image(source, image_file, temporaries, on_bytes, mode, link,
                                          readers)
            meta_tmp = self._write_meta(meta, meta_file, temporaries, mode)
            # The runtime reads the meta file first: it must never name a missing image.
            os.rename(image_tmp, image_path)
            temporaries.remove(image_tmp)
            os.rename(meta_tmp, meta_path)
            temporaries.remove(meta_tmp)
            _fsync_directory(self.image_dir)
        except OSError as exc:
            if exc.filename == str(source) and exc.filename2 is None:
                raise _unreadable(source, exc) from exc
            raise self._failed(f"publishing {image_file}", exc) from exc
        finally:
            for path in temporaries:
                with contextlib.suppress(OSError):
                    os.unlink(path)
        log.info("published %s and %s in %s", image_file, meta_file, self.image_dir)

    def remove(self, image_file: str, meta_file: str) -> None:
        paths = [self._path(meta_file), self._path(image_file)]
        if not self.image_dir.is_dir():
            return
        try:
            for path in paths:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)
            _fsync_directory(self.image_dir)
        except OSError as exc:
            raise self._failed(f"removing {image_file}", exc) from exc
        log.info("removed %s and %s from %s", meta_file, image_file, self.image_dir)

    def cleanup_temporaries(self, older_than: float = 0.0) -> int:
        cutoff = time.time() - older_than
        removed = 0
        try:
            entries = list(os.scandir(self.image_dir))
        except FileNotFoundError:
            return 0
        except OSError as exc:
            raise self._failed("listing temporaries", exc) from exc
        for entry in entries:
            if not is_temporary(entry.name):
                continue
            try:
                info = entry.stat(follow_symlinks=False)
                if stat.S_ISREG(info.st_mode) and info.st_mtime <= cutoff:
                    os.unlink(entry.path)
                    removed += 1
            except FileNotFoundError:
                continue
            except OSError as exc:
                raise self._failed(f"removing temporary {entry.name}", exc) from exc
        if removed:
            log.info("removed %d leftover temporaries from %s", removed, self.image_dir)
        return removed

    def list_entries(self) -> list[DirEntry] | None:
        try:
            entries = list(os.scandir(self.image_dir))
        except (FileNotFoundError, NotADirectoryError):
            return None
        except OSError as exc:
            raise self._failed("listing the image directory", exc) from exc
        found = []
        for entry in entries:
            try:
                info = entry.stat(follow_symlinks=False)
            except FileNotFoundError:
                continue
            except OSError as exc:
                raise self._failed(f"looking at {entry.name}", exc) from exc
            if stat.S_ISREG(info.st_mode):
                found.append(DirEntry(entry.name, info.st_size, max(info.st_mtime, info.st_ctime)))
        return sorted(found, key=lambda e: e.name)

    def read_file(self, name: str, limit: int = 1 << 20) -> bytes | None:
        try:
            with open(self._path(name), "rb") as reader:
                return reader.read(limit)
        except (FileNotFoundError, NotADirectoryError):
            return None
        except OSError as exc:
            raise self._failed(f"reading {name}", exc) from exc

    def write_meta(self, meta: bytes, meta_file: str, *, private: bool = False) -> None:
        path = self._path(meta_file)
        temporaries: list[Path] = []
        try:
            temporary = self._write_meta(meta, meta_file, temporaries,
                                         PRIVATE_FILE_MODE if private else FILE_MODE)
            os.rename(temporary, path)
            temporaries.remove(temporary)
            _fsync_directory(self.image_dir)
        except OSError as exc:
            raise self._failed(f"rewriting {meta_file}", exc) from exc
        finally:
            for leftover in temporaries:
                with contextlib.suppress(OSError):
                    os.unlink(leftover)
        log.info("rewrote %s in %s", meta_file, self.image_dir)

    def remove_file(self, name: str) -> None:
        try:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self._path(name))
            _fsync_directory(self.image_dir)
        except FileNotFoundError:
            return
        except OSError as exc:
            raise self._failed(f"removing {name}", exc) from exc

    def temporary_beside(self, image_file: str, *, other_than: Path) -> Path | None:
        """A fresh temporary path in the image directory for a converter to write
        `image_file` into, when that directory is on another file system than
        `other_than` (else None: build there and link in). Raises TransferFailed."""
        check_file_name(image_file)
        try:
            # Judged on the nearest directory that exists: nothing is made in the image
            # directory before there is something to write there.
            existing = next(p for p in (self.image_dir, *self.image_dir.parents) if p.exists())
            if os.stat(existing).st_dev == os.stat(other_than).st_dev:
                return None
            self._ensure_directory()
        except OSError as exc:
            raise self._failed(f"preparing {image_file}", exc) from exc
        return self.image_dir / temporary_name(image_file)

    def _path(self, name: str) -> Path:
        return self.image_dir / check_file_name(name)

    def _ensure_directory(self) -> None:
        if self.image_dir.is_dir():
            return
        self.image_dir.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
        os.chmod(self.image_dir, DIR_MODE)

    def _place_image(
        self,
        source: Path,
        image_file: str,
        temporaries: list[Path],
        on_bytes: ProgressCallback | None,
        mode: int,
        link: bool,
        readers: Readers | None = None,
    ) -> Path:
        temporary = self.image_dir / temporary_name(image_file)
        if link and self._link(source, temporary):
            temporaries.append(temporary)
            os.chmod(temporary, mode)
            _fsync_file(temporary)
            size = temporary.stat().st_size
            if on_bytes is not None:
                on_bytes(size, size)
            return temporary
        total = source.stat().st_size
        with open(source, "rb") as reader:
            fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
            temporaries.append(temporary)
            with open(fd, "wb") as writer:
                done = 0
                while chunk := reader.read(CHUNK_SIZE):
                    writer.write(chunk)
                    done += len(chunk)
                    if on_bytes is not None:
                        on_bytes(done, total)
                writer.flush()
                os.fchmod(fd, mode)
                if readers is not None:
                    _restrict(fd, readers, image_file)
                os.fsync(fd)
        return temporary

    def _link(self, source: Path, temporary: Path) -> bool:
        """Hard-links the image in; False when this file system cannot (then we copy)."""
        try:
            os.link(source, temporary)
        except OSError as exc:
            if exc.errno in (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP):
                log.debug("cannot link %s into %s (%s): copying", source, self.image_dir, exc)
                return False
            raise
        return True

    def _write_meta(self, meta: bytes, meta_file: str, temporaries: list[Path],
                    mode: int) -> Path:
        temporary = self.image_dir / temporary_name(meta_file)
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
        temporaries.append(temporary)
        with open(fd, "wb") as writer:
            writer.write(meta)
            writer.flush()
            os.fchmod(fd, mode)
            os.fsync(fd)
        return temporary

    def _failed(self, action: str, exc: OSError) -> TransferFailed:
        reason = exc.strerror or str(exc)
        hint = None
        if exc.errno in _NO_ACCESS:
            hint = f"the worker (uid {os.getuid()}) needs write access to {self.image_dir}"
        elif exc.errno in _NO_SPACE:
            hint = f"free space on the file system holding {self.image_dir}"
        return TransferFailed(f"{action} in {self.image_dir} failed: {reason}", hint=hint)


def _unreadable(source: Path, exc: OSError) -> TransferFailed:
    return TransferFailed(f"cannot read the built image {source}: {exc.strerror or exc}")


def _restrict(fd: int, readers: Readers, image_file: str) -> None:
    """0600 and the readers' POSIX ACL, on the temporary before it gets its name."""
    os.fchmod(fd, PRIVATE_MODE)
    try:
        os.setxattr(fd, ACL_XATTR, readers.posix_acl())
    except OSError as exc:
        if exc.errno in (errno.ENOTSUP, errno.EOPNOTSUPP):
            raise TransferFailed(
                f"cannot restrict {image_file} to its ACL: the image directory's file system "
                "has no POSIX ACLs",
                hint="private images on systems publishing for enroot or Apptainer need a "
                     "file system with POSIX ACLs (mount option acl)") from exc
        raise


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_directory(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
