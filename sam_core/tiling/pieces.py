"""Object masks in full-image coordinates (:class:`MaskPiece`), from and to records and label images.

**Overlaps** (:func:`remove_overlaps`): automatic masks may overlap (parts inside wholes). For label images and
polygon coverages the smaller object keeps a contested pixel (ties: higher predicted IoU, then position), so
parts stay visible inside the wholes that contain them.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field, replace
from typing import Any, Iterable, Mapping, Optional, Sequence

import numpy as np

from sam_core.tiling.grid import Tile

__all__ = ["MaskPiece", "records_to_pieces", "remove_overlaps", "pieces_to_labels", "pieces_to_records"]


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
