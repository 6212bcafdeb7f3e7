"""Checkpoint files on disk: the per-user folders, downloads with resume, SHA-256 verification.

A download streams into ``<dest>.part``, resumes an existing ``.part`` with an HTTP Range request,
verifies size and SHA-256, and only then renames the file to ``dest``: a file at ``dest`` is always
complete and verified. Downloads use the standard library only (``urllib``; proxies from the
usual environment variables).
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import json
import os
import re
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Iterator, Optional, Union

from sam_core.errors import SamError
from sam_core.fileio import atomic_write
from sam_core.progress import CancelToken, ProgressFn, check, report

PathLike = Union[str, "os.PathLike[str]"]

HOME_ENV = "SAM_CORE_HOME"
CHECKPOINTS_ENV = "SAM_CORE_CHECKPOINTS"

_CHUNK = 1 << 20  # bytes read per step when streaming or hashing
_DIGEST_SUFFIX = ".sha256"
_CONTENT_RANGE = re.compile(r"bytes\s+(\d+)-(\d+)/(\d+|\*)", re.IGNORECASE)


def home_dir() -> Path:
    """The per-user folder of sam_core: ``$SAM_CORE_HOME``, else the platform's user cache folder."""
    env = os.environ.get(HOME_ENV)
    if env:
        return Path(env).expanduser()
    import platformdirs

    return Path(platformdirs.user_cache_dir("sam_core"))


def checkpoint_dir(override: Optional[PathLike] = None) -> Path:
    """The folder that holds checkpoints: ``override`` > ``$SAM_CORE_CHECKPOINTS`` > ``home_dir()/checkpoints``."""
    if override is not None and str(override) != "":
        return Path(override).expanduser()
    env = os.environ.get(CHECKPOINTS_ENV)
    if env:
        return Path(env).expanduser()
    return home_dir() / "checkpoints"


# ---------------------------------------------------------------------------------------------------
# hashing with a small cache beside the file


def file_sha256(path: PathLike, cancel: Optional[CancelToken] = None) -> str:
    """The SHA-256 (hex) of a file, streamed in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while True:
            check(cancel)
            block = handle.read(_CHUNK)
            if not block:
                break
            digest.update(block)
    return digest.hexdigest()


def _digest_record_path(path: Path) -> Path:
    return path.with_name(path.name + _DIGEST_SUFFIX)


def _file_key(path: Path) -> dict:
    stat = path.stat()
    return {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def cached_sha256(path: PathLike) -> Optional[str]:
    """The SHA-256 recorded beside ``path`` if the record still matches its size and mtime, else None."""
    path = Path(path)
    record = _digest_record_path(path)
    try:
        data = json.loads(record.read_text(encoding="utf-8"))
        key = _file_key(path)
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("size") != key["size"] or data.get("mtime_ns") != key["mtime_ns"]:
        return None
    value = data.get("sha256")
    return value if isinstance(value, str) else None


def _record_sha256(path: Path, sha256: str) -> None:
    """Write ``<file>.sha256`` (best effort: a read-only folder only costs a re-hash next time)."""
    with contextlib.suppress(OSError):
        record = dict(_file_key(path), sha256=sha256)
        with atomic_write(_digest_record_path(path), "w") as handle:
            json.dump(record, handle)


def verify_file(path: PathLike, sha256: str) -> bool:
    """True if the file's SHA-256 equals ``sha256`` (hex, case-insensitive).

    The computed hash is recorded in ``<file>.sha256`` keyed by size and modification time, so a
    multi-gigabyte checkpoint is hashed once, not at every start.
    """
    path = Path(path)
    if not path.is_file():
        return False
    actual = cached_sha256(path)
    if actual is None:
        actual = file_sha256(path)
        _record_sha256(path, actual)
    return actual.lower() == sha256.lower()


# ---------------------------------------------------------------------------------------------------
# download


def _human(size: Optional[int]) -> str:
    if size is None:
        return "unknown size"
    return f"{size / 1e6:.1f} MB"


def _offline_error(url: str, dest: Path, reason: object) -> SamError:
    return SamError(
        f"could not download {url} ({reason}). Without network, fetch that file on another machine "
        f"and put it in {dest.parent} as {dest.name}; a rerun resumes a partial download."
    )


class _DropAuthOnRedirect(urllib.request.HTTPRedirectHandler):
    """Follow redirects, without the token when they lead to another host (e.g. a storage CDN)."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        new = super().redirect_request(req, fp, code, msg, headers, newurl)
        if new is not None and urllib.parse.urlsplit(newurl).netloc != urllib.parse.urlsplit(req.full_url).netloc:
            new.remove_header("Authorization")
        return new


