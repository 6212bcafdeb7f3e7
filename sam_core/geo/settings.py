"""Settings of the tiled raster runs, grouped as small frozen value objects, so that a new option is
added in one place and travels unchanged from the CLI, the QGIS engine and Dask to the pipeline.

- :class:`TilingSettings`: how a raster is read and cut into tiles, and how tiles are joined again.
- :class:`OutputSettings`: how masks become polygons.
- :class:`GeneratorSpec` (from :mod:`sam_core.distributed`): the automatic mask generator's model and
  parameters.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, Optional, Sequence, TypeVar, Union

from sam_core.distributed import GeneratorSpec

__all__ = ["GeneratorSpec", "OutputSettings", "TilingSettings", "pop_settings"]


@dataclass(frozen=True)
class TilingSettings:
    """How a raster is read and tiled.

    ``bands``: 1 or 3 band numbers (a list or text such as ``"4,3,2"``; default RGB). ``tile_size`` and
    ``overlap`` in pixels of the working grid. ``resolution``: pixel size in CRS units (a number or
    (x, y)); ``extent``: (xmin, ymin, xmax, ymax) in the raster's CRS (default the whole raster).
    ``seam_iou``: the IoU over which masks of neighbouring tiles are one object; ``repair_seams``: decode
    again whole an object cut at a tile border (automatic masks only, see :mod:`sam_core.tiling.repair`).
    """

    bands: Union[None, str, Sequence[int]] = None
    tile_size: int = 1024
    overlap: int = 128
    resolution: Union[None, float, Sequence[float]] = None
    extent: Optional[Sequence[float]] = None
    seam_iou: float = 0.5
    repair_seams: bool = True


@dataclass(frozen=True)
class OutputSettings:
    """How masks become polygons: ``min_area`` in CRS units squared (smaller polygons are dropped) and
    ``simplify`` tolerance in CRS units (0: off)."""

    min_area: float = 0.0
    simplify: float = 0.0


S = TypeVar("S")


def pop_settings(cls: type[S], params: dict[str, Any]) -> S:
    """``cls`` built from the keys of ``params`` named as its fields, removing them from ``params``
    (for flat requests such as the engine's JSON)."""
    return cls(**{f.name: params.pop(f.name) for f in fields(cls) if f.name in params})
