"""The tiled raster pipeline on synthetic GeoTIFFs with known objects, with a deterministic generator.

The generator (one mask per connected colour region) goes through the public ``generator=`` argument,
so these tests check tiling, seam merging, georeferencing, nodata, writers and resume exactly.
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import numpy as np
import pytest
from affine import Affine
from rasterio.crs import CRS

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from helpers.deterministic import ColourComponents, ColourPredictor  # noqa: E402
from helpers.georasters import known_scene, map_iou, read_output, to_map, write_raster  # noqa: E402

from sam_core.errors import SamError  # noqa: E402
from sam_core.geo import automask_raster, encode_raster, segment_at, segment_prompts  # noqa: E402
from sam_core.geo.pipeline import RasterSession  # noqa: E402
from sam_core.geo.settings import GeneratorSpec, OutputSettings, TilingSettings, pop_settings  # noqa: E402
from sam_core.progress import Cancelled, CancelToken  # noqa: E402

UTM = CRS.from_epsg(32633)
TRANSFORM = Affine(10.0, 0.0, 400000.0, 0.0, -10.0, 5600000.0)
TILING = TilingSettings(tile_size=128, overlap=32)
TILES = dict(tiling=TILING)


@pytest.fixture(scope="module")
def scene_raster(tmp_path_factory):
    image, objects = known_scene()
    path = write_raster(tmp_path_factory.mktemp("geo") / "scene.tif", image, TRANSFORM, UTM)
    return path, {name: to_map(g, TRANSFORM) for name, g in objects.items()}


def match(geoms, footprints):
    """For each known footprint, the best IoU with an output polygon (and its index)."""
    out = {}
    for name, fp in footprints.items():
        ious = [map_iou(g, fp) for g in geoms]
        out[name] = (max(ious), int(np.argmax(ious)))
    return out


def test_run_options_are_frozen_value_objects_built_from_flat_requests():
    """A run's options travel grouped (tiling, generator, polygons); the engine's flat JSON maps onto them."""
    params = {"raster": "r.tif", "tile_size": 256, "overlap": 32, "extent": (0, 0, 1, 1), "min_area": 5.0,
              "simplify": 2.0, "label_field": "kind"}
    tiling = pop_settings(TilingSettings, params)
    polygons = pop_settings(OutputSettings, params)
    assert tiling == TilingSettings(tile_size=256, overlap=32, extent=(0, 0, 1, 1))
    assert polygons == OutputSettings(min_area=5.0, simplify=2.0)
    assert params == {"raster": "r.tif", "label_field": "kind"}  # what is left goes on as keywords
    with pytest.raises(dataclasses.FrozenInstanceError):
        tiling.tile_size = 64  # type: ignore[misc]
    spec = GeneratorSpec.create("demo", params={"points_per_side": 4})
    assert spec.params["points_per_side"] == 4 and spec == GeneratorSpec.create("demo", params={"points_per_side": 4})


def test_polygons_land_on_the_known_footprints_with_the_raster_crs(scene_raster, tmp_path):
    raster, footprints = scene_raster
    out = tmp_path / "objects.gpkg"
    result = automask_raster(raster, out, generator=ColourComponents(), **TILES)
    assert result.count == len(footprints) and result.tiles_done == result.tiles_total == 12
    geoms, attrs, crs = read_output(out)
    assert crs == UTM
    assert all(g.is_valid for g in geoms)
    matched = match(geoms, footprints)
    for name, (iou, _) in matched.items():
        assert iou >= 0.9, name
    # the rectangle over a four-tile corner and the bar over three tiles are one polygon each
    assert attrs["n_tiles"][matched["corner"][1]] == 4
    assert attrs["n_tiles"][matched["bar"][1]] >= 3
    # touching objects stay apart, the ring keeps its hole
    assert matched["touch_left"][1] != matched["touch_right"][1]
    ring = geoms[matched["ring"][1]]
    assert len(ring.geoms[0].interiors) == 1
    # attributes; metres: area_m2 equals area
    assert list(attrs["id"]) == list(range(1, len(geoms) + 1))
    np.testing.assert_allclose(attrs["area"], [g.area for g in geoms])
    np.testing.assert_allclose(attrs["area_m2"], attrs["area"])
    assert np.all(attrs["predicted_iou"] == pytest.approx(0.95))
    assert "stability_score" in attrs and "tile" in attrs
    assert not (tmp_path / ".objects.gpkg.tiles").exists()


@pytest.mark.parametrize("ext", [".geojson", ".fgb", ".shp"])
def test_every_format_keeps_polygons_and_crs(scene_raster, tmp_path, ext):
    raster, footprints = scene_raster
    out = tmp_path / f"objects{ext}"
    automask_raster(raster, out, generator=ColourComponents(), polygons=OutputSettings(min_area=500.0), **TILES)
    geoms, attrs, crs = read_output(out)
    assert crs == UTM
    assert len(geoms) == len(footprints)
    assert min(iou for iou, _ in match(geoms, footprints).values()) >= 0.9
    score_field = "pred_iou" if ext == ".shp" else "predicted_iou"
    assert score_field in attrs
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


def test_min_area_and_simplify_use_map_units(scene_raster, tmp_path):
    raster, footprints = scene_raster
    out = tmp_path / "big.gpkg"
    small_area = footprints["small"].area  # 24 x 24 px of 10 m = 57600 m2
    automask_raster(raster, out, generator=ColourComponents(),
                    polygons=OutputSettings(min_area=small_area + 1, simplify=5.0), **TILES)
    geoms, _, _ = read_output(out)
    assert len(geoms) == len(footprints) - 1
    assert max(map_iou(g, footprints["small"]) for g in geoms) == 0.0


def test_rotated_geotransform_is_handled(tmp_path):
    image, objects = known_scene()
    rotated = Affine.translation(500000.0, 4000000.0) @ Affine.rotation(30.0) @ Affine.scale(10.0, -10.0)
    raster = write_raster(tmp_path / "rotated.tif", image, rotated, UTM)
    out = tmp_path / "rotated.gpkg"
    automask_raster(raster, out, generator=ColourComponents(), **TILES)
    geoms, _, crs = read_output(out)
    assert crs == UTM
    footprints = {name: to_map(g, rotated) for name, g in objects.items()}
    for name, (iou, _) in match(geoms, footprints).items():
        assert iou >= 0.9, name


def test_crs_without_epsg_code_is_kept_and_geojson_refuses_it(tmp_path):
    image, objects = known_scene()
    custom = CRS.from_proj4("+proj=tmerc +lat_0=0 +lon_0=13.3 +k=0.9996 +x_0=500000 +y_0=0 +ellps=GRS80 +units=m +no_defs")
    assert custom.to_epsg() is None
    raster = write_raster(tmp_path / "custom.tif", image, TRANSFORM, custom)
    automask_raster(raster, tmp_path / "custom.gpkg", generator=ColourComponents(), **TILES)
    _, _, crs = read_output(tmp_path / "custom.gpkg")
    assert crs == custom
    with pytest.raises(SamError, match="GeoJSON"):
        automask_raster(raster, tmp_path / "custom.geojson", generator=ColourComponents(), **TILES)
    assert not (tmp_path / "custom.geojson").exists()


def test_nodata_alpha_and_nan_never_produce_polygons(tmp_path):
    image, objects = known_scene()
    image = image.copy()
    image[:, 260:] = 255  # a bright block that the generator would take as an object
    nodata_raster = write_raster(tmp_path / "nodata.tif", image, TRANSFORM, UTM, nodata=255)
    automask_raster(nodata_raster, tmp_path / "a.gpkg", generator=ColourComponents(), **TILES)
    geoms, _, _ = read_output(tmp_path / "a.gpkg")
    nodata_zone = to_map(__import__("shapely").box(260, 0, 340, 300), TRANSFORM)
    assert all(g.intersection(nodata_zone).area < 1e-6 for g in geoms)

    alpha = np.full(image.shape[:2], 255, np.uint8)
    alpha[:, 260:] = 0
    alpha_raster = write_raster(tmp_path / "alpha.tif", image, TRANSFORM, UTM, alpha=alpha)
    automask_raster(alpha_raster, tmp_path / "b.gpkg", generator=ColourComponents(), **TILES)
    geoms, _, _ = read_output(tmp_path / "b.gpkg")
    assert geoms and all(g.intersection(nodata_zone).area < 1e-6 for g in geoms)

    floats = image.astype(np.float32) / 255.0
    floats[:, 260:] = np.nan
    float_raster = write_raster(tmp_path / "float.tif", floats, TRANSFORM, UTM)
    automask_raster(float_raster, tmp_path / "c.gpkg", generator=ColourComponents(), **TILES)
    geoms, _, _ = read_output(tmp_path / "c.gpkg")
    assert geoms and all(g.intersection(nodata_zone).area < 1e-6 for g in geoms)


def test_extent_and_resolution(scene_raster, tmp_path):
    raster, footprints = scene_raster
    # the extent holds the two touching rectangles only
    touching = footprints["touch_left"].union(footprints["touch_right"]).buffer(50).bounds
    out = tmp_path / "extent.gpkg"
    automask_raster(raster, out, generator=ColourComponents(),
                    tiling=TilingSettings(tile_size=128, overlap=32, extent=touching))
    geoms, _, _ = read_output(out)
    assert len(geoms) == 2
    # twice coarser pixels: rectangles aligned to even pixels stay exact
    out = tmp_path / "coarse.gpkg"
    automask_raster(raster, out, generator=ColourComponents(min_area=2), 
                    tiling=TilingSettings(resolution=20.0, tile_size=64, overlap=16))
    geoms, _, _ = read_output(out)
    for name in ("corner", "touch_left", "touch_right", "bar", "small"):
        assert max(map_iou(g, footprints[name]) for g in geoms) >= 0.9, name


class CountingGenerator(ColourComponents):
    pass


def test_cancel_leaves_no_output_and_rerun_resumes(scene_raster, tmp_path):
    raster, footprints = scene_raster
    out = tmp_path / "resume.gpkg"
    token = CancelToken()

    def stop_after_five(done, total, message):
        if done >= 5:
            token.cancel()

    first = CountingGenerator()
    with pytest.raises(Cancelled):
        automask_raster(raster, out, generator=first, progress=stop_after_five, cancel=token, **TILES)
    assert not out.exists()
    assert first.calls == 5
    sidecar = tmp_path / ".resume.gpkg.tiles"
    assert len(list(sidecar.glob("tile_*.npz"))) == 5

    second = CountingGenerator()
    result = automask_raster(raster, out, generator=second, **TILES)
    assert second.calls == 12 - 5 and result.tiles_resumed == 5
    geoms, _, _ = read_output(out)
    assert min(iou for iou, _ in match(geoms, footprints).values()) >= 0.9
    assert not sidecar.exists()


def test_bad_inputs_give_clear_errors(scene_raster, tmp_path):
    raster, _ = scene_raster
    with pytest.raises(SamError, match="corrupt"):
        automask_raster(SHARED_CORRUPT, tmp_path / "x.gpkg", generator=ColourComponents())
    with pytest.raises(SamError, match="band 5"):
        automask_raster(raster, tmp_path / "x.gpkg", tiling=TilingSettings(bands="5,2,1"), generator=ColourComponents())
    with pytest.raises(SamError, match="extension"):
        automask_raster(raster, tmp_path / "x.xyz", generator=ColourComponents())
    image, _ = known_scene()
    no_crs = write_raster(tmp_path / "nocrs.tif", image, TRANSFORM, None)
    with pytest.raises(SamError, match="coordinate reference system"):
        automask_raster(no_crs, tmp_path / "x.gpkg", generator=ColourComponents())
    empty = write_raster(tmp_path / "empty.tif", np.zeros_like(image), TRANSFORM, UTM, nodata=0)
    with pytest.raises(SamError, match="no valid pixels"):
        automask_raster(empty, tmp_path / "x.gpkg", generator=ColourComponents())
    with pytest.raises(SamError, match="does not exist"):
        automask_raster(tmp_path / "missing.tif", tmp_path / "x.gpkg", generator=ColourComponents())
    assert not (tmp_path / "x.gpkg").exists()


SHARED_CORRUPT = Path(__file__).resolve().parents[1] / "data" / "corrupt.tif"


def test_segment_prompts_from_a_vector_file_in_another_crs(scene_raster, tmp_path):
    import pyogrio.raw
    import shapely
    from rasterio.warp import transform as warp

    raster, footprints = scene_raster
    # positive points at the centres of three objects, in WGS84; one box (a polygon) around the bar
    names = ["corner", "touch_left", "small"]
    centres = [footprints[n].representative_point() for n in names]
    lon, lat = warp(UTM, "EPSG:4326", [c.x for c in centres], [c.y for c in centres])
    bar_box = shapely.box(*footprints["bar"].buffer(5).bounds)
    bar_wgs = shapely.geometry.shape(
        __import__("rasterio.warp", fromlist=["transform_geom"]).transform_geom(UTM, "EPSG:4326", shapely.geometry.mapping(bar_box))
    )
    prompts = tmp_path / "prompts.gpkg"
    geoms = [shapely.Point(x, y) for x, y in zip(lon, lat)] + [shapely.MultiPolygon([bar_wgs])]
    pyogrio.raw.write(
        str(prompts), shapely.to_wkb(np.array(geoms, dtype=object)), [np.array([1, 1, 1, 1])], ["label"],
        driver="GPKG", crs="EPSG:4326", geometry_type="Unknown",
    )
    out = tmp_path / "prompted.gpkg"
    result = segment_prompts(raster, prompts, out, predictor=ColourPredictor(), **TILES)
    assert result.count == 4
    polys, attrs, crs = read_output(out)
    assert crs == UTM
    for name in names + ["bar"]:
        assert max(map_iou(g, footprints[name]) for g in polys) >= 0.9, name
    assert "group" in attrs

    # a prompt outside the raster is a clear error
    with pytest.raises(SamError, match="outside the raster"):
        segment_prompts(raster, [{"points": [(10.0, 10.0)], "crs": "EPSG:4326"}], tmp_path / "o.gpkg",
                        predictor=ColourPredictor(), **TILES)


def test_segment_at_and_encode_raster(scene_raster):
    raster, footprints = scene_raster
    predictor = ColourPredictor()
    centre = footprints["bar"].representative_point()
    polys = segment_at(raster, [(centre.x, centre.y)], [1], predictor=predictor, **TILES)
    assert len(polys) == 1
    geom = __import__("shapely").from_wkt(polys[0]["wkt"])
    assert map_iou(geom, footprints["bar"]) >= 0.9 and len(polys[0]["tiles"]) >= 3
    with RasterSession(raster, predictor, **TILES) as session:  # an open raster with its tiles' embeddings
        assert session.segment([(centre.x, centre.y)], [1]) == polys
        encoded = predictor.encoded
        session.segment([(centre.x, centre.y)], [1])
        assert predictor.encoded == encoded  # tiles' embeddings are kept between clicks
    assert encode_raster(raster, predictor=ColourPredictor(), **TILES) == 12


class MissesLeftEdgeObjects(ColourComponents):
    """Finds nothing touching a tile's left side: the neighbour tile has no partner for a cut object."""

    def generate(self, image, cancel=None):
        return [r for r in super().generate(image) if not np.asarray(r["segmentation"])[:, 0].any()]


