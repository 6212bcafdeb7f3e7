"""Images of any size: tile grids, tiled automatic masks with seam merging, tiled prompt decoding.

Coordinates: tiles and masks are in pixel (row, col) of the full image; prompts are (x, y) = (col, row).

One job per module: :mod:`~sam_core.tiling.grid` (tile grids and cores), :mod:`~sam_core.tiling.pieces`
(object masks in full-image coordinates, overlaps, label images), :mod:`~sam_core.tiling.seams` (joining
tiles' masks across seams), :mod:`~sam_core.tiling.repair` (objects cut at a tile border, decoded again
whole), :mod:`~sam_core.tiling.tiled_automask` (automatic masks of any size) and
:mod:`~sam_core.tiling.predictor` (prompts on images of any size). The public names are importable from
``sam_core.tiling``.
"""

from sam_core.tiling.grid import Tile, TileGrid, TileReader, array_reader
from sam_core.tiling.pieces import MaskPiece, pieces_to_labels, pieces_to_records, records_to_pieces, remove_overlaps
from sam_core.tiling.predictor import TiledPrediction, TiledPredictor
from sam_core.tiling.repair import WindowDecoder, border_edges, cut_edges, has_cut, repair_cut_objects
from sam_core.tiling.seams import drop_duplicates, merge_tile_masks
from sam_core.tiling.tiled_automask import automask_tiled

__all__ = [
    "Tile",
    "TileGrid",
    "TileReader",
    "array_reader",
    "MaskPiece",
    "records_to_pieces",
    "drop_duplicates",
    "merge_tile_masks",
    "remove_overlaps",
    "pieces_to_labels",
    "pieces_to_records",
    "automask_tiled",
    "TiledPrediction",
    "WindowDecoder",
    "border_edges",
    "cut_edges",
    "has_cut",
    "repair_cut_objects",
    "TiledPredictor",
]
