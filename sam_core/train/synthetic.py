"""Procedurally generated scenes with known instances, for training and measuring the ``demo`` model.

A scene is an 8-bit RGB image (H, W, 3) and an instance label image (H, W) (0 = background, 1..N =
objects). Three styles are mixed:

* ``"shapes"``: ellipses, polygons, blobs, thin and curved objects, rings (objects with holes), in
  flat, gradient, noisy or striped fills, on flat, gradient or textured backgrounds, colour or grey;
* ``"fluorescence"``: bright, blurred cells and nuclei on a dark background, often touching;
* ``"brightfield"``: cells with a dark membrane and a darker nucleus on a bright, unevenly lit
  background.

Everything is drawn from a NumPy generator, so a scene depends only on its seed:
``generate_scene(seed)`` and ``generate_scenes(n, seed)`` are reproducible. Objects may touch and
overlap a little (later objects occlude earlier ones; labels hold what is visible).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence, Union

import numpy as np
from scipy import ndimage
from skimage.draw import polygon2mask

STYLES = ("shapes", "fluorescence", "brightfield")
STYLE_WEIGHTS = (0.6, 0.2, 0.2)
SHAPES = ("ellipse", "polygon", "blob", "rod", "worm", "ring")
# Smallest visible object in pixels of a 256 x 256 scene (scaled with the area of other sizes): the
# demo model sees 16 x 16 pixel patches, so objects are kept at least 6 px wide and 150 px in area.
MIN_AREA = 150

Seed = Union[int, Sequence[int], np.random.Generator]


@dataclass
class Scene:
    """One generated image: ``image`` uint8 (H, W, 3) RGB, ``labels`` int32 (H, W) instance ids."""

    image: np.ndarray
    labels: np.ndarray
    style: str

    @property
    def num_objects(self) -> int:
        return int(self.labels.max())


def _rng(seed: Seed) -> np.random.Generator:
    return seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)


# ---------------------------------------------------------------------------------------- shapes


def _shape_mask(rng: np.random.Generator, kind: str, size: int, cy: float, cx: float, radius: float) -> np.ndarray:
    """A boolean (size, size) mask of one shape centred at (row ``cy``, col ``cx``), about ``radius`` px."""
    full = np.zeros((size, size), bool)
    if kind == "ring" and radius < 20:
        kind = "blob"
    half = int(1.8 * radius + 6)
    r0, r1 = max(int(cy) - half, 0), min(int(cy) + half + 1, size)
    c0, c1 = max(int(cx) - half, 0), min(int(cx) + half + 1, size)
    if r0 >= r1 or c0 >= c1:
        return full
    full[r0:r1, c0:c1] = _local_shape(rng, kind, r0, r1, c0, c1, cy, cx, radius)
    return full


def _local_shape(
    rng: np.random.Generator, kind: str, r0: int, r1: int, c0: int, c1: int, cy: float, cx: float, radius: float
) -> np.ndarray:
    yy, xx = np.mgrid[r0:r1, c0:c1].astype(np.float32)
    dy, dx = yy - cy, xx - cx
    angle = rng.uniform(0, np.pi)
    cos, sin = np.cos(angle), np.sin(angle)
    u, v = dx * cos + dy * sin, -dx * sin + dy * cos
    if kind == "ellipse":
        a, b = radius, radius * rng.uniform(0.45, 1.0)
        return (u / a) ** 2 + (v / b) ** 2 <= 1.0
    if kind == "blob" or kind == "ring":
        theta = np.arctan2(v, u)
        r = np.hypot(u, v)
        edge = np.ones_like(theta)
        for k in range(2, 6):
            edge += rng.uniform(0, 0.25 / k) * np.cos(k * theta + rng.uniform(0, 2 * np.pi))
        outer = r <= radius * edge * rng.uniform(0.8, 1.0)
        if kind == "blob":
            return outer
        hole = rng.uniform(0.3, 0.6)
        return outer & ((u / (radius * hole)) ** 2 + (v / (radius * hole * rng.uniform(0.6, 1.0))) ** 2 > 1.0)
    if kind == "polygon":
        n = int(rng.integers(3, 9))
        angles = np.sort(rng.uniform(0, 2 * np.pi, n))
        radii = radius * rng.uniform(0.6, 1.1, n)
        rows = cy - r0 + radii * np.sin(angles)
        cols = cx - c0 + radii * np.cos(angles)
        return polygon2mask((r1 - r0, c1 - c0), np.stack([rows, cols], axis=1))
    if kind == "rod":
        length, width = radius * rng.uniform(1.6, 3.0), rng.uniform(6.0, max(6.5, radius * 0.45))
        return (np.abs(u) <= length / 2) & (np.abs(v) <= width / 2)
    if kind == "worm":
        length, width = radius * rng.uniform(2.0, 3.2), rng.uniform(6.0, max(6.5, radius * 0.4))
        amp, freq = rng.uniform(2, radius * 0.5), rng.uniform(0.5, 2.0) * np.pi / length
        centre = amp * np.sin(freq * u + rng.uniform(0, 2 * np.pi))
        return (np.abs(u) <= length / 2) & (np.abs(v - centre) <= width / 2)
    raise ValueError(f"unknown shape {kind!r}")


def _place_objects(
    rng: np.random.Generator,
    size: int,
    count: int,
    kinds: Sequence[str],
    radius_range: tuple[float, float],
    max_overlap: float,
) -> list[np.ndarray]:
    """Masks of up to ``count`` objects, each overlapping the earlier ones by at most ``max_overlap``."""
    occupied = np.zeros((size, size), bool)
    masks: list[np.ndarray] = []
    for _ in range(count * 4):
        if len(masks) >= count:
            break
        radius = float(np.exp(rng.uniform(np.log(radius_range[0]), np.log(radius_range[1]))))
        margin = -radius * 0.3
        cy, cx = rng.uniform(margin, size - 1 - margin, 2)
        mask = _shape_mask(rng, str(rng.choice(kinds)), size, cy, cx, radius)
        area = mask.sum()
        if area < _min_area(size):
            continue
        if (mask & occupied).sum() > max_overlap * area:
            continue
        occupied |= mask
        masks.append(mask)
    return masks


def _min_area(size: int) -> float:
    return MIN_AREA * (size / 256) ** 2


def _labels_from(masks: list[np.ndarray], size: int) -> np.ndarray:
    """Paint masks in order (later ones occlude); keep each object's largest visible part."""
    painted = np.zeros((size, size), np.int32)
    for i, mask in enumerate(masks, start=1):
        painted[mask] = i
    labels = np.zeros_like(painted)
    next_id = 1
    for i, box in enumerate(ndimage.find_objects(painted), start=1):
        if box is None:
            continue
        visible = painted[box] == i
        parts, n = ndimage.label(visible)
        if n > 1:
            visible = parts == (np.argmax(np.bincount(parts.ravel())[1:]) + 1)
        if visible.sum() >= _min_area(size):
            labels[box][visible] = next_id
            next_id += 1
    return labels


def _objects(labels: np.ndarray, pad: int = 0) -> list[tuple[tuple[slice, slice], np.ndarray]]:
    """(bounding-box slices grown by ``pad``, boolean mask inside them) for each label 1..N."""
    out = []
    h, w = labels.shape
    for i, box in enumerate(ndimage.find_objects(labels), start=1):
        if box is None:
            continue
        box = (
            slice(max(box[0].start - pad, 0), min(box[0].stop + pad, h)),
            slice(max(box[1].start - pad, 0), min(box[1].stop + pad, w)),
        )
        out.append((box, labels[box] == i))
    return out


# ------------------------------------------------------------------------------------- textures


def _smooth_noise(rng: np.random.Generator, size, sigma: float, channels: int = 1) -> np.ndarray:
    """Noise low-pass filtered at ``sigma`` px, unit standard deviation, shape (h, w, channels).

    ``size`` is an int (square) or an (h, w) pair.
    """
    h, w = (size, size) if np.isscalar(size) else size
    noise = rng.standard_normal((h, w, channels)).astype(np.float32)
    noise = ndimage.gaussian_filter(noise, (sigma, sigma, 0))
    return noise / (noise.std() + 1e-6)


def _gradient(rng: np.random.Generator, size) -> np.ndarray:
    h, w = (size, size) if np.isscalar(size) else size
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32) / max(h, w) - 0.5
    angle = rng.uniform(0, 2 * np.pi)
    return (np.cos(angle) * xx + np.sin(angle) * yy)[..., None]


