"""Automatic masks for an image of any size: masks per tile, then joined across seams."""

from __future__ import annotations

from typing import Any, Optional

from sam_core.errors import SamError
from sam_core.progress import CancelToken, ProgressFn, check, report
from sam_core.tiling.grid import TileGrid, array_reader
from sam_core.tiling.pieces import MaskPiece, records_to_pieces
from sam_core.tiling.repair import WindowDecoder, repair_cut_objects
from sam_core.tiling.seams import merge_tile_masks

__all__ = ["automask_tiled"]


def automask_tiled(
    image: Any,
    generator: Any,
    *,
    tile_size: int = 1024,
    overlap: int = 128,
    seam_iou: float = 0.5,
    repair: Any = None,
    progress: Optional[ProgressFn] = None,
    cancel: Optional[CancelToken] = None,
) -> list[MaskPiece]:
    """Automatic masks for an image of any size: masks per tile, then joined across seams.

    ``image``: (rows, cols, 3) uint8 RGB, any array that slices lazily (numpy, dask, zarr). Images of
    other kinds must first be prepared for the whole image at once (``sam_core.imaging``), so that all
    tiles get the same contrast. ``generator``: any object with ``generate(rgb_uint8) -> records`` in the
    official format, e.g. :class:`sam_core.automask.AutomaticMaskGenerator`. Returns one
    :class:`MaskPiece` per object in full-image pixel coordinates; see :func:`pieces_to_labels` and
    :func:`pieces_to_records` for a label image or full-size records.

    ``repair``: a predictor (e.g. the generator's ``predictor``) that decodes objects cut at a tile border
    with no partner in the neighbouring tile again, whole, in a window centred on them
    (:func:`sam_core.tiling.repair.repair_cut_objects`); None keeps them as they are.
    """
    shape = tuple(getattr(image, "shape", ()))
    if len(shape) != 3 or shape[2] != 3:
        raise SamError(f"automask_tiled needs an RGB image of shape (rows, cols, 3), got shape {shape}")
    grid = TileGrid(shape[0], shape[1], tile_size, overlap)
    read = array_reader(image)
    tile_pieces: dict[int, list[MaskPiece]] = {}
    for done, tile in enumerate(grid, start=1):
        check(cancel)
        pixels, valid = read(tile)
        tile_pieces[tile.index] = records_to_pieces(tile, generator.generate(pixels), valid)
        report(progress, done, len(grid), f"tile {done}/{len(grid)}")
    objects = merge_tile_masks(grid, tile_pieces, seam_iou=seam_iou)
    if repair is None:
        return objects
    return repair_cut_objects(grid, objects, WindowDecoder(repair, read), cancel=cancel)
