"""Generated sequences with known instances, for training and measuring the ``demo2`` model (SAM 2.1).

A :class:`Sequence` is ``frames`` (T, H, W, 3) uint8 RGB and ``labels`` (T, H, W) int32 with the same
object id on every frame (0 = background); an id missing from a frame means the object is absent
there. Two kinds, drawn with :mod:`sam_core.train.synthetic`'s shapes, fills and textures:

* ``"movie"``: objects that move, turn, stretch and squeeze (an affine motion that changes smoothly
  over time), touch and occlude each other, and sometimes enter or leave the field; the background
  is fixed. ``exits=True`` makes the first object leave the field half-way through the clip.
* ``"volume"``: slices (Z) through a volume of 3D blobs (lumpy ellipsoids) in a fluorescence or
  flat-colour look: each object's section grows, shrinks, changes its outline and ends.

Everything is drawn from a NumPy generator, so a sequence depends only on its seed:
``generate_sequence((seed, i))`` is reproducible.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
from scipy import ndimage

from sam_core.train.synthetic import (
    SHAPES,
    Seed,
    _contrasting_colour,
    _fill,
    _local_shape,
    _min_area,
    _rng,
    _smooth_noise,
)

KINDS = ("movie", "volume")


@dataclass
class Sequence:
    """One generated clip: ``frames`` uint8 (T, H, W, 3), ``labels`` int32 (T, H, W), ``kind``."""

    frames: np.ndarray
    labels: np.ndarray
    kind: str

    @property
    def object_ids(self) -> list[int]:
        """Ids of the objects present on at least one frame."""
        return [int(i) for i in np.unique(self.labels) if i > 0]

    def present(self, object_id: int) -> np.ndarray:
        """(T,) bool: whether ``object_id`` is visible on each frame."""
        return (self.labels == object_id).reshape(len(self.labels), -1).any(axis=1)


# ---------------------------------------------------------------------------------------- movies


@dataclass
class _Sprite:
    """An object drawn once in its own patch (mask and fill, centred), moved by an affine map per frame."""

    mask: np.ndarray
    fill: np.ndarray
    centre: np.ndarray  # (row, col) on frame 0
    velocity: np.ndarray  # pixels per frame (row, col)
    angle: float  # radians on frame 0
    spin: float  # radians per frame
    stretch: np.ndarray  # (2,) log-scale amplitude of the deformation (rows, cols of the patch)
    phase: np.ndarray  # (2,)
    period: float  # frames


def _sprite(rng: np.random.Generator, size: int, radius: float, background: np.ndarray, grey: bool) -> _Sprite:
    half = int(1.8 * radius + 6)
    side = 2 * half + 1
    mask = _local_shape(rng, str(rng.choice(SHAPES)), 0, side, 0, side, half, half, radius)
    while not mask.any():  # a degenerate draw (a polygon of nearly collinear corners): draw again
        mask = _local_shape(rng, str(rng.choice(SHAPES)), 0, side, 0, side, half, half, radius)
    colour = _contrasting_colour(rng, background, grey, min_dist=rng.uniform(60, 150))
    fill = _fill(rng, (side, side), colour, rng.uniform(5, 25))
    if rng.random() < 0.3:
        edge = mask & ~ndimage.binary_erosion(mask, iterations=int(rng.integers(1, 3)))
        fill[edge] += rng.choice([-1, 1]) * rng.uniform(30, 70)
    speed = rng.uniform(0, 6 * size / 256)
    heading = rng.uniform(0, 2 * np.pi)
    return _Sprite(mask, fill, rng.uniform(0.15 * size, 0.85 * size, 2), speed * np.array([np.sin(heading), np.cos(heading)]),
                   rng.uniform(0, 2 * np.pi), rng.normal(0, 0.06), rng.uniform(0, 0.25, 2), rng.uniform(0, 2 * np.pi, 2),
                   rng.uniform(6, 16))


def _draw(sprite: _Sprite, t: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    """The sprite's mask (size, size) bool and fill (size, size, 3) on frame ``t``."""
    centre = sprite.centre + sprite.velocity * t
    angle = sprite.angle + sprite.spin * t
    scale = np.exp(sprite.stretch * np.sin(2 * np.pi * t / sprite.period + sprite.phase))
    cos, sin = np.cos(angle), np.sin(angle)
    # frame (row, col) -> patch (row, col): patch = A @ (frame - centre) + patch_centre
    rotation = np.array([[cos, -sin], [sin, cos]])
    matrix = np.diag(1 / scale) @ rotation
    half = (np.array(sprite.mask.shape) - 1) / 2
    offset = half - matrix @ centre
    mask = ndimage.affine_transform(sprite.mask.astype(np.float32), matrix, offset, output_shape=(size, size),
                                    order=1, cval=0.0) > 0.5
    fill = np.stack([ndimage.affine_transform(sprite.fill[..., c], matrix, offset, output_shape=(size, size),
                                              order=1, mode="nearest") for c in range(3)], axis=-1)
    return mask, fill


