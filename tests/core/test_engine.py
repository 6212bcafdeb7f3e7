"""The engine process protocol (``python -m sam_core engine``): JSON lines on stdin/stdout."""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import threading
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


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
    engine.send({"id": "5", "cmd": "automask_raster", "params": {"raster": "/nonexistent/raster.tif",
                                                                 "output": "/tmp/never-written.gpkg"}})
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


class ServedEngine:
    """An engine served in this process on pipes (``sam_core.engine.serve``), so that a test can hold a
    request at a known point (``gate``) instead of racing a subprocess."""

    def __init__(self, engine) -> None:
        from sam_core.engine import serve

        read_in, self._write_in = os.pipe()
        self._read_out, write_out = os.pipe()
        self._in = os.fdopen(read_in, "rb")
        self._to_engine = os.fdopen(self._write_in, "wb", buffering=0)
        out = os.fdopen(write_out, "wb", buffering=0)
        self.events: "queue.Queue[dict]" = queue.Queue()
        self._server = threading.Thread(target=lambda: (serve(self._in, out, engine), out.close()), daemon=True)
        self._server.start()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        assert self.events.get(timeout=60)["event"] == "ready"

    def _read(self) -> None:
        with os.fdopen(self._read_out, "rb") as stream:
            for raw in stream:
                self.events.put(json.loads(raw))

    def send(self, request: dict) -> None:
        self._to_engine.write(json.dumps(request).encode() + b"\n")

    until_done = EngineProcess.until_done

    def close(self) -> None:
        self._to_engine.close()
        self._server.join(60)
        self._reader.join(10)
        assert not self._server.is_alive()


def _gated_engine(hold):
    """An Engine whose requests call ``hold(cmd, progress, cancel)`` first, and whose progress
    callbacks go through ``hold`` too (``cmd`` then names the request's command and ``"progress"``)."""
    from sam_core.engine import Engine

    class Gated(Engine):
        def run(self, cmd, params, progress, cancel):
            hold(cmd, None, cancel)

            def gated_progress(done, total, message=""):
                progress(done, total, message)
                hold(f"{cmd}:progress", done, cancel)

            return super().run(cmd, params, gated_progress, cancel)

    return Gated()


def test_cancel_a_queued_request():
    """"models" waits in the lane behind "info", which is held until the cancel is acknowledged."""
    started, release = threading.Event(), threading.Event()

    def hold(cmd, done, cancel):
        if cmd == "info":
            started.set()
            assert release.wait(60)

    served = ServedEngine(_gated_engine(hold))
    try:
        served.send({"id": "a", "cmd": "info"})
        assert started.wait(60)  # "a" runs: the lane is busy
        served.send({"id": "b", "cmd": "models"})
        served.send({"id": "c", "cmd": "cancel", "params": {"target": "b"}})
        (cancel_ack,) = served.until_done("c")
        assert cancel_ack["result"] == {"cancelled": True}
        release.set()
        assert served.until_done("a")[-1]["event"] == "result"
        (cancelled,) = served.until_done("b")
        assert cancelled["event"] == "error" and cancelled["kind"] == "cancelled"
    finally:
        release.set()
        served.close()


def test_end_of_input_stops_the_engine(engine):
    engine.send({"id": "h", "cmd": "hello"})
    engine.until_done("h")
    assert engine.close() == 0


RGB = str(ROOT / "tests" / "data" / "RGB.byte.tif")  # a copy of ../shared/data/RGB.byte.tif


