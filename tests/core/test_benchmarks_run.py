"""The latency benchmarks run end to end in their ``--quick`` form (small configurations, seconds of
work) and report what they measure. Behaviour only: no timing is asserted."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow  # each script starts several fresh Python processes that import torch


def _run(script: str, tmp_path: Path, *args: str) -> tuple[str, list]:
    out = tmp_path / "result.json"
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), *args, "--json", str(out)],
                          capture_output=True, text=True, cwd=str(ROOT), timeout=1200)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout, json.loads(out.read_text())


def test_first_mask_runs_both_sides(tmp_path):
    stdout, rows = _run("bench_first_mask.py", tmp_path, "--quick")
    assert [(r["model"], r["side"]) for r in rows] == [("vit_t", "official"), ("vit_t", "sam_core")]
    assert all(r["first mask"]["median_s"] > 0 and r["peak_above_loaded_mb"] >= 0 for r in rows)
    assert "vit_t" in stdout


def test_propagation_runs_every_frame_on_both_sides(tmp_path):
    stdout, rows = _run("bench_propagation.py", tmp_path, "--quick")
    official, ours = rows
    assert official["frames"] == ours["frames"] == 6
    assert ours["features_computed"] == 6 and 1 <= ours["peak_cached_frames"] <= 6
    assert "official init_state" in stdout


def test_propagation_one_side_with_a_small_feature_budget(tmp_path):
    # a quick config frame's features take 0.156 MB: a 0.4 MB budget holds 2 of the 6 frames at most
    stdout, rows = _run("bench_propagation.py", tmp_path, "--quick", "--sides", "sam_core", "--budget-mb", "0.4",
                        "--threads", "1")
    (ours,) = rows
    assert ours["side"] == "sam_core" and ours["frames"] == ours["features_computed"] == 6
    assert ours["peak_cached_frames"] == 2 and ours["peak_cached_mb"] <= 0.4
    assert ours["machine"].endswith("1 threads") and ours["load_before"] >= 0
    assert "at most 2 held" in stdout


def test_sam3_queries_do_not_encode_again(tmp_path):
    _, rows = _run("bench_sam3.py", tmp_path, "--size", "small", "--repeats", "1")
    official, ours = rows
    assert ours["encodes_during_queries"] == 0
    assert ours["query_peak_mb"] is not None and official["new phrase"]["median_s"] > 0


def test_qgis_tiles_through_the_engine(tmp_path):
    stdout, rows = _run("bench_qgis_tiles.py", tmp_path, "--quick")
    official, engine = rows
    assert official["tiles"] == engine["tiles"] == 2
    assert len(engine["tile_times"]) == 2
    assert "sam_core engine" in stdout


@pytest.mark.skipif(not os.environ.get("DISPLAY"), reason="napari needs a display: run under xvfb-run")
def test_napari_click_to_preview(tmp_path):
    stdout, rows = _run("bench_napari_click.py", tmp_path, "--quick")
    cached, tiled = rows
    assert not cached["tiled"] and tiled["tiled"]
    assert cached["click_to_preview"]["clicks"] == tiled["click_to_preview"]["clicks"] == 2
    assert "official SamPredictor.predict" in cached["baselines"]
    assert "napari click -> drawn preview" in stdout
