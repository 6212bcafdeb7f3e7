"""Start and talk to the engine process (``python -m sam_core engine``) over JSON lines.

Only the standard library: QGIS's Python never imports torch, numpy or rasterio. All model work runs
in the engine, a separate process started from the Python named by the ``SAM_ENGINE_PYTHON``
environment variable or by the plugin's settings. Requests and events are described in
``sam_core/engine.py``.

Threads: a reader thread per engine process receives events and calls the job callbacks (from that
thread: GUI code must hand them to the GUI thread). :meth:`EngineClient.request` blocks and is meant
for worker threads (``QgsTask``, Processing algorithms); :meth:`EngineClient.submit` never blocks.

If the engine dies, every waiting request fails with :class:`EngineCrashed`: a message for the user with
how it ended (exit code or signal) and the lines the engine logged while that request ran (never older
ones, which belong to other requests); the next request starts a new engine.
"""

from __future__ import annotations

import collections
import itertools
import json
import os
import subprocess
import threading
from typing import Any, Callable, Optional

ENV_VAR = "SAM_ENGINE_PYTHON"

# Variables that point QGIS's own libraries at their data; the engine must use its own (rasterio and
# pyproj wheels bring theirs), or mismatched versions clash.
_STRIPPED_ENV = ("PYTHONHOME", "PYTHONPATH", "PYTHONSTARTUP", "GDAL_DATA", "GDAL_DRIVER_PATH", "PROJ_LIB",
                 "PROJ_DATA", "QT_PLUGIN_PATH")

ProgressCallback = Callable[[int, int, str], None]


class EngineError(Exception):
    """A request failed; ``str(error)`` is the message to show to the user."""


class EngineUserError(EngineError):
    """The engine refused the input (a sam_core SamError): the message says what to fix."""


class EngineCancelled(EngineError):
    """The request was cancelled and stopped between units of work."""


class EngineCrashed(EngineError):
    """The engine process stopped (crash, killed, or could not start). The next request restarts it."""


class EngineNotConfigured(EngineError):
    """No usable engine Python is configured."""


class EngineVersionMismatch(EngineNotConfigured):
    """The engine's sam_core has another version than the plugin; the message says how to update it."""


def engine_command(python: str) -> list[str]:
    """The command line that starts the engine with the interpreter ``python``."""
    return [python, "-m", "sam_core", "engine"]


def engine_environment(base: Optional[dict] = None) -> dict:
    """The environment for the engine: ``base`` (default ``os.environ``) without QGIS's Python/GDAL/PROJ paths."""
    env = dict(os.environ if base is None else base)
    for name in _STRIPPED_ENV:
        env.pop(name, None)
    env["PYTHONUNBUFFERED"] = "1"
    env["PYTHONSAFEPATH"] = "1"  # never import a 'sam_core' folder from QGIS's working folder instead of the engine
    env["PYTHONIOENCODING"] = "utf-8"
    return env


class Job:
    """One request sent to the engine."""

    def __init__(self, job_id: str, cmd: str, on_progress: Optional[ProgressCallback],
                 on_done: Optional[Callable[["Job"], None]]) -> None:
        self.id = job_id
        self.cmd = cmd
        self.on_progress = on_progress
        self.on_done = on_done
        self.result: Any = None
        self.error: Optional[EngineError] = None
        self._done = threading.Event()
        self._client: Optional["EngineClient"] = None
        self._log_start = 0  # engine log lines written before this job was sent

    @property
    def done(self) -> bool:
        return self._done.is_set()

    def wait(self, timeout: Optional[float] = None) -> Any:
        """Wait for the result; raise the job's :class:`EngineError` if it failed."""
        if not self._done.wait(timeout):
            raise TimeoutError(f"engine request {self.cmd} did not finish within {timeout} s")
        if self.error is not None:
            raise self.error
        return self.result

    def cancel(self) -> None:
        """Ask the engine to stop this request between units of work (tiles)."""
        if self._client is not None and not self.done:
            self._client.cancel(self)

    def _finish(self, result: Any = None, error: Optional[EngineError] = None) -> None:
        if self._done.is_set():
            return
        self.result, self.error = result, error
        self._done.set()
        if self.on_done is not None:
            self.on_done(self)


