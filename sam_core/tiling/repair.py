"""Objects cut at a tile border: find them, and decode them again whole in a window centred on them.

A tile sees only its window. An object that continues past a tile's inner edge is joined with its other
part when the neighbouring tile found a matching mask (:mod:`sam_core.tiling.seams`); when it did not, the
object ends in a straight edge lying exactly on that tile's border (a *cut*). Coordinates: pixel (row, col)
of the full image for masks, (x, y) = (col, row) for prompts, windows as :class:`~sam_core.tiling.grid.Tile`.

**Edge on a tile border** (:func:`cut_edges`): along a border line of a tile window that lies inside the
image (x = ``x0`` or ``x1`` of a tile with an inner left or right edge, same for rows), the object has a
run of at least ``min_run`` pixels on the inner side of the line whose neighbours across the line are not
in the object. It is a **cut** when the border is one of the object's own tiles and none of its tiles
saw across the line there (a tile that saw the object end there is right).

**Repair** (:func:`repair_cut_objects`): every object with a cut on a border of one of its own tiles is
decoded again in a window of one tile size centred on it (extended past the cut edge by its own size),
its point prompts and its box (stretched across the cut edge to the window's side) as prompts; candidates
come from the box with the points and from the points alone (three masks). The candidate that agrees best
with the cut object where the object's tiles could see it (IoU >= ``min_agreement``) replaces it; when the
new mask reaches an inner side of the window, the window is moved onto it (up to ``rounds`` times).
Window origins are snapped to a step of 1/8 tile, so neighbouring objects share windows and the
predictor's cache encodes each window once. Objects without a cut are never touched. A repaired object that
matches an untouched one or a better-scored repaired one (mask IoU >= ``duplicate_iou``) is dropped, and so
is a cut object that could not be repaired when a repaired one covers that share of it: the two parts of
one object become a single object.
"""

from __future__ import annotations

from typing import Any, Callable, Optional, Sequence

import numpy as np

from sam_core.progress import CancelToken, ProgressFn, check, report
from sam_core.tiling.grid import Tile, TileGrid, TileReader
from sam_core.tiling.pieces import MaskPiece, _iou

__all__ = ["Cut", "border_edges", "cut_edges", "has_cut", "WindowDecoder", "repair_cut_objects"]

# (side, line): side is "left", "right", "top" or "bottom" of a tile window; line the x or y of the border.
Cut = tuple[str, int]

Candidates = list[tuple[np.ndarray, float]]
Decoder = Callable[[Tile, np.ndarray, np.ndarray, Optional[np.ndarray]], "tuple[Candidates, Optional[np.ndarray]]"]


def _run_length(piece: MaskPiece, side: str, line: int, lo: int, hi: int, seen: Optional[np.ndarray] = None) -> int:
    """The longest run of pixels of ``piece`` just inside ``line`` (the window side ``side``) whose
    neighbour across the line is empty (and, with ``seen``, not seen by the piece's tiles).

    ``lo``..``hi`` is the range of rows (vertical lines) or columns (horizontal lines) of the window side.
    """
    vertical = side in ("left", "right")
    inner = line - 1 if side in ("right", "bottom") else line  # the pixel row/col inside the window
    outer = line if side in ("right", "bottom") else line - 1
    if vertical:
        a, b = max(lo, piece.y0), min(hi, piece.y1)
        if a >= b or not piece.x0 <= inner < piece.x1:
            return 0
        inside = piece.mask[a - piece.y0 : b - piece.y0, inner - piece.x0]
        across = (
            piece.mask[a - piece.y0 : b - piece.y0, outer - piece.x0]
            if piece.x0 <= outer < piece.x1
            else np.zeros_like(inside)
        )
    else:
        a, b = max(lo, piece.x0), min(hi, piece.x1)
        if a >= b or not piece.y0 <= inner < piece.y1:
            return 0
        inside = piece.mask[inner - piece.y0, a - piece.x0 : b - piece.x0]
        across = (
            piece.mask[outer - piece.y0, a - piece.x0 : b - piece.x0]
            if piece.y0 <= outer < piece.y1
            else np.zeros_like(inside)
        )
    edge = inside & ~across
    if seen is not None:
        edge &= ~seen[a - lo : b - lo]
    return _longest_run(edge)


def _longest_run(values: np.ndarray) -> int:
    if not values.any():
        return 0
    padded = np.concatenate([[0], values.astype(np.int8), [0]])
    changes = np.flatnonzero(np.diff(padded))
    return int((changes[1::2] - changes[::2]).max())


