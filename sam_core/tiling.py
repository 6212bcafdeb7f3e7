"""Images of any size: tile grids, tiled automatic masks with seam merging, tiled prompt decoding.

Coordinates: tiles and masks are in pixel (row, col) of the full image; prompts are (x, y) = (col, row).

**Tile grid.** Tiles of ``tile_size`` pixels overlap by ``overlap`` pixels; the last tile of each row and
column is flush with the image's edge (its overlap with the previous tile may be larger). Each tile also
*owns* a core: the overlap between two neighbours is split at its middle, so the cores partition the image.

**Duplicates within a tile** (:func:`drop_duplicates`). Box NMS inside the mask generator keeps two masks of
one object when one of them also holds a few stray pixels far away (their boxes differ). Before merging, such
pairs (mask IoU >= ``duplicate_iou``) are reduced to the mask with the higher predicted IoU (ties: stability
score, then the canonical order), as SAM's NMS does with boxes.

**Seam merging rule** (:func:`merge_tile_masks`). Masks are compared only between tiles whose windows
overlap, and only inside that shared window ``W``. A mask ``p`` of tile ``A`` and a mask ``q`` of tile ``B``
match when ``IoU(p ∩ W, q ∩ W) >= seam_iou`` and each is the other's best match in that tile pair (mutual
best). Matches are joined into objects in decreasing IoU (ties broken by tile index and by a canonical order of
masks that depends on their content only), and a join is refused when the object would then hold two masks of
the same tile: two masks that one tile sees as distinct stay distinct objects, so neighbours are never chained.
A joined object covers a pixel when at least half of its masks whose tile window contains that pixel cover it
(for two tiles: the union). Nothing depends on the order in which tiles were computed or listed.

**Overlaps** (:func:`remove_overlaps`): automatic masks may overlap (parts inside wholes). For label images and
polygon coverages the smaller object keeps a contested pixel (ties: higher predicted IoU, then position), so
parts stay visible inside the wholes that contain them.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Iterable, Mapping, Optional, Sequence

import numpy as np

from sam_core.errors import SamError
from sam_core.progress import CancelToken, ProgressFn, check, report

__all__ = [
    "Tile",
    "TileGrid",
    "MaskPiece",
    "records_to_pieces",
    "drop_duplicates",
    "merge_tile_masks",
    "remove_overlaps",
    "pieces_to_labels",
    "pieces_to_records",
    "automask_tiled",
    "TiledPredictor",
]


# --------------------------------------------------------------------------------------------- grid


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
    core: tuple[int, int, int, int]  # (y0, x0, y1, x1) of the part of the image this tile owns
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
                        core=(row_cores[r][0], col_cores[c][0], row_cores[r][1], col_cores[c][1]),
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
            cy0, cx0, cy1, cx1 = tile.core
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


# ------------------------------------------------------------------------------------------- pieces


@dataclass
class MaskPiece:
    """An object mask in full-image pixel coordinates, stored cropped to its bounding box.

    ``mask[i, j]`` is pixel (row ``y0 + i``, col ``x0 + j``). ``tiles`` lists the grid indexes of the
    tiles whose masks were joined into it (the first is the one holding the largest part).
    """

    y0: int
    x0: int
    mask: np.ndarray
    predicted_iou: float = 1.0
    stability_score: float = 1.0
    tiles: tuple[int, ...] = ()
    point_coords: list = field(default_factory=list)

    @property
    def y1(self) -> int:
        return self.y0 + self.mask.shape[0]

    @property
    def x1(self) -> int:
        return self.x0 + self.mask.shape[1]

    @property
    def area(self) -> int:
        return int(self.mask.sum())

    @property
    def bbox(self) -> list[int]:
        """Bounding box XYWH of the set pixels (official record convention)."""
        rows = np.flatnonzero(self.mask.any(axis=1))
        cols = np.flatnonzero(self.mask.any(axis=0))
        if rows.size == 0:
            return [0, 0, 0, 0]
        return [int(self.x0 + cols[0]), int(self.y0 + rows[0]), int(cols[-1] - cols[0] + 1), int(rows[-1] - rows[0] + 1)]

    def window(self, y0: int, x0: int, y1: int, x1: int) -> np.ndarray:
        """The mask over the window [y0:y1, x0:x1] of the full image (False outside the piece)."""
        out = np.zeros((y1 - y0, x1 - x0), dtype=bool)
        iy0, ix0 = max(y0, self.y0), max(x0, self.x0)
        iy1, ix1 = min(y1, self.y1), min(x1, self.x1)
        if iy0 < iy1 and ix0 < ix1:
            out[iy0 - y0 : iy1 - y0, ix0 - x0 : ix1 - x0] = self.mask[iy0 - self.y0 : iy1 - self.y0, ix0 - self.x0 : ix1 - self.x0]
        return out

    def trimmed(self) -> Optional["MaskPiece"]:
        """The same piece cropped to its set pixels, or None when it is empty."""
        rows = np.flatnonzero(self.mask.any(axis=1))
        if rows.size == 0:
            return None
        cols = np.flatnonzero(self.mask.any(axis=0))
        mask = self.mask[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
        return replace(self, y0=self.y0 + int(rows[0]), x0=self.x0 + int(cols[0]), mask=np.ascontiguousarray(mask))

    def sort_key(self) -> tuple:
        """A canonical order that depends on the piece's content only."""
        digest = hashlib.blake2b(np.packbits(self.mask).tobytes() + str(self.mask.shape).encode(), digest_size=8)
        return (self.y0, self.x0, self.mask.shape, -self.area, -self.predicted_iou, -self.stability_score,
                digest.hexdigest(), str(self.point_coords))


