"""``python -m sam_core geo ...`` end to end with a real (small, random-weight) model, and its errors."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import shapely
from affine import Affine
from rasterio.crs import CRS

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from helpers.georasters import known_scene, read_output, write_raster  # noqa: E402

from sam_core.cache import EmbeddingCache  # noqa: E402
from sam_core.cli import main  # noqa: E402

UTM = CRS.from_epsg(32633)
TRANSFORM = Affine(10.0, 0.0, 400000.0, 0.0, -10.0, 5600000.0)
CORRUPT = Path(__file__).resolve().parents[1] / "data" / "corrupt.tif"


@pytest.fixture(scope="module")
def raster(tmp_path_factory):
    image, _ = known_scene((200, 220))
    return write_raster(tmp_path_factory.mktemp("cli") / "scene.tif", image, TRANSFORM, UTM)


def fast(checkpoint):
    return ["--checkpoint", str(checkpoint), "--tile-size", "128", "--overlap", "32", "--quiet"]


def test_geo_automask_runs_the_real_generator_and_keeps_the_crs(raster, small_vit_checkpoint, tmp_path, capsys):
    out = tmp_path / "out.gpkg"
    args = ["geo", "automask", str(raster), str(out), *fast(small_vit_checkpoint), "--points-per-side", "4",
            "--pred-iou-thresh", "0", "--stability-thresh", "0"]
    assert main(args) == 0
    assert "polygons from 4 tiles" in capsys.readouterr().out
    geoms, attrs, crs = read_output(out)
    assert crs == UTM
    assert all(g.is_valid for g in geoms)
    left, bottom, right, top = 400000.0, 5598000.0, 402200.0, 5600000.0
    assert all(shapely.box(left, bottom, right, top).buffer(1e-6).contains(g) for g in geoms)


def test_geo_segment_writes_one_polygon_per_prompt(raster, small_vit_checkpoint, tmp_path):
    import pyogrio.raw

    prompts = tmp_path / "prompts.geojson"
    points = [shapely.Point(400500.0, 5599500.0), shapely.Point(401500.0, 5598500.0)]
    pyogrio.raw.write(str(prompts), shapely.to_wkb(np.array(points, dtype=object)), [np.array([1, 1])], ["label"],
                      driver="GeoJSON", crs="EPSG:32633", geometry_type="Point")
    out = tmp_path / "seg.fgb"
    assert main(["geo", "segment", str(raster), str(prompts), str(out), *fast(small_vit_checkpoint)]) == 0
    geoms, attrs, crs = read_output(out)
    assert crs == UTM and len(geoms) <= 2 and "group" in attrs


def test_geo_encode_fills_the_cache(raster, small_vit_checkpoint, tmp_path, capsys):
    cache = tmp_path / "cache"
    assert main(["geo", "encode", str(raster), "--cache-dir", str(cache), *fast(small_vit_checkpoint)]) == 0
    assert "4 tiles encoded" in capsys.readouterr().out
    files = sorted(cache.glob("*.samemb"))  # one readable embedding file per encoded tile
    assert len(files) == 4 and all(EmbeddingCache(directory=cache).get(path.stem) is not None for path in files)


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--bands", "4,2,1"], "band 4 does not exist"),
        (["--extent", "0,0,10,10"], "does not overlap"),
        (["--tile-size", "64", "--overlap", "64"], "overlap must be"),
        (["--extent", "1,2"], "--extent needs 4 numbers"),
    ],
)
def test_bad_input_is_one_line_exit_2_and_no_output(raster, tmp_path, capsys, extra, message):
    out = tmp_path / "bad.gpkg"
    assert main(["geo", "automask", str(raster), str(out), "--quiet", *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1 and "Traceback" not in err
    assert list(tmp_path.iterdir()) == []


def test_corrupt_raster_and_missing_prompts(raster, tmp_path, capsys):
    assert main(["geo", "automask", str(CORRUPT), str(tmp_path / "x.gpkg"), "--quiet"]) == 2
    assert "corrupt" in capsys.readouterr().err
    assert main(["geo", "segment", str(raster), str(tmp_path / "none.gpkg"), str(tmp_path / "x.gpkg"), "--quiet"]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []
