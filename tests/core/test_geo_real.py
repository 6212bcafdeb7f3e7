"""The pipeline on the real GeoTIFFs of tests/data (copies of ../shared/data): Landsat in UTM with a nodata frame, world in EPSG:4326."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import shapely

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from helpers.deterministic import DarkRegions  # noqa: E402
from helpers.georasters import read_output  # noqa: E402

from sam_core.geo import automask_raster  # noqa: E402
from sam_core.geo.settings import TilingSettings  # noqa: E402

DATA = Path(__file__).resolve().parents[1] / "data"


def test_landsat_nodata_frame_never_becomes_a_polygon(tmp_path):
    import rasterio
    from rasterio.features import shapes

    raster = DATA / "RGB.byte.tif"
    out = tmp_path / "landsat.gpkg"
    # the generator takes every dark region for an object, the black nodata frame included
    result = automask_raster(raster, out, generator=DarkRegions(threshold=40), tiling=TilingSettings(tile_size=384, overlap=64))
    geoms, attrs, crs = read_output(out)
    with rasterio.open(raster) as src:
        assert crs == src.crs
        frame_mask = (src.dataset_mask() == 0).astype(np.uint8)
        frame = shapely.union_all([shapely.geometry.shape(g) for g, v in shapes(frame_mask, transform=src.transform) if v])
        pixel = abs(src.transform.a * src.transform.e)
    assert result.count == len(geoms) > 0
    assert sum(g.intersection(frame).area for g in geoms) < pixel
    np.testing.assert_allclose(attrs["area_m2"], attrs["area"])  # UTM metres


def test_world_image_in_degrees_gets_areas_in_square_metres(tmp_path):
    raster = DATA / "world.rgb.tif"
    out = tmp_path / "world.fgb"
    automask_raster(raster, out, generator=DarkRegions(threshold=60, min_area=50), 
                    tiling=TilingSettings(tile_size=256, overlap=32))
    geoms, attrs, crs = read_output(out)
    assert crs.to_epsg() == 4326 and len(geoms) > 0
    assert all(-180 <= g.bounds[0] and g.bounds[2] <= 180 and -90 <= g.bounds[1] and g.bounds[3] <= 90 for g in geoms)
    # square degrees vs square metres: one square degree is at most about 1.24e10 m2
    ratio = np.asarray(attrs["area_m2"]) / np.asarray(attrs["area"])
    assert np.all((ratio > 1e8) & (ratio < 1.24e10))
