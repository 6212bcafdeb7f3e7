"""The engine process protocol (``python -m sam_core engine``): JSON lines on stdin/stdout."""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
SHARED_DATA = ROOT.parent / "shared" / "data"


class EngineProcess:
    """A real engine subprocess; events are collected by a reader thread."""

    def __init__(self) -> None:
        env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
        self.popen = subprocess.Popen([sys.executable, "-m", "sam_core", "engine"], stdin=subprocess.PIPE,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, cwd=str(ROOT))
        self.lines: list[bytes] = []
        self.events: "queue.Queue[dict]" = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self.stderr = b""
        self._err = threading.Thread(target=self._read_err, daemon=True)
        self._err.start()

    def _read(self) -> None:
        for raw in self.popen.stdout:
            self.lines.append(raw)
            self.events.put(json.loads(raw))

    def _read_err(self) -> None:
        self.stderr = self.popen.stderr.read()

    def send(self, request: dict | bytes) -> None:
        data = request if isinstance(request, bytes) else json.dumps(request).encode() + b"\n"
        self.popen.stdin.write(data)
        self.popen.stdin.flush()

    def until_done(self, request_id, timeout: float = 120) -> list[dict]:
        """Events of ``request_id`` up to its result or error (other ids are kept for later)."""
        seen, others = [], []
        while True:
            event = self.events.get(timeout=timeout)
            if event.get("id") != request_id:
                others.append(event)
                continue
            seen.append(event)
            if event["event"] in ("result", "error"):
                for other in others:
                    self.events.put(other)
                return seen

    def close(self) -> int:
        if self.popen.poll() is None:
            self.popen.stdin.close()
        code = self.popen.wait(60)
        self._reader.join(5)
        return code


@pytest.fixture
def engine():
    process = EngineProcess()
    yield process
    process.close()


def test_ready_hello_and_errors(engine):
    ready = engine.events.get(timeout=60)
    assert ready["event"] == "ready" and ready["protocol"] == 1 and ready["pid"] == engine.popen.pid
    engine.send({"id": "1", "cmd": "hello"})
    (hello,) = engine.until_done("1")
    assert hello["event"] == "result" and hello["result"]["protocol"] == 1

    engine.send(b"this is not json\n")
    bad = engine.events.get(timeout=10)
    assert bad["event"] == "error" and bad["kind"] == "user" and bad["id"] is None

    engine.send({"id": "2", "cmd": "no_such_command"})
    (error,) = engine.until_done("2")
    assert error["kind"] == "user" and "unknown command" in error["message"]

    engine.send({"id": "3", "cmd": "segment_at", "params": {"raster": "x.tif"}})
    (error,) = engine.until_done("3")
    assert error["kind"] == "user" and "points, labels" in error["message"]

    engine.send({"id": "4", "cmd": "encode_raster", "params": {"raster": "x.tif", "colour": "red"}})
    (error,) = engine.until_done("4")
    assert error["kind"] == "user" and "colour" in error["message"]

    # a SamError from sam_core reaches the client as a user error with its message
    engine.send({"id": "5", "cmd": "encode_raster", "params": {"raster": "/nonexistent/raster.tif"}})
    (error,) = engine.until_done("5")
    assert error["kind"] == "user" and "raster.tif" in error["message"]

    engine.send({"id": "6", "cmd": "shutdown"})
    (done,) = engine.until_done("6")
    assert done["result"] == {"shutdown": True}
    assert engine.close() == 0
    # stdout carries protocol lines only
    assert all(json.loads(line) for line in engine.lines)


def test_models_and_info(engine):
    engine.send({"id": "m", "cmd": "info"})
    events = engine.until_done("m")
    info = events[-1]["result"]
    assert "cpu" in info["devices"]
    assert {"demo", "vit_b", "vit_t"} <= {model["name"] for model in info["models"]}


def test_cancel_a_queued_request(engine):
    # "info" imports torch (seconds); "models" queued behind it in the same lane is cancelled before it runs
    engine.send(b"".join(json.dumps(r).encode() + b"\n" for r in (
        {"id": "a", "cmd": "info"},
        {"id": "b", "cmd": "models"},
        {"id": "c", "cmd": "cancel", "params": {"target": "b"}},
    )))
    (cancel_ack,) = engine.until_done("c")
    assert cancel_ack["result"] == {"cancelled": True}
    (cancelled,) = engine.until_done("b")
    assert cancelled["event"] == "error" and cancelled["kind"] == "cancelled"
    assert engine.until_done("a")[-1]["event"] == "result"


def test_end_of_input_stops_the_engine(engine):
    engine.send({"id": "h", "cmd": "hello"})
    engine.until_done("h")
    assert engine.close() == 0