def _window_sides(tile: Tile) -> list[tuple[str, int, int, int]]:
    """(side, line, lo, hi) of each inner edge of a tile window."""
    top, left, bottom, right = tile.inner_edges
    sides = []
    if left:
        sides.append(("left", tile.x0, tile.y0, tile.y1))
    if right:
        sides.append(("right", tile.x1, tile.y0, tile.y1))
    if top:
        sides.append(("top", tile.y0, tile.x0, tile.x1))
    if bottom:
        sides.append(("bottom", tile.y1, tile.x0, tile.x1))
    return sides


def cut_edges(piece: MaskPiece, tiles: Sequence[Tile], min_run: int = 4, members: Sequence[Tile] = ()) -> list[Cut]:
    """The inner borders of ``tiles`` on which ``piece`` ends in a straight edge of >= ``min_run`` pixels.

    With ``members`` (the tiles that made the piece), an edge counts only where none of them could see
    across the border: an object that one of its own tiles saw ending there is not cut.
    """
    cuts: list[Cut] = []
    for tile in tiles:
        if not (piece.x0 <= tile.x1 and tile.x0 <= piece.x1 and piece.y0 <= tile.y1 and tile.y0 <= piece.y1):
            continue
        for side, line, lo, hi in _window_sides(tile):
            if (side, line) in cuts:
                continue
            seen = _seen_across(members, side, line, lo, hi) if members else None
            if _run_length(piece, side, line, lo, hi, seen) >= min_run:
                cuts.append((side, line))
    return cuts


def _seen_across(members: Sequence[Tile], side: str, line: int, lo: int, hi: int) -> np.ndarray:
    """Over ``lo``..``hi`` along a border: whether a member tile sees the pixel just across ``line``."""
    outer = line if side in ("right", "bottom") else line - 1
    seen = np.zeros(hi - lo, dtype=bool)
    for tile in members:
        if side in ("left", "right"):
            if tile.x0 <= outer < tile.x1:
                a, b = max(lo, tile.y0), min(hi, tile.y1)
                seen[max(a - lo, 0) : max(b - lo, 0)] = True
        elif tile.y0 <= outer < tile.y1:
            a, b = max(lo, tile.x0), min(hi, tile.x1)
            seen[max(a - lo, 0) : max(b - lo, 0)] = True
    return seen


def border_edges(piece: MaskPiece, grid: TileGrid, min_run: int = 4) -> list[tuple[str, int]]:
    """The tile borders inside the image on which the piece's outline runs straight for >= ``min_run`` pixels.

    Returns ("x", column) for vertical and ("y", row) for horizontal border lines (the line between pixel
    ``line - 1`` and ``line``), whichever side of the line the piece lies on. This is what a reader of the
    polygons sees as "an edge on a tile border"; see :func:`cut_edges` for the cuts that are repaired.
    """
    found: list[tuple[str, int]] = []
    full = piece.window(piece.y0 - 1, piece.x0 - 1, piece.y1 + 1, piece.x1 + 1)
    for tile in grid.tiles:
        for side, line, lo, hi in _window_sides(tile):
            axis = "x" if side in ("left", "right") else "y"
            if (axis, line) in found:
                continue
            if axis == "x":
                col = line - (piece.x0 - 1)
                a, b = max(lo, piece.y0) - (piece.y0 - 1), min(hi, piece.y1) - (piece.y0 - 1)
                if not 1 <= col < full.shape[1] or a >= b:
                    continue
                edge = full[a:b, col - 1] ^ full[a:b, col]
            else:
                row = line - (piece.y0 - 1)
                a, b = max(lo, piece.x0) - (piece.x0 - 1), min(hi, piece.x1) - (piece.x0 - 1)
                if not 1 <= row < full.shape[0] or a >= b:
                    continue
                edge = full[row - 1, a:b] ^ full[row, a:b]
            if _longest_run(edge) >= min_run:
                found.append((axis, line))
    return found


def has_cut(piece: MaskPiece, grid: TileGrid, min_run: int = 4) -> bool:
    """Whether the piece's outline runs straight along a tile border inside the image (:func:`border_edges`)."""
    return bool(border_edges(piece, grid, min_run))