def _fill(rng: np.random.Generator, size, base: np.ndarray, strength: float) -> np.ndarray:
    """An (h, w, 3) float fill around colour ``base``: flat, gradient, noise, texture or stripes."""
    kind = rng.choice(["flat", "flat", "gradient", "noise", "texture", "stripes"])
    h, w = (size, size) if np.isscalar(size) else size
    out = np.broadcast_to(base, (h, w, 3)).astype(np.float32).copy()
    if kind == "gradient":
        out += _gradient(rng, size) * strength * 2
    elif kind == "noise":
        out += rng.standard_normal((h, w, 1)).astype(np.float32) * strength * 0.5
    elif kind == "texture":
        out += _smooth_noise(rng, size, rng.uniform(1.0, 3.0)) * strength * 0.5
    elif kind == "stripes":
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        angle = rng.uniform(0, np.pi)
        period = rng.uniform(4, 12)
        out += (np.sin(2 * np.pi * (np.cos(angle) * xx + np.sin(angle) * yy) / period)[..., None]) * strength * 0.5
    return out


def _contrasting_colour(rng: np.random.Generator, background: np.ndarray, grey: bool, min_dist: float) -> np.ndarray:
    for _ in range(50):
        colour = np.full(3, rng.uniform(0, 255)) if grey else rng.uniform(0, 255, 3)
        if np.linalg.norm(colour - background) >= min_dist:
            return colour.astype(np.float32)
    return (255.0 - background).astype(np.float32)


# --------------------------------------------------------------------------------------- styles


def _shapes_scene(rng: np.random.Generator, size: int, count: Optional[int]) -> tuple[np.ndarray, np.ndarray]:
    grey = rng.random() < 0.3
    bg_colour = np.full(3, rng.uniform(0, 255)) if grey else rng.uniform(0, 255, 3)
    image = _fill(rng, size, bg_colour, rng.uniform(5, 35))
    if rng.random() < 0.4:
        image += _smooth_noise(rng, size, rng.uniform(6, 30), 1 if grey else 3) * rng.uniform(5, 20)
    scale = size / 256
    masks = _place_objects(
        rng,
        size,
        count if count is not None else int(rng.integers(3, 11)),
        SHAPES,
        (16 * scale, 56 * scale),
        max_overlap=float(rng.choice([0.0, 0.15])),
    )
    labels = _labels_from(masks, size)
    for box, region in _objects(labels):
        patch = image[box]
        colour = _contrasting_colour(rng, patch[region].mean(axis=0), grey, min_dist=rng.uniform(45, 140))
        fill = _fill(rng, region.shape, colour, rng.uniform(5, 25))
        if rng.random() < 0.3:
            edge = region & ~ndimage.binary_erosion(region, iterations=int(rng.integers(1, 3)))
            fill[edge] += rng.choice([-1, 1]) * rng.uniform(30, 70)
        patch[region] = fill[region]
    return image, labels


def _fluorescence_scene(rng: np.random.Generator, size: int, count: Optional[int]) -> tuple[np.ndarray, np.ndarray]:
    scale = size / 256
    masks = _place_objects(
        rng,
        size,
        count if count is not None else int(rng.integers(4, 17)),
        ("ellipse", "blob", "blob", "rod"),
        (13 * scale, 30 * scale),
        max_overlap=float(rng.choice([0.0, 0.1, 0.2])),
    )
    labels = _labels_from(masks, size)
    signal = np.zeros((size, size), np.float32)
    texture = _smooth_noise(rng, size, 1.5)[..., 0]
    for box, region in _objects(labels, pad=1):
        dist = ndimage.distance_transform_edt(region)
        profile = np.clip(dist / max(dist.max(), 1.0), 0, 1) ** rng.uniform(0.2, 0.6)
        brightness = rng.uniform(90, 255)
        signal[box][region] = brightness * (0.55 + 0.45 * profile[region]) * (1 + 0.12 * texture[box][region])
    signal = ndimage.gaussian_filter(signal, rng.uniform(0.4, 1.2))
    signal += rng.uniform(3, 30) + _smooth_noise(rng, size, 20)[..., 0] * rng.uniform(0, 6)
    signal = rng.poisson(np.clip(signal, 0, None) * 0.5).astype(np.float32) * 2.0
    tint = [np.array(c, np.float32) for c in ((0, 1, 0), (1, 0, 0), (0, 0.6, 1), (1, 0, 1), (1, 1, 1), (1, 1, 0))]
    colour = tint[int(rng.integers(len(tint)))]
    return signal[..., None] * colour, labels


