"""Masks -> valid polygons in map coordinates, with areas in CRS units and in square metres.

Each object is vectorized on its own (pixel edges, 4-connectivity), so touching objects stay separate
features; holes are kept; a mask in several parts becomes one MultiPolygon. ``simplify`` is a tolerance in
CRS units (topology preserved); ``min_area`` is in CRS units squared and applies after simplification.
Geometries are made valid (``shapely.make_valid``) and always returned as MultiPolygons.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

import numpy as np

from sam_core.tiling import MaskPiece


@dataclass
class Feature:
    """One polygon feature: geometry in map coordinates plus attributes (written in this order)."""

    geometry: Any  # shapely MultiPolygon
    attributes: dict = field(default_factory=dict)


def mask_to_geometry(mask: np.ndarray, transform: Any, connectivity: int = 4):
    """A (rows, cols) bool mask -> shapely MultiPolygon in map coordinates (``transform``: pixel -> map)."""
    import shapely
    from rasterio.features import shapes
    from shapely.geometry import shape

    mask = np.ascontiguousarray(mask, dtype=np.uint8)
    parts = [shape(geom) for geom, value in shapes(mask, mask=mask.astype(bool), connectivity=connectivity, transform=transform) if value]
    polygons = []
    for part in parts:
        if not part.is_valid:
            part = shapely.make_valid(part)
        polygons.extend(_polygons(part))
    return shapely.MultiPolygon(polygons) if polygons else shapely.MultiPolygon()


def _polygons(geometry) -> list:
    if geometry.is_empty:
        return []
    kind = geometry.geom_type
    if kind == "Polygon":
        return [geometry]
    if kind in ("MultiPolygon", "GeometryCollection"):
        return [p for g in geometry.geoms for p in _polygons(g)]
    return []  # points and lines left over by make_valid carry no area


def clean_geometry(geometry, simplify: float = 0.0):
    """Simplify (tolerance in CRS units, topology kept) and make valid; returns a MultiPolygon."""
    import shapely

    if simplify > 0:
        geometry = shapely.simplify(geometry, simplify, preserve_topology=True)
    if not geometry.is_valid:
        geometry = shapely.make_valid(geometry)
    return shapely.MultiPolygon(_polygons(geometry))


def metres_per_unit(crs: Any) -> Optional[float]:
    """Metres per linear unit of a projected CRS; None for geographic or unit-less CRSs."""
    if crs is None or not crs.is_projected:
        return None
    from rasterio.errors import CRSError

    try:
        return float(crs.linear_units_factor[1])
    except CRSError:  # rasterio: the CRS's linear unit is not known
        return None


def area_m2(geometry, crs: Any) -> Optional[float]:
    """Area in square metres: planar for projected CRSs, on the ellipsoid (equal-area projection centred
    on the geometry) for geographic ones; None where it has no meaning (no CRS, unknown units)."""
    if geometry.is_empty:
        return 0.0
    factor = metres_per_unit(crs)
    if factor is not None:
        return float(geometry.area) * factor * factor
    if crs is None or not crs.is_geographic:
        return None
    from rasterio.warp import transform_geom
    from shapely.geometry import mapping, shape

    centre = geometry.centroid
    lat = min(max(centre.y, -89.9), 89.9)
    laea = f"+proj=laea +lat_0={lat} +lon_0={centre.x} +x_0=0 +y_0=0 +datum=WGS84 +units=m +no_defs"
    projected = shape(transform_geom(crs, laea, mapping(geometry)))
    return float(projected.area)


def pieces_to_features(
    pieces: Sequence[MaskPiece],
    transform: Any,
    crs: Any,
    *,
    simplify: float = 0.0,
    min_area: float = 0.0,
    extra: Optional[Sequence[dict]] = None,
) -> list[Feature]:
    """Objects (pixel masks of the working grid) -> features with id, predicted_iou, stability_score,
    area (CRS units squared), area_m2 (or None), tile (first tile), tiles (count); ids start at 1 in order.

    ``transform`` maps working-grid pixel (col, row) to map (x, y). ``extra`` adds attributes per piece.
    """
    from affine import Affine

    features = []
    for index, piece in enumerate(pieces):
        offset = transform @ Affine.translation(piece.x0, piece.y0)
        geometry = clean_geometry(mask_to_geometry(piece.mask, offset), simplify)
        area = float(geometry.area)
        if geometry.is_empty or area <= 0 or area < min_area:
            continue
        attributes = {
            "id": len(features) + 1,
            "predicted_iou": float(piece.predicted_iou),
            "stability_score": float(piece.stability_score),
            "area": area,
            "area_m2": area_m2(geometry, crs),
            "tile": int(piece.tiles[0]) if piece.tiles else -1,
            "n_tiles": len(piece.tiles),
        }
        if extra is not None:
            attributes.update(extra[index])
        features.append(Feature(geometry, attributes))
    return features