def _decode_segmentation(seg: Any) -> np.ndarray:
    """A record's segmentation (bool array, torch tensor, or COCO RLE dict) -> (rows, cols) bool."""
    if isinstance(seg, dict):
        from sam_core.masks import rle_to_mask

        return np.asarray(rle_to_mask(seg), dtype=bool)
    if hasattr(seg, "detach"):  # torch tensor
        return seg.detach().cpu().numpy().astype(bool)
    return np.asarray(seg).astype(bool, copy=False)


def records_to_pieces(
    tile: Tile, records: Iterable[Mapping[str, Any]], valid: Optional[np.ndarray] = None, max_invalid: float = 0.5
) -> list[MaskPiece]:
    """Automatic-mask records of one tile (official format, tile coordinates) -> pieces in image coordinates.

    ``valid`` (tile-sized bool, optional) marks pixels with data: a mask lying more than ``max_invalid``
    of its area on nodata is dropped, the others lose their nodata pixels.
    """
    pieces = []
    for record in records:
        mask = _decode_segmentation(record["segmentation"])
        if mask.shape != (tile.height, tile.width):
            raise ValueError(f"mask of shape {mask.shape} for a tile of {tile.height}x{tile.width} pixels")
        if valid is not None:
            area = int(mask.sum())
            kept = mask & valid
            if area == 0 or kept.sum() < (1.0 - max_invalid) * area:
                continue
            mask = kept
        points = [[float(x) + tile.x0, float(y) + tile.y0] for x, y in record.get("point_coords", [])]
        piece = MaskPiece(
            y0=tile.y0,
            x0=tile.x0,
            mask=mask,
            predicted_iou=float(record.get("predicted_iou", 1.0)),
            stability_score=float(record.get("stability_score", 1.0)),
            tiles=(tile.index,),
            point_coords=points,
        ).trimmed()
        if piece is not None:
            pieces.append(piece)
    return sorted(pieces, key=MaskPiece.sort_key)


# ------------------------------------------------------------------------------------------ merging


class _UnionFind:
    def __init__(self, members: Sequence[tuple[int, int]]) -> None:
        self.parent = {m: m for m in members}
        self.tiles = {m: {m[0]} for m in members}

    def find(self, m: tuple[int, int]) -> tuple[int, int]:
        while self.parent[m] != m:
            self.parent[m] = self.parent[self.parent[m]]
            m = self.parent[m]
        return m

    def union_if_disjoint(self, a: tuple[int, int], b: tuple[int, int]) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra == rb or self.tiles[ra] & self.tiles[rb]:
            return
        root, child = min(ra, rb), max(ra, rb)
        self.parent[child] = root
        self.tiles[root] |= self.tiles.pop(child)


