"""Generated scenes of named shapes, for training and measuring the ``demo-concepts`` model.

A scene is an 8-bit RGB image (H, W, 3), an instance label image (H, W) (0 = background, 1..N =
objects) and the word of each instance (``words[i - 1]`` names label ``i``), one of
:data:`VOCABULARY`. Every object has a random size, rotation, colour and fill (flat, gradient, noise,
texture or stripes, the fills of :mod:`sam_core.train.synthetic`), on a flat, gradient or textured
background, in colour or grey; objects may touch and overlap a little (later objects occlude
earlier ones; labels hold what is visible). A scene uses two to four of the words, so most words it
shows have several instances.

Everything is drawn from a NumPy generator: ``generate_concept_scene(seed)`` is reproducible.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
from scipy import ndimage
from skimage.draw import polygon2mask

from sam_core.train.synthetic import Seed, _contrasting_colour, _fill, _labels_from, _min_area, _objects, _rng, _smooth_noise

VOCABULARY = ("circle", "square", "triangle", "star", "ring", "cross")


@dataclass
class ConceptScene:
    """``image`` uint8 (H, W, 3) RGB, ``labels`` int32 (H, W) instance ids, ``words`` the word of
    each instance (label ``i`` is ``words[i - 1]``)."""

    image: np.ndarray
    labels: np.ndarray
    words: tuple[str, ...]

    @property
    def num_objects(self) -> int:
        return len(self.words)

    def instances(self, word: str) -> list[int]:
        """Label ids of the instances of ``word``."""
        return [i for i, w in enumerate(self.words, start=1) if w == word]


def _polygon(shape: tuple[int, int], cy: float, cx: float, radii: np.ndarray, angle: float) -> np.ndarray:
    """Mask of the polygon with vertices at ``radii`` (px), evenly spaced from ``angle`` (radians)."""
    angles = angle + np.arange(len(radii)) * 2 * np.pi / len(radii)
    return polygon2mask(shape, np.stack([cy + radii * np.sin(angles), cx + radii * np.cos(angles)], axis=1))


def shape_mask(rng: np.random.Generator, word: str, size: int, cy: float, cx: float, radius: float) -> np.ndarray:
    """A boolean (size, size) mask of one ``word`` shape centred at (row ``cy``, col ``cx``), about
    ``radius`` px from centre to its farthest point, turned by a random angle."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    angle = rng.uniform(0, 2 * np.pi)
    cos, sin = np.cos(angle), np.sin(angle)
    u, v = (xx - cx) * cos + (yy - cy) * sin, -(xx - cx) * sin + (yy - cy) * cos
    r = np.hypot(u, v)
    if word == "circle":
        return r <= radius
    if word == "ring":
        return (r <= radius) & (r >= radius * rng.uniform(0.45, 0.65))
    if word == "square":
        half = radius / np.sqrt(2)
        return (np.abs(u) <= half) & (np.abs(v) <= half)
    if word == "cross":
        arm = radius * rng.uniform(0.28, 0.38)
        return ((np.abs(u) <= radius) & (np.abs(v) <= arm)) | ((np.abs(v) <= radius) & (np.abs(u) <= arm))
    if word == "triangle":
        return _polygon((size, size), cy, cx, np.full(3, radius), angle)
    if word == "star":
        radii = np.tile([radius, radius * rng.uniform(0.4, 0.5)], 5)
        return _polygon((size, size), cy, cx, radii, angle)
    raise ValueError(f"unknown word {word!r}; use one of {VOCABULARY}")


def _place(rng: np.random.Generator, size: int, count: int, words: tuple[str, ...],
           max_overlap: float) -> tuple[list[np.ndarray], list[str]]:
    """Masks and words of up to ``count`` objects, each overlapping the earlier ones by at most
    ``max_overlap`` of its area."""
    occupied = np.zeros((size, size), bool)
    masks: list[np.ndarray] = []
    placed: list[str] = []
    scale = size / 128
    for _ in range(count * 4):
        if len(masks) >= count:
            break
        radius = float(np.exp(rng.uniform(np.log(10 * scale), np.log(26 * scale))))
        cy, cx = rng.uniform(radius * 0.5, size - 1 - radius * 0.5, 2)
        word = str(rng.choice(words))
        mask = shape_mask(rng, word, size, cy, cx, radius)
        area = mask.sum()
        if area < 2 * _min_area(size) or (mask & occupied).sum() > max_overlap * area:
            continue
        occupied |= mask
        masks.append(mask)
        placed.append(word)
    return masks, placed


def generate_concept_scene(seed: Seed, size: int = 128, n_objects: Optional[int] = None) -> ConceptScene:
    """One scene of ``size`` x ``size`` pixels, reproducible from ``seed``; ``n_objects`` objects are
    tried (drawn from 3 to 10 when None; fewer may fit)."""
    rng = _rng(seed)
    words = tuple(str(w) for w in rng.choice(VOCABULARY, size=int(rng.integers(2, 5)), replace=False))
    grey = rng.random() < 0.25
    background = np.full(3, rng.uniform(0, 255)) if grey else rng.uniform(0, 255, 3)
    image = _fill(rng, size, background, rng.uniform(5, 30))
    if rng.random() < 0.4:
        image += _smooth_noise(rng, size, rng.uniform(4, 20), 1 if grey else 3) * rng.uniform(5, 20)
    count = n_objects if n_objects is not None else int(rng.integers(3, 11))
    masks, placed = _place(rng, size, count, words, max_overlap=float(rng.choice([0.0, 0.1, 0.2])))
    painted = np.zeros((size, size), np.int32)
    for i, mask in enumerate(masks):
        painted[mask] = i
    labels = _labels_from(masks, size)
    kept = tuple(placed[painted[labels == i][0]] for i in range(1, int(labels.max()) + 1))
    for box, region in _objects(labels):
        patch = image[box]
        colour = _contrasting_colour(rng, patch[region].mean(axis=0), grey, min_dist=rng.uniform(50, 140))
        patch[region] = _fill(rng, region.shape, colour, rng.uniform(5, 25))[region]
    if rng.random() < 0.5:
        image = ndimage.gaussian_filter(image, (rng.uniform(0.3, 0.8),) * 2 + (0,))
    image = image + rng.standard_normal(image.shape).astype(np.float32) * rng.uniform(0, 6)
    return ConceptScene(np.clip(np.round(image), 0, 255).astype(np.uint8), labels.astype(np.int32), kept)


def generate_concept_scenes(n: int, seed: int, size: int = 128) -> list[ConceptScene]:
    """``n`` scenes; scene ``i`` is ``generate_concept_scene((seed, i), size)`` (independent of ``n``)."""
    return [generate_concept_scene((seed, i), size=size) for i in range(n)]
