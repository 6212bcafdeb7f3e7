"""Georeferenced rasters read window by window, as the model's RGB input, with one stretch for all tiles.

A :class:`RasterView` is the *working grid* of a raster: its pixels after an optional ``extent`` (map
coordinates of the raster's CRS) and an optional target ``resolution`` (CRS units per pixel). Pixel
coordinates of the working grid are (row, col) for windows and (x, y) = (col, row) for prompts;
``view.transform`` maps working-grid pixel (col, row) to map (x, y). Any affine geotransform works,
rotated and sheared ones included (polygons and prompts go through the full affine); rasters
georeferenced only by ground control points are refused (warp them first).

Values: 8-bit bands pass unchanged (as the official predictor takes them); other data types are stretched
with one value range for the whole raster, the 0.5 and 99.5 percentiles of sampled pixels of all chosen
bands together (a decimated read that uses the overviews when the file has them, else 64 windows spread
over the raster), through
:class:`sam_core.imaging.Preparation` ``value_range``, so that all tiles look alike. Nodata, alpha,
internal masks and NaN make a pixel invalid; invalid pixels are black in the model input and
never produce polygons. The raster is never read whole: only windows and a decimated overview.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Optional, Sequence, Tuple, Union

import numpy as np

from sam_core.errors import SamError

PathLike = Union[str, "os.PathLike[str]"]

# Statistics: longest side of the decimated read (small rasters or with overviews), else a grid of
# SAMPLE_GRID x SAMPLE_GRID windows of SAMPLE_SIZE pixels spread over the raster.
STATS_SIZE = 1024
SAMPLE_GRID = 8
SAMPLE_SIZE = 128
PERCENTILES = (0.5, 99.5)


@dataclass(frozen=True)
class RasterSpec:
    """Everything needed to reopen the same working grid elsewhere (e.g. on a Dask worker)."""

    path: str
    bands: Optional[Tuple[int, ...]] = None
    resolution: Optional[Tuple[float, float]] = None
    extent: Optional[Tuple[float, float, float, float]] = None
    value_range: Optional[Tuple[float, float]] = None  # filled in by open_raster (None: uint8 unchanged)


def _rasterio():
    try:
        import rasterio
    except ImportError as error:  # pragma: no cover - depends on the installation
        raise SamError("the geo tools need rasterio: pip install 'sam-suite[geo]'") from error
    return rasterio


def parse_bands(bands: Union[None, str, Sequence[int]]) -> Optional[Tuple[int, ...]]:
    """'4,3,2' or [4, 3, 2] -> (4, 3, 2) (1-based band numbers); None stays None."""
    if bands is None:
        return None
    if isinstance(bands, str):
        try:
            values = tuple(int(b) for b in bands.replace(" ", "").split(",") if b)
        except ValueError:
            raise SamError(f"bands must be band numbers separated by commas, e.g. 4,3,2; got {bands!r}") from None
    else:
        values = tuple(int(b) for b in bands)
    if len(values) not in (1, 3):
        raise SamError(f"choose 1 band (grayscale) or 3 bands (red, green, blue), got {len(values)}: {list(values)}")
    return values


def _resolution(resolution: Union[None, float, Sequence[float]]) -> Optional[Tuple[float, float]]:
    if resolution is None:
        return None
    values = (float(resolution),) * 2 if np.isscalar(resolution) else tuple(float(r) for r in resolution)
    if len(values) != 2 or not all(math.isfinite(v) and v > 0 for v in values):
        raise SamError(f"resolution must be a positive size in the raster's CRS units, got {resolution}")
    return values  # type: ignore[return-value]


class RasterView:
    """A raster opened for segmentation (see the module docstring). Use as a context manager or ``close()``."""

    def __init__(self, spec: RasterSpec, dataset, window: Tuple[int, int, int, int], size: Tuple[int, int]) -> None:
        from affine import Affine

        self.spec = spec
        self.dataset = dataset
        self.path = spec.path
        self.bands: Tuple[int, ...] = spec.bands  # type: ignore[assignment]
        self.value_range = spec.value_range
        self._row_off, self._col_off, win_h, win_w = window
        self.height, self.width = size
        self._fy = win_h / self.height
        self._fx = win_w / self.width
        self.crs = dataset.crs
        self.transform = (
            dataset.transform
            @ Affine.translation(self._col_off, self._row_off)
            @ Affine.scale(self._fx, self._fy)
        )

    # -- context manager
    def close(self) -> None:
        self.dataset.close()

    def __enter__(self) -> "RasterView":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def crs_wkt(self) -> str:
        return self.crs.to_wkt()

    @property
    def pixel_size(self) -> Tuple[float, float]:
        """Size of one working pixel along its columns and rows, in CRS units."""
        t = self.transform
        return math.hypot(t.a, t.d), math.hypot(t.b, t.e)

    def map_to_pixel(self, xy: np.ndarray) -> np.ndarray:
        """(N, 2) map (x, y) in the raster CRS -> (N, 2) working-grid pixel (x, y) (floats)."""
        xy = np.asarray(xy, dtype=np.float64).reshape(-1, 2)
        inv = ~self.transform
        cols = inv.a * xy[:, 0] + inv.b * xy[:, 1] + inv.c
        rows = inv.d * xy[:, 0] + inv.e * xy[:, 1] + inv.f
        return np.stack([cols, rows], axis=1)

    def pixel_to_map(self, xy: np.ndarray) -> np.ndarray:
        """(N, 2) working-grid pixel (x, y) -> (N, 2) map (x, y)."""
        xy = np.asarray(xy, dtype=np.float64).reshape(-1, 2)
        t = self.transform
        return np.stack([t.a * xy[:, 0] + t.b * xy[:, 1] + t.c, t.d * xy[:, 0] + t.e * xy[:, 1] + t.f], axis=1)

    def read(self, y0: int, x0: int, y1: int, x1: int) -> Tuple[np.ndarray, np.ndarray]:
        """Working-grid window [y0:y1, x0:x1] -> (RGB uint8 (h, w, 3), valid bool (h, w))."""
        from rasterio.enums import Resampling
        from rasterio.windows import Window

        from sam_core.imaging import Preparation, check_image_size, prepare_image

        h, w = y1 - y0, x1 - x0
        itemsize = np.dtype(self.dataset.dtypes[self.bands[0] - 1]).itemsize
        check_image_size((h, w, len(self.bands)), itemsize, f"a window of {self.path}", remedy="choose a smaller tile size")
        window = Window(self._col_off + x0 * self._fx, self._row_off + y0 * self._fy, w * self._fx, h * self._fy)
        resampled = self._fx != 1.0 or self._fy != 1.0
        kwargs = {"window": window, "out_shape": (len(self.bands), h, w)}
        try:
            if resampled:
                down = self._fx > 1.0 or self._fy > 1.0
                data = self.dataset.read(
                    list(self.bands), resampling=Resampling.average if down else Resampling.bilinear, **kwargs
                )
                masks = self.dataset.read_masks(list(self.bands), resampling=Resampling.nearest, **kwargs)
            else:
                data = self.dataset.read(list(self.bands), **kwargs)
                masks = self.dataset.read_masks(list(self.bands), **kwargs)
        except Exception as error:  # rasterio raises its own error types for broken files
            raise SamError(f"cannot read the pixels of {self.path}: {_first_line(error)} (is the file corrupt?)") from error
        valid = (masks > 0).any(axis=0)  # nodata when every chosen band is nodata (as sam_core.imaging)
        if data.dtype.kind == "f":
            valid &= np.isfinite(data).all(axis=0)
        channels = np.moveaxis(data, 0, -1)
        if self.value_range is None:
            rgb = channels.astype(np.uint8, copy=False)
            if rgb.shape[-1] == 1:
                rgb = np.repeat(rgb, 3, axis=-1)
        else:
            lo = self.value_range[0]
            filled = np.where(valid[..., None], channels, np.asarray(lo, dtype=channels.dtype))
            rgb, _ = prepare_image(filled, Preparation(value_range=self.value_range))
        rgb = np.where(valid[..., None], rgb, np.uint8(0))
        return np.ascontiguousarray(rgb, dtype=np.uint8), valid


def _first_line(error: BaseException) -> str:
    """The most telling line of an error (GDAL often hides the cause behind 'see previous exception')."""
    while error.__cause__ is not None and "previous exception" in str(error):
        error = error.__cause__
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def _default_bands(dataset) -> Tuple[int, ...]:
    from rasterio.enums import ColorInterp

    data_bands = [i + 1 for i, ci in enumerate(dataset.colorinterp) if ci != ColorInterp.alpha]
    if not data_bands:
        data_bands = list(range(1, dataset.count + 1))
    interp = {ci: i + 1 for i, ci in enumerate(dataset.colorinterp)}
    if all(c in interp for c in (ColorInterp.red, ColorInterp.green, ColorInterp.blue)):
        return (interp[ColorInterp.red], interp[ColorInterp.green], interp[ColorInterp.blue])
    return tuple(data_bands[:3]) if len(data_bands) >= 3 else (data_bands[0],)


def _check_georeferencing(dataset, path: str) -> None:
    if dataset.crs is None:
        if dataset.gcps[0]:
            raise SamError(
                f"{path} is georeferenced by ground control points only; warp it to a regular grid first "
                "(e.g. gdalwarp -t_srs EPSG:xxxx in.tif out.tif)"
            )
        raise SamError(
            f"{path} has no coordinate reference system (CRS); assign one first "
            "(e.g. gdal_edit.py -a_srs EPSG:xxxx FILE) so that polygons land on the map"
        )
    t = dataset.transform
    if t.is_identity or abs(t.a * t.e - t.b * t.d) == 0:
        raise SamError(f"{path} has a CRS but no usable geotransform; georeference it first")


def _window_for_extent(dataset, extent: Tuple[float, float, float, float], path: str) -> Tuple[int, int, int, int]:
    xmin, ymin, xmax, ymax = (float(v) for v in extent)
    if not (xmin < xmax and ymin < ymax):
        raise SamError(f"extent must be (xmin, ymin, xmax, ymax) with xmin < xmax and ymin < ymax, got {extent}")
    inv = ~dataset.transform
    corners = [inv @ (x, y) for x in (xmin, xmax) for y in (ymin, ymax)]
    cols = [c for c, _ in corners]
    rows = [r for _, r in corners]
    c0, c1 = max(0, math.floor(min(cols))), min(dataset.width, math.ceil(max(cols)))
    r0, r1 = max(0, math.floor(min(rows))), min(dataset.height, math.ceil(max(rows)))
    if c0 >= c1 or r0 >= r1:
        b = dataset.bounds
        raise SamError(
            f"the extent {tuple(extent)} does not overlap {path} "
            f"(its bounds are {b.left:.6g}, {b.bottom:.6g}, {b.right:.6g}, {b.top:.6g} in the raster's CRS)"
        )
    return r0, c0, r1 - r0, c1 - c0


def _stats_sample(dataset, bands: Tuple[int, ...], window) -> Tuple[np.ndarray, np.ndarray]:
    """(data (bands, n...), masks) to compute statistics from, never the whole raster.

    Small rasters and rasters with overviews: one decimated read (GDAL takes the overviews). Large ones
    without overviews: a regular grid of ``SAMPLE_GRID`` x ``SAMPLE_GRID`` windows of ``SAMPLE_SIZE`` pixels.
    """
    from rasterio.windows import Window

    row_off, col_off, h, w = window
    if max(h, w) <= 4 * STATS_SIZE or dataset.overviews(bands[0]):
        scale = min(1.0, STATS_SIZE / max(h, w))
        out_h, out_w = max(1, round(h * scale)), max(1, round(w * scale))
        win = Window(col_off, row_off, w, h)
        shape = (len(bands), out_h, out_w)
        return dataset.read(list(bands), window=win, out_shape=shape), dataset.read_masks(list(bands), window=win, out_shape=shape)
    size_y, size_x = min(SAMPLE_SIZE, h), min(SAMPLE_SIZE, w)
    rows = np.linspace(row_off, row_off + h - size_y, SAMPLE_GRID).round().astype(int)
    cols = np.linspace(col_off, col_off + w - size_x, SAMPLE_GRID).round().astype(int)
    data, masks = [], []
    for r in rows:
        for c in cols:
            win = Window(int(c), int(r), size_x, size_y)
            data.append(dataset.read(list(bands), window=win))
            masks.append(dataset.read_masks(list(bands), window=win))
    return np.concatenate(data, axis=2), np.concatenate(masks, axis=2)


def _value_range(dataset, bands: Tuple[int, ...], window, path: str) -> Optional[Tuple[float, float]]:
    """Raster-wide (lo, hi) from sampled pixels; None for uint8. Raises SamError when all is nodata."""
    try:
        data, masks = _stats_sample(dataset, bands, window)
    except Exception as error:
        raise SamError(f"cannot read the pixels of {path}: {_first_line(error)} (is the file corrupt?)") from error
    valid = (masks > 0).any(axis=0)  # nodata when every chosen band is nodata (as sam_core.imaging)
    if data.dtype.kind == "f":
        valid &= np.isfinite(data).all(axis=0)
    if not valid.any():
        raise SamError(f"{path} holds no valid pixels in the chosen bands and extent (all nodata, transparent or NaN)")
    if data.dtype == np.uint8:
        return None
    values = data[:, valid].astype(np.float64).ravel()
    lo, hi = (float(v) for v in np.percentile(values, PERCENTILES))
    if hi <= lo:
        hi = lo + 1.0
    return lo, hi


def _open_dataset(path: PathLike):
    rasterio = _rasterio()
    file = Path(path).expanduser()
    if not file.exists():
        raise SamError(f"raster file {file} does not exist")
    try:
        return rasterio.open(file)
    except Exception as error:
        raise SamError(f"cannot open {file} as a raster: {_first_line(error)}") from error


def _grid(dataset, spec: RasterSpec) -> Tuple[Tuple[int, int, int, int], Tuple[int, int]]:
    """(source window (row_off, col_off, h, w), working size (h, w)) of a spec."""
    window = (
        _window_for_extent(dataset, spec.extent, spec.path) if spec.extent is not None else (0, 0, dataset.height, dataset.width)
    )
    h, w = window[2], window[3]
    if spec.resolution is not None:
        t = dataset.transform
        px, py = math.hypot(t.a, t.d), math.hypot(t.b, t.e)
        h, w = max(1, round(h * py / spec.resolution[1])), max(1, round(w * px / spec.resolution[0]))
    return window, (h, w)


def open_raster(
    path: PathLike,
    bands: Union[None, str, Sequence[int]] = None,
    resolution: Union[None, float, Sequence[float]] = None,
    extent: Optional[Sequence[float]] = None,
    value_range: Optional[Sequence[float]] = None,
) -> RasterView:
    """Open ``path`` as a :class:`RasterView`, checking everything a user can get wrong.

    bands: 1 or 3 band numbers (1-based), default red/green/blue by colour interpretation, else the
    first three (or the one) non-alpha bands. resolution: target pixel size in CRS units (one number or
    (x, y)). extent: (xmin, ymin, xmax, ymax) in the raster's CRS. value_range: a fixed stretch (lo, hi)
    (default: computed once for the whole raster, see the module docstring).
    """
    dataset = _open_dataset(path)
    file = str(Path(path).expanduser())
    try:
        _check_georeferencing(dataset, file)
        chosen = parse_bands(bands) or _default_bands(dataset)
        for band in chosen:
            if not 1 <= band <= dataset.count:
                raise SamError(
                    f"band {band} does not exist in {file}: it has {dataset.count} band(s), numbered 1 to {dataset.count}"
                )
        spec = RasterSpec(
            path=file,
            bands=tuple(chosen),
            resolution=_resolution(resolution),
            extent=None if extent is None else tuple(float(v) for v in extent),  # type: ignore[arg-type]
        )
        window, size = _grid(dataset, spec)
        if value_range is not None:
            lo, hi = (float(v) for v in value_range)
            if not hi > lo:
                raise SamError(f"value range must be lo < hi, got {tuple(value_range)}")
            stretch: Optional[Tuple[float, float]] = (lo, hi)
        else:
            stretch = _value_range(dataset, spec.bands, window, file)
        return RasterView(replace(spec, value_range=stretch), dataset, window, size)
    except BaseException:
        dataset.close()
        raise


def reopen(spec: RasterSpec) -> RasterView:
    """Open the working grid that ``spec`` (``view.spec``) describes again: same bands, grid and stretch."""
    dataset = _open_dataset(spec.path)
    try:
        window, size = _grid(dataset, spec)
        return RasterView(spec, dataset, window, size)
    except BaseException:
        dataset.close()
        raise