@pytest.fixture
def engine_home(tmp_path, monkeypatch):
    """Keep the engine's embedding cache in a temporary folder."""
    monkeypatch.setenv("SAM_CORE_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def test_clicks_after_the_first_reuse_the_embedding(small_vit_checkpoint, engine_home):
    from sam_core.engine import Engine
    from sam_core.progress import CancelToken
    from sam_core.weights import home_dir

    engine = Engine()
    params = {"raster": RGB, "points": [[230000.0, 2720000.0]], "labels": [1], "checkpoint": str(small_vit_checkpoint),
              "tile_size": 256, "overlap": 32}
    first = engine.run("segment_at", dict(params), lambda *a: None, CancelToken())
    predictor = engine.predictor(None, str(small_vit_checkpoint), None)
    runs = predictor.encoder_runs
    assert runs >= 1
    assert isinstance(first["polygons"], list)
    for item in first["polygons"]:
        assert item["wkt"].startswith(("POLYGON", "MULTIPOLYGON")) and isinstance(item["predicted_iou"], float)
    second = engine.run("segment_at", dict(params, points=[[230300.0, 2720300.0], [231000.0, 2719000.0]],
                                              labels=[1, 0]), lambda *a: None, CancelToken())
    assert isinstance(second["polygons"], list)
    assert predictor.encoder_runs == runs  # same tile: only the decoder ran
    # each encoded tile also went to the on-disk cache of the engine, as a readable embedding file
    from sam_core.cache import EmbeddingCache

    files = sorted((home_dir() / "embeddings").glob("*.samemb"))
    assert len(files) == runs
    on_disk = EmbeddingCache(directory=home_dir() / "embeddings")
    assert all(on_disk.get(path.stem).model_id == predictor.model_id for path in files)


def test_the_engine_runs_the_precision_the_qgis_panel_names(small_vit_checkpoint, engine_home):
    """The QGIS plugin's engine runs ``auto``, the precision its settings dialog describes."""
    from sam_core.engine import Engine
    from sam_core.models import precision
    from sam_core.progress import CancelToken

    engine = Engine()
    engine.run("segment_at", {"raster": RGB, "points": [[230000.0, 2720000.0]], "labels": [1],
                              "checkpoint": str(small_vit_checkpoint), "tile_size": 256, "overlap": 32},
               lambda *a: None, CancelToken())
    running = engine.predictor(None, str(small_vit_checkpoint), None).model.precision
    assert running == precision.resolve_precision("auto", "cpu")
    assert precision.describe_auto("cpu").startswith(f"auto runs {running} on cpu: ")


def test_automask_and_clicks_share_the_engines_model(small_vit_checkpoint, engine_home, tmp_path):
    """One pool per engine: an automatic-mask run uses the model the clicks loaded (no second load), and
    its tiles stay out of the on-disk embedding cache."""
    from sam_core.engine import Engine
    from sam_core.progress import CancelToken
    from sam_core.weights import home_dir

    engine = Engine()
    common = {"raster": RGB, "checkpoint": str(small_vit_checkpoint), "tile_size": 256, "overlap": 32}
    engine.run("segment_at", dict(common, points=[[230000.0, 2720000.0]], labels=[1]), lambda *a: None, CancelToken())
    cached = sorted((home_dir() / "embeddings").glob("*.samemb"))
    result = engine.run("automask_raster", dict(common, output=str(tmp_path / "all.gpkg"),
                                                generator_params={"points_per_side": 2}), lambda *a: None,
                        CancelToken())
    assert result["tiles_done"] == result["tiles_total"] > 1 and (tmp_path / "all.gpkg").is_file()
    assert engine.pool.loads == 1
    assert sorted((home_dir() / "embeddings").glob("*.samemb")) == cached


def test_encode_raster_then_clicks_need_no_encoder(small_vit_checkpoint, engine_home):
    from sam_core.engine import Engine
    from sam_core.progress import CancelToken

    engine = Engine()
    events = []
    common = {"raster": RGB, "checkpoint": str(small_vit_checkpoint), "tile_size": 512, "overlap": 64}
    result = engine.run("encode_raster", dict(common), lambda *e: events.append(e), CancelToken())
    assert result["tiles"] >= 1 and events
    predictor = engine.predictor(None, str(small_vit_checkpoint), None)
    runs = predictor.encoder_runs
    engine.run("segment_at", dict(common, points=[[230000.0, 2720000.0]], labels=[1]), lambda *a: None, CancelToken())
    assert predictor.encoder_runs == runs


def test_automask_cancel_mid_run_leaves_no_output(small_vit_checkpoint, tmp_path, engine_home):
    """The run is held after its first tile until the cancel is acknowledged: it stops before the next."""
    midway, release = threading.Event(), threading.Event()

    def hold(cmd, done, cancel):
        if cmd == "automask_raster:progress" and done >= 1 and not midway.is_set():
            midway.set()
            assert release.wait(60)

    served = ServedEngine(_gated_engine(hold))
    output = tmp_path / "segments.gpkg"
    try:
        served.send({"id": "auto", "cmd": "automask_raster", "lane": "batch", "params": {
            "raster": RGB, "output": str(output), "checkpoint": str(small_vit_checkpoint), "tile_size": 128,
            "overlap": 16, "generator_params": {"points_per_side": 4}}})
        assert midway.wait(300)
        served.send({"id": "stop", "cmd": "cancel", "params": {"target": "auto"}})
        assert served.until_done("stop")[-1]["result"] == {"cancelled": True}
        release.set()
        events = served.until_done("auto")
        assert events[-1]["event"] == "error" and events[-1]["kind"] == "cancelled"
        progress = [e for e in events if e["event"] == "progress"]
        assert progress[-1]["done"] < progress[-1]["total"]  # stopped with tiles left
        assert not output.exists()
        # the engine keeps serving
        served.send({"id": "h", "cmd": "hello"})
        assert served.until_done("h")[-1]["event"] == "result"
    finally:
        release.set()
        served.close()


def test_automask_and_segment_prompts_write_polygons_in_the_raster_crs(engine, small_vit_checkpoint, tmp_path):
    import pyogrio
    import rasterio

    output = tmp_path / "auto.gpkg"
    engine.send({"id": "a", "cmd": "automask_raster", "params": {
        "raster": RGB, "output": str(output), "checkpoint": str(small_vit_checkpoint), "tile_size": 512,
        "overlap": 64, "generator_params": {"points_per_side": 4, "pred_iou_thresh": 0.0,
                                            "stability_score_thresh": 0.0}}})
    events = engine.until_done("a", timeout=300)
    assert [e["event"] for e in events][-1] == "result", events[-1]
    result = events[-1]["result"]
    assert result["output"] == str(output) and result["tiles_done"] == result["tiles_total"] == 4
    assert sum(e["event"] == "progress" for e in events) >= 4
    with rasterio.open(RGB) as src:
        raster_crs = src.crs
    info = pyogrio.read_info(output)
    assert info["features"] == result["count"]
    assert rasterio.crs.CRS.from_user_input(info["crs"]) == raster_crs

    prompts = [{"points": [[230000.0, 2720000.0]], "labels": [1]},
               {"box": [200000.0, 2700000.0, 215000.0, 2715000.0]}]
    out2 = tmp_path / "prompted.geojson"
    engine.send({"id": "p", "cmd": "segment_prompts", "params": {
        "raster": RGB, "prompts": prompts, "output": str(out2), "checkpoint": str(small_vit_checkpoint),
        "tile_size": 512, "overlap": 64}})
    events = engine.until_done("p", timeout=300)
    assert events[-1]["event"] == "result", events[-1]
    assert events[-1]["result"]["output"] == str(out2) and out2.exists()
