"""Settings of the tiled raster runs, grouped as small frozen value objects, so that a new option is
added in one place and travels unchanged from the CLI, the QGIS engine and Dask to the pipeline.

- :class:`TilingSettings`: how a raster is read and cut into tiles, and how tiles are joined again.
- :class:`OutputSettings`: how masks become polygons.
- :class:`GeneratorSpec` (from :mod:`sam_core.distributed`): the automatic mask generator's model and
  parameters.

Each field of the first two carries its *option* in the field's metadata: a help text and the kind of value
(:data:`KINDS`). The command line (:func:`sam_core.cli.geo_cmd.add_settings_args`) and the engine's request
checks (:mod:`sam_core.engine`) are built from them, so a new setting is one field here.
"""

from __future__ import annotations

from dataclasses import Field, dataclass, field, fields
from typing import Any, Optional, Sequence, TypeVar, Union

__all__ = ["FIND_TILING", "GeneratorSpec", "KINDS", "SHARED_TILING", "OutputSettings", "TilingSettings", "option_fields", "pop_settings"]

# The kinds of value a setting takes: "whole" (a whole number), "number", "size" (a number, or (x, y) numbers
# in the JSON requests), "box" (xmin, ymin, xmax, ymax), "bands" (text such as "4,3,2" or 1 or 3 numbers) and
# "switch" (true/false; on the command line a --no-NAME flag turns a setting that is on by default off).
KINDS = ("whole", "number", "size", "box", "bands", "switch")


def _option(default: Any, kind: str, help: str, metavar: Optional[str] = None) -> Any:
    assert kind in KINDS, kind
    return field(default=default, metadata={"kind": kind, "help": help, "metavar": metavar})


@dataclass(frozen=True)
class TilingSettings:
    """How a raster is read and tiled.

    ``bands``: 1 or 3 band numbers (a list or text such as ``"4,3,2"``; default RGB). ``tile_size`` and
    ``overlap`` in pixels of the working grid. ``resolution``: pixel size in CRS units (a number or
    (x, y)); ``extent``: (xmin, ymin, xmax, ymax) in the raster's CRS (default the whole raster).
    ``seam_iou``: the IoU over which masks of neighbouring tiles are one object; ``repair_seams``: decode
    again whole an object cut at a tile border (automatic masks only, see :mod:`sam_core.tiling.repair`).
    """

    bands: Union[None, str, Sequence[int]] = _option(
        None, "bands", "1 or 3 band numbers, e.g. 4,3,2 (default: RGB)", "B[,G,R]")
    tile_size: int = _option(1024, "whole", "tile side in pixels (default 1024)", "PIXELS")
    overlap: int = _option(128, "whole", "overlap of neighbouring tiles in pixels (default 128)", "PIXELS")
    resolution: Union[None, float, Sequence[float]] = _option(
        None, "size", "resample to this pixel size in CRS units (default: the raster's own)", "SIZE")
    extent: Optional[Sequence[float]] = _option(
        None, "box", "area to work on, in the raster's CRS (default: the whole raster)", "XMIN,YMIN,XMAX,YMAX")
    seam_iou: float = _option(
        0.5, "number", "IoU over which masks of neighbouring tiles are one object (default 0.5)", "IOU")
    repair_seams: bool = _option(True, "switch", "decode again whole an object cut at a tile border")


@dataclass(frozen=True)
class OutputSettings:
    """How masks become polygons: ``min_area`` in CRS units squared (smaller polygons are dropped) and
    ``simplify`` tolerance in CRS units (0: off)."""

    min_area: float = _option(0.0, "number", "drop polygons smaller than this (CRS units squared)", "AREA")
    simplify: float = _option(0.0, "number", "simplification tolerance in CRS units (default 0: off)", "TOLERANCE")


S = TypeVar("S")

# The tiling settings every geo command takes; automask takes all of them, find all but the seam repair
# (it runs concept queries, not the automatic mask generator).
SHARED_TILING = ("bands", "tile_size", "overlap")
FIND_TILING = ("bands", "tile_size", "overlap", "resolution", "extent", "seam_iou")


def option_fields(cls: type, names: Optional[Sequence[str]] = None) -> list[Field]:
    """The fields of a settings class (those in ``names`` only, when given), each with its option in
    ``field.metadata`` ("kind", "help", "metavar")."""
    return [f for f in fields(cls) if names is None or f.name in names]


def pop_settings(cls: type[S], params: dict[str, Any]) -> S:
    """``cls`` built from the keys of ``params`` named as its fields, removing them from ``params``
    (for flat requests such as the engine's JSON)."""
    return cls(**{f.name: params.pop(f.name) for f in fields(cls) if f.name in params})


def __getattr__(name: str) -> Any:
    """``GeneratorSpec`` is imported when asked for: :mod:`sam_core.distributed` imports Dask, which the
    command line does not need to start."""
    if name == "GeneratorSpec":
        from sam_core.distributed import GeneratorSpec

        return GeneratorSpec
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