def _boxes_meet(p: MaskPiece, q: MaskPiece) -> bool:
    return p.x0 < q.x1 and q.x0 < p.x1 and p.y0 < q.y1 and q.y0 < p.y1


def _meets_window(p: MaskPiece, window: tuple[int, int, int, int]) -> bool:
    y0, x0, y1, x1 = window
    return p.x0 < x1 and x0 < p.x1 and p.y0 < y1 and y0 < p.y1


def _window_iou(p: MaskPiece, q: MaskPiece, window: tuple[int, int, int, int]) -> float:
    y0, x0, y1, x1 = window
    # restrict to the intersection of both bounding boxes with the window (IoU's union needs both boxes)
    by0, bx0 = max(y0, min(p.y0, q.y0)), max(x0, min(p.x0, q.x0))
    by1, bx1 = min(y1, max(p.y1, q.y1)), min(x1, max(p.x1, q.x1))
    if by0 >= by1 or bx0 >= bx1:
        return 0.0
    a = p.window(by0, bx0, by1, bx1)
    b = q.window(by0, bx0, by1, bx1)
    union = np.count_nonzero(a | b)
    return float(np.count_nonzero(a & b) / union) if union else 0.0


def _iou(p: MaskPiece, q: MaskPiece) -> float:
    if not _boxes_meet(p, q):
        return 0.0
    return _window_iou(p, q, (min(p.y0, q.y0), min(p.x0, q.x0), max(p.y1, q.y1), max(p.x1, q.x1)))


def drop_duplicates(pieces: Sequence[MaskPiece], duplicate_iou: float = 0.8) -> list[MaskPiece]:
    """Keep one mask of each group of near-identical masks (mask IoU >= ``duplicate_iou``).

    Masks are visited by decreasing predicted IoU (ties: stability score, then :meth:`MaskPiece.sort_key`)
    and one is dropped when it matches a mask already kept, so the result does not depend on input order.
    Returns the kept masks in canonical order.
    """
    order = sorted(pieces, key=lambda p: (-p.predicted_iou, -p.stability_score, p.sort_key()))
    kept: list[MaskPiece] = []
    for piece in order:
        if all(_iou(piece, other) < duplicate_iou for other in kept):
            kept.append(piece)
    return sorted(kept, key=MaskPiece.sort_key)


def _join(grid: TileGrid, members: list[tuple[int, MaskPiece]]) -> MaskPiece:
    if len(members) == 1:
        return members[0][1]
    y0 = min(p.y0 for _, p in members)
    x0 = min(p.x0 for _, p in members)
    y1 = max(p.y1 for _, p in members)
    x1 = max(p.x1 for _, p in members)
    votes = np.zeros((y1 - y0, x1 - x0), dtype=np.int32)
    cover = np.zeros_like(votes)
    for tile_index, piece in members:
        votes += piece.window(y0, x0, y1, x1)
        tile = grid[tile_index]
        ty0, tx0 = max(tile.y0, y0), max(tile.x0, x0)
        ty1, tx1 = min(tile.y1, y1), min(tile.x1, x1)
        if ty0 < ty1 and tx0 < tx1:
            cover[ty0 - y0 : ty1 - y0, tx0 - x0 : tx1 - x0] += 1
    mask = (votes > 0) & (2 * votes >= cover)
    areas = np.array([p.area for _, p in members], dtype=np.float64)
    weights = areas / areas.sum()
    order = sorted(range(len(members)), key=lambda i: (-areas[i], members[i][0]))
    return MaskPiece(
        y0=y0,
        x0=x0,
        mask=mask,
        predicted_iou=float(np.dot(weights, [p.predicted_iou for _, p in members])),
        stability_score=float(np.dot(weights, [p.stability_score for _, p in members])),
        tiles=tuple(members[i][0] for i in order),
        point_coords=[pt for i in order for pt in members[i][1].point_coords],
    ).trimmed()


