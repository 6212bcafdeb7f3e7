"""Prompts on an image of any size: encode tile by tile, decode at full resolution, join across tiles."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Optional, Sequence

import numpy as np

from sam_core.errors import SamError
from sam_core.progress import CancelToken, ProgressFn, check, report
from sam_core.tiling.grid import Tile, TileGrid, array_reader
from sam_core.tiling.pieces import MaskPiece

__all__ = ["TiledPrediction", "TiledPredictor"]


@dataclass
class TiledPrediction:
    """One object decoded over one or more tiles: its mask (full-image coordinates), score and tiles.

    ``logits``: the chosen candidate's low-resolution logits (float32 (low, low), as in
    :class:`~sam_core.types.Prediction`) in the frame of the one tile that decoded the object
    (``tiles[0]``), usable as ``mask_input`` of the predictor on that tile's embedding; ``None`` when the
    object was joined from several tiles (no single low-resolution frame holds it).
    """

    piece: MaskPiece
    score: float
    tiles: tuple[int, ...]
    logits: Optional[np.ndarray] = None


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
            self._read = array_reader(image)
        self.predictor = predictor
        self.grid = TileGrid(shape[0], shape[1], tile_size, overlap)
        self._keep = keep
        self._max_tiles = max_tiles
        self._embeddings: dict[int, Any] = {}
        self._preparation = preparation
        self.tiles_used: set[int] = set()

    def _encode(self, pixels: np.ndarray) -> Any:
        return self.predictor.encode(np.ascontiguousarray(pixels), preparation=self._preparation)

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

        Points may lie anywhere in -0.5 <= x <= width, -0.5 <= y <= height, the range of
        :meth:`sam_core.predictor.Predictor.predict`, so a click valid on a small image is valid here too.

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
        outside = (pts[:, 0] < -0.5) | (pts[:, 0] > w) | (pts[:, 1] < -0.5) | (pts[:, 1] > h)
        if outside.any():  # the range Predictor accepts (pixel centres and pixel corners)
            x, y = pts[np.argmax(outside)]
            raise SamError(f"point ({x:g}, {y:g}) is outside the image ({w} x {h} pixels, x across, y down)")
        if bx is not None:
            bx = np.array([max(bx[0], 0), max(bx[1], 0), min(bx[2], w), min(bx[3], h)])
            if bx[0] >= bx[2] or bx[1] >= bx[3]:
                raise SamError(f"the box lies outside the image ({w}x{h} pixels)")
        if multimask is None:
            multimask = bx is None and len(pts) == 1
        extent_pts = pts[lbl > 0] if (lbl > 0).any() else pts
        corners = [extent_pts] + ([bx.reshape(2, 2)] if bx is not None else [])
        allpts = np.concatenate([c for c in corners if len(c)])
        ex0, ey0 = np.maximum(allpts.min(axis=0), 0)
        ex1, ey1 = np.minimum(allpts.max(axis=0) + 1, [w, h])
        seed = self.grid.best_tile(ex0, ey0, ex1, ey1)
        if seed is not None:
            result = self._decode(seed, _inside_points(seed, pts), _inside_labels(seed, pts, lbl), bx, multimask)
            best = int(np.argmax(np.asarray(result.scores)))
            mask = np.asarray(result.masks[best], dtype=bool)
            if not _touches_inner_edge(seed, mask):
                piece = MaskPiece(seed.y0, seed.x0, mask, float(result.scores[best]), 1.0, (seed.index,)).trimmed()
                piece = piece or MaskPiece(seed.y0, seed.x0, np.zeros((0, 0), bool), float(result.scores[best]))
                return TiledPrediction(piece, float(result.scores[best]), (seed.index,), _logits(result, best))
        if bx is not None:
            return self._decode_box_tiles(pts, lbl, bx)
        return self._grow(seed or self.grid.owner(*np.clip(extent_pts[0], 0, [w - 1, h - 1])), pts, lbl, multimask)

    def _decode_box_tiles(self, pts: np.ndarray, lbl: np.ndarray, bx: np.ndarray) -> TiledPrediction:
        decoded: dict[int, tuple[np.ndarray, float, Optional[np.ndarray]]] = {}
        for tile in self.grid.tiles_touching(*bx):
            clipped = np.array([max(bx[0], tile.x0), max(bx[1], tile.y0), min(bx[2], tile.x1), min(bx[3], tile.y1)])
            result = self._decode(tile, _inside_points(tile, pts), _inside_labels(tile, pts, lbl), clipped, False)
            decoded[tile.index] = (np.asarray(result.masks[0], dtype=bool), float(result.scores[0]), _logits(result, 0))
        return self._assemble(decoded)

    def _grow(self, seed: Tile, pts: np.ndarray, lbl: np.ndarray, multimask: bool) -> TiledPrediction:
        decoded: dict[int, tuple[np.ndarray, float, Optional[np.ndarray]]] = {}
        result = self._decode(seed, _inside_points(seed, pts), _inside_labels(seed, pts, lbl), None, multimask)
        best = int(np.argmax(np.asarray(result.scores)))
        decoded[seed.index] = (np.asarray(result.masks[best], dtype=bool), float(result.scores[best]), _logits(result, best))
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
                decoded[nb.index] = (candidates[pick], float(np.asarray(res.scores)[pick]), None)
                queue.append(nb)
        return self._assemble(decoded)

    def _assemble(self, decoded: Mapping[int, tuple[np.ndarray, float, Optional[np.ndarray]]]) -> TiledPrediction:
        tiles = [self.grid[i] for i in sorted(decoded)]
        y0, x0 = min(t.y0 for t in tiles), min(t.x0 for t in tiles)
        y1, x1 = max(t.y1 for t in tiles), max(t.x1 for t in tiles)
        mask = np.zeros((y1 - y0, x1 - x0), dtype=bool)
        assigned = np.zeros_like(mask)
        for tile in tiles:  # pixels owned by a decoded tile come from that tile
            cx0, cy0, cx1, cy1 = tile.core
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
        logits = decoded[order[0]][2] if len(order) == 1 else None
        return TiledPrediction(piece, score, order, logits)


def _logits(result: Any, index: int) -> Optional[np.ndarray]:
    """Candidate ``index``'s low-resolution logits of a predictor's result (float32), if it has them."""
    logits = getattr(result, "logits", None)
    return None if logits is None else np.asarray(logits[index], dtype=np.float32)


def _inside(tile: Tile, pts: np.ndarray) -> np.ndarray:
    """Which points fall in the tile; at the image's edges the tile also takes the half pixel beyond it
    (x down to -0.5 and up to the width, as :class:`~sam_core.predictor.Predictor` accepts)."""
    top, left, bottom, right = tile.inner_edges
    x, y = pts[:, 0], pts[:, 1]
    return (
        (x >= (tile.x0 if left else -0.5)) & ((x < tile.x1) if right else (x <= tile.x1))
        & (y >= (tile.y0 if top else -0.5)) & ((y < tile.y1) if bottom else (y <= tile.y1))
    )


def _inside_points(tile: Tile, pts: np.ndarray) -> np.ndarray:
    return pts[_inside(tile, pts)]


def _inside_labels(tile: Tile, pts: np.ndarray, lbl: np.ndarray) -> np.ndarray:
    return lbl[_inside(tile, pts)]


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
