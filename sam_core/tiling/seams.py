"""Joining the masks of overlapping tiles into objects of the whole image.

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
A joined object covers a pixel when its masks that cover it hold at least half of the *vote* of its masks whose
tile window contains that pixel. A tile's vote is 1 inside its window and fades to 0 over the last
``overlap / 2`` pixels before each inner edge of the window (edges on the image's border do not fade): a tile
sees least of an object near its own border, so there the tile that sees the pixel from farther inside decides,
and the joined outline does not jump at a tile border where the tiles' masks disagree. Nothing depends on the
order in which tiles were computed or listed.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

from sam_core.tiling.grid import Tile, TileGrid
from sam_core.tiling.pieces import MaskPiece, _boxes_meet, _iou, _meets_window, _window_iou

__all__ = ["drop_duplicates", "merge_tile_masks"]


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


def _vote_weight(tile: Tile, y0: int, x0: int, y1: int, x1: int, ramp: float) -> np.ndarray:
    """A tile's vote over image rows ``y0:y1`` and columns ``x0:x1``: 0 outside its window, inside it
    rising linearly from 0 at an inner edge to 1 at ``ramp`` pixels from it (pixel centres)."""
    top, left, bottom, right = tile.inner_edges
    ys = np.arange(y0, y1) + 0.5
    xs = np.arange(x0, x1) + 0.5
    to_edge_y = np.minimum(ys - tile.y0 if top else np.inf, tile.y1 - ys if bottom else np.inf)
    to_edge_x = np.minimum(xs - tile.x0 if left else np.inf, tile.x1 - xs if right else np.inf)
    vote_y = np.where((ys > tile.y0) & (ys < tile.y1), np.clip(to_edge_y / ramp, 0.0, 1.0), 0.0)
    vote_x = np.where((xs > tile.x0) & (xs < tile.x1), np.clip(to_edge_x / ramp, 0.0, 1.0), 0.0)
    return np.minimum(vote_y[:, None], vote_x[None, :])


def _join(grid: TileGrid, members: list[tuple[int, MaskPiece]]) -> MaskPiece:
    if len(members) == 1:
        return members[0][1]
    y0 = min(p.y0 for _, p in members)
    x0 = min(p.x0 for _, p in members)
    y1 = max(p.y1 for _, p in members)
    x1 = max(p.x1 for _, p in members)
    ramp = max(grid.overlap / 2, 1.0)
    votes = np.zeros((y1 - y0, x1 - x0))
    cover = np.zeros_like(votes)
    covered = np.zeros(votes.shape, dtype=bool)
    for tile_index, piece in members:
        weight = _vote_weight(grid[tile_index], y0, x0, y1, x1, ramp)
        inside = piece.window(y0, x0, y1, x1)
        votes += weight * inside
        cover += weight
        covered |= inside
    mask = covered & (2 * votes >= cover)
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