def _movie(rng: np.random.Generator, size: int, frames: int, count: int, exits: bool) -> tuple[np.ndarray, np.ndarray]:
    grey = rng.random() < 0.3
    bg_colour = np.full(3, rng.uniform(0, 255)) if grey else rng.uniform(0, 255, 3)
    background = _fill(rng, size, bg_colour, rng.uniform(5, 35))
    if rng.random() < 0.4:
        background += _smooth_noise(rng, size, rng.uniform(6, 30), 1 if grey else 3) * rng.uniform(5, 20)
    scale = size / 256
    sprites = [_sprite(rng, size, float(np.exp(rng.uniform(np.log(20 * scale), np.log(48 * scale)))),
                       bg_colour, grey) for _ in range(count)]
    if count > 1 and rng.random() < 0.5:  # two objects start side by side and move together: they touch
        a, b = sprites[0], sprites[1]
        gap = 0.9 * (max(a.mask.shape) + max(b.mask.shape)) / 4
        direction = rng.uniform(0, 2 * np.pi)
        b.centre = a.centre + gap * np.array([np.sin(direction), np.cos(direction)])
        b.velocity = a.velocity + rng.normal(0, 1.0, 2)
    if exits:  # the first object leaves the field between 50 % and 75 % of the clip
        first = sprites[0] = _sprite(rng, size, float(rng.uniform(26, 44) * scale), bg_colour, grey)
        heading = rng.uniform(0, 2 * np.pi)
        direction = np.array([np.sin(heading), np.cos(heading)])
        rows, cols = np.nonzero(first.mask)
        reach = np.hypot(rows - (first.mask.shape[0] - 1) / 2, cols - (first.mask.shape[1] - 1) / 2).max()
        # distance from the centre of the field to its edge along the heading, plus the object's reach
        edge = (size / 2) / max(abs(direction[0]), abs(direction[1])) + reach
        start = rng.uniform(0, 0.3 * size)
        first.centre = np.full(2, size / 2) + direction * start
        first.velocity = direction * (edge - start) / (rng.uniform(0.5, 0.75) * frames)
    images = np.empty((frames, size, size, 3), np.float32)
    labels = np.zeros((frames, size, size), np.int32)
    blink = int(rng.integers(1, frames)) if count > 1 and rng.random() < 0.3 else None  # object 2 vanishes
    for t in range(frames):
        image = background.copy()
        for i, sprite in enumerate(sprites, start=1):
            if blink is not None and i == count and t >= blink:
                continue
            mask, fill = _draw(sprite, t, size)
            image[mask] = fill[mask]
            labels[t][mask] = i
        images[t] = image
    for t in range(frames):  # an object whose visible part is too small counts as absent
        for i in range(1, count + 1):
            visible = labels[t] == i
            if 0 < visible.sum() < _min_area(size):
                labels[t][visible] = 0
    return images, labels


# --------------------------------------------------------------------------------------- volumes


