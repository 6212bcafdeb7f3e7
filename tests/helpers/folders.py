"""Real read-only folders and small disks for tests: tmpfs mounts when running as root (CI runs as root,
and root writes into folders whatever their mode bits say), else a folder without write permission."""

from __future__ import annotations

import contextlib
import os
import subprocess
from pathlib import Path
from typing import Iterator

import pytest


def mount_tmpfs(folder: Path, options: str) -> bool:
    """Mount a tmpfs with ``options`` on ``folder`` (created); False when not root or not permitted."""
    folder.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        return False
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)], capture_output=True)
    return done.returncode == 0


def unmount(folder: Path) -> None:
    subprocess.run(["umount", str(folder)], capture_output=True)


@contextlib.contextmanager
def read_only_folder(folder: Path) -> Iterator[Path]:
    """``folder`` made a folder nobody (root included) can write into, for the ``with`` block; skips the
    test with the reason when this machine cannot make one."""
    if mount_tmpfs(folder, "ro,size=1m"):
        try:
            yield folder
        finally:
            unmount(folder)
        return
    folder.chmod(0o555)
    try:
        (folder / "probe").write_bytes(b"")
    except OSError:
        try:
            yield folder
        finally:
            folder.chmod(0o755)
        return
    pytest.skip("cannot make a read-only folder here: no read-only tmpfs mount (not root or not permitted) and mode bits do not stop this user")