def merge_tile_masks(
    grid: TileGrid,
    tile_pieces: Mapping[int, Sequence[MaskPiece]],
    seam_iou: float = 0.5,
    duplicate_iou: float = 0.8,
) -> list[MaskPiece]:
    """Join the masks of all tiles into objects of the whole image (rules in the module docstring).

    ``tile_pieces`` maps a tile index to that tile's pieces (image coordinates); tiles may be missing
    (e.g. all nodata). Each tile's near-duplicates are dropped first (:func:`drop_duplicates`). The result
    is in a canonical order and does not depend on the order of the input.
    """
    canon: dict[int, list[MaskPiece]] = {
        int(t): drop_duplicates(pieces, duplicate_iou) for t, pieces in tile_pieces.items() if pieces
    }
    members = [(t, i) for t in sorted(canon) for i in range(len(canon[t]))]
    edges: list[tuple[float, tuple[int, int], tuple[int, int]]] = []
    for a in sorted(canon):
        tile_a = grid[a]
        for tile_b in grid.neighbours(tile_a):
            b = tile_b.index
            if b <= a or b not in canon:
                continue
            window = (max(tile_a.y0, tile_b.y0), max(tile_a.x0, tile_b.x0), min(tile_a.y1, tile_b.y1), min(tile_a.x1, tile_b.x1))
            pa, pb = canon[a], canon[b]
            iou = np.zeros((len(pa), len(pb)))
            for i, p in enumerate(pa):
                for j, q in enumerate(pb):
                    if _boxes_meet(p, q) and _meets_window(p, window) and _meets_window(q, window):
                        iou[i, j] = _window_iou(p, q, window)
            for i in range(len(pa)):
                j = int(np.argmax(iou[i]))
                if iou[i, j] >= seam_iou and int(np.argmax(iou[:, j])) == i:
                    edges.append((float(iou[i, j]), (a, i), (b, j)))
    edges.sort(key=lambda e: (-e[0], e[1], e[2]))
    groups = _UnionFind(members)
    for _, m, n in edges:
        groups.union_if_disjoint(m, n)
    objects: dict[tuple[int, int], list[tuple[int, MaskPiece]]] = {}
    for m in members:
        objects.setdefault(groups.find(m), []).append((m[0], canon[m[0]][m[1]]))
    joined = [_join(grid, objects[root]) for root in sorted(objects)]
    return sorted((p for p in joined if p is not None), key=MaskPiece.sort_key)


def _disjoint(pieces: Sequence[MaskPiece]) -> dict[int, MaskPiece]:
    priority = sorted(range(len(pieces)), key=lambda i: (pieces[i].area, -pieces[i].predicted_iou, pieces[i].sort_key()))
    result: dict[int, MaskPiece] = {}
    if not pieces:
        return result
    boxes = np.array([[p.y0, p.x0, p.y1, p.x1] for p in pieces])
    for i in priority:
        piece = pieces[i]
        mask = piece.mask.copy()
        hits = np.flatnonzero(
            (boxes[:, 0] < piece.y1) & (boxes[:, 2] > piece.y0) & (boxes[:, 1] < piece.x1) & (boxes[:, 3] > piece.x0)
        )
        for j in hits:
            if int(j) in result:
                mask &= ~result[int(j)].window(piece.y0, piece.x0, piece.y1, piece.x1)
        kept = replace(piece, mask=mask).trimmed()
        if kept is not None:
            result[i] = kept
    return result


def remove_overlaps(pieces: Sequence[MaskPiece]) -> list[MaskPiece]:
    """Make pieces disjoint: a contested pixel goes to the smaller piece (ties: higher IoU, position).

    Pieces that lose all their pixels are dropped; the others keep their order.
    """
    kept = _disjoint(pieces)
    return [kept[i] for i in range(len(pieces)) if i in kept]


