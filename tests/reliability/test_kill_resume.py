"""Kill, interrupt or terminate ``geo automask`` and ``annotate`` mid-run, run again: the output equals an
uninterrupted run's exactly. SIGTERM says ``terminated`` and exits 143, SIGINT ``interrupted`` and 130.

Real processes (``python -m sam_core``) with the committed ``demo`` model on small generated data.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from affine import Affine
from PIL import Image
from rasterio.crs import CRS

from helpers.georasters import known_scene, read_output, write_raster

ROOT = Path(__file__).resolve().parents[2]
ENV = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
GEO_OPTIONS = ["--tile-size", "128", "--overlap", "32", "--points-per-side", "8", "--quiet"]
ANNOTATE_OPTIONS = ["--points-per-side", "6", "--quiet"]


def _cli(*args) -> list[str]:
    return [sys.executable, "-m", "sam_core", *map(str, args)]


def _finish(argv: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True, env=ENV, cwd=ROOT, timeout=600)


def _as_from_a_terminal() -> None:
    """In the child: Ctrl-C's default action, as a command started from a terminal has it (a suite run in
    the background, e.g. ``bash .ci/run &``, would otherwise hand its ignored SIGINT down to the child)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _interrupt(argv: list[str], folder: Path, pattern: str, done: int, signum: int) -> subprocess.CompletedProcess:
    """Start ``argv``, wait until ``folder`` holds ``done`` finished units (``pattern``), send ``signum``."""
    process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV, cwd=ROOT,
                               preexec_fn=_as_from_a_terminal)
    deadline = time.monotonic() + 300
    while process.poll() is None and time.monotonic() < deadline:
        if folder.is_dir() and len(list(folder.glob(pattern))) >= done:
            break
        time.sleep(0.05)
    assert process.poll() is None, "the run ended before it could be interrupted; give it more work"
    process.send_signal(signum)
    out, err = process.communicate(timeout=120)
    return subprocess.CompletedProcess(argv, process.returncode, out, err)


@pytest.fixture(scope="module")
def raster(tmp_path_factory) -> Path:
    image, _ = known_scene((224, 320))  # 2 x 3 tiles of 128 with 32 overlap
    folder = tmp_path_factory.mktemp("resume_raster")
    return write_raster(folder / "scene.tif", image, Affine(10.0, 0, 400000.0, 0, -10.0, 5600000.0), CRS.from_epsg(32633))


@pytest.fixture(scope="module")
def geo_reference(raster, tmp_path_factory):
    out = tmp_path_factory.mktemp("reference") / "ref.gpkg"
    done = _finish(_cli("geo", "automask", raster, out, *GEO_OPTIONS))
    assert done.returncode == 0, done.stderr
    return read_output(out)


def _same_features(a, b) -> None:
    geoms_a, attrs_a, crs_a = a
    geoms_b, attrs_b, crs_b = b
    assert crs_a == crs_b and len(geoms_a) == len(geoms_b) > 0
    assert [g.wkb for g in geoms_a] == [g.wkb for g in geoms_b]
    assert {k: list(v) for k, v in attrs_a.items()} == {k: list(v) for k, v in attrs_b.items()}


@pytest.mark.parametrize("signum, code, word", [(signal.SIGKILL, -9, None), (signal.SIGTERM, 143, "terminated")])
def test_geo_automask_interrupted_then_rerun_equals_an_uninterrupted_run(signum, code, word, raster, geo_reference, tmp_path):
    out = tmp_path / "out.gpkg"
    argv = _cli("geo", "automask", raster, out, *GEO_OPTIONS)
    stopped = _interrupt(argv, tmp_path / ".out.gpkg.tiles", "tile_*.npz", 2, signum)
    assert stopped.returncode == code, stopped.stderr
    if word is not None:
        assert stopped.stderr.strip().splitlines()[-1] == word and "Traceback" not in stopped.stderr
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".part.gpkg")]  # no half-written output
    again = _finish(argv)
    assert again.returncode == 0, again.stderr
    assert "resumed" in again.stdout
    _same_features(read_output(out), geo_reference)
    assert not (tmp_path / ".out.gpkg.tiles").exists()


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(3)
    for index in range(5):
        image = np.full((96, 112, 3), 40, np.uint8)
        for _ in range(3):
            y, x = rng.integers(0, 70, 2)
            image[y : y + 24, x : x + 30] = rng.integers(80, 255, 3)
        Image.fromarray(image).save(folder / f"img_{index}.png")
    return folder


@pytest.mark.slow  # about 6 s: two annotate processes, one interrupted
def test_annotate_interrupted_by_ctrl_c_then_rerun_equals_an_uninterrupted_run(images, tmp_path):
    reference = tmp_path / "reference.json"
    done = _finish(_cli("annotate", images, "--out", reference, *ANNOTATE_OPTIONS))
    assert done.returncode == 0, done.stderr
    out = tmp_path / "coco.json"
    argv = _cli("annotate", images, "--out", out, *ANNOTATE_OPTIONS)
    stopped = _interrupt(argv, tmp_path / ".coco.json.parts", "*.json", 3, signal.SIGINT)  # manifest + 2 images
    assert stopped.returncode == 130 and stopped.stderr.strip().splitlines()[-1] == "interrupted", stopped.stderr
    assert not out.exists()
    again = _finish(argv)
    assert again.returncode == 0, again.stderr
    assert "resumed from a previous run" in again.stdout
    assert json.loads(out.read_text()) == json.loads(reference.read_text())