def _volume(rng: np.random.Generator, size: int, frames: int, count: int) -> tuple[np.ndarray, np.ndarray]:
    scale = size / 256
    zz = np.arange(frames, dtype=np.float32)[:, None, None]
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    best = np.full((frames, size, size), np.inf, np.float32)
    labels = np.zeros((frames, size, size), np.int32)
    for i in range(1, count + 1):
        radius = float(np.exp(rng.uniform(np.log(18 * scale), np.log(44 * scale))))
        rz = rng.uniform(0.6, 1.4) * frames
        cz = rng.uniform(-0.3, 0.8) * frames
        cy, cx = rng.uniform(0.1 * size, 0.9 * size, 2)
        ry, rx = radius * rng.uniform(0.6, 1.0, 2)
        angle = rng.uniform(0, np.pi)
        cos, sin = np.cos(angle), np.sin(angle)
        u = ((xx - cx) * cos + (yy - cy) * sin)[None] / rx
        v = (-(xx - cx) * sin + (yy - cy) * cos)[None] / ry
        w = (zz - cz) / rz
        r = u**2 + v**2 + w**2
        lumps = np.zeros_like(r)
        for _ in range(4):  # low-frequency waves make the blob lumpy
            k = rng.normal(0, 1.6, 3)
            lumps += rng.uniform(0.05, 0.15) * np.cos(k[0] * u + k[1] * v + k[2] * w + rng.uniform(0, 2 * np.pi))
        r = r * (1 + lumps)
        inside = (r <= 1) & (r < best)  # the blob nearer its own centre wins where blobs meet
        best[inside] = r[inside]
        labels[inside] = i
    fluorescent = rng.random() < 0.6
    images = np.empty((frames, size, size, 3), np.float32)
    if fluorescent:
        tint = np.array([(0, 1, 0), (1, 0, 0), (0, 0.6, 1), (1, 0, 1), (1, 1, 1)][int(rng.integers(5))], np.float32)
        brightness = rng.uniform(90, 255, count + 1)
        brightness[0] = 0
        for t in range(frames):
            profile = np.clip(1 - best[t], 0, 1) ** rng.uniform(0.2, 0.6)
            signal = brightness[labels[t]] * (0.55 + 0.45 * profile) * (1 + 0.12 * _smooth_noise(rng, size, 1.5)[..., 0])
            signal = ndimage.gaussian_filter(np.where(labels[t] > 0, signal, 0), rng.uniform(0.4, 1.0))
            signal += rng.uniform(3, 25)
            signal = rng.poisson(np.clip(signal, 0, None) * 0.5).astype(np.float32) * 2.0
            images[t] = signal[..., None] * tint
    else:
        grey = rng.random() < 0.4
        bg_colour = np.full(3, rng.uniform(0, 255)) if grey else rng.uniform(0, 255, 3)
        background = _fill(rng, size, bg_colour, rng.uniform(5, 30))
        colours = [bg_colour] + [_contrasting_colour(rng, bg_colour, grey, rng.uniform(60, 150)) for _ in range(count)]
        texture = _smooth_noise(rng, size, rng.uniform(1.5, 4), 1) * rng.uniform(3, 15)
        for t in range(frames):
            image = background.copy()
            for i in range(1, count + 1):
                region = labels[t] == i
                image[region] = colours[i] + texture[region]
            images[t] = ndimage.gaussian_filter(image, (0.7, 0.7, 0))
    for t in range(frames):
        for i in range(1, count + 1):
            visible = labels[t] == i
            if 0 < visible.sum() < _min_area(size):
                labels[t][visible] = 0
    return images, labels


def prompted_objects(labels: np.ndarray) -> list[int]:
    """Ids (ascending) of the objects of one frame's ``labels`` (H, W) large enough to prompt: a
    visible part of at least twice the generator's smallest object. The objects that training and the
    quality measures click on frame 0."""
    size = labels.shape[-1]
    return [int(i) for i in np.unique(labels) if i > 0 and (labels == i).sum() >= 2 * _min_area(size)]


def generate_sequence(seed: Seed, frames: int = 8, size: int = 256, kind: Optional[str] = None,
                      n_objects: Optional[int] = None, exits: bool = False) -> Sequence:
    """One clip of ``frames`` frames of ``size`` x ``size`` pixels, reproducible from ``seed``.

    ``kind`` is one of :data:`KINDS` (drawn when None); ``n_objects`` objects are drawn (3 to 7
    when None); ``exits`` (movies only) sends object 1 out of the field half-way through.
    """
    rng = _rng(seed)
    if kind is None:
        kind = str(rng.choice(KINDS))
    if kind not in KINDS:
        raise ValueError(f"unknown kind {kind!r}; use one of {KINDS}")
    count = n_objects if n_objects is not None else int(rng.integers(3, 8))
    if kind == "movie":
        images, labels = _movie(rng, size, frames, count, exits)
    else:
        images, labels = _volume(rng, size, frames, count)
    if rng.random() < 0.4:
        images = ndimage.gaussian_filter(images, (0,) + (rng.uniform(0.3, 0.8),) * 2 + (0,))
    images = images + rng.standard_normal(images.shape).astype(np.float32) * rng.uniform(0, 6)
    return Sequence(np.clip(np.round(images), 0, 255).astype(np.uint8), labels, kind)