class _EngineProcess:
    """One running engine: the child process, its pending jobs and its reader threads."""

    def __init__(self, python: str, log: Callable[[str], None], version: Optional[str] = None) -> None:
        self.python = python
        self.log = log
        self.version = version
        self.engine_version: Optional[str] = None  # set when the engine's version is not ``version``
        self.pending: dict[str, Job] = {}
        self.lock = threading.Lock()
        self.stderr_tail: collections.deque = collections.deque(maxlen=30)  # (line number, text)
        self.stderr_lines = 0  # lines logged so far
        self._log_lock = threading.Lock()
        self.ready = threading.Event()
        self.finished = threading.Event()
        self.stopping = False
        kwargs: dict[str, Any] = {}
        if os.name == "nt":
            kwargs["creationflags"] = getattr(subprocess, "CREATE_NO_WINDOW", 0)
        try:
            self.popen = subprocess.Popen(engine_command(python), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                          stderr=subprocess.PIPE, env=engine_environment(), **kwargs)
        except OSError as error:
            raise EngineNotConfigured(
                f"The Segment Anything engine could not be started with the Python '{python}': {error}. "
                f"Choose a Python that has sam_core installed in the plugin's settings, or set {ENV_VAR}."
            ) from error
        self._stderr_thread = threading.Thread(target=self._read_stderr, name="sam-engine-stderr", daemon=True)
        self._stdout_thread = threading.Thread(target=self._read_stdout, name="sam-engine-stdout", daemon=True)
        self._stderr_thread.start()
        self._stdout_thread.start()

    @property
    def alive(self) -> bool:
        return not self.finished.is_set() and self.popen.poll() is None

    def _log_position(self) -> int:
        """Lines logged so far, after the reader took in what the engine already wrote (up to 0.2 s): the
        pipe is empty and the reader's count has settled (a line it has read may still be in its hands)."""
        if os.name == "posix":
            import select
            import time

            for _ in range(20):
                try:
                    pending, _, _ = select.select([self.popen.stderr], [], [], 0)
                except (OSError, ValueError):
                    break
                counted = self.stderr_lines
                time.sleep(0.01)
                if not pending and self.stderr_lines == counted:
                    break
        return self.stderr_lines

    def send(self, request: dict, job: Optional[Job]) -> None:
        line = json.dumps(request).encode("utf-8") + b"\n"
        start = self._log_position() if job is not None else 0
        with self.lock:
            if job is not None:
                if self.finished.is_set():
                    raise self._crash_error(self.stderr_lines)
                self.pending[job.id] = job
                job._log_start = start
            try:
                self.popen.stdin.write(line)
                self.popen.stdin.flush()
            except (BrokenPipeError, OSError, ValueError):
                if job is not None:
                    self.pending.pop(job.id, None)
                    self.popen.wait()
                    self._stderr_thread.join(2)
                    raise self._crash_error(job._log_start) from None

    def _read_stderr(self) -> None:
        for raw in self.popen.stderr:
            text = raw.decode("utf-8", "replace").rstrip()
            if text:
                with self._log_lock:
                    self.stderr_tail.append((self.stderr_lines, text))
                    self.stderr_lines += 1
                self.log(text)

    def _read_stdout(self) -> None:
        for raw in self.popen.stdout:
            try:
                event = json.loads(raw.decode("utf-8"))
            except ValueError:
                self.log(f"unexpected output from the engine: {raw[:200]!r}")
                continue
            self._dispatch(event)
        # End of output: the engine stopped. Fail whatever was still waiting.
        self.popen.wait()
        self._stderr_thread.join(2)
        with self.lock:
            self.finished.set()
            waiting = list(self.pending.values())
            self.pending.clear()
        for job in waiting:
            job._finish(error=self._crash_error(job._log_start))

    def _dispatch(self, event: dict) -> None:
        kind = event.get("event")
        if kind == "ready":
            if self.version is not None and event.get("version") != self.version:
                self.engine_version = str(event.get("version"))
                self.popen.kill()  # end of output fails every waiting job with the mismatch message
                return
            self.ready.set()
            return
        if self.engine_version is not None:
            return  # an engine of another version: nothing it answers is used (its jobs fail at its end)
        with self.lock:
            job = self.pending.get(str(event.get("id")))
            if job is not None and kind in ("result", "error"):
                del self.pending[job.id]
        if job is None:
            if kind == "error":
                self.log(f"engine error: {event.get('message')}")
            return
        if kind == "progress":
            if job.on_progress is not None:
                job.on_progress(int(event.get("done", 0)), int(event.get("total", 0)), str(event.get("message", "")))
        elif kind == "result":
            job._finish(result=event.get("result"))
        elif kind == "error":
            error_kind = event.get("kind")
            message = str(event.get("message", "unknown error"))
            cls = {"user": EngineUserError, "cancelled": EngineCancelled}.get(error_kind, EngineError)
            job._finish(error=cls(message))

    def _crash_error(self, since: int = 0) -> EngineCrashed:
        """The error of a request sent when the log had ``since`` lines: it quotes only later lines."""
        code = self.popen.returncode
        if self.engine_version is not None:
            return EngineVersionMismatch(
                f"The Segment Anything engine at '{self.python}' is version {self.engine_version}, the plugin is "
                f"version {self.version}. Open Raster > Segment Anything > Engine settings and click 'Create and "
                f"install' to set up the engine bundled with the plugin, or install sam-suite=={self.version} into "
                "that Python.")
        if self.stopping:
            return EngineCrashed("The Segment Anything engine was stopped (the plugin was unloaded or its settings changed).")
        with self._log_lock:
            lines = [text for number, text in self.stderr_tail if number >= since][-8:]
        log = ("\nEngine log while it ran:\n" + "\n".join(lines)) if lines else ""
        if not self.ready.is_set():
            return EngineCrashed(
                f"The Segment Anything engine could not start with the Python '{self.python}' ({_how_it_ended(code)}). "
                f"That Python needs sam_core installed (pip install sam-suite[geo]); choose another one in the "
                f"plugin's settings or set {ENV_VAR}.{log}"
            )
        return EngineCrashed(
            f"The Segment Anything engine stopped unexpectedly ({_how_it_ended(code)}). QGIS is fine; the engine "
            f"restarts with the next request.{log or ' It logged nothing while this request ran.'}"
        )

    def stop(self, timeout: float) -> None:
        self.stopping = True
        if self.popen.poll() is None:
            try:
                self.send({"id": "shutdown", "cmd": "shutdown"}, None)
                self.popen.stdin.close()
            except (OSError, ValueError):
                pass
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()
        self._stdout_thread.join(timeout)
        self._stderr_thread.join(timeout)
        for stream in (self.popen.stdin, self.popen.stdout, self.popen.stderr):
            try:
                stream.close()
            except (OSError, ValueError):
                pass


