"""Read images (PNG, JPEG, TIFF incl. 16-bit and multichannel) and write masks and label images.

Arrays are (H, W) or (H, W, C) with rows first. Every write goes through a temporary file in the
same folder and a rename, so a failed write never leaves a partial file.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional, Union

import numpy as np

from sam_core.errors import SamError
from sam_core.fileio import atomic_path, atomic_write
from sam_core.imaging import check_image_size

PathLike = Union[str, "os.PathLike[str]"]

_TIFF = {".tif", ".tiff"}
# Axis letters tifffile uses for samples/channels.
_CHANNEL_AXES = set("SC")


def read_image(path: PathLike, max_bytes: Optional[int] = None) -> np.ndarray:
    """The pixels of an image file as (H, W) or (H, W, C), in the file's own dtype.

    A file whose declared size would take more than ``max_bytes`` when decoded (default
    :func:`sam_core.imaging.max_image_bytes`, 1 GiB or ``SAM_CORE_MAX_IMAGE_MB``) is refused before any
    pixel is decoded, with a SamError giving the size and the limit.

    TIFF files (``.tif``, ``.tiff``) are read with tifffile: 8/16/32-bit and float data, any number of
    channels; channels stored first (C, H, W) are moved last. Other files (PNG, JPEG, BMP, ...) are read
    with Pillow, turned upright by their EXIF orientation; palette images become RGB(A), 16-bit PNGs
    stay uint16. A missing or unreadable file raises SamError naming it.
    """
    file = Path(path).expanduser()
    if not file.exists():
        raise SamError(f"image file not found: {file}")
    if not file.is_file():
        raise SamError(f"not an image file: {file} is a folder or a special file")
    try:
        array = _read_tiff(file, max_bytes) if file.suffix.lower() in _TIFF else _read_pil(file, max_bytes)
    except SamError:
        raise
    except Exception as error:  # any decoder failure is a property of the file, not a bug here
        raise SamError(f"cannot read image {file}: {_reason(error)}") from error
    if array.size == 0:
        raise SamError(f"image {file} holds no pixels")
    return array


def _read_tiff(file: Path, max_bytes: Optional[int]) -> np.ndarray:
    import tifffile

    with tifffile.TiffFile(file) as tif:
        series = tif.series[0]
        axes = series.axes
        check_image_size(series.shape, np.dtype(series.dtype).itemsize, f"image {file}", max_bytes)
        array = series.asarray()
    if array.ndim == 3 and axes[0] in _CHANNEL_AXES and axes[-1] not in _CHANNEL_AXES:
        array = np.moveaxis(array, 0, -1)
    elif array.ndim == 3 and axes[-1] not in _CHANNEL_AXES and array.shape[0] <= 4 < array.shape[-1]:
        # An unlabelled (Q, Y, X) stack with a few planes: planar channels.
        array = np.moveaxis(array, 0, -1)
    return np.ascontiguousarray(array)


# Bytes per pixel of Pillow's modes once read as an array (palette images become RGB(A)).
_PIL_PIXEL_BYTES = {"1": 1, "L": 1, "P": 4, "PA": 4, "LA": 2, "RGB": 3, "RGBA": 4, "RGBX": 4, "CMYK": 4,
                    "YCbCr": 3, "LAB": 3, "HSV": 3, "I": 4, "F": 4}


def _read_pil(file: Path, max_bytes: Optional[int]) -> np.ndarray:
    from PIL import Image, ImageOps

    with Image.open(file) as image:
        width, height = image.size
        channels = _PIL_PIXEL_BYTES.get(image.mode, 2 if image.mode.startswith("I;16") else 4)
        check_image_size((height, width, channels), 1, f"image {file}", max_bytes)
        image.load()
        image = ImageOps.exif_transpose(image)
        if image.mode == "P":
            image = image.convert("RGBA" if "transparency" in image.info else "RGB")
        elif image.mode in ("CMYK", "YCbCr", "LAB", "HSV"):
            image = image.convert("RGB")
        elif image.mode == "PA":
            image = image.convert("RGBA")
        array = np.array(image)
    if array.dtype.byteorder == ">":
        array = array.astype(array.dtype.newbyteorder("="))
    return array


def _reason(error: Exception) -> str:
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__


def write_mask_png(mask: np.ndarray, path: PathLike) -> Path:
    """Write a (H, W) mask as an 8-bit PNG: 255 inside, 0 outside. Atomic."""
    from PIL import Image

    array = np.asarray(mask)
    if array.ndim != 2:
        raise SamError(f"a mask must be 2D (H, W), got shape {array.shape}")
    target = Path(path)
    if target.suffix.lower() != ".png":
        raise SamError(f"mask files are PNG: {target} must end in .png")
    pixels = np.where(array.astype(bool), np.uint8(255), np.uint8(0))
    with atomic_write(target, "wb") as handle:
        Image.fromarray(pixels).save(handle, format="PNG")
    return target


def write_label_image(labels: np.ndarray, path: PathLike) -> Path:
    """Write a (H, W) label image (0 background, 1..N objects). Atomic.

    ``.tif``/``.tiff``: uint16 when the largest label is below 65536, else uint32 (zlib compressed).
    ``.png``: 16-bit grayscale (at most 65535 labels).
    """
    array = np.asarray(labels)
    if array.ndim != 2:
        raise SamError(f"a label image must be 2D (H, W), got shape {array.shape}")
    if array.dtype.kind not in "biu":
        if array.dtype.kind != "f" or not np.array_equal(array, np.round(array)):
            raise SamError(f"labels must be whole numbers, got {array.dtype}")
    if array.size and array.min() < 0:
        raise SamError("labels must not be negative")
    top = int(array.max()) if array.size else 0
    target = Path(path)
    suffix = target.suffix.lower()
    if suffix in _TIFF:
        import tifffile

        dtype = np.uint16 if top < 1 << 16 else np.uint32
        with atomic_path(target) as temporary:
            tifffile.imwrite(temporary, array.astype(dtype), compression="zlib", photometric="minisblack")
    elif suffix == ".png":
        from PIL import Image

        if top >= 1 << 16:
            raise SamError(f"{top} labels do not fit a 16-bit PNG (at most 65535); write a .tif instead")
        with atomic_write(target, "wb") as handle:
            Image.fromarray(array.astype(np.uint16)).save(handle, format="PNG")
    else:
        raise SamError(f"label images are written as .tif, .tiff or .png, not {target.name!r}")
    return target
