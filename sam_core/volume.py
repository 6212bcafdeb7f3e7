"""Segmentation through stacks of 2D slices: volumes (z, y, x) and time series (t, y, x).

Three jobs, all slice by slice through a :class:`~sam_core.predictor.Predictor`:

* :func:`propagate` carries one object from a segmented slice through the stack. Each slice is
  prompted from the previous slice's result: its low-resolution logits as ``mask_input``, the box
  around it and one positive point at its interior point farthest from its border. It stops where
  the object ends (empty mask, predicted IoU or stability below thresholds, or too little overlap
  with the previous slice) or at the given index range.
* :func:`fill_between` segments the slices between slices that the user prompted (key slices): the
  two neighbouring key masks are interpolated by signed distance, and the interpolated shape
  prompts the model (box, interior point, previous logits).
* :func:`automask_volume` runs automatic masks on every slice and links objects across slices by
  overlap into one 3D label image (:func:`link_slices`).

Embeddings are requested from the predictor slice by slice (``predictor.encode``), so its
embedding cache decides what stays in memory; this module keeps only the current slice. Volumes
may be NumPy, dask or zarr arrays: one slice is read at a time (``np.asarray(volume[z])``).

Coordinates: slices are (row, col) arrays; prompts handed to the predictor are (x, y) pixels.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch
from scipy import ndimage

from sam_core.errors import SamError
from sam_core.masks import mask_iou, stability_score
from sam_core.progress import CancelToken, ProgressFn, check, report

__all__ = [
    "propagate",
    "fill_between",
    "interpolate_masks",
    "prompts_from_mask",
    "automask_volume",
    "link_slices",
]

_DIRECTIONS = ("both", "forward", "backward")

# Propagation stops at a slice whose predicted IoU is below this (measured with demo: 0.75 keeps
# the object without running into its neighbours)
STOP_IOU = 0.75


def _check_volume(volume: Any) -> Tuple[int, int, int]:
    shape = tuple(int(s) for s in volume.shape)
    if len(shape) not in (3, 4) or (len(shape) == 4 and shape[3] not in (1, 3, 4)):
        raise SamError(
            f"a stack must have shape (Z, Y, X) or (Z, Y, X, C) with C in 1, 3, 4; got {shape}. "
            "Choose one channel or three channels first."
        )
    if min(shape[:3]) == 0:
        raise SamError(f"the stack is empty (shape {shape})")
    return shape[0], shape[1], shape[2]


def _slice(volume: Any, index: int) -> np.ndarray:
    """Read one slice (lazily for dask/zarr arrays)."""
    return np.asarray(volume[index])


def prompts_from_mask(mask: np.ndarray, margin: float = 0.1) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Prompts that describe ``mask`` (H, W) bool: ``(points (1, 2) as (x, y), labels (1,), box)``.

    The point is the interior pixel farthest from the mask's border (its centre, also for concave
    shapes); the box is ``(x0, y0, x1, y1)`` around the mask, widened on each side by ``margin``
    times its size (at least one pixel) and clipped to the image, so that a growing object fits.
    """
    mask = np.asarray(mask, dtype=bool)
    if not mask.any():
        raise SamError("the mask is empty: segment the object on this slice first")
    distance = ndimage.distance_transform_edt(np.pad(mask, 1))[1:-1, 1:-1]
    row, col = np.unravel_index(int(np.argmax(distance)), distance.shape)
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    height, width = mask.shape
    pad_y = max(1.0, margin * (rows[-1] - rows[0] + 1))
    pad_x = max(1.0, margin * (cols[-1] - cols[0] + 1))
    box = np.array(
        [
            max(0.0, cols[0] - pad_x),
            max(0.0, rows[0] - pad_y),
            min(width - 1.0, cols[-1] + pad_x),
            min(height - 1.0, rows[-1] + pad_y),
        ],
        dtype=np.float32,
    )
    points = np.array([[col, row]], dtype=np.float32)
    return points, np.ones(1, dtype=np.int64), box


def _stability(logits: np.ndarray, offset: float = 1.0) -> float:
    """Stability score (:func:`sam_core.masks.stability_score`) of low-resolution logits at threshold 0;
    NaN when no logit is above -offset."""
    return float(stability_score(torch.from_numpy(np.ascontiguousarray(logits, dtype=np.float32)), 0.0, offset))


