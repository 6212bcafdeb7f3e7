"""Any image array -> the model's RGB uint8 input, and the official resize transforms.

The one preparation rule (documented for users in ``Preparation``):

1. Shape. A 2D array is grayscale. A 3D array has its channels on ``channel_axis`` (last by default).
   Without ``channels``: 1 channel is grayscale, 2 channels are grayscale + alpha, 3 are RGB, 4 are
   RGBA; more channels need ``channels`` (1 or 3 indices). Alpha is dropped; alpha 0 marks a pixel invalid.
2. Valid pixels. A pixel is invalid where any chosen channel is NaN or infinite, where all chosen
   channels equal ``nodata``, or where alpha is 0. Invalid pixels are 0 in the output.
3. Values. 8-bit data (uint8) without ``value_range`` pass unchanged, exactly as the official predictor
   takes them. Everything else is stretched linearly: ``(v - lo) / (hi - lo) * 255``, clipped to 0..255
   and rounded, with ``(lo, hi) = value_range`` when given (the GUIs pass the contrast limits the user
   sees), else the ``percentiles`` (default 0.5 and 99.5) of the valid values of all chosen channels
   together (one range for all channels, so colours keep their balance; above about 4 million values,
   on a regular sample of every k-th pixel). When ``hi <= lo`` (a flat
   image), values above ``lo`` become 255 and the rest 0. Boolean images become 0/255.
4. Channels. One channel is repeated to three (R = G = B).

Then the official preprocessing: the longest side is resized to the model's input size with PIL's
bilinear resampling of the uint8 image (``resize_image``), exactly as ``ResizeLongestSide`` does; the
model normalises and zero-pads (``Sam.preprocess``). Prompts follow with ``to_input_coords`` and
``to_input_boxes``. Coordinates are (x, y) pixels; sizes are (H, W) = (rows, columns).
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from typing import Optional, Sequence, Tuple

import numpy as np
from PIL import Image

from sam_core.errors import SamError

# The memory budget for one decoded image (bytes of its pixels as read from the file), and the environment
# variable that changes it (in megabytes). Image files that declare a larger size are refused before any
# pixel is decoded (:func:`check_image_size`); preparing an image takes a few times its decoded size.
# Rasters (``sam_core.geo``) are read window by window and are not held whole.
MAX_IMAGE_ENV = "SAM_CORE_MAX_IMAGE_MB"
DEFAULT_MAX_IMAGE_BYTES = 1 << 30


def max_image_bytes() -> int:
    """The decoded-image budget in bytes: ``SAM_CORE_MAX_IMAGE_MB`` megabytes when set, else 1 GiB."""
    text = os.environ.get(MAX_IMAGE_ENV, "").strip()
    if not text:
        return DEFAULT_MAX_IMAGE_BYTES
    try:
        megabytes = float(text)
    except ValueError:
        megabytes = float("nan")
    if not (np.isfinite(megabytes) and megabytes > 0):
        raise SamError(f"{MAX_IMAGE_ENV} must be a positive number of megabytes, got {text!r}")
    return int(megabytes * (1 << 20))


def check_image_size(shape: Sequence[int], itemsize: int, what: str, limit: Optional[int] = None,
                     remedy: str = "crop or tile the image, use `geo` for rasters (read window by window)") -> None:
    """Refuse an image of ``shape`` (rows, columns[, channels...]) with ``itemsize`` bytes per value whose
    decoded pixels would exceed ``limit`` bytes (default :func:`max_image_bytes`), naming size and limit;
    ``remedy`` says what the user can do besides raising the limit."""
    limit = max_image_bytes() if limit is None else int(limit)
    needed = int(np.prod([int(n) for n in shape], dtype=np.float64)) * int(itemsize)
    if needed > limit:
        dims = " x ".join(str(int(n)) for n in shape)
        raise SamError(
            f"{what} declares {dims} values of {int(itemsize) * 8} bits: {_megabytes(needed)} when decoded, "
            f"above the limit of {_megabytes(limit)}; {remedy}, or raise the limit with "
            f"{MAX_IMAGE_ENV}=<megabytes>"
        )


def _megabytes(count: int) -> str:
    """``1_600_000_000`` -> ``"1,526 MB"``; small sizes keep two significant digits (``"0.012 MB"``)."""
    value = count / (1 << 20)
    return f"{value:,.0f} MB" if value >= 10 else f"{value:.2g} MB"


# Above this many valid values the percentiles are taken on a regular subsample (every k-th value),
# so that a whole-slide image does not sort billions of values.
_PERCENTILE_SAMPLE = 1 << 22
# Rows are converted in blocks of about this many values to bound the float64 working memory.
_BLOCK_VALUES = 1 << 22


@dataclass(frozen=True)
class Preparation:
    """How an image array becomes the model's RGB uint8 input (see the module docstring for the rule).

    channels: 1 or 3 channel indices to use (None: all of a 1-4 channel image).
    channel_axis: the axis holding channels in a 3D array (default last).
    value_range: fixed (lo, hi) mapped to 0..255 (None: uint8 passes unchanged, others use percentiles).
    percentiles: (low, high) percentiles in 0..100 of the valid values, used when no value_range is given.
    nodata: a value marking missing pixels (a pixel is invalid when all its chosen channels equal it).
    """

    channels: Optional[Tuple[int, ...]] = None
    channel_axis: int = -1
    value_range: Optional[Tuple[float, float]] = None
    percentiles: Tuple[float, float] = (0.5, 99.5)
    nodata: Optional[float] = None

    def __post_init__(self) -> None:
        if self.channels is not None:
            channels = tuple(int(c) for c in np.atleast_1d(self.channels))
            if len(channels) not in (1, 3):
                raise SamError(f"choose 1 or 3 channels, not {len(channels)} ({list(channels)})")
            object.__setattr__(self, "channels", channels)
        if self.value_range is not None:
            lo, hi = (float(v) for v in self.value_range)
            if not (np.isfinite(lo) and np.isfinite(hi)) or hi <= lo:
                raise SamError(f"value range must be two finite numbers lo < hi, got {self.value_range}")
            object.__setattr__(self, "value_range", (lo, hi))
        plo, phi = (float(v) for v in self.percentiles)
        if not 0.0 <= plo < phi <= 100.0:
            raise SamError(f"percentiles must satisfy 0 <= low < high <= 100, got {self.percentiles}")
        object.__setattr__(self, "percentiles", (plo, phi))
        if self.nodata is not None:
            object.__setattr__(self, "nodata", float(self.nodata))
        object.__setattr__(self, "channel_axis", int(self.channel_axis))

    def key(self) -> str:
        """A stable text form of these settings, used in embedding cache keys."""
        return json.dumps(asdict(self), sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_dict(cls, values: dict) -> "Preparation":
        """Rebuild from ``dataclasses.asdict`` output (lists become tuples)."""
        fields = dict(values)
        for name in ("channels", "value_range", "percentiles"):
            if fields.get(name) is not None:
                fields[name] = tuple(fields[name])
        return cls(**fields)


def prepare_image(
    image: np.ndarray, preparation: Optional[Preparation] = None
) -> Tuple[np.ndarray, np.ndarray]:
    """Turn an image array into (RGB uint8 (H, W, 3), valid mask (H, W) bool) by the one documented rule.

    Raises SamError for empty, wrongly shaped, all-invalid or non-numeric input.
    """
    prep = preparation or Preparation()
    array = np.asarray(image)
    channels, alpha = _split_channels(array, prep)
    valid = _valid_mask(channels, alpha, prep)
    if not valid.any():
        raise SamError("the image has no valid pixels (all NaN, nodata or transparent)")

    if channels.dtype == np.uint8 and prep.value_range is None:
        rgb8 = channels
    elif channels.dtype == np.bool_:
        rgb8 = channels.astype(np.uint8) * np.uint8(255)
    else:
        lo, hi = prep.value_range if prep.value_range is not None else _percentile_range(channels, valid, prep)
        rgb8 = _stretch(channels, lo, hi)

    if rgb8.shape[-1] == 1:
        rgb8 = np.repeat(rgb8, 3, axis=-1)
    if not valid.all():
        rgb8 = np.where(valid[..., None], rgb8, np.uint8(0))
    return np.ascontiguousarray(rgb8, dtype=np.uint8), valid


def _split_channels(array: np.ndarray, prep: Preparation) -> Tuple[np.ndarray, Optional[np.ndarray]]:
    """Return (chosen channels (H, W, 1 or 3), alpha (H, W) or None) after checking shape and dtype."""
    if array.dtype.kind not in "biuf":
        raise SamError(f"image data must be numbers (integers, floats or booleans), got {array.dtype}")
    if array.size == 0:
        raise SamError(f"the image is empty (shape {array.shape})")
    if array.ndim == 2:
        stack = array[..., None]
    elif array.ndim == 3:
        axis = prep.channel_axis
        if not -3 <= axis <= 2:
            raise SamError(f"channel axis {axis} does not exist in an image of shape {array.shape}")
        stack = np.moveaxis(array, axis, -1)
    else:
        raise SamError(
            f"expected a 2D image (H, W) or an image with channels (H, W, C), got shape {array.shape}; "
            "take one slice of a volume or time series first"
        )
    height, width, count = stack.shape
    if height < 2 or width < 2:
        raise SamError(f"the image must be at least 2 x 2 pixels, got {height} x {width}")

    if prep.channels is not None:
        for index in prep.channels:
            if not -count <= index < count:
                raise SamError(f"channel {index} does not exist: the image has {count} channel(s) (0..{count - 1})")
        return stack[..., list(prep.channels)], None
    if count in (1, 3):
        return stack, None
    if count in (2, 4):
        return stack[..., : count - 1], stack[..., count - 1]
    raise SamError(
        f"the image has {count} channels: choose 1 or 3 of them (for example channels=(0,) or (2, 1, 0))"
    )


def _valid_mask(channels: np.ndarray, alpha: Optional[np.ndarray], prep: Preparation) -> np.ndarray:
    valid = np.ones(channels.shape[:2], dtype=bool)
    if channels.dtype.kind == "f":
        valid &= np.isfinite(channels).all(axis=-1)
    if prep.nodata is not None:
        if np.isnan(prep.nodata):
            valid &= ~np.isnan(channels).all(axis=-1)
        else:
            valid &= ~(channels == prep.nodata).all(axis=-1)
    if alpha is not None:
        valid &= alpha != 0
    return valid


def _percentile_range(channels: np.ndarray, valid: np.ndarray, prep: Preparation) -> Tuple[float, float]:
    """(lo, hi) percentiles of the valid values of all channels; on every k-th pixel of big images."""
    pixels = channels.reshape(-1, channels.shape[-1])
    flags = valid.reshape(-1)
    step = pixels.size // _PERCENTILE_SAMPLE
    if step > 1 and np.count_nonzero(flags[::step]) > 0:
        pixels, flags = pixels[::step], flags[::step]
    values = pixels[flags].astype(np.float64).ravel()
    lo, hi = np.percentile(values, prep.percentiles)
    return float(lo), float(hi)


def _stretch(channels: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Map (lo, hi) linearly to 0..255 (clipped, rounded); block-wise to bound float64 memory."""
    out = np.empty(channels.shape, dtype=np.uint8)
    rows = max(1, _BLOCK_VALUES // max(1, channels.shape[1] * channels.shape[2]))
    for start in range(0, channels.shape[0], rows):
        block = channels[start : start + rows].astype(np.float64)
        if hi > lo:
            block = (block - lo) * (255.0 / (hi - lo))
            np.clip(block, 0.0, 255.0, out=block)
            np.rint(block, out=block)
        else:
            block = np.where(block > lo, 255.0, 0.0)
        # NaN (invalid) pixels are zeroed afterwards; cast them to 0 here without a warning.
        np.nan_to_num(block, copy=False, nan=0.0)
        out[start : start + rows] = block.astype(np.uint8)
    return out


# --- the official ResizeLongestSide transforms -------------------------------------------------------


def resized_shape(height: int, width: int, long_side: int) -> Tuple[int, int]:
    """(new_h, new_w) with the longest side equal to ``long_side``, rounded as the official transform."""
    scale = long_side * 1.0 / max(height, width)
    new_h, new_w = height * scale, width * scale
    return int(new_h + 0.5), int(new_w + 0.5)


def resize_image(rgb: np.ndarray, long_side: int) -> np.ndarray:
    """Resize an (H, W, 3) uint8 image so its longest side is ``long_side`` (PIL bilinear, as official)."""
    new_h, new_w = resized_shape(rgb.shape[0], rgb.shape[1], long_side)
    return np.array(Image.fromarray(rgb).resize((new_w, new_h), Image.BILINEAR))


def to_input_coords(coords_xy: np.ndarray, original_size: Sequence[int], long_side: int) -> np.ndarray:
    """Scale (..., 2) (x, y) pixel coordinates of the original (H, W) image to the resized model input."""
    old_h, old_w = original_size
    new_h, new_w = resized_shape(old_h, old_w, long_side)
    coords = np.array(coords_xy, dtype=float, copy=True)
    coords[..., 0] = coords[..., 0] * (new_w / old_w)
    coords[..., 1] = coords[..., 1] * (new_h / old_h)
    return coords


def to_input_boxes(boxes_xyxy: np.ndarray, original_size: Sequence[int], long_side: int) -> np.ndarray:
    """Scale (B, 4) or (4,) (x0, y0, x1, y1) boxes of the original image to the model input; returns (B, 4)."""
    boxes = np.asarray(boxes_xyxy, dtype=float).reshape(-1, 2, 2)
    return to_input_coords(boxes, original_size, long_side).reshape(-1, 4)