def _brightfield_scene(rng: np.random.Generator, size: int, count: Optional[int]) -> tuple[np.ndarray, np.ndarray]:
    scale = size / 256
    masks = _place_objects(
        rng,
        size,
        count if count is not None else int(rng.integers(3, 13)),
        ("ellipse", "blob", "blob", "polygon"),
        (15 * scale, 38 * scale),
        max_overlap=float(rng.choice([0.0, 0.1])),
    )
    labels = _labels_from(masks, size)
    stain = rng.random() < 0.5
    bg_colour = np.array([230, 215, 225]) * rng.uniform(0.85, 1.05) if stain else np.full(3, rng.uniform(160, 230))
    image = np.broadcast_to(bg_colour, (size, size, 3)).astype(np.float32).copy()
    image += _smooth_noise(rng, size, rng.uniform(20, 50)) * rng.uniform(3, 12)
    for box, region in _objects(labels, pad=1):
        patch = image[box]
        if stain:
            cytoplasm = np.array([215, 120, 170]) * rng.uniform(0.7, 1.0)
            nucleus_colour = np.array([90, 40, 130]) * rng.uniform(0.7, 1.2)
        else:
            cytoplasm = bg_colour + rng.choice([-1, 1]) * rng.uniform(25, 60)
            nucleus_colour = bg_colour - rng.uniform(60, 110)
        patch[region] = cytoplasm
        membrane = region & ~ndimage.binary_erosion(region, iterations=int(rng.integers(1, 3)))
        patch[membrane] = cytoplasm * rng.uniform(0.45, 0.7)
        dist = ndimage.distance_transform_edt(region)
        if dist.max() > 6 and rng.random() < 0.8:
            cy, cx = np.unravel_index(np.argmax(dist), dist.shape)
            r = dist.max() * rng.uniform(0.3, 0.55)
            yy, xx = np.mgrid[0 : region.shape[0], 0 : region.shape[1]]
            patch[region & ((yy - cy) ** 2 + (xx - cx) ** 2 <= r * r)] = nucleus_colour
    image = ndimage.gaussian_filter(image, (0.7, 0.7, 0))
    return image, labels


def generate_scene(seed: Seed, size: int = 256, style: Optional[str] = None, n_objects: Optional[int] = None) -> Scene:
    """One scene of ``size`` x ``size`` pixels, reproducible from ``seed``.

    ``style`` is one of :data:`STYLES` (drawn at random when None); ``n_objects`` is the number of
    objects to try to place (drawn when None; fewer may fit).
    """
    rng = _rng(seed)
    if style is None:
        style = str(rng.choice(STYLES, p=STYLE_WEIGHTS))
    maker = {"shapes": _shapes_scene, "fluorescence": _fluorescence_scene, "brightfield": _brightfield_scene}
    if style not in maker:
        raise ValueError(f"unknown style {style!r}; use one of {STYLES}")
    image, labels = maker[style](rng, size, n_objects)
    if rng.random() < 0.5:
        image = ndimage.gaussian_filter(image, (rng.uniform(0.3, 1.0),) * 2 + (0,))
    image = image + rng.standard_normal(image.shape).astype(np.float32) * rng.uniform(0, 8)
    return Scene(np.clip(np.round(image), 0, 255).astype(np.uint8), labels.astype(np.int32), style)


def generate_scenes(n: int, seed: int, size: int = 256, style: Optional[str] = None) -> list[Scene]:
    """``n`` scenes; scene ``i`` is ``generate_scene((seed, i), ...)`` (independent of ``n``)."""
    return [generate_scene((seed, i), size=size, style=style) for i in range(n)]
