"""Running sam_core calls off the GUI thread, with napari progress bars, cancel and notifications.

:func:`start_job` runs ``func(progress, cancel)`` in a napari thread worker. ``progress`` is a
sam_core :data:`~sam_core.progress.ProgressFn`; its calls cross to the GUI thread through a Qt
signal and drive a napari progress bar (the activity dock). Errors never escape: a
:class:`~sam_core.errors.SamError` becomes an error notification with its message, a cancel becomes
an info notification, anything else an error notification naming the exception.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

from napari.qt.threading import create_worker
from napari.utils import progress as napari_progress
from napari.utils.notifications import show_error, show_info
from qtpy.QtCore import QObject, Signal

from sam_core.errors import SamError
from sam_core.progress import CancelToken, Cancelled


class _Bridge(QObject):
    """Carries progress calls from a worker thread to the GUI thread (queued signal)."""

    progressed = Signal(int, int, str)


def as_sentence(error: BaseException) -> str:
    """``error``'s message as a sentence for a notification: capital first letter, full stop at the end."""
    text = str(error)
    return text[:1].upper() + text[1:] + ("" if text.endswith(".") else ".")


def notify_error(error: BaseException) -> None:
    """Show ``error`` as a napari notification (never raises)."""
    if isinstance(error, Cancelled):
        show_info("Cancelled.")
    elif isinstance(error, SamError):
        show_error(str(error))
    else:
        show_error(f"{type(error).__name__}: {error}")


class Job:
    """One running job: its worker, cancel token and progress bar."""

    def __init__(self, func: Callable[..., Any], description: str, on_result: Callable[[Any], None],
                 on_finished: Optional[Callable[[], None]] = None, show_progress: bool = True) -> None:
        self.cancel_token = CancelToken()
        self.description = description
        self._bar: Optional[napari_progress] = None
        self._bridge = _Bridge()
        self._bridge.progressed.connect(self._on_progress)
        self._show_progress = show_progress
        self._closed = False
        self.listeners: list = []
        #: The exception the job ended with (None while running, or when it returned).
        self.error: Optional[BaseException] = None
        self.worker = create_worker(
            func, self._bridge.progressed.emit, self.cancel_token,
            _start_thread=False, _connect={"returned": on_result, "errored": self._on_error},
        )
        self.worker.finished.connect(self._close)
        if on_finished is not None:
            self.worker.finished.connect(on_finished)

    def _on_error(self, error: BaseException) -> None:
        self.error = error
        notify_error(error)

    @property
    def cancelled(self) -> bool:
        """True when the job stopped because of :meth:`cancel`."""
        return isinstance(self.error, Cancelled)

    def _on_progress(self, done: int, total: int, message: str) -> None:
        if self._closed:
            return
        for listener in self.listeners:
            listener(done, total, message)
        if not self._show_progress:
            return
        bar = self._bar
        if bar is None:
            bar = self._bar = napari_progress(total=max(total, 1), desc=self.description)
        if bar.total != max(total, 1):
            bar.total = max(total, 1)
        if message:
            bar.set_description(f"{self.description}: {message}")
        if done > bar.n:
            bar.update(done - bar.n)

    def _close(self) -> None:
        self._closed = True
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def cancel(self) -> None:
        """Ask the job to stop between units of work (slices, tiles)."""
        self.cancel_token.cancel()

    @property
    def running(self) -> bool:
        return self.worker.is_running

    def start(self) -> "Job":
        self.worker.start()
        return self


def start_job(func: Callable[[Callable[[int, int, str], None], CancelToken], Any], description: str,
              on_result: Callable[[Any], None], on_finished: Optional[Callable[[], None]] = None,
              show_progress: bool = True) -> Job:
    """Run ``func(progress, cancel)`` in a worker thread; ``on_result(value)`` runs on the GUI thread.

    Connect every callback before the thread starts (a fast job may finish at once): pass them here.
    """
    return Job(func, description, on_result, on_finished, show_progress).start()
