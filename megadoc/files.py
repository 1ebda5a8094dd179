"""Safe file writes: write-to-temp-then-rename (a killed stage never leaves a file under its final name), output
paths checked before any work (one line instead of a trace an hour in), and one exclusive lock per output."""

import contextlib
import errno
import fcntl
import os
from pathlib import Path

from megadoc.errors import MegadocError


def tmp_path(path: str | os.PathLike) -> Path:
    """The temporary name a stage writes `path` under until it is complete."""
    path = Path(path)
    return path.with_name(path.name + ".tmp")


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "wb"):
    """Open `path.tmp` for writing; on success fsync and rename it to `path`, on failure remove it."""
    final, tmp = Path(path), tmp_path(path)
    try:
        with open(tmp, mode) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, final)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def check_output_file(path: str | os.PathLike, flag: str) -> Path:
    """`path` as a file a stage may write: its folder is made when missing; a folder in its place, a file in the
    way of its folder, or a folder that cannot be written is refused in one line naming `flag`."""
    if str(path).endswith(os.sep) or os.path.isdir(path):
        raise MegadocError(f"{flag} {path}: is a directory; name a file (e.g. {os.path.join(path, 'out')})")
    path = Path(path)
    _writable_folder(path.parent, flag, path)
    return path


def check_output_prefix(prefix: str, flag: str = "--output-prefix", suffixes=(".bin", ".idx")) -> str:
    """A dataset prefix a stage may write P.bin / P.idx under (see check_output_file); 'dir/' is refused, since it
    would write the hidden files dir/.bin and dir/.idx."""
    if not prefix or prefix.endswith(os.sep) or os.path.isdir(prefix):
        raise MegadocError(f"{flag} {prefix!r}: names a directory; a prefix names files, e.g. "
                           f"{os.path.join(prefix or '.', 'name')} for name.bin / name.idx")
    for suffix in suffixes:
        check_output_file(prefix + suffix, flag)
    return prefix


def check_output_dir(path: str | os.PathLike, flag: str) -> Path:
    """`path` as a folder a stage may write into, checked before any work but not made (a stage that fails later
    leaves no empty folder): a file in its place or in the way, or a folder that cannot be written, is one line."""
    path = Path(path)
    existing = _existing(path.absolute())
    if not existing.is_dir():
        raise MegadocError(f"{flag} {path}: {existing} is a file, not a directory")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise MegadocError(f"{flag} {path}: cannot write in {existing} ({_why(existing, 'permission denied')})")
    return path


_MADE: list[Path] = []
"""Folders made for a stage's outputs in this process, shallowest first (see settle_made_folders)."""


def settle_made_folders(failed: bool) -> None:
    """At a stage's end: if it failed, remove the folders it made for its outputs where they are still empty, so a
    refused input leaves no trace (a folder holding anything, e.g. a killed run's temporaries, stays); forget them."""
    while _MADE:
        folder = _MADE.pop()
        if failed:
            with contextlib.suppress(OSError):
                folder.rmdir()


def _writable_folder(folder: Path, flag: str, path: Path) -> None:
    missing = [parent for parent in [folder, *folder.parents] if not parent.exists()]
    try:
        folder.mkdir(parents=True, exist_ok=True)
        _MADE.extend(reversed(missing))
    except (FileExistsError, NotADirectoryError):
        raise MegadocError(f"{flag} {path}: {_existing(folder)} is a file, not a directory") from None
    except OSError as error:
        raise MegadocError(f"{flag} {path}: cannot write in {folder} ({_why(folder, error.strerror)})") from None
    if not os.access(folder, os.W_OK | os.X_OK):
        raise MegadocError(f"{flag} {path}: cannot write in {folder} ({_why(folder, 'permission denied')})")


def _existing(folder: Path) -> Path:
    """The deepest component of `folder` that exists."""
    return next(p for p in [folder, *folder.parents] if p.exists())


def _why(folder: Path, default: str) -> str:
    try:
        return "read-only file system" if os.statvfs(_existing(folder)).f_flag & os.ST_RDONLY else default
    except OSError:
        return default


@contextlib.contextmanager
def exclusive_lock(path: str | os.PathLike, what: str):
    """Hold `path` (a lock file, removed on exit) exclusively for the whole block; a second holder is refused at
    once, in one line naming `what`. After locking, the file must still be the one at `path` (a holder that just
    finished removes it), else the lock is taken again on the new file."""
    path = Path(path)
    while True:
        handle = open(path, "a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as error:
            handle.close()
            if error.errno in (errno.EAGAIN, errno.EACCES):
                raise MegadocError(f"{what} is already being written by another run (lock {path} is held); wait "
                                   "for it to finish, or write elsewhere") from None
            raise
        try:
            same = os.fstat(handle.fileno()).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        handle.close()
    try:
        yield
    finally:
        path.unlink(missing_ok=True)
        handle.close()