def test_an_object_cut_at_a_tile_border_is_one_whole_polygon(tmp_path):
    from shapely.geometry import Point

    image = np.zeros((200, 300, 3), np.uint8)
    yy, xx = np.mgrid[:200, :300]
    image[(yy - 60) ** 2 + (xx - 120) ** 2 <= 30 ** 2] = (200, 30, 30)  # across the seam x 96..128
    raster = write_raster(tmp_path / "seam.tif", image, TRANSFORM, UTM)
    truth = Point(*(TRANSFORM * (120.5, 60.5))).buffer(300.0)
    kept = automask_raster(raster, tmp_path / "cut.gpkg", generator=MissesLeftEdgeObjects(),
                           tiling=TilingSettings(tile_size=128, overlap=32, repair_seams=False))
    (stub,), _, _ = read_output(kept.output)
    assert map_iou(stub, truth) < 0.8 and stub.bounds[2] == pytest.approx(TRANSFORM.c + 128 * 10.0)
    predictor = ColourPredictor()
    result = automask_raster(raster, tmp_path / "whole.gpkg", generator=MissesLeftEdgeObjects(), predictor=predictor,
                             **TILES)
    (whole,), attrs, _ = read_output(result.output)
    assert map_iou(whole, truth) >= 0.97 and predictor.encoded == 1
    assert result.count == 1