def pieces_to_labels(pieces: Sequence[MaskPiece], shape: tuple[int, int], dtype: Any = np.int32) -> np.ndarray:
    """A (rows, cols) label image: 0 = background, ``k`` = ``pieces[k-1]``; overlaps as :func:`remove_overlaps`."""
    labels = np.zeros(shape, dtype=dtype)
    for i, piece in _disjoint(pieces).items():
        region = labels[piece.y0 : piece.y1, piece.x0 : piece.x1]
        region[piece.mask] = i + 1
    return labels


def pieces_to_records(pieces: Sequence[MaskPiece], shape: tuple[int, int]) -> list[dict]:
    """Pieces -> records in the official format with full-image boolean masks (for small images)."""
    records = []
    for piece in pieces:
        mask = piece.window(0, 0, shape[0], shape[1])
        records.append(
            {
                "segmentation": mask,
                "area": piece.area,
                "bbox": piece.bbox,
                "predicted_iou": piece.predicted_iou,
                "stability_score": piece.stability_score,
                "point_coords": piece.point_coords,
                "crop_box": [0, 0, shape[1], shape[0]],
                "tiles": list(piece.tiles),
            }
        )
    return records


# ------------------------------------------------------------------------------------ tiled automask

TileReader = Callable[[Tile], "tuple[np.ndarray, Optional[np.ndarray]]"]


def _array_reader(image: Any) -> TileReader:
    def read(tile: Tile) -> tuple[np.ndarray, Optional[np.ndarray]]:
        return np.asarray(image[tile.slices]), None

    return read