def _open(url: str, offset: int, timeout: float, token: Optional[str] = None) -> http.client.HTTPResponse:
    headers = {"User-Agent": "sam_core", "Accept-Encoding": "identity"}
    if offset > 0:
        headers["Range"] = f"bytes={offset}-"
    if token:
        headers["Authorization"] = f"Bearer {token}"
        request = urllib.request.Request(url, headers=headers)
        return urllib.request.build_opener(_DropAuthOnRedirect()).open(request, timeout=timeout)
    request = urllib.request.Request(url, headers=headers)
    return urllib.request.urlopen(request, timeout=timeout)


def _resume_offset(response: http.client.HTTPResponse, offset: int) -> int:
    """Where the body of ``response`` starts in the file: ``offset`` for a matching 206, else 0."""
    if offset == 0 or response.status != 206:
        return 0
    match = _CONTENT_RANGE.match(response.headers.get("Content-Range", ""))
    if match is None or int(match.group(1)) != offset:
        return 0
    return offset


def _expected_total(response: http.client.HTTPResponse, start: int, size: Optional[int]) -> Optional[int]:
    length = response.headers.get("Content-Length")
    if length is not None and length.isdigit():
        return start + int(length)
    return size


def download(
    url: str,
    dest: PathLike,
    *,
    sha256: Optional[str],
    size: Optional[int] = None,
    progress: Optional[ProgressFn] = None,
    cancel: Optional[CancelToken] = None,
    timeout: float = 30,
    token: Optional[str] = None,
    access_help: Optional[str] = None,
) -> Path:
    """Download ``url`` to ``dest`` (a file path), verified by ``size`` (bytes) and ``sha256`` (hex;
    None where no hash is published: then only the size, when known, is checked).

    ``token`` is sent as an HTTP bearer token (gated Hugging Face files), not to other hosts a
    redirect leads to; a refusal (HTTP 401/403) raises :class:`SamError` with ``access_help``.

    Bytes go to ``dest + ".part"``; an existing ``.part`` is resumed with an HTTP Range request (a
    server that ignores Range gets a fresh download). ``progress(bytes_done, bytes_total, message)``
    is called as bytes arrive (``bytes_total`` is 0 when unknown). Only a file of the right size and
    SHA-256 is renamed to ``dest``; a wrong one is deleted and raises :class:`SamError`. A network
    failure raises :class:`SamError` naming the URL and the folder to put the file in by hand, and
    keeps the ``.part`` so that a rerun resumes. Cancelling keeps the ``.part`` too. A resumed
    download that fails verification is fetched once more from the start before giving up.
    Concurrent calls for the same ``dest`` (threads or processes) wait for each other: one
    downloads, the others find the verified file.
    """
    dest = Path(dest)
    part = dest.with_name(dest.name + ".part")
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise SamError(
            f"cannot create the folder {dest.parent} for {dest.name} ({error}); choose another folder "
            f"with --cache-dir or the {CHECKPOINTS_ENV} environment variable"
        ) from error

    # One download per file at a time, also across processes (e.g. Dask workers starting together).
    with _locked(dest.with_name(f".{dest.name}.lock")):
        if dest.is_file() and (size is None or dest.stat().st_size == size) and (sha256 is None or verify_file(dest, sha256)):
            return dest  # done meanwhile by another process
        offset = part.stat().st_size if part.is_file() else 0
        if size is not None and offset > size:
            part.unlink()
            offset = 0

        if size is None or offset < size:
            _fetch(url, dest, part, offset, size, progress, cancel, timeout, token, access_help)
        try:
            actual = _verify_part(url, dest, part, sha256, size, progress, cancel)
        except SamError:
            if offset == 0:
                raise
            # The bytes kept from an earlier attempt may be what is wrong: one fresh download.
            _fetch(url, dest, part, 0, size, progress, cancel, timeout, token, access_help)
            actual = _verify_part(url, dest, part, sha256, size, progress, cancel)
        with open(part, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(part, dest)
        _record_sha256(dest, actual)
    return dest


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` (a hidden empty file, created if missing and left in place)."""
    with open(path, "a+b") as handle:
        if os.name == "nt":
            import msvcrt

            handle.seek(0)
            while True:
                try:
                    msvcrt.locking(handle.fileno(), msvcrt.LK_LOCK, 1)
                    break
                except OSError:  # LK_LOCK gives up after 10 s: keep waiting
                    continue
            try:
                yield
            finally:
                handle.seek(0)
                msvcrt.locking(handle.fileno(), msvcrt.LK_UNLCK, 1)
        else:
            import fcntl

            fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def _verify_part(
    url: str,
    dest: Path,
    part: Path,
    sha256: Optional[str],
    size: Optional[int],
    progress: Optional[ProgressFn],
    cancel: Optional[CancelToken],
) -> str:
    """Check the finished ``part`` against ``size`` and ``sha256``; delete it and raise SamError if wrong."""
    actual_size = part.stat().st_size
    if size is not None and actual_size != size:
        part.unlink()
        raise SamError(
            f"the download of {url} has {actual_size} bytes, not the expected {size}; the file was deleted. "
            f"Run the download again, or put a correct copy in {dest.parent} as {dest.name}."
        )
    report(progress, actual_size, actual_size, "verifying SHA-256")
    actual = file_sha256(part, cancel)
    if sha256 is not None and actual.lower() != sha256.lower():
        part.unlink()
        raise SamError(
            f"the download of {url} is corrupted (SHA-256 {actual} instead of {sha256}); the file was "
            f"deleted and not used. Run the download again, or put a correct copy in {dest.parent} as {dest.name}."
        )
    return actual


def _fetch(
    url: str,
    dest: Path,
    part: Path,
    offset: int,
    size: Optional[int],
    progress: Optional[ProgressFn],
    cancel: Optional[CancelToken],
    timeout: float,
    token: Optional[str] = None,
    access_help: Optional[str] = None,
) -> None:
    """Stream the (rest of the) file into ``part``. Raises SamError on network failure, keeps ``part``."""
    check(cancel)
    try:
        response = _open(url, offset, timeout, token)
    except urllib.error.HTTPError as error:
        if error.code == 416 and offset > 0:
            # The server cannot serve the rest of our partial file: it is stale. Start afresh.
            part.unlink()
            return _fetch(url, dest, part, 0, size, progress, cancel, timeout, token, access_help)
        if error.code in (401, 403) and access_help:
            raise SamError(f"{url} refused the download (HTTP {error.code}): {access_help}") from error
        raise _offline_error(url, dest, f"HTTP {error.code} {error.reason}") from error
    except (urllib.error.URLError, OSError, http.client.HTTPException, ValueError) as error:
        reason = getattr(error, "reason", error)
        raise _offline_error(url, dest, reason) from error

    with response:
        start = _resume_offset(response, offset)
        total = _expected_total(response, start, size)
        done = start
        message = f"{dest.name} ({_human(total)})"
        report(progress, done, total or 0, message)
        with open(part, "ab" if start else "wb") as handle:
            while True:
                check(cancel)
                try:
                    block = response.read(_CHUNK)
                except (OSError, http.client.HTTPException) as error:
                    raise _offline_error(url, dest, f"transfer interrupted after {done} bytes: {error}") from error
                if not block:
                    break
                try:
                    handle.write(block)
                except OSError as error:
                    raise SamError(
                        f"cannot write {part} ({error}); free some space or choose another folder with "
                        f"--cache-dir or the {CHECKPOINTS_ENV} environment variable"
                    ) from error
                done += len(block)
                report(progress, done, total or 0, message)
    if total is not None and done < total:
        raise _offline_error(url, dest, f"transfer interrupted after {done} of {total} bytes")
