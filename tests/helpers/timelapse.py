"""A generated time-lapse for the tracking tests: bright disks that move, one of which divides."""

from __future__ import annotations

from typing import Dict, Tuple

import numpy as np
from scipy import ndimage

#: Ids of the truth: 1 and 2 move through every frame; 3 divides into 4 and 5 on ``divide_at``.
PARENTS = {4: 3, 5: 3}


def _disk(shape: Tuple[int, int], centre: Tuple[float, float], radius: float) -> np.ndarray:
    rows, cols = np.ogrid[: shape[0], : shape[1]]
    return (rows - centre[0]) ** 2 + (cols - centre[1]) ** 2 <= radius ** 2


def dividing_disks(frames: int = 6, shape: Tuple[int, int] = (96, 96), divide_at: int = 3,
                   seed: int = 0) -> Tuple[np.ndarray, np.ndarray, Dict[int, int]]:
    """``(image (T, Y, X) uint8, truth labels (T, Y, X) int32, parents)``: disk 1 moves right, disk 2
    moves down, disk 3 sits at the lower right until ``divide_at``, where it becomes disks 4 (above)
    and 5 (below), which move apart. Centres (row, col) in pixels: see :func:`centres`."""
    labels = np.zeros((frames,) + tuple(shape), np.int32)
    for t in range(frames):
        for label, (centre, radius) in centres(t, divide_at).items():
            labels[t][_disk(shape, centre, radius) & (labels[t] == 0)] = label
    rng = np.random.default_rng(seed)
    signal = ndimage.gaussian_filter((labels > 0).astype(float) * 190.0, sigma=(0, 1.0, 1.0))
    image = np.clip(25.0 + signal + rng.normal(0.0, 6.0, labels.shape), 0, 255).astype(np.uint8)
    return image, labels, dict(PARENTS)


def centres(t: int, divide_at: int = 3) -> Dict[int, Tuple[Tuple[float, float], float]]:
    """Object id -> ((row, col) centre, radius) on frame ``t``."""
    out = {1: ((22.0, 14.0 + 3.0 * t), 9.0), 2: ((14.0 + 3.0 * t, 60.0), 9.0)}
    if t < divide_at:
        out[3] = ((66.0, 66.0), 11.0)
    else:
        gap = 9.0 + 2.0 * (t - divide_at)
        out[4] = ((66.0 - gap, 66.0), 7.5)
        out[5] = ((66.0 + gap, 66.0), 7.5)
    return out