def automask_tiled(
    image: Any,
    generator: Any,
    *,
    tile_size: int = 1024,
    overlap: int = 128,
    seam_iou: float = 0.5,
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
    """
    shape = tuple(getattr(image, "shape", ()))
    if len(shape) != 3 or shape[2] != 3:
        raise SamError(f"automask_tiled needs an RGB image of shape (rows, cols, 3), got shape {shape}")
    grid = TileGrid(shape[0], shape[1], tile_size, overlap)
    read = _array_reader(image)
    tile_pieces: dict[int, list[MaskPiece]] = {}
    for done, tile in enumerate(grid, start=1):
        check(cancel)
        pixels, valid = read(tile)
        tile_pieces[tile.index] = records_to_pieces(tile, generator.generate(pixels), valid)
        report(progress, done, len(grid), f"tile {done}/{len(grid)}")
    return merge_tile_masks(grid, tile_pieces, seam_iou=seam_iou)


# ------------------------------------------------------------------------------------ tiled prompts


@dataclass
class TiledPrediction:
    """One object decoded over one or more tiles: its mask (full-image coordinates) and score."""

    piece: MaskPiece
    score: float
    tiles: tuple[int, ...]


class TiledPredictor:
    """Encode a large image tile by tile (lazily or all at once) and decode prompts at full resolution.

    ``image`` is an array that slices lazily (numpy, dask, zarr; (rows, cols) or (rows, cols, C)), or a
    ``reader(tile) -> (rgb, valid)`` callable together with ``shape=(rows, cols)``. Tiles are encoded by
    ``predictor.encode(tile, preparation)``: for anything but 8-bit RGB give a ``preparation`` with a fixed
    ``value_range`` (e.g. the contrast the user sees) so that all tiles get the same contrast. Embeddings
    are cached by the predictor; the last ``keep`` tiles are also held here; ``tiles_used`` lists the tiles
    encoded so far. Prompts are full-image pixel coordinates (x, y).
    """

    def __init__(
        self,
        predictor: Any,
        image: Any,
        *,
        tile_size: int = 1024,
        overlap: int = 128,
        shape: Optional[tuple[int, int]] = None,
        keep: int = 8,
        max_tiles: int = 64,
        preparation: Any = None,
    ) -> None:
        if callable(image):
            if shape is None:
                raise ValueError("shape=(rows, cols) is needed with a tile reader")
            self._read = image
        else:
            shape = tuple(image.shape[:2])
            self._read = _array_reader(image)
        self.predictor = predictor
        self.grid = TileGrid(shape[0], shape[1], tile_size, overlap)
        self._keep = keep
        self._max_tiles = max_tiles
        self._embeddings: dict[int, Any] = {}
        self._preparation = preparation
        self.tiles_used: set[int] = set()

    def _encode(self, pixels: np.ndarray) -> Any:
        pixels = np.ascontiguousarray(pixels)
        if self._preparation is None:
            return self.predictor.encode(pixels)
        return self.predictor.encode(pixels, self._preparation)

    def embedding(self, tile: Tile) -> Any:
        """The tile's embedding, encoded on first use."""
        if tile.index in self._embeddings:
            self._embeddings[tile.index] = self._embeddings.pop(tile.index)
            return self._embeddings[tile.index]
        pixels, _ = self._read(tile)
        embedding = self._encode(pixels)
        self.tiles_used.add(tile.index)
        self._embeddings[tile.index] = embedding
        while len(self._embeddings) > self._keep:
            self._embeddings.pop(next(iter(self._embeddings)))
        return embedding

    def encode_all(self, progress: Optional[ProgressFn] = None, cancel: Optional[CancelToken] = None) -> int:
        """Encode every tile holding data (filling the predictor's cache); returns how many were encoded."""
        encoded = 0
        for done, tile in enumerate(self.grid, start=1):
            check(cancel)
            pixels, valid = self._read(tile)
            if valid is None or valid.any():
                self._encode(pixels)
                self.tiles_used.add(tile.index)
                encoded += 1
            report(progress, done, len(self.grid), f"tile {done}/{len(self.grid)}")
        return encoded

    def _decode(self, tile: Tile, points: np.ndarray, labels: np.ndarray, box: Optional[np.ndarray], multimask: bool):
        local_points = points - np.array([tile.x0, tile.y0], dtype=np.float64) if len(points) else None
        local_box = box - np.array([tile.x0, tile.y0, tile.x0, tile.y0], dtype=np.float64) if box is not None else None
        return self.predictor.predict(
            self.embedding(tile),
            points=local_points,
            labels=labels if len(points) else None,
            box=local_box,
            multimask=multimask,
        )

    def predict(
        self,
        points: Optional[Sequence[Sequence[float]]] = None,
        labels: Optional[Sequence[int]] = None,
        box: Optional[Sequence[float]] = None,
        multimask: Optional[bool] = None,
    ) -> TiledPrediction:
        """Decode one object from points (x, y) with labels (1 positive, 0 negative) and/or a box (x0, y0, x1, y1).

        The prompt goes to the tile that holds it best; when the object reaches an inner edge of that tile,
        or the box does not fit in one tile, the tiles it covers are decoded and joined (each pixel taken
        from the tile that owns it). ``multimask`` defaults to the official advice: three candidates for a
        single point, one otherwise; the best-scoring candidate is kept.
        """
        pts = np.asarray(points if points is not None else [], dtype=np.float64).reshape(-1, 2)
        lbl = np.asarray(labels if labels is not None else [1] * len(pts), dtype=np.int64).reshape(-1)
        bx = None if box is None else np.asarray(box, dtype=np.float64).reshape(4)
        if len(pts) == 0 and bx is None:
            raise SamError("give at least one point or a box")
        if len(lbl) != len(pts):
            raise SamError(f"{len(pts)} points but {len(lbl)} labels")
        h, w = self.grid.height, self.grid.width
        if len(pts) and ((pts[:, 0] < 0) | (pts[:, 0] >= w) | (pts[:, 1] < 0) | (pts[:, 1] >= h)).any():
            raise SamError(f"a point lies outside the image ({w}x{h} pixels)")
        if bx is not None:
            bx = np.array([max(bx[0], 0), max(bx[1], 0), min(bx[2], w), min(bx[3], h)])
            if bx[0] >= bx[2] or bx[1] >= bx[3]:
                raise SamError(f"the box lies outside the image ({w}x{h} pixels)")
        if multimask is None:
            multimask = bx is None and len(pts) == 1
        extent_pts = pts[lbl > 0] if (lbl > 0).any() else pts
        corners = [extent_pts] + ([bx.reshape(2, 2)] if bx is not None else [])
        allpts = np.concatenate([c for c in corners if len(c)])
        ex0, ey0 = allpts.min(axis=0)
        ex1, ey1 = allpts.max(axis=0) + 1
        seed = self.grid.best_tile(ex0, ey0, ex1, ey1)
        if seed is not None:
            result = self._decode(seed, _inside_points(seed, pts), _inside_labels(seed, pts, lbl), bx, multimask)
            best = int(np.argmax(np.asarray(result.scores)))
            mask = np.asarray(result.masks[best], dtype=bool)
            if not _touches_inner_edge(seed, mask):
                piece = MaskPiece(seed.y0, seed.x0, mask, float(result.scores[best]), 1.0, (seed.index,)).trimmed()
                piece = piece or MaskPiece(seed.y0, seed.x0, np.zeros((0, 0), bool), float(result.scores[best]))
                return TiledPrediction(piece, float(result.scores[best]), (seed.index,))
        if bx is not None:
            return self._decode_box_tiles(pts, lbl, bx)
        return self._grow(seed or self.grid.owner(*extent_pts[0]), pts, lbl, multimask)

    def _decode_box_tiles(self, pts: np.ndarray, lbl: np.ndarray, bx: np.ndarray) -> TiledPrediction:
        decoded: dict[int, tuple[np.ndarray, float]] = {}
        for tile in self.grid.tiles_touching(*bx):
            clipped = np.array([max(bx[0], tile.x0), max(bx[1], tile.y0), min(bx[2], tile.x1), min(bx[3], tile.y1)])
            result = self._decode(tile, _inside_points(tile, pts), _inside_labels(tile, pts, lbl), clipped, False)
            decoded[tile.index] = (np.asarray(result.masks[0], dtype=bool), float(result.scores[0]))
        return self._assemble(decoded)

    def _grow(self, seed: Tile, pts: np.ndarray, lbl: np.ndarray, multimask: bool) -> TiledPrediction:
        decoded: dict[int, tuple[np.ndarray, float]] = {}
        result = self._decode(seed, _inside_points(seed, pts), _inside_labels(seed, pts, lbl), None, multimask)
        best = int(np.argmax(np.asarray(result.scores)))
        decoded[seed.index] = (np.asarray(result.masks[best], dtype=bool), float(result.scores[best]))
        queue = [seed]
        while queue and len(decoded) < self._max_tiles:
            tile = queue.pop(0)
            mask = decoded[tile.index][0]
            top, left, bottom, right = _touched_edges(tile, mask)
            for nb in self.grid.neighbours(tile):
                if nb.index in decoded or len(decoded) >= self._max_tiles:
                    continue
                across = (top and nb.y0 < tile.y0) or (left and nb.x0 < tile.x0) or (bottom and nb.y1 > tile.y1) or (right and nb.x1 > tile.x1)
                shared = (max(tile.y0, nb.y0), max(tile.x0, nb.x0), min(tile.y1, nb.y1), min(tile.x1, nb.x1))
                known = mask[shared[0] - tile.y0 : shared[2] - tile.y0, shared[1] - tile.x0 : shared[3] - tile.x0]
                if not across or known.sum() < 4:
                    continue
                seeds = _interior_points(known, count=3) + np.array([shared[1], shared[0]])
                npts = np.concatenate([seeds, _inside_points(nb, pts[lbl == 0])])
                nlbl = np.concatenate([np.ones(len(seeds), np.int64), np.zeros(len(npts) - len(seeds), np.int64)])
                res = self._decode(nb, npts, nlbl, None, True)
                candidates = np.asarray(res.masks, dtype=bool)
                local = (slice(shared[0] - nb.y0, shared[2] - nb.y0), slice(shared[1] - nb.x0, shared[3] - nb.x0))
                agreement = [
                    np.count_nonzero(c[local] & known) / max(np.count_nonzero(c[local] | known), 1) for c in candidates
                ]
                pick = int(np.argmax(agreement))
                if agreement[pick] < 0.5:
                    continue
                decoded[nb.index] = (candidates[pick], float(np.asarray(res.scores)[pick]))
                queue.append(nb)
        return self._assemble(decoded)

    def _assemble(self, decoded: Mapping[int, tuple[np.ndarray, float]]) -> TiledPrediction:
        tiles = [self.grid[i] for i in sorted(decoded)]
        y0, x0 = min(t.y0 for t in tiles), min(t.x0 for t in tiles)
        y1, x1 = max(t.y1 for t in tiles), max(t.x1 for t in tiles)
        mask = np.zeros((y1 - y0, x1 - x0), dtype=bool)
        assigned = np.zeros_like(mask)
        for tile in tiles:  # pixels owned by a decoded tile come from that tile
            cy0, cx0, cy1, cx1 = tile.core
            sub = decoded[tile.index][0][cy0 - tile.y0 : cy1 - tile.y0, cx0 - tile.x0 : cx1 - tile.x0]
            mask[cy0 - y0 : cy1 - y0, cx0 - x0 : cx1 - x0] = sub
            assigned[cy0 - y0 : cy1 - y0, cx0 - x0 : cx1 - x0] = True
        extra = np.zeros_like(mask)
        for tile in tiles:  # the rest from any decoded tile that sees it
            extra[tile.y0 - y0 : tile.y1 - y0, tile.x0 - x0 : tile.x1 - x0] |= decoded[tile.index][0]
        mask |= extra & ~assigned
        areas = np.array([max(decoded[t.index][0].sum(), 1) for t in tiles], dtype=np.float64)
        score = float(np.dot(areas / areas.sum(), [decoded[t.index][1] for t in tiles]))
        order = tuple(t.index for t in tiles)
        piece = MaskPiece(y0, x0, mask, score, 1.0, order).trimmed()
        piece = piece or MaskPiece(y0, x0, np.zeros((0, 0), bool), score, 1.0, order)
        return TiledPrediction(piece, score, order)


def _inside_points(tile: Tile, pts: np.ndarray) -> np.ndarray:
    keep = (pts[:, 0] >= tile.x0) & (pts[:, 0] < tile.x1) & (pts[:, 1] >= tile.y0) & (pts[:, 1] < tile.y1)
    return pts[keep]


def _inside_labels(tile: Tile, pts: np.ndarray, lbl: np.ndarray) -> np.ndarray:
    keep = (pts[:, 0] >= tile.x0) & (pts[:, 0] < tile.x1) & (pts[:, 1] >= tile.y0) & (pts[:, 1] < tile.y1)
    return lbl[keep]


def _touched_edges(tile: Tile, mask: np.ndarray, margin: int = 2) -> tuple[bool, bool, bool, bool]:
    """(top, left, bottom, right): the mask reaches that inner edge of the tile (within ``margin`` px)."""
    top, left, bottom, right = tile.inner_edges
    return (
        bool(top and mask[:margin].any()),
        bool(left and mask[:, :margin].any()),
        bool(bottom and mask[-margin:].any()),
        bool(right and mask[:, -margin:].any()),
    )


def _touches_inner_edge(tile: Tile, mask: np.ndarray) -> bool:
    return any(_touched_edges(tile, mask))


def _interior_points(mask: np.ndarray, count: int) -> np.ndarray:
    """Up to ``count`` (x, y) points deep inside ``mask`` (maxima of the distance to its border)."""
    from scipy import ndimage

    distance = ndimage.distance_transform_edt(np.pad(mask, 1))[1:-1, 1:-1]
    labels, n = ndimage.label(mask)
    points = []
    sizes = ndimage.sum(mask, labels, index=range(1, n + 1)) if n else []
    for component in np.argsort(sizes)[::-1][:count]:
        region = np.where(labels == component + 1, distance, -1)
        y, x = np.unravel_index(int(np.argmax(region)), mask.shape)
        points.append((float(x), float(y)))
    return np.asarray(points, dtype=np.float64).reshape(-1, 2)
