"""Small generated sample data: a 2D cell image, a 3D volume and a time series, with known objects.

Each ``make_*`` function returns ``(image, labels)`` (the labels are the ground truth, used by the
tests); the ``*_sample`` functions are napari sample-data contributions (lists of layer data tuples).
Images are fluorescence-like: bright objects on a dark, noisy background. Arrays are (row, col)
with stack axes first: (Y, X), (Z, Y, X), (T, Y, X).
"""

from __future__ import annotations

from typing import List, Tuple

import numpy as np
from scipy import ndimage

LayerData = Tuple[np.ndarray, dict, str]


def _ellipse(shape: Tuple[int, int], center: Tuple[float, float], axes: Tuple[float, float], angle: float) -> np.ndarray:
    rows, cols = np.ogrid[: shape[0], : shape[1]]
    dy, dx = rows - center[0], cols - center[1]
    cos, sin = np.cos(angle), np.sin(angle)
    u = (dx * cos + dy * sin) / axes[1]
    v = (-dx * sin + dy * cos) / axes[0]
    return u * u + v * v <= 1.0


def _render(labels: np.ndarray, rng: np.random.Generator, bit16: bool) -> np.ndarray:
    """Fluorescence-like picture of a label image (any ndim): blurred bright objects plus noise."""
    brightness = np.zeros(int(labels.max()) + 1)
    brightness[1:] = rng.uniform(150.0, 230.0, size=int(labels.max()))
    signal = ndimage.gaussian_filter(brightness[labels], 1.0)
    image = 20.0 + signal + rng.normal(0.0, 8.0, size=labels.shape)
    if bit16:
        return np.clip(image * 16.0, 0, 65535).astype(np.uint16)
    return np.clip(image, 0, 255).astype(np.uint8)


def make_cells_2d(shape: Tuple[int, int] = (256, 256), count: int = 12, seed: int = 0,
                  bit16: bool = False) -> Tuple[np.ndarray, np.ndarray]:
    """A (Y, X) image of ``count`` separate elliptic cells; returns ``(image, labels)``.

    Cells are 10 to 22 pixels in half-axis, at least 4 pixels apart. ``bit16`` gives uint16 data
    (values up to about 4000) instead of uint8.
    """
    rng = np.random.default_rng(seed)
    labels = np.zeros(shape, dtype=np.int32)
    placed, tries = 0, 0
    while placed < count and tries < 2000:
        tries += 1
        axes = (rng.uniform(10, 22), rng.uniform(10, 22))
        margin = max(axes) + 2
        center = (rng.uniform(margin, shape[0] - margin), rng.uniform(margin, shape[1] - margin))
        cell = _ellipse(shape, center, axes, rng.uniform(0, np.pi))
        if (ndimage.binary_dilation(cell, iterations=4) & (labels > 0)).any():
            continue
        placed += 1
        labels[cell] = placed
    return _render(labels, rng, bit16), labels


def make_volume_3d(shape: Tuple[int, int, int] = (24, 256, 256), seed: int = 1) -> Tuple[np.ndarray, np.ndarray]:
    """A (Z, Y, X) uint8 volume with two separate ellipsoids; returns ``(image, labels)``.

    Object 1 is centred in the volume with half-axes (z, y, x) = (0.35 Z, 18, 22) pixels; object 2
    is a smaller ellipsoid in a corner.
    """
    rng = np.random.default_rng(seed)
    z, y, x = np.ogrid[: shape[0], : shape[1], : shape[2]]
    labels = np.zeros(shape, dtype=np.int32)
    c = (shape[0] / 2.0, shape[1] / 2.0, shape[2] / 2.0)
    big = ((z - c[0]) / (0.35 * shape[0])) ** 2 + ((y - c[1]) / 18.0) ** 2 + ((x - c[2]) / 22.0) ** 2 <= 1
    small = ((z - c[0]) / (0.2 * shape[0])) ** 2 + ((y - 18) / 12.0) ** 2 + ((x - 18) / 12.0) ** 2 <= 1
    labels[big] = 1
    labels[small & ~big] = 2
    return _render(labels, rng, False), labels


def make_spheres(shape: Tuple[int, int, int] = (30, 200, 200),
                 spheres: Tuple[Tuple[Tuple[float, float, float], float], ...] = (
                     ((15, 50, 60), 8), ((14, 140, 60), 16), ((16, 100, 150), 22)),
                 seed: int = 9) -> Tuple[np.ndarray, np.ndarray]:
    """A (Z, Y, X) uint8 volume of separate spheres, each ``((z, y, x) centre, radius)`` in pixels;
    returns ``(image, labels)`` (sphere ``i`` of the list has label ``i + 1``)."""
    z, y, x = np.ogrid[: shape[0], : shape[1], : shape[2]]
    labels = np.zeros(shape, dtype=np.int32)
    for object_id, (centre, radius) in enumerate(spheres, start=1):
        inside = (z - centre[0]) ** 2 + (y - centre[1]) ** 2 + (x - centre[2]) ** 2 <= radius ** 2
        labels[inside & (labels == 0)] = object_id
    return _render(labels, np.random.default_rng(seed), False), labels


def make_time_series(shape: Tuple[int, int, int] = (12, 128, 128), seed: int = 2) -> Tuple[np.ndarray, np.ndarray]:
    """A (T, Y, X) uint8 series of three cells drifting across the field; returns ``(image, labels)``."""
    rng = np.random.default_rng(seed)
    frames, height, width = shape
    starts = [(30.0, 30.0), (80.0, 40.0), (50.0, 90.0)]
    velocity = [(1.5, 2.0), (-1.0, 1.5), (1.0, -1.5)]
    axes = [(14.0, 18.0), (12.0, 12.0), (16.0, 11.0)]
    labels = np.zeros(shape, dtype=np.int32)
    for t in range(frames):
        for i, (start, v, ax) in enumerate(zip(starts, velocity, axes), start=1):
            center = (start[0] + v[0] * t, start[1] + v[1] * t)
            labels[t][_ellipse((height, width), center, ax, 0.3 * i + 0.05 * t) & (labels[t] == 0)] = i
    return _render(labels, rng, False), labels


def cells_2d_sample() -> List[LayerData]:
    """napari sample: a 2D fluorescence-like cell image (uint16)."""
    image, _ = make_cells_2d(bit16=True)
    return [(image, {"name": "cells 2D"}, "image")]


def volume_3d_sample() -> List[LayerData]:
    """napari sample: a 3D volume (z, y, x) with anisotropic voxels (scale 2, 1, 1)."""
    image, _ = make_volume_3d()
    return [(image, {"name": "volume 3D", "scale": (2.0, 1.0, 1.0)}, "image")]


def time_series_sample() -> List[LayerData]:
    """napari sample: a time series (t, y, x) of moving cells."""
    image, _ = make_time_series()
    return [(image, {"name": "time series"}, "image")]