def _decode(predictor: Any, image: np.ndarray, prompt_mask: np.ndarray, logits: Optional[np.ndarray],
            preparation: Any, margin: float) -> Tuple[np.ndarray, float, np.ndarray]:
    embedding = predictor.encode(image, preparation=preparation)
    points, labels, box = prompts_from_mask(prompt_mask, margin)
    prediction = predictor.predict(
        embedding, points=points, labels=labels, box=box, mask_input=logits, multimask=False
    )
    return (
        np.asarray(prediction.masks[0], dtype=bool),
        float(prediction.scores[0]),
        np.asarray(prediction.logits[0], dtype=np.float32),
    )


def propagate(
    predictor: Any,
    volume: Any,
    start_index: int,
    start_mask: np.ndarray,
    *,
    direction: str = "both",
    stop_iou: float = STOP_IOU,
    stop_stability: float = 0.5,
    min_overlap: float = 0.3,
    index_range: Optional[Tuple[int, int]] = None,
    start_logits: Optional[np.ndarray] = None,
    preparation: Any = None,
    box_margin: float = 0.1,
    progress: Optional[ProgressFn] = None,
    cancel: Optional[CancelToken] = None,
) -> np.ndarray:
    """Carry the object ``start_mask`` from slice ``start_index`` through ``volume``; (Z, Y, X) bool.

    ``volume`` is (Z, Y, X) or (Z, Y, X, C) (z or t first); ``start_mask`` is the object's (Y, X)
    mask on slice ``start_index`` and is copied into the result unchanged. ``direction`` is
    ``"both"``, ``"forward"`` (increasing index) or ``"backward"``. Each next slice is decoded
    with the previous result's logits (``start_logits`` for the first step, if given), its box and
    its interior point. Propagation in one direction stops before a slice whose mask is empty,
    whose predicted IoU is below ``stop_iou``, whose stability score (of the low-resolution logits,
    offset 1) is below ``stop_stability``, or whose IoU with the previous slice's mask is below
    ``min_overlap``; and at ``index_range = (first, last)`` (inclusive slice indices).
    ``preparation`` is passed to ``predictor.encode`` for every slice (use one fixed value range
    for the whole stack so that slices look alike).
    """
    depth, height, width = _check_volume(volume)
    if direction not in _DIRECTIONS:
        raise SamError(f"direction must be one of {', '.join(_DIRECTIONS)}; got {direction!r}")
    start_mask = np.asarray(start_mask, dtype=bool)
    if start_mask.shape != (height, width):
        raise SamError(f"the start mask has shape {start_mask.shape}; the slices have {(height, width)}")
    if not start_mask.any():
        raise SamError("the start mask is empty: segment the object on the start slice first")
    first, last = (0, depth - 1) if index_range is None else (int(index_range[0]), int(index_range[1]))
    first, last = max(0, min(first, last)), min(depth - 1, max(first, last))
    if not first <= start_index <= last:
        raise SamError(f"the start slice {start_index} is outside the range {first}..{last}")

    result = np.zeros((depth, height, width), dtype=bool)
    result[start_index] = start_mask
    steps = []
    if direction in ("both", "forward"):
        steps.append(range(start_index + 1, last + 1))
    if direction in ("both", "backward"):
        steps.append(range(start_index - 1, first - 1, -1))
    total = sum(len(s) for s in steps)
    done = 0
    report(progress, done, total, "propagating")
    for indices in steps:
        previous, logits = start_mask, start_logits
        for index in indices:
            check(cancel)
            mask, score, logits = _decode(
                predictor, _slice(volume, index), previous, logits, preparation, box_margin
            )
            done += 1
            report(progress, done, total, f"slice {index}")
            if (
                not mask.any()
                or score < stop_iou
                or not _stability(logits) >= stop_stability  # NaN (nothing near the mask) stops too
                or mask_iou(mask, previous) < min_overlap
            ):
                break
            result[index] = mask
            previous = mask
    report(progress, total, total, "done")
    return result


