"""Raster reading (bands, one stretch for all tiles, nodata, resampling), vectorization, writers, prompts."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import shapely
from affine import Affine
from rasterio.crs import CRS

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from helpers.georasters import map_iou, read_output, write_raster  # noqa: E402

from sam_core.errors import SamError  # noqa: E402
from sam_core.geo.prompts import load_prompts, parse_label, read_prompt_file, to_pixel_prompts  # noqa: E402
from sam_core.geo.raster import open_raster, reopen  # noqa: E402
from sam_core.geo.vectorize import Feature, area_m2, mask_to_geometry  # noqa: E402
from sam_core.geo.writer import write_features  # noqa: E402

DATA = Path(__file__).resolve().parents[1] / "data"  # copies of ../shared/data (a missing file fails)
LANDSAT = DATA / "RGB.byte.tif"
WORLD = DATA / "world.rgb.tif"
UTM = CRS.from_epsg(32633)
TRANSFORM = Affine(10.0, 0.0, 400000.0, 0.0, -10.0, 5600000.0)


def test_landsat_scene_nodata_frame_is_invalid_and_8bit_passes_unchanged():
    with open_raster(LANDSAT) as view:
        assert view.crs == CRS.from_epsg(32618)
        assert (view.height, view.width) == (718, 791) and view.bands == (1, 2, 3)
        assert view.value_range is None
        rgb, valid = view.read(0, 0, 100, 100)
        assert not valid[0, 0]  # the corner lies in the nodata frame
        assert (rgb[~valid] == 0).all()
        rgb, valid = view.read(300, 300, 400, 400)
        assert valid.all()
        with __import__("rasterio").open(LANDSAT) as src:
            raw = np.moveaxis(src.read(window=((300, 400), (300, 400))), 0, -1)
        assert np.array_equal(rgb, raw)


def test_world_image_in_degrees_has_geodesic_area():
    with open_raster(WORLD) as view:
        assert view.crs == CRS.from_epsg(4326)
        one_degree = shapely.box(0, 0, 1, 1)
        assert area_m2(one_degree, view.crs) == pytest.approx(12308778361, rel=2e-3)  # 1°x1° at the equator


def test_band_selection_and_unknown_band():
    with open_raster(LANDSAT, bands="3,2,1") as view:
        rgb, _ = view.read(300, 300, 301, 301)
    with open_raster(LANDSAT) as view:
        ref, _ = view.read(300, 300, 301, 301)
    assert np.array_equal(rgb[0, 0], ref[0, 0, ::-1])
    with pytest.raises(SamError, match="band 4 does not exist.*3 band"):
        open_raster(LANDSAT, bands=[4, 2, 1])
    with pytest.raises(SamError, match="1 band .* or 3 bands"):
        open_raster(LANDSAT, bands="1,2")


def test_one_stretch_for_the_whole_raster(tmp_path):
    rng = np.random.default_rng(0)
    data = rng.integers(100, 4000, size=(200, 200), dtype=np.uint16)
    data[:, 100:] += 3000  # the right half is much brighter: per-tile stretches would differ
    path = write_raster(tmp_path / "u16.tif", data, TRANSFORM, UTM)
    with open_raster(path) as view:
        lo, hi = view.value_range
        assert lo < 200 and hi > 6500
        left, _ = view.read(0, 0, 200, 100)
        right, _ = view.read(0, 100, 200, 200)
        assert left.shape == (200, 100, 3) and (left[..., 0] == left[..., 2]).all()  # grayscale -> RGB
        expected = np.clip(np.rint((data.astype(float) - lo) * 255.0 / (hi - lo)), 0, 255).astype(np.uint8)
        assert np.array_equal(left[..., 0], expected[:, :100])
        assert np.array_equal(right[..., 0], expected[:, 100:])
        again = reopen(view.spec)
        assert again.value_range == view.value_range
        assert np.array_equal(again.read(0, 0, 10, 10)[0], left[:10, :10])
        again.close()


def test_resolution_resamples_and_keeps_the_georeferencing(tmp_path):
    data = np.zeros((200, 300, 3), np.uint8)
    data[40:80, 60:120] = 200
    path = write_raster(tmp_path / "r.tif", data, TRANSFORM, UTM)
    with open_raster(path, resolution=20.0) as view:
        assert (view.height, view.width) == (100, 150)
        assert view.pixel_size == pytest.approx((20.0, 20.0))
        rgb, valid = view.read(0, 0, 100, 150)
        assert valid.all() and (rgb[20:40, 30:60] == 200).all() and rgb[:20].max() == 0
        assert tuple(view.pixel_to_map([[30, 20]])[0]) == pytest.approx((400600.0, 5599600.0))
        assert tuple(view.map_to_pixel([[400600.0, 5599600.0]])[0]) == pytest.approx((30.0, 20.0))


def test_mask_to_geometry_keeps_holes_and_map_coordinates():
    mask = np.zeros((20, 20), bool)
    mask[2:12, 2:12] = True
    mask[5:8, 5:8] = False
    mask[15:18, 15:18] = True  # a second part
    geom = mask_to_geometry(mask, TRANSFORM)
    assert geom.geom_type == "MultiPolygon" and geom.is_valid and len(geom.geoms) == 2
    big = max(geom.geoms, key=lambda g: g.area)
    assert len(big.interiors) == 1
    assert big.area == pytest.approx((100 - 9) * 100.0)
    assert big.bounds == pytest.approx((400020.0, 5599880.0, 400120.0, 5599980.0))


def test_writer_is_atomic_and_refuses_unknown_extensions(tmp_path, monkeypatch):
    features = [Feature(shapely.box(0, 0, 10, 10), {"id": 1, "predicted_iou": 0.9, "area_m2": None})]
    out = tmp_path / "out.gpkg"
    write_features(out, features, UTM)
    geoms, attrs, crs = read_output(out)
    assert len(geoms) == 1 and crs == UTM and np.isnan(attrs["area_m2"][0])
    before = out.read_bytes()

    import pyogrio.raw

    def broken(*args, **kwargs):
        Path(args[0]).write_bytes(b"half")
        raise RuntimeError("disk full")

    monkeypatch.setattr(pyogrio.raw, "write", broken)
    with pytest.raises(SamError, match=f"cannot write {out}: disk full"):  # GDAL's failure as one line for the user
        write_features(out, features, UTM)
    assert out.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["out.gpkg"]
    with pytest.raises(SamError, match="extension"):
        write_features(tmp_path / "out.txt", features, UTM)


def test_labels_and_grouping_of_prompt_files(tmp_path):
    import pyogrio.raw

    assert [parse_label(v) for v in (1, 0, "pos", "Negative", "fg", "bg", None, True, False, "")] == [1, 0, 1, 0, 1, 0, 1, 1, 0, 1]
    with pytest.raises(SamError, match="neither positive"):
        parse_label("maybe")
    box = shapely.box(0, 0, 100, 100)
    geoms = [box, shapely.Point(50, 50), shapely.Point(60, 60), shapely.Point(500, 500), shapely.Point(520, 500)]
    labels = np.array(["pos", "pos", "neg", "pos", "neg"], dtype=object)
    path = tmp_path / "p.gpkg"
    pyogrio.raw.write(str(path), shapely.to_wkb(np.array(geoms, dtype=object)), [labels], ["label"],
                      driver="GPKG", crs="EPSG:32633", geometry_type="Unknown")
    groups = read_prompt_file(path)
    assert len(groups) == 2
    assert groups[0].box is not None and groups[0].labels == [1, 0]
    assert groups[1].points == [(500.0, 500.0), (520.0, 500.0)] and groups[1].labels == [1, 0]
    # an explicit group field
    path2 = tmp_path / "g.gpkg"
    pyogrio.raw.write(str(path2), shapely.to_wkb(np.array(geoms[1:], dtype=object)),
                      [labels[1:], np.array([1, 1, 2, 2])], ["label", "group"],
                      driver="GPKG", crs="EPSG:32633", geometry_type="Point")
    groups = read_prompt_file(path2)
    assert [g.name for g in groups] == [1, 2] and [len(g.points) for g in groups] == [2, 2]


def test_prompts_are_reprojected_to_pixels(tmp_path):
    data = np.full((100, 100, 3), 50, np.uint8)
    path = write_raster(tmp_path / "r.tif", data, TRANSFORM, UTM)
    from rasterio.warp import transform as warp

    lon, lat = warp(UTM, "EPSG:4326", [400255.0], [5599745.0])
    with open_raster(path) as view:
        (prompt,) = to_pixel_prompts(load_prompts([{"points": [(lon[0], lat[0])], "crs": "EPSG:4326"}]), view)
        assert prompt.points[0] == pytest.approx((25.5, 25.5), abs=1e-3)
        (prompt,) = to_pixel_prompts(load_prompts([{"box": (400100.0, 5599500.0, 400300.0, 5599900.0)}]), view)
        assert prompt.box == pytest.approx((10, 10, 30, 50))
        with pytest.raises(SamError, match="outside the raster"):
            to_pixel_prompts(load_prompts([{"points": [(0.0, 0.0)]}]), view)


def test_map_iou_helper_sanity():
    assert map_iou(shapely.box(0, 0, 2, 1), shapely.box(0, 0, 1, 1)) == pytest.approx(0.5)


def test_a_raster_larger_than_memory_is_read_by_windows_and_samples(tmp_path):
    """40000 x 40000 x 3 uint16 is 9.6 GB: statistics and a tile must come from samples and windows."""
    import tracemalloc

    import rasterio

    path = tmp_path / "huge.tif"
    profile = dict(driver="GTiff", height=40000, width=40000, count=3, dtype="uint16", crs=UTM, transform=TRANSFORM,
                   tiled=True, blockxsize=512, blockysize=512, compress="deflate", sparse_ok=True)
    with rasterio.open(path, "w", **profile) as dst:  # sparse: only one block is stored
        dst.write(np.full((3, 512, 512), 3000, np.uint16), window=((20480, 20992), (20480, 20992)))
    tracemalloc.start()
    try:
        with open_raster(path) as view:
            assert (view.height, view.width) == (40000, 40000)
            rgb, valid = view.read(20000, 20000, 21024, 21024)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert rgb.shape == (1024, 1024, 3) and valid.all()
    assert (rgb[600:900, 600:900] == 255).all() and (rgb[:400, :400] == 0).all()
    assert peak < 300e6
