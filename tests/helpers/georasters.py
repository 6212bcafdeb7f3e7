"""Synthetic GeoTIFFs with known objects, and their footprints in map coordinates, for the geo tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import shapely
from affine import Affine

COLOURS = [(200, 30, 30), (30, 200, 30), (30, 30, 200), (200, 200, 30), (30, 200, 200), (200, 30, 200), (120, 60, 220)]


def known_scene(shape=(300, 340)):
    """Pixel-space objects as (name, shapely geometry in (col, row) pixel coordinates) and the RGB image.

    One rectangle crosses a 4-tile corner (with tile 128 / overlap 32), two rectangles touch across a
    seam, a long bar crosses three tiles, a ring has a hole, a small square sits inside one tile.
    """
    objects = {
        "corner": shapely.box(80, 76, 150, 150),  # (x0, y0, x1, y1) in pixels
        "touch_left": shapely.box(180, 20, 212, 70),
        "touch_right": shapely.box(212, 20, 250, 70),
        "bar": shapely.box(60, 200, 330, 216),
        "ring": shapely.box(170, 230, 230, 290).difference(shapely.box(190, 250, 210, 270)),
        "small": shapely.box(30, 240, 54, 264),
    }
    image = np.zeros(shape + (3,), dtype=np.uint8)
    for (name, geom), colour in zip(objects.items(), COLOURS):
        image[rasterize(geom, shape)] = colour
    return image, objects


def rasterize(geom, shape):
    """Pixels whose centre lies in the pixel-space geometry."""
    from rasterio.features import rasterize as rio_rasterize

    return rio_rasterize([(geom, 1)], out_shape=shape, fill=0, dtype=np.uint8).astype(bool)


def to_map(geom, transform: Affine):
    """A pixel-space geometry -> map coordinates through the geotransform."""
    return shapely.transform(geom, lambda xy: np.stack(transform @ (xy[:, 0], xy[:, 1]), axis=1))


def write_raster(path: Path, image: np.ndarray, transform: Affine, crs, nodata=None, alpha: np.ndarray | None = None) -> Path:
    """Write (rows, cols, bands) or (rows, cols) data as a GeoTIFF (tiled so windows read fast)."""
    import rasterio
    from rasterio.enums import ColorInterp

    data = image if image.ndim == 3 else image[..., None]
    bands = [data[..., i] for i in range(data.shape[2])]
    if alpha is not None:
        bands.append(alpha.astype(data.dtype))
    profile = dict(
        driver="GTiff", height=data.shape[0], width=data.shape[1], count=len(bands), dtype=data.dtype.name,
        crs=crs, transform=transform, tiled=True, blockxsize=64, blockysize=64,
    )
    if nodata is not None:
        profile["nodata"] = nodata
    with rasterio.open(path, "w", **profile) as dst:
        for i, band in enumerate(bands, start=1):
            dst.write(band, i)
        if alpha is not None:
            dst.colorinterp = [ColorInterp.red, ColorInterp.green, ColorInterp.blue, ColorInterp.alpha][: len(bands)]
    return path


def map_iou(a, b) -> float:
    union = a.union(b).area
    return float(a.intersection(b).area / union) if union else 0.0


def read_output(path):
    """(geometries, attribute dict, CRS) of a written vector file."""
    import pyogrio.raw
    from rasterio.crs import CRS

    meta, _, geometry, values = pyogrio.raw.read(str(path))
    attrs = {str(name): column for name, column in zip(meta["fields"], values)}
    crs = CRS.from_user_input(meta["crs"]) if meta.get("crs") else None
    return list(shapely.from_wkb(geometry)) if len(geometry) else [], attrs, crs