def interpolate_masks(mask_a: np.ndarray, mask_b: np.ndarray, t: float) -> np.ndarray:
    """Shape between two (Y, X) masks at fraction ``t`` (0 gives ``mask_a``, 1 ``mask_b``).

    Linear interpolation of signed distance maps (positive inside), thresholded at zero.
    """

    def signed_distance(mask: np.ndarray) -> np.ndarray:
        mask = np.asarray(mask, dtype=bool)
        return ndimage.distance_transform_edt(mask) - ndimage.distance_transform_edt(~mask)

    blended = (1.0 - t) * signed_distance(mask_a) + t * signed_distance(mask_b)
    return blended > 0


def fill_between(
    predictor: Any,
    volume: Any,
    key_masks: Mapping[int, np.ndarray],
    *,
    stop_iou: float = STOP_IOU,
    preparation: Any = None,
    box_margin: float = 0.1,
    progress: Optional[ProgressFn] = None,
    cancel: Optional[CancelToken] = None,
) -> np.ndarray:
    """Segment the slices between key slices; returns (Z, Y, X) bool.

    ``key_masks`` maps slice index -> (Y, X) mask that the user made on that slice (at least two).
    Key slices keep their masks. For every slice strictly between two neighbouring key slices, the
    two key masks are interpolated (:func:`interpolate_masks`); the interpolated shape's box and
    interior point, plus the previous slice's logits, prompt the model. Where the model's mask is
    empty or its predicted IoU is below ``stop_iou``, the interpolated shape is kept instead.
    Slices outside the first and last key slice stay empty (use :func:`propagate` for those).
    """
    depth, height, width = _check_volume(volume)
    keys = sorted(int(k) for k in key_masks)
    if len(keys) < 2:
        raise SamError("prompt the object on at least two slices to fill the slices between them")
    result = np.zeros((depth, height, width), dtype=bool)
    for key in keys:
        if not 0 <= key < depth:
            raise SamError(f"key slice {key} is outside the stack (0..{depth - 1})")
        mask = np.asarray(key_masks[key], dtype=bool)
        if mask.shape != (height, width) or not mask.any():
            raise SamError(f"the mask on slice {key} is empty or has the wrong shape {mask.shape}")
        result[key] = mask
    total = sum(b - a - 1 for a, b in zip(keys, keys[1:]))
    done = 0
    report(progress, done, total, "filling")
    for a, b in zip(keys, keys[1:]):
        logits = None
        for index in range(a + 1, b):
            check(cancel)
            shape = interpolate_masks(result[a], result[b], (index - a) / (b - a))
            if not shape.any():
                shape = result[a] if index - a <= b - index else result[b]
            mask, score, logits = _decode(
                predictor, _slice(volume, index), shape, logits, preparation, box_margin
            )
            if not mask.any() or score < stop_iou:
                mask, logits = shape, None
            result[index] = mask
            done += 1
            report(progress, done, total, f"slice {index}")
    report(progress, total, total, "done")
    return result


def link_slices(slices: Sequence[np.ndarray], min_iou: float = 0.3, min_cover: float = 0.8) -> np.ndarray:
    """Link per-slice 2D label images into one (Z, Y, X) int32 label image.

    Each object (label > 0) of slice ``z`` takes the 3D id of the object of slice ``z - 1`` it
    overlaps best, when their IoU is at least ``min_iou``; pairs are matched one to one, highest
    IoU first. Unmatched objects get new ids. Then fragments are joined to the object they are part
    of: a 3D object each of whose slices lies, for at least ``min_cover`` of its area, inside one
    other object on a neighbouring slice (a sphere's cap split into pieces, say) takes that object's
    id. Ids are 1, 2, ... in order of appearance.
    """
    if len(slices) == 0:
        raise SamError("no slices to link")
    out = np.zeros((len(slices),) + np.asarray(slices[0]).shape, dtype=np.int32)
    next_id = 1
    previous: Optional[np.ndarray] = None
    for z, labels in enumerate(slices):
        labels = np.asarray(labels)
        current = np.zeros(labels.shape, dtype=np.int32)
        ids = [int(i) for i in np.unique(labels) if i != 0]
        mapping = {}
        if previous is not None and ids:
            mapping = _match(labels, previous, min_iou)
        for label in ids:
            if label not in mapping:
                mapping[label] = next_id
                next_id += 1
            current[labels == label] = mapping[label]
        out[z] = current
        previous = current
    return _join_fragments(out, min_cover)