class WindowDecoder:
    """Decodes prompts in any window of the image: ``read(window) -> (rgb, valid)``, then ``predictor``.

    ``predictor`` has ``encode(rgb, preparation) -> embedding`` and ``predict(embedding, points, labels,
    box, multimask=...)`` (e.g. :class:`sam_core.predictor.Predictor`, whose cache keeps the embedding
    of each window). Prompts are full-image pixel (x, y); masks come back in the window's pixels.
    """

    def __init__(self, predictor: Any, read: TileReader, preparation: Any = None) -> None:
        self.predictor = predictor
        self.read = read
        self.preparation = preparation

    def __call__(
        self, window: Tile, points: np.ndarray, labels: np.ndarray, box: Optional[np.ndarray]
    ) -> tuple[Candidates, Optional[np.ndarray]]:
        """(candidates [(mask (h, w) bool, score)], valid (h, w) bool or None) of one set of prompts."""
        rgb, valid = self.read(window)
        embedding = self.predictor.encode(np.ascontiguousarray(rgb), preparation=self.preparation)
        offset = np.array([window.x0, window.y0], dtype=np.float64)
        local = points - offset
        candidates: Candidates = []
        if box is not None:
            local_box = box - np.concatenate([offset, offset])
            result = self.predictor.predict(embedding, points=local, labels=labels, box=local_box, multimask=False)
            candidates.append((np.asarray(result.masks[0], dtype=bool), float(np.asarray(result.scores)[0])))
        result = self.predictor.predict(embedding, points=local, labels=labels, box=None, multimask=True)
        scores = np.asarray(result.scores)
        candidates.extend((np.asarray(m, dtype=bool), float(s)) for m, s in zip(result.masks, scores))
        return candidates, valid


