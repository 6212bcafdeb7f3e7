"""Tile grids: overlapping tiles covering an image, each owning a core (the cores partition the image).

Tiles of ``tile_size`` pixels overlap by ``overlap`` pixels; the last tile of each row and column is flush
with the image's edge (its overlap with the previous tile may be larger). The overlap between two neighbours
is split at its middle to give each tile its core. Tile windows are pixel (row, col) ranges of the full image.

One order for boxes: every box of a tile (its ``core``, the arguments of :meth:`Tile.contains_box`,
:meth:`TileGrid.tiles_touching`, ...) is (x0, y0, x1, y1) in full-image pixels, x = column, y = row, as
everywhere in sam_core; a tile's window is also available by name (``x0``, ``y0``, ``x1``, ``y1``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Optional

import numpy as np

from sam_core.errors import SamError

__all__ = ["Tile", "TileGrid", "TileReader", "array_reader"]


@dataclass(frozen=True)
class Tile:
    """One tile: its index in the grid, grid position and pixel window ``[y0:y1, x0:x1]``."""

    index: int
    row: int
    col: int
    y0: int
    x0: int
    y1: int
    x1: int
    core: tuple[int, int, int, int]  # (x0, y0, x1, y1) of the part of the image this tile owns
    inner_edges: tuple[bool, bool, bool, bool]  # (top, left, bottom, right): edge inside the image

    @property
    def height(self) -> int:
        return self.y1 - self.y0

    @property
    def width(self) -> int:
        return self.x1 - self.x0

    @property
    def slices(self) -> tuple[slice, slice]:
        """``image[tile.slices]`` is the tile's pixels."""
        return slice(self.y0, self.y1), slice(self.x0, self.x1)

    def contains_box(self, x0: float, y0: float, x1: float, y1: float) -> bool:
        """True when the box (x0, y0, x1, y1), in full-image pixel coordinates, lies inside the tile."""
        return x0 >= self.x0 and y0 >= self.y0 and x1 <= self.x1 and y1 <= self.y1

    def margin(self, x0: float, y0: float, x1: float, y1: float) -> float:
        """Distance in pixels from a box inside the tile to the nearest inner edge (inf if it has none)."""
        top, left, bottom, right = self.inner_edges
        distances = [math.inf]
        if top:
            distances.append(y0 - self.y0)
        if left:
            distances.append(x0 - self.x0)
        if bottom:
            distances.append(self.y1 - y1)
        if right:
            distances.append(self.x1 - x1)
        return min(distances)


def _starts(length: int, tile: int, overlap: int) -> list[int]:
    if length <= tile:
        return [0]
    stride = tile - overlap
    count = math.ceil((length - tile) / stride) + 1
    return [min(i * stride, length - tile) for i in range(count)]


def _cores(starts: list[int], tile: int, length: int) -> list[tuple[int, int]]:
    cores = []
    for i, start in enumerate(starts):
        lo = 0 if i == 0 else (start + min(starts[i - 1] + tile, length)) // 2
        hi = length if i == len(starts) - 1 else (starts[i + 1] + min(start + tile, length)) // 2
        cores.append((lo, hi))
    return cores


class TileGrid:
    """Overlapping tiles covering an image of ``height`` x ``width`` pixels (row-major tile order)."""

    def __init__(self, height: int, width: int, tile_size: int = 1024, overlap: int = 128) -> None:
        if height < 1 or width < 1:
            raise SamError(f"cannot tile an empty image ({height}x{width} pixels)")
        if tile_size < 16:
            raise SamError(f"tile size must be at least 16 pixels, got {tile_size}")
        if overlap < 0 or overlap >= tile_size:
            raise SamError(
                f"overlap must be at least 0 and smaller than the tile size ({tile_size}), got {overlap}"
            )
        self.height = int(height)
        self.width = int(width)
        self.tile_size = int(tile_size)
        self.overlap = int(overlap)
        rows = _starts(self.height, self.tile_size, self.overlap)
        cols = _starts(self.width, self.tile_size, self.overlap)
        row_cores = _cores(rows, self.tile_size, self.height)
        col_cores = _cores(cols, self.tile_size, self.width)
        self.shape = (len(rows), len(cols))
        tiles = []
        for r, y0 in enumerate(rows):
            y1 = min(y0 + self.tile_size, self.height)
            for c, x0 in enumerate(cols):
                x1 = min(x0 + self.tile_size, self.width)
                tiles.append(
                    Tile(
                        index=len(tiles),
                        row=r,
                        col=c,
                        y0=y0,
                        x0=x0,
                        y1=y1,
                        x1=x1,
                        core=(col_cores[c][0], row_cores[r][0], col_cores[c][1], row_cores[r][1]),
                        inner_edges=(y0 > 0, x0 > 0, y1 < self.height, x1 < self.width),
                    )
                )
        self.tiles: tuple[Tile, ...] = tuple(tiles)

    def __len__(self) -> int:
        return len(self.tiles)

    def __iter__(self):
        return iter(self.tiles)

    def __getitem__(self, index: int) -> Tile:
        return self.tiles[index]

    def __repr__(self) -> str:
        return (
            f"TileGrid(height={self.height}, width={self.width}, tile_size={self.tile_size}, "
            f"overlap={self.overlap}, tiles={self.shape[0]}x{self.shape[1]})"
        )

    def owner(self, x: float, y: float) -> Tile:
        """The tile whose core holds pixel (x, y)."""
        for tile in self.tiles:
            cx0, cy0, cx1, cy1 = tile.core
            if cy0 <= y < cy1 and cx0 <= x < cx1:
                return tile
        raise SamError(f"point ({x}, {y}) is outside the image ({self.width}x{self.height} pixels)")

    def tiles_touching(self, x0: float, y0: float, x1: float, y1: float) -> list[Tile]:
        """Tiles whose window intersects the box (x0, y0, x1, y1) in pixel coordinates."""
        return [t for t in self.tiles if x0 < t.x1 and x1 > t.x0 and y0 < t.y1 and y1 > t.y0]

    def best_tile(self, x0: float, y0: float, x1: float, y1: float) -> Optional[Tile]:
        """The tile that holds the box best: it contains the box, farthest from its inner edges.

        Returns None when no single tile contains the box (the object needs several tiles).
        """
        best, best_margin = None, -math.inf
        for tile in self.tiles:
            if tile.contains_box(x0, y0, x1, y1):
                margin = tile.margin(x0, y0, x1, y1)
                if margin > best_margin:
                    best, best_margin = tile, margin
        return best

    def neighbours(self, tile: Tile) -> list[Tile]:
        """Tiles whose windows overlap ``tile`` (up to 8), in grid order."""
        return [
            t
            for t in self.tiles
            if t.index != tile.index and t.x0 < tile.x1 and t.x1 > tile.x0 and t.y0 < tile.y1 and t.y1 > tile.y0
        ]


TileReader = Callable[[Tile], "tuple[np.ndarray, Optional[np.ndarray]]"]


def array_reader(image: Any) -> TileReader:
    def read(tile: Tile) -> tuple[np.ndarray, Optional[np.ndarray]]:
        return np.asarray(image[tile.slices]), None

    return read
