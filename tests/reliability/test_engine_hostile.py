"""The engine process survives any request: any id, any command, any parameter value, then still answers.

Issue 15, items 1 and 6: an id of ``NaN`` or ``Infinity`` (valid for Python's JSON reader) once killed the
request's lane, and wrong parameter types came back as internal errors with a traceback.
"""

from __future__ import annotations

import json
import math
import os
import queue
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sam_core.engine import _COMMAND_PARAMS, _PARAM_TYPES

ROOT = Path(__file__).resolve().parents[2]


def _refuse(constant: str) -> None:
    raise ValueError(f"{constant} is not JSON")


class Engine:
    """A real ``python -m sam_core engine`` process and a reader thread collecting its events."""

    def __init__(self, cwd: Path) -> None:
        env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
        self.popen = subprocess.Popen([sys.executable, "-m", "sam_core", "engine"], stdin=subprocess.PIPE,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, cwd=str(cwd))
        self.events: "queue.Queue[dict]" = queue.Queue()
        self.stderr = b""
        threading.Thread(target=self._read, daemon=True).start()
        threading.Thread(target=self._read_err, daemon=True).start()
        assert self.events.get(timeout=120)["event"] == "ready"
        self.count = 0

    def _read(self) -> None:
        for raw in self.popen.stdout:
            try:  # strict JSON only: NaN and Infinity are refused as QGIS's reader may refuse them
                self.events.put(json.loads(raw, parse_constant=_refuse))
            except ValueError:
                self.events.put({"event": "not strict JSON", "raw": raw.decode(errors="replace")})

    def _read_err(self) -> None:
        self.stderr = self.popen.stderr.read()

    def send_raw(self, data: bytes) -> None:
        self.popen.stdin.write(data)
        self.popen.stdin.flush()

    def ask(self, request: dict, lane: object = None, timeout: float = 120) -> tuple[list[dict], dict]:
        """Send ``request`` and then a ``hello`` probe on the same lane; return (the events before the probe's
        answer, the probe's answer). The probe is answered only when the lane still serves."""
        self.count += 1
        probe_id = f"probe-{self.count}"
        self.send_raw(json.dumps(request).encode() + b"\n")  # NaN and Infinity written as Python writes them
        self.send_raw(json.dumps({"id": probe_id, "cmd": "hello", "lane": lane}).encode() + b"\n")
        before = []
        while True:
            event = self.events.get(timeout=timeout)
            assert event["event"] != "not strict JSON", event
            if event.get("id") == probe_id and event["event"] in ("result", "error"):
                return before, event
            before.append(event)

    def close(self) -> int:
        self.popen.stdin.close()
        return self.popen.wait(60)


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    process = Engine(tmp_path_factory.mktemp("engine_cwd"))
    yield process
    assert process.close() == 0


def _terminal(events: list[dict]) -> list[dict]:
    return [e for e in events if e["event"] in ("result", "error")]


@pytest.mark.parametrize("request_id", [float("nan"), float("inf"), -float("inf"), [1, 2], {"a": None}, True])
@pytest.mark.parametrize("lane", [None, "interactive"])
def test_any_id_gets_one_answer_and_the_lane_keeps_serving(engine, request_id, lane):
    before, probe = engine.ask({"id": request_id, "cmd": "no_such_command", "lane": lane}, lane)
    (answer,) = _terminal(before)
    assert answer["event"] == "error" and answer["kind"] == "user" and "unknown command" in answer["message"]
    if isinstance(request_id, float):
        assert answer["id"] == json.dumps(request_id)  # "NaN", "Infinity": as text, strict JSON on the wire
    else:
        assert answer["id"] == request_id
    assert probe["event"] == "result" and probe["result"]["protocol"] == 1


@pytest.mark.parametrize(
    "cmd, params, name",
    [
        ("segment_at", {"raster": "r.tif", "points": "abc", "labels": [1]}, "points"),
        ("segment_at", {"raster": "r.tif", "points": [[1, 2]], "labels": [7]}, "labels"),
        ("segment_at", {"raster": "r.tif", "points": [[1, float("nan")]], "labels": [1]}, "points"),
        ("encode_raster", {"raster": "r.tif", "tile_size": "big"}, "tile_size"),
        ("automask_raster", {"raster": "r.tif", "output": "o.gpkg", "extent": [1, 2, 3]}, "extent"),
        ("automask_raster", {"raster": "r.tif", "output": "o.gpkg", "generator_params": {"bogus": 1}}, "generator_params"),
        ("segment_prompts", {"raster": "r.tif", "output": "o.gpkg", "prompts": [{"points": "x"}]}, "prompts"),
        ("segment_at", {"raster": 5, "points": [[1, 2]], "labels": [1]}, "raster"),
    ],
)
def test_wrong_parameter_types_are_user_errors_naming_the_parameter(engine, cmd, params, name):
    before, probe = engine.ask({"id": "t", "cmd": cmd, "params": params})
    (answer,) = _terminal(before)
    assert answer["kind"] == "user", answer
    assert f"parameter '{name}'" in answer["message"] and "Traceback" not in answer["message"]
    assert probe["event"] == "result"


# Any JSON value Python's reader can produce, NaN and infinities included.
JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-10**6, 10**6) | st.floats() | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=10,
)
COMMANDS = sorted(_COMMAND_PARAMS)
PARAMS = sorted(_PARAM_TYPES)


@st.composite
def requests(draw):
    cmd = draw(st.sampled_from(COMMANDS) | st.text(max_size=12).filter(lambda c: c not in ("cancel", "shutdown")))
    names = _COMMAND_PARAMS.get(cmd, ()) or PARAMS
    params = draw(st.dictionaries(st.sampled_from(list(names)) | st.text(max_size=6), JSON, max_size=5)
                  | st.sampled_from([None, [], "params", 3]))
    lane = draw(st.sampled_from([None, "main", "interactive", "fuzz"]) | JSON.filter(lambda v: not isinstance(v, str)))
    return {"id": draw(JSON), "cmd": cmd, "lane": lane, "params": params}


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
@given(request=requests())
def test_random_requests_each_get_one_answer_and_the_engine_keeps_serving(engine, request):
    lane = request["lane"] if isinstance(request["lane"], str) and request["lane"] else None
    before, probe = engine.ask(request, lane)
    answers = _terminal(before)
    assert len(answers) == 1, before
    answer = answers[0]
    assert answer["event"] == "result" or answer["kind"] == "user", (request, answer)
    assert probe["event"] == "result", probe


def test_a_result_that_is_not_json_is_an_internal_error(tmp_path):
    from io import BytesIO

    from sam_core.engine import Engine as Core, _Server

    class NaNResult(Core):
        def _cmd_hello(self, params, progress, cancel):
            return {"score": math.nan}

    out = BytesIO()
    server = _Server(NaNResult(), BytesIO(), out)
    server._execute(1, "hello", {})
    server._execute(2, "models", {})
    first, second = [json.loads(line, parse_constant=_refuse) for line in out.getvalue().splitlines()]
    assert first["id"] == 1 and first["kind"] == "internal" and "not JSON" in first["message"]
    assert second["id"] == 2 and second["event"] == "result"
