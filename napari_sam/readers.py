"""napari readers for medical volumes: NIfTI files (nibabel), DICOM files and DICOM series folders (pydicom).

The manifest (``napari.yaml``) claims only these: ``*.nii``, ``*.nii.gz``, ``*.dcm``, ``*.dicom`` and
folders (a folder is read when it holds DICOM files); every other file is left to napari's readers.
napari's own reader claims NIfTI and DICOM file names too (and reads them without voxel spacing or
Hounsfield units), so File > Open would ask which reader to use: :func:`prefer_for_medical_files`
(called when the widget opens) makes this plugin napari's preferred reader for those file names,
unless the user has chosen a reader for them.

Both keep the voxel spacing as the layer's ``scale`` (millimetres), in napari's axis order:
(z, y, x) for volumes and (t, z, y, x) for 4D NIfTI. NIfTI stores voxels as (i, j, k[, t]) = (x, y,
z[, t]); the reader transposes to (z, y, x) without resampling or reorienting. DICOM values are
converted to their physical unit with RescaleSlope/RescaleIntercept (Hounsfield units for CT).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, List, Optional, Tuple, Union

import numpy as np

LayerData = Tuple[np.ndarray, dict, str]
PathOrPaths = Union[str, List[str]]

#: File name patterns this plugin's reader claims (as in napari.yaml), folders aside.
PATTERNS = ("*.nii", "*.nii.gz", "*.dcm", "*.dicom")


def prefer_for_medical_files(plugin: str = "sam-suite") -> List[str]:
    """Make ``plugin`` napari's preferred reader for :data:`PATTERNS` the user has no choice for.

    This is napari's setting ``plugins.extension2reader`` (Preferences > Plugins, the same as ticking
    "remember this choice" in File > Open's reader dialog). Returns the patterns set.
    """
    from napari.settings import get_settings

    settings = get_settings().plugins
    current = dict(settings.extension2reader)
    added = [pattern for pattern in PATTERNS if pattern not in current]
    if added:
        settings.extension2reader = {**current, **{pattern: plugin for pattern in added}}
    return added


def _is_nifti(path: str) -> bool:
    return str(path).lower().endswith((".nii", ".nii.gz"))


def _is_dicom_file(path: Path) -> bool:
    try:
        with open(path, "rb") as handle:
            handle.seek(128)
            return handle.read(4) == b"DICM"
    except OSError:
        return False


def _dicom_files(folder: Path) -> List[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and _is_dicom_file(p))


def get_reader(path: PathOrPaths) -> Optional[Callable[[PathOrPaths], List[LayerData]]]:
    """npe2 reader hook: a reader for a NIfTI file or a folder of DICOM files, else ``None``."""
    if isinstance(path, list):
        if len(path) != 1:
            return None
        path = path[0]
    path = str(path)
    if _is_nifti(path):
        return read_nifti
    if os.path.isdir(path) and _dicom_files(Path(path)):
        return read_dicom_series
    if os.path.isfile(path) and _is_dicom_file(Path(path)):
        return read_dicom_file
    return None


def read_nifti(path: PathOrPaths) -> List[LayerData]:
    """Read a NIfTI file (``.nii`` or ``.nii.gz``) as one image layer with voxel spacing as scale."""
    import nibabel as nib

    from sam_core.errors import SamError

    if isinstance(path, list):
        path = path[0]
    try:
        image = nib.load(str(path))
    except Exception as error:  # nibabel raises several types for bad files
        raise SamError(f"cannot read NIfTI file {path}: {error}") from error
    data = np.asanyarray(image.dataobj)
    if data.ndim not in (2, 3, 4):
        raise SamError(f"{path}: NIfTI data with {data.ndim} dimensions is not supported (2 to 4 are)")
    zooms = tuple(float(z) for z in image.header.get_zooms()[: data.ndim])
    data = np.ascontiguousarray(data.T)
    scale = tuple(reversed(zooms))
    if data.ndim == 4:
        scale = (1.0,) + scale[1:]
    name = Path(str(path)).name
    for suffix in (".gz", ".nii"):
        name = name[: -len(suffix)] if name.lower().endswith(suffix) else name
    return [(data, {"name": name, "scale": scale, "metadata": {"path": str(path)}}, "image")]


def read_dicom_series(path: PathOrPaths) -> List[LayerData]:
    """Read a folder of DICOM files (one series) as a (z, y, x) volume with spacing as scale.

    Slices are ordered by their position along the slice normal (ImagePositionPatient and
    ImageOrientationPatient), else by InstanceNumber. The slice spacing is the median distance
    between neighbouring positions (else SpacingBetweenSlices or SliceThickness); the in-plane
    spacing is PixelSpacing (row, column).
    """
    import pydicom

    from sam_core.errors import SamError

    if isinstance(path, list):
        path = path[0]
    folder = Path(str(path))
    files = _dicom_files(folder)
    if not files:
        raise SamError(f"{folder} holds no DICOM files")
    datasets = [pydicom.dcmread(str(f)) for f in files]
    datasets = [d for d in datasets if "PixelData" in d]
    if not datasets:
        raise SamError(f"{folder}: the DICOM files hold no images")
    uids = {str(d.get("SeriesInstanceUID", "")) for d in datasets}
    if len(uids) > 1:
        raise SamError(f"{folder} holds {len(uids)} DICOM series; put each series in its own folder")

    positions = None
    first = datasets[0]
    if all("ImagePositionPatient" in d for d in datasets) and "ImageOrientationPatient" in first:
        orientation = np.asarray(first.ImageOrientationPatient, dtype=float)
        normal = np.cross(orientation[:3], orientation[3:])
        positions = np.array([np.dot(normal, np.asarray(d.ImagePositionPatient, dtype=float)) for d in datasets])
        order = np.argsort(positions, kind="stable")
    else:
        order = np.argsort([int(d.get("InstanceNumber", i)) for i, d in enumerate(datasets)], kind="stable")
    datasets = [datasets[i] for i in order]

    shapes = {d.pixel_array.shape for d in datasets}
    if len(shapes) != 1:
        raise SamError(f"{folder}: the slices have different sizes {sorted(shapes)}")
    volume = _compact(np.stack([_physical(d) for d in datasets]))

    row_spacing, col_spacing = (float(v) for v in first.get("PixelSpacing", (1.0, 1.0)))
    slice_spacing = None
    if positions is not None and len(datasets) > 1:
        steps = np.diff(np.sort(positions))
        steps = steps[steps > 1e-6]
        if steps.size:
            slice_spacing = float(np.median(steps))
    if slice_spacing is None:
        slice_spacing = float(first.get("SpacingBetweenSlices", first.get("SliceThickness", 1.0)))
    name = str(first.get("SeriesDescription", "") or folder.name)
    meta = {"path": str(folder), "modality": str(first.get("Modality", ""))}
    return [(volume, {"name": name, "scale": (slice_spacing, row_spacing, col_spacing), "metadata": meta}, "image")]


def read_dicom_file(path: PathOrPaths) -> List[LayerData]:
    """Read one DICOM file: a (y, x) image, a (frames, y, x) multi-frame image or an RGB (y, x, 3) image.

    The scale is PixelSpacing (row, column) in millimetres, with SpacingBetweenSlices (else
    SliceThickness, else 1) for the frames of a multi-frame file. To read a series of single-slice
    files as one volume, open their folder.
    """
    import pydicom

    from sam_core.errors import SamError

    if isinstance(path, list):
        path = path[0]
    try:
        dataset = pydicom.dcmread(str(path))
        if "PixelData" not in dataset:
            raise SamError(f"{path}: the DICOM file holds no image")
        rgb = int(dataset.get("SamplesPerPixel", 1)) == 3
        pixels = dataset.pixel_array if rgb else _compact(_physical(dataset))
    except SamError:
        raise
    except Exception as error:  # pydicom raises several types for bad files
        raise SamError(f"cannot read DICOM file {path}: {error}") from error
    row_spacing, col_spacing = (float(v) for v in dataset.get("PixelSpacing", (1.0, 1.0)))
    scale: Tuple[float, ...] = (row_spacing, col_spacing)
    if pixels.ndim - int(rgb) == 3:
        scale = (float(dataset.get("SpacingBetweenSlices", dataset.get("SliceThickness", 1.0)) or 1.0),) + scale
    name = str(dataset.get("SeriesDescription", "") or Path(str(path)).stem)
    meta = {"path": str(path), "modality": str(dataset.get("Modality", ""))}
    return [(pixels, {"name": name, "scale": scale, "rgb": rgb, "metadata": meta}, "image")]


def _physical(dataset: object) -> np.ndarray:
    """A dataset's pixels in their physical unit (RescaleSlope and RescaleIntercept: HU for CT)."""
    pixels = dataset.pixel_array
    slope = float(dataset.get("RescaleSlope", 1.0))
    intercept = float(dataset.get("RescaleIntercept", 0.0))
    if slope != 1.0 or intercept != 0.0:
        pixels = pixels.astype(np.float32) * slope + intercept
    return pixels


def _compact(array: np.ndarray) -> np.ndarray:
    """float32 values that are whole numbers within int16's range become int16 (half the memory)."""
    if array.dtype == np.float32 and np.all(np.mod(array, 1) == 0) and np.abs(array).max() < 32768:
        return array.astype(np.int16)
    return array