def _join_fragments(labels: np.ndarray, min_cover: float) -> np.ndarray:
    """Give each fragment (see :func:`link_slices`) the id of the object it lies in; renumber ids."""
    ids = [int(i) for i in np.unique(labels) if i != 0]
    sizes = {i: int((labels == i).sum()) for i in ids}
    for fragment in sorted(ids, key=lambda i: sizes[i]):  # small first: pieces join the bigger whole
        owners: Optional[set] = None
        for z in np.nonzero((labels == fragment).any(axis=(1, 2)))[0]:
            covering = _covering(labels, int(z), fragment, min_cover)
            owners = covering if owners is None else owners & covering
            if not owners:
                break
        owners = {o for o in owners or () if sizes[o] > sizes[fragment]}
        if owners:
            owner = max(owners, key=lambda o: sizes[o])
            labels[labels == fragment] = owner
            sizes[owner] += sizes[fragment]
            sizes[fragment] = 0
    values, first = np.unique(labels.ravel(), return_index=True)
    order = [int(v) for _, v in sorted(zip(first, values)) if v != 0]
    lookup = np.zeros(int(labels.max()) + 1, dtype=np.int32)
    lookup[order] = np.arange(1, len(order) + 1, dtype=np.int32)
    return lookup[labels]


def _covering(labels: np.ndarray, z: int, fragment: int, min_cover: float) -> set:
    """Ids of the objects that hold at least ``min_cover`` of ``fragment``'s piece of slice ``z`` on slice z - 1 or z + 1."""
    piece = labels[z] == fragment
    found = set()
    for neighbour in (z - 1, z + 1):
        if 0 <= neighbour < len(labels):
            under = labels[neighbour][piece]
            under = under[(under != 0) & (under != fragment)]
            if under.size:
                best = int(np.bincount(under).argmax())
                if (under == best).sum() >= min_cover * piece.sum():
                    found.add(best)
    return found


def _match(labels: np.ndarray, previous: np.ndarray, min_iou: float) -> dict:
    """One-to-one match of 2D labels to the previous slice's 3D ids by IoU (greedy, best first)."""
    both = (labels > 0) & (previous > 0)
    if not both.any():
        return {}
    pairs, counts = np.unique(
        np.stack([labels[both].astype(np.int64), previous[both].astype(np.int64)]), axis=1, return_counts=True
    )
    area_a = dict(zip(*np.unique(labels[labels > 0], return_counts=True)))
    area_b = dict(zip(*np.unique(previous[previous > 0], return_counts=True)))
    candidates = []
    for (a, b), inter in zip(pairs.T, counts):
        iou = inter / (area_a[a] + area_b[b] - inter)
        if iou >= min_iou:
            candidates.append((float(iou), int(a), int(b)))
    candidates.sort(key=lambda c: (-c[0], c[1], c[2]))
    mapping, used = {}, set()
    for _, a, b in candidates:
        if a not in mapping and b not in used:
            mapping[a] = b
            used.add(b)
    return mapping


def automask_volume(
    segment_slice: Callable[[np.ndarray], np.ndarray],
    volume: Any,
    *,
    min_iou: float = 0.3,
    progress: Optional[ProgressFn] = None,
    cancel: Optional[CancelToken] = None,
) -> np.ndarray:
    """Automatic segmentation of every slice, linked across slices into (Z, Y, X) int32 labels.

    ``segment_slice(image) -> (Y, X) labels`` segments one slice (for example
    ``lambda im: masks_to_labels(generator.generate(im), im.shape[:2])``); objects are then linked
    by overlap with :func:`link_slices` (``min_iou``).
    """
    depth, _, _ = _check_volume(volume)
    slices = []
    report(progress, 0, depth, "automatic masks")
    for index in range(depth):
        check(cancel)
        slices.append(np.asarray(segment_slice(_slice(volume, index))))
        report(progress, index + 1, depth, f"slice {index}")
    return link_slices(slices, min_iou=min_iou)
