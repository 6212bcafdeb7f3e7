"""Prompts read from the session's ``SAM points`` and ``SAM boxes`` layers.

Layer data are (..., row, col); prompts for sam_core are (x, y) = (col, row) pixels of the image
plane. Stack indices (z, t, or t and z) are the leading coordinates, rounded.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, List, Optional, Tuple

import numpy as np

from napari_sam.layers import NEGATIVE, POSITIVE


@dataclass
class Prompts:
    """Prompts on one slice: points (N, 2) as (x, y) pixels, labels (N,), box (x0, y0, x1, y1) or None.

    ``boxes`` holds every box of the slice (M, 4), oldest first; ``box`` is the newest one.
    """

    stack_index: Tuple[int, ...]
    points: Optional[np.ndarray]
    labels: Optional[np.ndarray]
    box: Optional[np.ndarray]
    boxes: Optional[np.ndarray] = None


def read_prompts(points_layer: Any, boxes_layer: Any, index: Tuple[int, ...], ndim: int) -> Optional[Prompts]:
    """The prompts on slice ``index`` (stack indices) of layers with ``ndim`` spatial axes, or None."""
    nstack = len(index)
    data = np.asarray(points_layer.data, dtype=float).reshape(-1, ndim)
    on = np.all(np.round(data[:, :nstack]) == np.asarray(index), axis=1) if nstack else np.ones(len(data), bool)
    points = labels = None
    if on.any():
        points = data[on][:, [-1, -2]].astype(np.float32)
        kinds = np.asarray(points_layer.features["label"])[on]
        labels = (kinds != NEGATIVE).astype(np.int64)
    boxes = [box for _, box in slice_boxes(boxes_layer, index)]
    if points is None and not boxes:
        return None
    return Prompts(index, points, labels, boxes[-1] if boxes else None, np.stack(boxes) if boxes else None)


def slice_boxes(shapes_layer: Any, index: Tuple[int, ...]) -> List[Tuple[int, np.ndarray]]:
    """The rectangles of ``shapes_layer`` on slice ``index`` (stack indices), oldest first, as
    (shape number in the layer, box (x0, y0, x1, y1) float32 pixels)."""
    nstack = len(index)
    boxes = []
    for number, vertices in enumerate(shapes_layer.data):
        vertices = np.asarray(vertices, dtype=float)
        if nstack and not np.all(np.round(vertices[:, :nstack]) == np.asarray(index)):
            continue
        rows, cols = vertices[:, -2], vertices[:, -1]
        boxes.append((number, np.array([cols.min(), rows.min(), cols.max(), rows.max()], dtype=np.float32)))
    return boxes


def prompted_slices(points_layer: Any, boxes_layer: Any, nstack: int) -> List[Tuple[int, ...]]:
    """Stack indices of all slices that hold prompts (``nstack`` stack axes; [()] or [] in 2D)."""
    if not nstack:
        return [()] if len(points_layer.data) or len(boxes_layer.data) else []
    found = set()
    for row in np.asarray(points_layer.data, dtype=float):
        found.add(tuple(int(v) for v in np.round(row[:nstack])))
    for vertices in boxes_layer.data:
        found.add(tuple(int(v) for v in np.round(np.asarray(vertices)[0, :nstack])))
    return sorted(found)


def current_label(points_layer: Any) -> str:
    """The label new points get: ``positive`` or ``negative``."""
    value = points_layer.feature_defaults["label"]
    return value.iloc[0] if hasattr(value, "iloc") else value


def toggle_label(points_layer: Any) -> Tuple[str, bool]:
    """Switch new points between positive and negative; in select mode the selected points switch too.

    Returns the new label and whether existing points changed.
    """
    new = NEGATIVE if current_label(points_layer) == POSITIVE else POSITIVE
    points_layer.feature_defaults["label"] = new
    selected = sorted(points_layer.selected_data) if str(points_layer.mode) == "select" else []
    if selected:
        features = points_layer.features.copy()
        features.loc[selected, "label"] = new
        points_layer.features = features
        points_layer.refresh_colors()
    return new, bool(selected)