def _window_at(grid: TileGrid, cx: float, cy: float) -> Tile:
    """A tile-sized window centred near (cx, cy), origin snapped to 1/8 tile, inside the image."""
    h, w = min(grid.tile_size, grid.height), min(grid.tile_size, grid.width)
    step = max(grid.tile_size // 8, 1)
    x0 = int(min(max(round((cx - w / 2) / step) * step, 0), grid.width - w))
    y0 = int(min(max(round((cy - h / 2) / step) * step, 0), grid.height - h))
    return Tile(
        index=-1, row=-1, col=-1, y0=y0, x0=x0, y1=y0 + h, x1=x0 + w, core=(x0, y0, x0 + w, y0 + h),
        inner_edges=(y0 > 0, x0 > 0, y0 + h < grid.height, x0 + w < grid.width),
    )


def _extended_box(piece: MaskPiece, cuts: Sequence[Cut]) -> tuple[float, float, float, float]:
    """The piece's box (x0, y0, x1, y1), extended past each cut edge by the piece's own size."""
    x0, y0, x1, y1 = float(piece.x0), float(piece.y0), float(piece.x1), float(piece.y1)
    width, height = x1 - x0, y1 - y0
    sides = {side for side, _ in cuts}
    return (
        x0 - width if "left" in sides else x0,
        y0 - height if "top" in sides else y0,
        x1 + width if "right" in sides else x1,
        y1 + height if "bottom" in sides else y1,
    )


def _deepest_point(piece: MaskPiece) -> np.ndarray:
    """The (x, y) image pixel farthest inside the piece."""
    from scipy import ndimage

    distance = ndimage.distance_transform_edt(np.pad(piece.mask, 1))[1:-1, 1:-1]
    y, x = np.unravel_index(int(np.argmax(distance)), distance.shape)
    return np.array([[piece.x0 + x + 0.5, piece.y0 + y + 0.5]])


def _seen(piece: MaskPiece, grid: TileGrid, y0: int, x0: int, y1: int, x1: int) -> np.ndarray:
    """Over [y0:y1, x0:x1]: the pixels that the piece's own tiles could see."""
    seen = np.zeros((y1 - y0, x1 - x0), dtype=bool)
    for index in piece.tiles or range(len(grid)):
        tile = grid[index]
        a, b = max(tile.y0, y0), max(tile.x0, x0)
        c, d = min(tile.y1, y1), min(tile.x1, x1)
        if a < c and b < d:
            seen[a - y0 : c - y0, b - x0 : d - x0] = True
    return seen


def _agreement(candidate: np.ndarray, window: Tile, piece: MaskPiece, grid: TileGrid) -> float:
    """IoU of the candidate and the piece, counted only where the piece's tiles could see."""
    y0, x0 = min(window.y0, piece.y0), min(window.x0, piece.x0)
    y1, x1 = max(window.y1, piece.y1), max(window.x1, piece.x1)
    seen = _seen(piece, grid, y0, x0, y1, x1)
    new = np.zeros_like(seen)
    new[window.y0 - y0 : window.y1 - y0, window.x0 - x0 : window.x1 - x0] = candidate
    old = piece.window(y0, x0, y1, x1)
    union = np.count_nonzero((new | old) & seen)
    return float(np.count_nonzero(new & old & seen) / union) if union else 0.0


def _touches_window_side(window: Tile, mask: np.ndarray) -> bool:
    top, left, bottom, right = window.inner_edges
    return bool(
        (top and mask[0].any()) or (left and mask[:, 0].any())
        or (bottom and mask[-1].any()) or (right and mask[:, -1].any())
    )


def repair_object(
    piece: MaskPiece,
    cuts: Sequence[Cut],
    grid: TileGrid,
    decode: Decoder,
    *,
    min_agreement: float = 0.5,
    rounds: int = 3,
) -> Optional[MaskPiece]:
    """The whole object that ``piece`` (cut at ``cuts``) is part of, or None when no candidate agrees."""
    points = np.asarray(piece.point_coords, dtype=np.float64).reshape(-1, 2)
    inside = np.asarray([piece.window(int(y), int(x), int(y) + 1, int(x) + 1)[0, 0] for x, y in points], bool)
    points = np.concatenate([_deepest_point(piece), points[inside.reshape(-1)] if len(points) else points])
    bx0, by0, bx1, by1 = _extended_box(piece, cuts)
    best: Optional[tuple[Tile, np.ndarray, float]] = None
    tried: set[tuple[int, int]] = set()
    for _ in range(rounds):
        window = _window_at(grid, (bx0 + bx1) / 2, (by0 + by1) / 2)
        if (window.x0, window.y0) in tried:
            break
        tried.add((window.x0, window.y0))
        x, y = points[:, 0], points[:, 1]
        keep = (x >= window.x0) & (x < window.x1) & (y >= window.y0) & (y < window.y1)
        if not keep.any():
            break
        box = np.array([max(bx0, window.x0), max(by0, window.y0), min(bx1, window.x1), min(by1, window.y1)])
        candidates, valid = decode(window, points[keep], np.ones(int(keep.sum()), np.int64), box)
        scored = [(_agreement(mask, window, piece, grid), score, mask) for mask, score in candidates if mask.any()]
        if not scored:
            break
        agreement, score, mask = max(scored, key=lambda item: (item[0], item[1]))
        if agreement < min_agreement:
            break
        if valid is not None:
            mask = mask & valid
        best = (window, mask, score)
        if not _touches_window_side(window, mask):
            break
        rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
        bx0, bx1 = window.x0 + cols[0], window.x0 + cols[-1] + 1.0
        by0, by1 = window.y0 + rows[0], window.y0 + rows[-1] + 1.0
    if best is None:
        return None
    window, mask, score = best
    return MaskPiece(
        window.y0, window.x0, mask, score, piece.stability_score, piece.tiles, list(piece.point_coords)
    ).trimmed()


def repair_cut_objects(
    grid: TileGrid,
    objects: Sequence[MaskPiece],
    decode: Decoder,
    *,
    min_run: int = 4,
    min_agreement: float = 0.5,
    duplicate_iou: float = 0.8,
    progress: Optional[ProgressFn] = None,
    cancel: Optional[CancelToken] = None,
) -> list[MaskPiece]:
    """Objects after seam merging -> the same objects, those cut at a border of their tiles decoded whole.

    Rules in the module docstring. Returns the objects in canonical order (:meth:`MaskPiece.sort_key`).
    """
    todo = []
    kept: list[MaskPiece] = []
    for piece in objects:
        members = [grid[i] for i in piece.tiles]
        cuts = cut_edges(piece, members or grid.tiles, min_run, members)
        if cuts:
            todo.append((piece, cuts))
        else:
            kept.append(piece)
    wholes: list[MaskPiece] = []
    stubs: list[MaskPiece] = []
    for done, (piece, cuts) in enumerate(todo, start=1):
        check(cancel)
        whole = repair_object(piece, cuts, grid, decode, min_agreement=min_agreement)
        if whole is None:
            stubs.append(piece)
        else:
            wholes.append(whole)
        report(progress, done, len(todo), f"object cut at a tile border {done}/{len(todo)}")
    for piece in sorted(wholes, key=lambda p: (-p.predicted_iou, -p.area, p.sort_key())):
        if all(_iou(piece, other) < duplicate_iou for other in kept):
            kept.append(piece)
    for stub in stubs:  # a part that could not be repaired, unless a repaired object holds it
        if all(_contained(stub, whole) < duplicate_iou for whole in wholes):
            kept.append(stub)
    return sorted(kept, key=MaskPiece.sort_key)


def _contained(part: MaskPiece, whole: MaskPiece) -> float:
    """Share of ``part``'s pixels that ``whole`` covers."""
    area = part.area
    if area == 0:
        return 0.0
    return float(np.count_nonzero(part.mask & whole.window(part.y0, part.x0, part.y1, part.x1)) / area)
