"""Progress and cancel protocol shared by every long-running function.

Long functions take ``progress: ProgressFn | None`` and ``cancel: CancelToken | None``. They call
``report(progress, done, total, message)`` after each unit of work (tile, slice, batch, epoch) and
``check(cancel)`` between units. The command line maps this to tqdm, napari to its progress bar and
QGIS to ``QgsProcessingFeedback``.
"""

from __future__ import annotations

import threading
from typing import Callable, Optional

ProgressFn = Callable[[int, int, str], None]


class Cancelled(Exception):
    """Raised by :func:`check` when the user asked to stop. Partial outputs must not be left behind."""


class CancelToken:
    """A thread-safe flag a front end sets to ask a running job to stop between units of work."""

    def __init__(self) -> None:
        self._event = threading.Event()

    def cancel(self) -> None:
        self._event.set()

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()


def check(cancel: Optional[CancelToken]) -> None:
    """Raise :class:`Cancelled` if ``cancel`` was set."""
    if cancel is not None and cancel.cancelled:
        raise Cancelled("cancelled by the user")


def report(progress: Optional[ProgressFn], done: int, total: int, message: str = "") -> None:
    """Call ``progress(done, total, message)`` if a callback was given."""
    if progress is not None:
        progress(done, total, message)


class TqdmProgress:
    """A :data:`ProgressFn` that drives a tqdm bar on stderr (used by the command line)."""

    def __init__(self, desc: str = "", disable: bool = False) -> None:
        self._desc = desc
        self._disable = disable
        self._bar = None

    def __call__(self, done: int, total: int, message: str = "") -> None:
        from tqdm import tqdm

        if self._bar is None:
            self._bar = tqdm(total=total, desc=self._desc, disable=self._disable, leave=False)
        if self._bar.total != total:
            self._bar.total = total
        self._bar.n = done
        if message:
            self._bar.set_postfix_str(message, refresh=False)
        self._bar.refresh()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def __enter__(self) -> "TqdmProgress":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
