"""Prompt sampling as in SAM's training: a point inside the object, its box with jitter, and
corrective clicks placed in the error region of the previous prediction.

All coordinates are pixel (x, y) of the image the masks belong to (x = column, y = row).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage


def random_point_inside(rng: np.random.Generator, mask: np.ndarray) -> tuple[float, float]:
    """(x, y) of a pixel drawn uniformly from ``mask`` (H, W) bool; the mask must not be empty."""
    rows, cols = np.nonzero(mask)
    i = int(rng.integers(len(rows)))
    return float(cols[i]), float(rows[i])


def interior_point(mask: np.ndarray) -> tuple[float, float]:
    """(x, y) of the pixel of ``mask`` farthest from its border (maximum of the distance transform)."""
    dist = ndimage.distance_transform_edt(np.pad(mask, 1))[1:-1, 1:-1]
    row, col = np.unravel_index(int(np.argmax(dist)), dist.shape)
    return float(col), float(row)


def mask_box(mask: np.ndarray) -> tuple[float, float, float, float]:
    """Tight box (x0, y0, x1, y1) of ``mask`` in pixel coordinates (inclusive last pixel)."""
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    return float(cols[0]), float(rows[0]), float(cols[-1]), float(rows[-1])


def jittered_box(
    rng: np.random.Generator, mask: np.ndarray, noise: float = 0.1, max_noise: float = 20.0
) -> tuple[float, float, float, float]:
    """The box of ``mask`` with each corner moved by Gaussian noise, as SAM trains.

    The noise's standard deviation is ``noise`` times the box side (at most ``max_noise`` pixels);
    the box is clipped to the image.
    """
    h, w = mask.shape
    x0, y0, x1, y1 = mask_box(mask)
    sx = min(noise * (x1 - x0 + 1), max_noise)
    sy = min(noise * (y1 - y0 + 1), max_noise)
    dx0, dx1 = rng.normal(0, sx, 2)
    dy0, dy1 = rng.normal(0, sy, 2)
    nx0, nx1 = np.clip([x0 + dx0, x1 + dx1], 0, w - 1)
    ny0, ny1 = np.clip([y0 + dy0, y1 + dy1], 0, h - 1)
    return float(min(nx0, nx1)), float(min(ny0, ny1)), float(max(nx0, nx1)), float(max(ny0, ny1))


def corrective_click(
    rng: np.random.Generator, predicted: np.ndarray, target: np.ndarray, centre: bool = False
) -> tuple[tuple[float, float], int]:
    """A click that corrects ``predicted`` towards ``target`` (both (H, W) bool).

    Returns ((x, y), label): label 1 (positive) in a missed region, 0 (negative) in a false one.
    The point is drawn uniformly from the error region (as SAM trains) or, with ``centre``, placed at
    the interior point of the largest error region (as a user clicks). With no error, a positive
    click inside the target.
    """
    missed = target & ~predicted
    extra = predicted & ~target
    if not missed.any() and not extra.any():
        return random_point_inside(rng, target), 1
    if centre:
        parts, n = ndimage.label(missed | extra)
        largest = parts == (np.argmax(np.bincount(parts.ravel())[1:]) + 1)
        x, y = interior_point(largest)
        return (x, y), int(missed[int(y), int(x)])
    error = missed | extra
    x, y = random_point_inside(rng, error)
    return (x, y), int(missed[int(y), int(x)])
