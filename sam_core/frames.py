"""Frames of a movie or slices of a volume, read lazily one at a time, as SAM 2.1's model input.

Sources: a NumPy or Dask array (T, Y, X) or (T, Y, X, C) (T: time or z), a multi-page TIFF (one page
a frame), or a folder of image files sorted by name (numbers in names compared as numbers). Every
frame must have the same height and width.

Model input: a folder of JPEG frames is prepared exactly as Meta's video predictor does
(``sam2.utils.misc.load_video_frames``: PIL ``resize`` to S x S, /255, ImageNet mean and standard
deviation); every other frame goes through the project's stretch rule
(:func:`sam_core.imaging.prepare_image`, frame by frame: give a fixed ``value_range`` for the same
contrast on every frame) and the SAM 2.1 image transform (:meth:`Sam2.preprocess`).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, List, Optional, Tuple, Union

import numpy as np
import torch

from sam_core.errors import SamError
from sam_core.imaging import Preparation, prepare_image

PathLike = Union[str, "os.PathLike[str]"]
JPEG_SUFFIXES = (".jpg", ".jpeg")
IMAGE_SUFFIXES = JPEG_SUFFIXES + (".png", ".tif", ".tiff", ".bmp")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class Frames:
    """A lazy stack of ``count`` frames of ``height`` x ``width`` pixels. ``read(i)`` returns frame
    ``i`` as an array (Y, X[, C]); ``jpeg_files`` holds the files when the source is a JPEG folder
    (their preparation is the official video predictor's). ``reads`` counts the frames read."""

    count: int
    height: int
    width: int
    read_frame: Callable[[int], np.ndarray]
    name: str
    jpeg_files: Optional[List[Path]] = None
    reads: int = field(default=0, init=False)

    def read(self, index: int) -> np.ndarray:
        self.check_index(index)
        self.reads += 1
        return self.read_frame(index)

    def check_index(self, index: int) -> None:
        if not 0 <= index < self.count:
            raise SamError(f"frame {index} is not in {self.name}: it has {self.count} frames, numbered 0 to "
                           f"{self.count - 1}")

    def model_input(self, index: int, image_size: int, preprocess: Callable[[torch.Tensor], torch.Tensor],
                    preparation: Optional[Preparation] = None) -> torch.Tensor:
        """Frame ``index`` as the (1, 3, S, S) float32 model input (see the module docstring)."""
        if self.jpeg_files is not None:
            self.check_index(index)
            self.reads += 1
            return _official_jpeg_input(self.jpeg_files[index], image_size)
        rgb, _ = prepare_image(self.read(index), preparation)
        return preprocess(torch.from_numpy(rgb).permute(2, 0, 1).unsqueeze(0))


def open_frames(source: Any) -> Frames:
    """A :class:`Frames` for an array (NumPy or Dask, (T, Y, X[, C])), a multi-page TIFF file or a
    folder of frames. :class:`SamError` for an empty folder, frames of different sizes, a missing
    file or an array of another shape."""
    if isinstance(source, (str, os.PathLike)):
        path = Path(source).expanduser()
        if path.is_dir():
            return _folder(path)
        if path.is_file():
            if path.suffix.lower() in (".tif", ".tiff"):
                return _tiff(path)
            raise SamError(f"{path} is not a multi-page TIFF or a folder of frames; give a .tif stack or a folder "
                           f"of {', '.join(IMAGE_SUFFIXES)} files")
        raise SamError(f"{path} does not exist; give a folder of frames, a multi-page TIFF or an array")
    shape = tuple(getattr(source, "shape", ()))
    if len(shape) not in (3, 4) or (len(shape) == 4 and shape[-1] not in (1, 2, 3, 4)) or 0 in shape:
        raise SamError(f"frames must be an array (T, Y, X) or (T, Y, X, C) with 1 to 4 channels, got shape {shape}")
    return Frames(shape[0], shape[1], shape[2], lambda i: np.asarray(source[i]), name="the array")


def _natural_key(path: Path) -> Tuple:
    return tuple((0, int(part), "") if part.isdigit() else (1, 0, part) for part in re.split(r"(\d+)", path.name))


def _folder(path: Path) -> Frames:
    from PIL import Image

    files = sorted((p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES), key=_natural_key)
    if not files:
        raise SamError(f"the folder {path} holds no frames ({', '.join(IMAGE_SUFFIXES)} files); give a folder of "
                       f"images sorted by name, or a multi-page TIFF")
    sizes = []
    for file in files:
        try:
            with Image.open(file) as image:
                sizes.append(image.size)
        except OSError as error:
            raise SamError(f"cannot read frame {file}: {error}") from None
    _same_size([(h, w) for w, h in sizes], [f.name for f in files], str(path))
    width, height = sizes[0]
    jpeg = all(f.suffix.lower() in JPEG_SUFFIXES for f in files)

    def read(index: int) -> np.ndarray:
        from sam_core.io import read_image

        return read_image(files[index])

    return Frames(len(files), height, width, read, name=f"the folder {path}", jpeg_files=files if jpeg else None)


def _tiff(path: Path) -> Frames:
    """One page a frame (read page by page); a stack stored otherwise (e.g. one planar page) is read
    whole on the first access."""
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            shapes = [tuple(page.shape) for page in tif.pages]
            series = tif.series[0] if tif.series else None
            series_shape = tuple(series.shape) if series is not None else ()
            paged = series is not None and len(tif.series) == 1 and len(series.pages) == len(shapes) and \
                len(shapes) > 1 and len(shapes[0]) in (2, 3) and series_shape[0] == len(shapes)
    except (OSError, ValueError, tifffile.TiffFileError) as error:
        raise SamError(f"cannot read {path} as a TIFF: {error}") from None
    if not shapes:
        raise SamError(f"{path} holds no pages")
    _same_size([s[:2] for s in shapes], [f"page {i}" for i in range(len(shapes))], str(path))
    if paged:
        height, width = shapes[0][:2]
        return Frames(len(shapes), height, width, lambda i: tifffile.imread(path, key=i), name=str(path))
    whole: dict = {}

    def read(index: int) -> np.ndarray:
        if "array" not in whole:
            whole["array"] = tifffile.imread(path)
        return whole["array"][index]

    if len(series_shape) not in (3, 4):
        raise SamError(f"{path} holds one image of shape {series_shape}, not a stack of frames (T, Y, X[, C])")
    return Frames(series_shape[0], series_shape[1], series_shape[2], read, name=str(path))


def _same_size(sizes: List[Tuple[int, int]], names: List[str], where: str) -> None:
    for size, name in zip(sizes, names):
        if tuple(size) != tuple(sizes[0]):
            raise SamError(f"frames of different sizes in {where}: {names[0]} is {sizes[0][1]}x{sizes[0][0]} pixels, "
                           f"{name} is {size[1]}x{size[0]}; every frame must have the same width and height")


def _official_jpeg_input(path: Path, image_size: int) -> torch.Tensor:
    """One JPEG frame as ``load_video_frames_from_jpg_images`` prepares it: (1, 3, S, S) float32."""
    from PIL import Image

    with Image.open(path) as image:
        array = np.array(image.convert("RGB").resize((image_size, image_size)))
    x = torch.from_numpy(array / 255.0).permute(2, 0, 1).to(torch.float32)
    x -= torch.tensor(IMAGENET_MEAN, dtype=torch.float32)[:, None, None]
    x /= torch.tensor(IMAGENET_STD, dtype=torch.float32)[:, None, None]
    return x.unsqueeze(0)
