"""Georeferenced rasters: tiled segmentation into polygons with the raster's CRS (rasterio, shapely, pyogrio).

Main entry points (see :mod:`sam_core.geo.pipeline`): :func:`automask_raster`, :func:`segment_prompts`,
:func:`encode_raster`, :func:`segment_at` (:class:`RasterSession` for many clicks); :func:`find_raster`
(:mod:`sam_core.geo.find`: every instance of a concept, SAM 3); their options
(:mod:`sam_core.geo.settings`): :class:`TilingSettings`, :class:`OutputSettings`, :class:`GeneratorSpec`.
Names are imported lazily (rasterio only when used).
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "GeoResult": "sam_core.geo.pipeline",
    "automask_raster": "sam_core.geo.pipeline",
    "segment_prompts": "sam_core.geo.pipeline",
    "encode_raster": "sam_core.geo.pipeline",
    "segment_at": "sam_core.geo.pipeline",
    "RasterSession": "sam_core.geo.pipeline",
    "find_raster": "sam_core.geo.find",
    "TilingSettings": "sam_core.geo.settings",
    "OutputSettings": "sam_core.geo.settings",
    "GeneratorSpec": "sam_core.geo.settings",
    "open_raster": "sam_core.geo.raster",
    "RasterView": "sam_core.geo.raster",
    "PromptGroup": "sam_core.geo.prompts",
    "read_prompt_file": "sam_core.geo.prompts",
    "write_features": "sam_core.geo.writer",
    "mask_to_geometry": "sam_core.geo.vectorize",
    "pieces_to_features": "sam_core.geo.vectorize",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'sam_core.geo' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