def _how_it_ended(code: Optional[int]) -> str:
    """'exit code 1', or 'killed by signal 9 (SIGKILL)' for a negative return code (POSIX)."""
    if code is None or code >= 0:
        return f"exit code {code}"
    try:
        import signal

        name = signal.Signals(-code).name
    except (ValueError, AttributeError):
        name = "unknown"
    hint = "; the system may have run out of memory" if name == "SIGKILL" else ""
    return f"killed by signal {-code} ({name}{hint})"


class EngineClient:
    """Talks to one engine process, started on the first request and restarted after a crash.

    ``python`` is the interpreter path, or a callable that returns it (read at each start, so a
    settings change applies to the next engine). ``log`` receives the engine's stderr lines. With
    ``version``, an engine of another sam_core version is stopped at start and every request fails with
    :class:`EngineVersionMismatch`.
    """

    def __init__(self, python: "str | Callable[[], Optional[str]] | None" = None,
                 log: Optional[Callable[[str], None]] = None, version: Optional[str] = None) -> None:
        self._python = python
        self._version = version
        self._log = log or (lambda text: None)
        self._lock = threading.Lock()
        self._process: Optional[_EngineProcess] = None
        self._ids = itertools.count(1)

    def python(self) -> Optional[str]:
        """The engine interpreter: ``SAM_ENGINE_PYTHON`` if set, else the configured one."""
        env = os.environ.get(ENV_VAR, "").strip()
        if env:
            return env
        value = self._python() if callable(self._python) else self._python
        return value or None

    @property
    def pid(self) -> Optional[int]:
        """Process id of the running engine, or None."""
        process = self._process
        return process.popen.pid if process is not None and process.alive else None

    @property
    def running(self) -> bool:
        return self.pid is not None

    def _ensure_process(self) -> _EngineProcess:
        with self._lock:
            if self._process is None or not self._process.alive:
                if self._process is not None:
                    self._process.stop(1.0)
                python = self.python()
                if not python:
                    raise EngineNotConfigured(
                        "No Python for the Segment Anything engine is configured. Open Plugins ▸ Segment Anything "
                        f"▸ Engine settings to create one, or set the environment variable {ENV_VAR}."
                    )
                self._process = _EngineProcess(python, self._log, self._version)
            return self._process

    def submit(self, cmd: str, params: Optional[dict] = None, *, lane: str = "main",
               on_progress: Optional[ProgressCallback] = None,
               on_done: Optional[Callable[[Job], None]] = None) -> Job:
        """Send a request without waiting. ``on_progress`` and ``on_done`` run in a reader thread.

        Errors starting the engine are reported through the job (``on_done`` is called), never raised.
        """
        job = Job(str(next(self._ids)), cmd, on_progress, on_done)
        job._client = self
        try:
            process = self._ensure_process()
            process.send({"id": job.id, "cmd": cmd, "lane": lane, "params": params or {}}, job)
        except EngineError as error:
            job._finish(error=error)
        return job

    def request(self, cmd: str, params: Optional[dict] = None, *, lane: str = "main",
                progress: Optional[ProgressCallback] = None,
                is_cancelled: Optional[Callable[[], bool]] = None, poll_s: float = 0.1) -> Any:
        """Send a request and wait for its result (for worker threads). Raises :class:`EngineError`.

        ``is_cancelled`` is polled every ``poll_s`` seconds; when it returns True a cancel is sent and
        the call raises :class:`EngineCancelled` once the engine has stopped the request.
        """
        job = self.submit(cmd, params, lane=lane, on_progress=progress)
        cancel_sent = False
        while not job._done.wait(poll_s):
            if not cancel_sent and is_cancelled is not None and is_cancelled():
                self.cancel(job)
                cancel_sent = True
        return job.wait()

    def cancel(self, job: Job) -> None:
        """Ask the engine to stop ``job`` between units of work."""
        process = self._process
        if process is not None and process.alive and not job.done:
            try:
                process.send({"id": f"cancel-{job.id}", "cmd": "cancel", "params": {"target": job.id}}, None)
            except EngineError:
                pass

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the engine (pending requests fail with EngineCrashed); a later request starts a new one."""
        with self._lock:
            process, self._process = self._process, None
        if process is not None:
            process.stop(timeout)

