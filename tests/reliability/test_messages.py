"""Hostile or mistaken inputs end in one clear line (issue 15, items 5 and 9)."""

from __future__ import annotations

import numpy as np
import pytest
import shapely
from affine import Affine
from rasterio.crs import CRS

from helpers.cli import run_cli
from helpers.georasters import known_scene, write_raster

UTM = CRS.from_epsg(32633)


@pytest.fixture(scope="module")
def raster(tmp_path_factory):
    image, _ = known_scene((120, 140))
    return write_raster(tmp_path_factory.mktemp("msg") / "scene.tif", image, Affine(10.0, 0, 400000.0, 0, -10.0, 5600000.0), UTM)


def _prompts(path, geometries, crs, labels=None):
    import pyogrio.raw

    kind = geometries[0].geom_type
    columns, names = ([np.asarray(labels)], ["label"]) if labels is not None else ([], [])
    pyogrio.raw.write(str(path), shapely.to_wkb(np.array(geometries, dtype=object)), columns, names,
                      driver="GeoJSON", crs=crs, geometry_type=kind)
    return path


def _one_line(code, err):
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    return lines[0]


def test_utm_coordinates_labelled_as_degrees_are_one_clear_line(raster, tmp_path, capsys):
    prompts = _prompts(tmp_path / "p.geojson", [shapely.Point(400500.0, 5599500.0)], "EPSG:4326", [1])
    line = _one_line(*run_cli(["geo", "segment", raster, prompts, tmp_path / "o.gpkg", "--quiet"], capsys)[::2])
    assert "prompt group 1" in line and "EPSG:4326" in line and "EPSG:32633" in line
    assert "check that the prompts' CRS matches their coordinates" in line
    assert not (tmp_path / "o.gpkg").exists()


def test_a_zero_area_polygon_says_so(raster, tmp_path, capsys):
    flat = shapely.Polygon([(400100.0, 5599500.0), (400600.0, 5599500.0), (400300.0, 5599500.0)])
    prompts = _prompts(tmp_path / "p.geojson", [flat], "EPSG:32633")
    line = _one_line(*run_cli(["geo", "segment", raster, prompts, tmp_path / "o.gpkg", "--quiet"], capsys)[::2])
    assert "has no area" in line and "outside" not in line


def test_a_bad_label_is_shown_as_written(raster, tmp_path, capsys):
    prompts = _prompts(tmp_path / "p.geojson", [shapely.Point(400500.0, 5599500.0)], "EPSG:32633", [7])
    line = _one_line(*run_cli(["geo", "segment", raster, prompts, tmp_path / "o.gpkg", "--quiet"], capsys)[::2])
    assert "label value 7 " in line and "np." not in line


def test_segment_write_errors_name_the_output_not_a_temporary_file(tmp_path, capsys, monkeypatch):
    from helpers.cli import write_cells_png

    from sam_core import fileio

    image = write_cells_png(tmp_path)
    monkeypatch.setattr(fileio.os, "fsync", lambda fd: (_ for _ in ()).throw(OSError(28, "No space left on device")))
    out = tmp_path / "mask.png"
    line = _one_line(*run_cli(["segment", image, "--point", "45,35", "--out", out], capsys)[::2])
    assert line == f"error: cannot write {out}: No space left on device (the disk is full: free some space or choose another output folder)"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cells.png"]
