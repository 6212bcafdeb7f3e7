"""Atomic file writes, and the one check of an output path before any work is done.

Every output and cache entry is written to a temporary file beside it and renamed, so a failed or
cancelled write never leaves a half-written file. A write that fails for a reason of the disk (full,
read-only, no permission) raises :class:`OutputError`, which names the output (never the temporary
file) and says what to do; it is both a :class:`~sam_core.errors.SamError` (front ends show it as one
line) and an :class:`OSError` (callers that tolerate failed writes, like the embedding cache, still can).

:func:`check_output_path` is the rule every command applies to its output before it starts: an
existing folder is refused as an output file, a missing output folder is created when the output is
written, and a folder that cannot be written (read-only, no permission) or a disk with less than
:data:`MIN_FREE_BYTES` free is refused at once.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import tempfile
from pathlib import Path
from typing import IO, Iterator, Optional, Union

from sam_core.errors import SamError

PathLike = Union[str, "os.PathLike[str]"]

# A disk with less free space than this is refused before any work starts (bytes).
MIN_FREE_BYTES = 1 << 20

# errno -> what the user can do about it.
_ADVICE = {
    errno.ENOSPC: "the disk is full: free some space or choose another output folder",
    errno.EDQUOT: "the disk quota is used up: free some space or choose another output folder",
    errno.EROFS: "the file system is read-only: choose another output folder",
    errno.EACCES: "no permission to write there: choose another output folder",
    errno.EPERM: "no permission to write there: choose another output folder",
    errno.EFBIG: "the file is too large for this file system: choose another output folder",
    errno.EISDIR: "a folder has that name: give a file name",
    errno.ENOTDIR: "a file stands where a folder should be: choose another output path",
}


class OutputError(OSError, SamError):
    """Writing an output failed for a reason of the disk; the message names the output and the remedy."""


def output_error(target: PathLike, error: OSError) -> OutputError:
    """An :class:`OutputError` for a failed write of ``target`` (``error`` may name a temporary file)."""
    reason = error.strerror or str(error) or type(error).__name__
    advice = _ADVICE.get(error.errno)
    message = f"cannot write {target}: {reason}" + (f" ({advice})" if advice else "")
    converted = OutputError(message)
    converted.errno = error.errno
    return converted


def _convert(target: Path, tmp: Optional[str], error: OSError) -> BaseException:
    """``error`` as an OutputError when it is about writing ``target`` (its folder, its temporary file, or
    the disk); other errors (a file the caller's code reads, say) stay as they are."""
    if isinstance(error, OutputError):
        return error
    about_target = error.filename is None or str(error.filename) == str(tmp) or Path(error.filename) in (
        target, *target.parents)
    return output_error(target, error) if about_target or error.errno in _ADVICE else error


def _existing_ancestor(folder: Path) -> Path:
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    return folder


def check_output_path(path: PathLike, *, option: str = "the output", folder: bool = False,
                      min_free: Optional[int] = None) -> Path:
    """Check before any work that ``path`` can be written; returns it (``~`` expanded).

    ``folder``: the output is a folder (created when missing) rather than a file. Raises SamError when
    the output file is an existing folder (or the output folder an existing file), when the folder (or
    the nearest existing folder above it, for one still to be created) cannot be written, or when its
    disk has less than ``min_free`` bytes free (default :data:`MIN_FREE_BYTES`). Nothing is created.
    """
    target = Path(path).expanduser()
    if folder and target.exists() and not target.is_dir():
        raise SamError(f"{option} {target} is a file, not a folder: give a folder name")
    if not folder and target.is_dir():
        raise SamError(f"{option} {target} is a folder: give a file name inside it, such as {target / ('output' + target.suffix) if target.suffix else target / 'output'}")
    parent = _existing_ancestor(target if folder else target.parent)
    if not parent.is_dir():
        raise SamError(f"cannot write to the folder {target if folder else target.parent} ({option}): {parent} is a file")
    try:
        fd, probe = tempfile.mkstemp(prefix=".sam-write-check.", dir=parent)
        os.close(fd)
        os.unlink(probe)
    except OSError as error:
        raise output_error(target, error) from None
    free = shutil.disk_usage(parent).free
    min_free = MIN_FREE_BYTES if min_free is None else min_free
    if free < min_free:
        raise SamError(f"cannot write {target}: only {_size(free)} free on its disk, at least {_size(min_free)} needed "
                       "(free some space or choose another output folder)")
    return target


def free_space_if_short(folder: PathLike) -> Optional[int]:
    """The free bytes on ``folder``'s disk when fewer than :data:`MIN_FREE_BYTES` (a full disk), else None;
    for telling a full disk from other causes after a library's write failed."""
    try:
        free = shutil.disk_usage(_existing_ancestor(Path(folder))).free
    except OSError:
        return None
    return free if free < MIN_FREE_BYTES else None


def _size(count: float) -> str:
    """``1536`` -> ``"1.5 KB"`` (powers of 1024)."""
    for unit in ("bytes", "KB", "MB"):
        if count < 1024:
            return f"{count:.0f} {unit}" if unit == "bytes" else f"{count:.1f} {unit}"
        count /= 1024
    return f"{count:.1f} GB"


def _read_umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask


# The permission bits a plain ``open(path, "w")`` gives (read once at import: reading the umask
# briefly changes it, which is not safe while other threads create files).
_FILE_MODE = 0o666 & ~_read_umask()


@contextlib.contextmanager
def atomic_write(path: PathLike, mode: str = "wb") -> Iterator[IO]:
    """Yield a temporary file beside ``path``; on success it is flushed, synced and renamed to ``path``.

    On any exception (including cancellation) the temporary file is removed and ``path`` is untouched.
    """
    target = Path(path)
    tmp: Optional[str] = None
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".part", dir=target.parent)
        os.chmod(tmp, _FILE_MODE)
        with os.fdopen(fd, mode) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, target)
    except BaseException as error:
        if tmp is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
        if isinstance(error, OSError) and _convert(target, tmp, error) is not error:
            raise _convert(target, tmp, error) from error
        raise


@contextlib.contextmanager
def atomic_path(path: PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` for libraries that write by file name (GDAL, zarr, PIL).

    The suffix of ``path`` is kept so that format detection by extension still works. On success the
    temporary file is renamed to ``path``; on any exception it is removed.
    """
    target = Path(path)
    tmp: Optional[str] = None
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{target.stem}.", suffix=f".part{target.suffix}", dir=target.parent)
        os.close(fd)
        os.unlink(tmp)
        yield Path(tmp)
        if os.path.exists(tmp):
            os.chmod(tmp, _FILE_MODE)
        os.replace(tmp, target)
    except BaseException as error:
        if tmp is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
        if isinstance(error, OSError) and _convert(target, tmp, error) is not error:
            raise _convert(target, tmp, error) from error
        raise
