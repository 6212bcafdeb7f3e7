"""Every instance of a concept in a georeferenced raster (SAM 3): a phrase and/or exemplars -> polygons.

:func:`find_raster` runs a :class:`~sam_core.concepts.ConceptPredictor` query tile by tile (each tile is
encoded once), joins the instances of neighbouring tiles across seams with the one order-independent rule
of :func:`sam_core.tiling.merge_tile_masks`, resolves overlaps as :func:`sam_core.tiling.remove_overlaps`
does (the smaller instance keeps a contested pixel) and writes polygons in the raster's CRS, atomically.
Finished tiles are kept beside the output (:class:`~sam_core.geo.pipeline.TileStore`), so an interrupted
run resumes where it stopped.

**Exemplars** are given in map coordinates: boxes (xmin, ymin, xmax, ymax) in the raster's CRS (or
``exemplar_crs``), or a vector file of polygons (their bounds) and points in any CRS (reprojected to the
raster's). A point becomes a square box of :data:`POINT_BOX_PIXELS` working-grid pixels centred on it.
SAM 3 reads an exemplar from the pixels it covers, so an exemplar must lie in the image it is given with
(as in Meta's ``Sam3Processor``). The rule here: **an exemplar is used in every tile that holds it whole**
(in that tile's pixels); the other tiles are searched with the text alone, and without a text only the
tiles holding an exemplar are searched. An exemplar reaching past the raster's edge is cut at the edge;
one that fits whole in no tile is an error (choose a larger tile size or overlap).

Attributes of the polygons: ``id``, ``class`` (the text, or ``exemplar`` without one), ``score`` (0 to 1;
for an instance joined across tiles, the area-weighted mean of its parts' scores), ``area`` (CRS units
squared), ``area_m2``, ``tile`` (the tile holding most of it) and ``n_tiles``.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import numpy as np

from sam_core.errors import SamError
from sam_core.geo.pipeline import GeoResult, TileStore, _fingerprint
from sam_core.geo.prompts import POINT_BOX_PIXELS, PromptGroup, load_prompts, read_prompt_file, to_pixel_prompts
from sam_core.geo.raster import RasterView, open_raster
from sam_core.geo.settings import OutputSettings, TilingSettings
from sam_core.geo.vectorize import Feature, pieces_to_features
from sam_core.geo.writer import check_output, write_features
from sam_core.progress import CancelToken, ProgressFn, check, report
from sam_core.tiling import MaskPiece, Tile, TileGrid, merge_tile_masks, records_to_pieces, remove_overlaps

PathLike = Union[str, "os.PathLike[str]"]

# The class of the polygons of a query without a text.
EXEMPLAR_CLASS = "exemplar"
# The polygons' fields (also of an output without any polygon).
FIELDS = {"id": np.int64, "class": object, "score": np.float64, "area": np.float64, "area_m2": np.float64,
          "tile": np.int64, "n_tiles": np.int64}

Box = tuple[float, float, float, float]


@dataclass
class FindResult(GeoResult):
    """A :class:`~sam_core.geo.pipeline.GeoResult` plus ``tiles_searched``: the tiles the query ran on (all
    tiles holding data with a text; only those holding an exemplar without one)."""

    tiles_searched: int = 0


def exemplar_boxes(exemplars: Any, view: RasterView, exemplar_crs: Any = None) -> list[Box]:
    """Exemplars in map coordinates -> boxes (x0, y0, x1, y1) in working-grid pixels, cut at the raster's edge.

    ``exemplars``: a vector file path (polygons -> their bounds, points -> a box of
    :data:`POINT_BOX_PIXELS` pixels; any CRS, a file without one is in the raster's), or boxes
    (xmin, ymin, xmax, ymax) in map coordinates of ``exemplar_crs`` (default: the raster's CRS).
    """
    if _no_exemplars(exemplars):
        return []
    if isinstance(exemplars, (str, os.PathLike)):
        groups = read_prompt_file(exemplars, label_field="", group_field="")
    else:
        groups = load_prompts([PromptGroup(box=tuple(box), name=i + 1, crs=exemplar_crs)
                               for i, box in enumerate(exemplars)])
    boxes = []
    for prompt in to_pixel_prompts(groups, view, what="exemplar", items="exemplars"):
        if prompt.box is not None:
            x0, y0, x1, y1 = (float(v) for v in prompt.box)
        else:
            (cx, cy), half = prompt.points[0], POINT_BOX_PIXELS / 2
            x0, y0, x1, y1 = cx - half, cy - half, cx + half, cy + half
        x0, y0 = max(x0, 0.0), max(y0, 0.0)
        x1, y1 = min(x1, float(view.width)), min(y1, float(view.height))
        if x1 <= x0 or y1 <= y0:
            raise SamError(f"exemplar {prompt.name} has no area on the raster: draw a box with a width and a height")
        boxes.append((x0, y0, x1, y1))
    return boxes


def _no_exemplars(exemplars: Any) -> bool:
    return exemplars is None or (not isinstance(exemplars, (str, os.PathLike)) and len(exemplars) == 0)


def _tile_exemplars(tile: Tile, boxes: Sequence[Box]) -> list[Box]:
    """The exemplars a tile holds whole, in the tile's pixels."""
    return [(x0 - tile.x0, y0 - tile.y0, x1 - tile.x0, y1 - tile.y0)
            for x0, y0, x1, y1 in boxes if tile.contains_box(x0, y0, x1, y1)]


def _check_exemplars_fit(grid: TileGrid, boxes: Sequence[Box]) -> None:
    for number, (x0, y0, x1, y1) in enumerate(boxes, start=1):
        if not any(tile.contains_box(x0, y0, x1, y1) for tile in grid):
            raise SamError(
                f"exemplar {number} ({x1 - x0:.0f} x {y1 - y0:.0f} pixels) does not lie whole in any tile of "
                f"{grid.tile_size} pixels with an overlap of {grid.overlap}: SAM 3 reads an exemplar from one "
                "tile's pixels, so choose a larger tile size or overlap (or a smaller exemplar)")


def tile_findings(view: RasterView, tile: Tile, predictor: Any, text: Optional[str], boxes: Sequence[Box],
                  threshold: float) -> Optional[list[MaskPiece]]:
    """The instances found in one tile as pieces of the working grid (score as ``predicted_iou``), or None
    when the tile is not searched (no text and no exemplar whole in it). Nodata never yields an instance."""
    local = _tile_exemplars(tile, boxes)
    if text is None and not local:
        return None
    rgb, valid = view.read(tile.y0, tile.x0, tile.y1, tile.x1)
    if not valid.any():
        return []
    found = predictor.find(predictor.encode(rgb), text=text, exemplars=local, threshold=threshold)
    records = [{"segmentation": mask, "predicted_iou": float(score)} for mask, score in zip(found.masks, found.scores)]
    return records_to_pieces(tile, records, None if valid.all() else valid)


def _features(pieces: Sequence[MaskPiece], view: RasterView, label: str, polygons: OutputSettings) -> list[Feature]:
    """Polygons with the attributes of the module docstring (the score travels as ``predicted_iou``)."""
    features = pieces_to_features(pieces, view.transform, view.crs, simplify=polygons.simplify,
                                  min_area=polygons.min_area)
    for feature in features:
        old = feature.attributes
        merged = {**old, "class": label, "score": old["predicted_iou"]}
        feature.attributes = {name: merged[name] for name in FIELDS}
    return features


def find_raster(
    raster: PathLike,
    output: PathLike,
    *,
    text: Optional[str] = None,
    exemplars: Any = (),
    exemplar_crs: Any = None,
    threshold: float = 0.5,
    tiling: TilingSettings = TilingSettings(),
    polygons: OutputSettings = OutputSettings(),
    model: Optional[str] = None,
    checkpoint: Optional[PathLike] = None,
    device: Optional[str] = None,
    predictor: Any = None,
    resume: bool = True,
    progress: Optional[ProgressFn] = None,
    cancel: Optional[CancelToken] = None,
) -> FindResult:
    """Find every instance of ``text`` and/or ``exemplars`` in a raster; write them as polygons to
    ``output`` (GeoPackage, GeoJSON, FlatGeobuf or Shapefile) in the raster's CRS.

    ``exemplars``: see :func:`exemplar_boxes` and the module docstring for the rule across tiles.
    ``threshold``: minimum score, 0 to 1. ``tiling``: bands, tile size and overlap (pixels), resolution,
    extent and ``seam_iou`` (its ``repair_seams`` is not used). ``predictor``: a
    :class:`~sam_core.concepts.ConceptPredictor`, else one on ``model``/``checkpoint``
    (:func:`~sam_core.concepts.load_concept_model`; default ``sam3``). ``resume``: reuse the finished
    tiles of an interrupted run with the same raster and query.
    """
    from sam_core.concepts import ConceptPredictor, load_concept_model

    if not 0.0 <= float(threshold) <= 1.0:
        raise SamError(f"the threshold is a score between 0 and 1, got {threshold:g}")
    if text is None and _no_exemplars(exemplars):
        raise SamError("nothing to find: give a text (e.g. \"building\") and/or exemplars")
    target = Path(output).expanduser()
    with open_raster(raster, tiling.bands, tiling.resolution, tiling.extent) as view:
        check_output(target, view.crs)
        grid = TileGrid(view.height, view.width, tiling.tile_size, tiling.overlap)
        boxes = exemplar_boxes(exemplars, view, exemplar_crs)
        _check_exemplars_fit(grid, boxes)
        if predictor is None:
            predictor = ConceptPredictor(load_concept_model(model, checkpoint, device=device))
        phrase = predictor.check_text(text) if text is not None else None
        query = {"model": predictor.model_id, "text": phrase, "exemplars": [list(b) for b in boxes],
                 "threshold": float(threshold)}
        store = TileStore(target, _fingerprint(view, tile_size=tiling.tile_size, overlap=tiling.overlap,
                                               finder=json.dumps(query, sort_keys=True)), fresh=not resume)
        per_tile: dict[int, list[MaskPiece]] = {}
        searched = 0
        for tile in grid:
            loaded = store.load(tile.index)
            if loaded is not None:
                per_tile[tile.index] = loaded
        resumed = len(per_tile)
        report(progress, resumed, len(grid), f"{resumed} tiles from a previous run" if resumed else "finding")
        for tile in grid:
            if tile.index in per_tile:
                searched += phrase is not None or bool(_tile_exemplars(tile, boxes))
                continue
            check(cancel)
            pieces = tile_findings(view, tile, predictor, phrase, boxes, threshold)
            searched += pieces is not None
            store.save(tile.index, pieces or [])
            per_tile[tile.index] = pieces or []
            report(progress, len(per_tile), len(grid), f"tile {tile.index + 1}/{len(grid)}")
        check(cancel)
        objects = remove_overlaps(merge_tile_masks(grid, per_tile, seam_iou=tiling.seam_iou))
        features = _features(objects, view, phrase if phrase is not None else EXEMPLAR_CLASS, polygons)
        check(cancel)
        write_features(target, features, view.crs, empty_schema=FIELDS)
        store.remove()
        return FindResult(str(target), len(features), view.crs_wkt, len(per_tile), len(grid), resumed, searched)
