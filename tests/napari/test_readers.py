"""Readers: NIfTI (nibabel) and DICOM series folders (pydicom) keep voxel spacing as the layer's scale."""

from __future__ import annotations

import numpy as np
import pytest

from napari_sam.readers import get_reader, read_dicom_series, read_nifti
from sam_core.errors import SamError


def _write_nifti(path, data, zooms):
    import nibabel as nib

    image = nib.Nifti1Image(data, affine=np.diag(list(zooms[:3]) + [1.0]))
    image.header.set_zooms(zooms)
    nib.save(image, str(path))


@pytest.mark.parametrize("name", ["ct.nii", "ct.nii.gz"])
def test_nifti_volume_is_zyx_with_spacing_as_scale(tmp_path, name):
    rng = np.random.default_rng(0)
    data = rng.integers(-1000, 1000, size=(20, 16, 6)).astype(np.int16)  # (x, y, z)
    path = tmp_path / name
    _write_nifti(path, data, (0.8, 0.7, 2.5))
    reader = get_reader(str(path))
    assert reader is read_nifti
    (array, meta, kind), = reader(str(path))
    assert kind == "image" and meta["name"] == "ct"
    assert array.shape == (6, 16, 20)
    np.testing.assert_array_equal(array, data.T)
    assert meta["scale"] == pytest.approx((2.5, 0.7, 0.8))


def test_nifti_4d_is_tzyx(tmp_path):
    data = np.zeros((8, 7, 5, 3), np.float32)  # (x, y, z, t)
    data[2, 3, 4, 1] = 1
    path = tmp_path / "series.nii.gz"
    _write_nifti(path, data, (1.0, 1.5, 3.0, 2.0))
    (array, meta, _), = read_nifti(str(path))
    assert array.shape == (3, 5, 7, 8) and array[1, 4, 3, 2] == 1
    assert meta["scale"] == pytest.approx((1.0, 3.0, 1.5, 1.0))


def _write_dicom_series(folder, volume, spacing=(2.0, 0.6, 0.7), intercept=-1024.0):
    """One CT series, one file per slice; file names in reverse of the slice order."""
    import pydicom
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    folder.mkdir()
    series = generate_uid()
    for z, plane in enumerate(volume):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = pydicom.Dataset()
        ds.file_meta = meta
        ds.SOPClassUID = CTImageStorage
        ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
        ds.SeriesInstanceUID = series
        ds.Modality = "CT"
        ds.SeriesDescription = "test CT"
        ds.InstanceNumber = len(volume) - z  # deliberately not the spatial order
        ds.ImagePositionPatient = [0.0, 0.0, 100.0 + spacing[0] * z]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.PixelSpacing = [spacing[1], spacing[2]]
        ds.SliceThickness = spacing[0]
        ds.Rows, ds.Columns = plane.shape
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.BitsAllocated = 16
        ds.BitsStored = 16
        ds.HighBit = 15
        ds.PixelRepresentation = 0
        ds.RescaleIntercept = intercept
        ds.RescaleSlope = 1.0
        ds.PixelData = (plane - intercept).astype(np.uint16).tobytes()
        ds.save_as(str(folder / f"IM{len(volume) - z:04d}.dcm"), enforce_file_format=True)


def test_dicom_series_folder_sorted_by_position_in_hounsfield_units(tmp_path):
    rng = np.random.default_rng(1)
    volume = rng.integers(-1000, 2000, size=(5, 12, 10)).astype(np.int16)
    folder = tmp_path / "series"
    _write_dicom_series(folder, volume)
    (tmp_path / "series" / "notes.txt").write_text("not DICOM")
    reader = get_reader(str(folder))
    assert reader is read_dicom_series
    (array, meta, kind), = reader(str(folder))
    np.testing.assert_array_equal(array, volume)
    assert meta["scale"] == pytest.approx((2.0, 0.6, 0.7))
    assert meta["name"] == "test CT" and meta["metadata"]["modality"] == "CT"


def test_reader_declines_other_paths_and_reports_bad_files(tmp_path):
    assert get_reader(str(tmp_path / "image.png")) is None
    assert get_reader(str(tmp_path)) is None  # a folder without DICOM files
    not_dicom = tmp_path / "not.dcm"
    not_dicom.write_bytes(b"x" * 200)
    assert get_reader(str(not_dicom)) is None
    bad = tmp_path / "bad.nii"
    bad.write_bytes(b"not a nifti file")
    with pytest.raises(SamError):
        read_nifti(str(bad))


def _compatible_readers(path):
    from npe2 import PluginManager

    pm = PluginManager.instance()
    pm.discover()
    return {pm.get_manifest(r.command).name for r in pm.iter_compatible_readers([str(path)])}


def test_the_reader_claims_only_what_it_reads(tmp_path):
    """Issue 14.3: the reader claimed every file ("*"), so File > Open of a TIFF asked which reader to use."""
    import tifffile

    tiff = tmp_path / "cells.tif"
    tifffile.imwrite(tiff, np.zeros((8, 8), np.uint8))
    assert "sam-suite" not in _compatible_readers(tiff)
    assert "sam-suite" not in _compatible_readers(tmp_path / "photo.png")
    for name in ("ct.nii", "ct.nii.gz", "CT.NII.GZ", "slice.dcm"):
        assert "sam-suite" in _compatible_readers(tmp_path / name), name


def test_manifest_patterns_are_the_readers_patterns():
    from npe2 import PluginManager

    from napari_sam.readers import PATTERNS

    pm = PluginManager.instance()
    pm.discover()
    reader, = pm.get_manifest("sam-suite").contributions.readers
    assert tuple(reader.filename_patterns) == PATTERNS


# File > Open calls ``viewer.open(paths, plugin=None)`` (napari asks for a reader only when that fails);
# ``viewer.open(path)`` alone means napari's own reader (``plugin="napari"``) in napari 0.5 and later.


@pytest.fixture
def file_open(monkeypatch):
    """``file_open(viewer, path)``: what napari's File > Open runs once the file dialog answered
    ``path``; returns the reader choices napari asked the user to make (none when it just opened)."""
    import napari._qt.qt_viewer as qt_viewer

    asked = []
    monkeypatch.setattr(qt_viewer, "handle_gui_reading", lambda paths, *args, **kwargs: asked.append(paths))

    def run(viewer, path):
        viewer.window._qt_viewer._qt_open([str(path)], stack=False)
        return asked

    return run


def test_file_open_of_a_tiff_uses_napari_and_asks_nothing(make_napari_viewer, tmp_path, file_open):
    import tifffile

    from napari_sam.samples import make_cells_2d

    image, _ = make_cells_2d((64, 80), count=2, bit16=True)
    path = tmp_path / "cells.tif"
    tifffile.imwrite(path, image)
    viewer = make_napari_viewer()
    layer, = viewer.open(str(path), plugin=None)
    np.testing.assert_array_equal(layer.data, image)
    assert layer.source.reader_plugin == "napari"
    assert file_open(viewer, path) == [] and len(viewer.layers) == 2  # File > Open: no question either


def test_file_open_of_nifti_and_dicom_files_once_the_plugin_is_open(make_napari_viewer, tmp_path, file_open):
    data = np.arange(4 * 5 * 6, dtype=np.int16).reshape(6, 5, 4)
    path = tmp_path / "small.nii.gz"
    _write_nifti(path, data, (1.0, 2.0, 3.0))
    viewer = make_napari_viewer()
    viewer.window.add_plugin_dock_widget("sam-suite", "Segment Anything")
    layer, = viewer.open(str(path), plugin=None)
    assert layer.source.reader_plugin == "sam-suite" and layer.name == "small"
    np.testing.assert_array_equal(layer.data, data.T)
    assert tuple(layer.scale) == pytest.approx((3.0, 2.0, 1.0))
    assert file_open(viewer, path) == [] and viewer.layers[-1].source.reader_plugin == "sam-suite"

    volume = np.random.default_rng(2).integers(-1000, 2000, size=(4, 12, 10)).astype(np.int16)
    _write_dicom_series(tmp_path / "series", volume)
    one = sorted((tmp_path / "series").glob("*.dcm"))[-1]  # IM0004: the first slice (names run backwards)
    layer, = viewer.open(str(one), plugin=None)
    assert layer.source.reader_plugin == "sam-suite"
    np.testing.assert_array_equal(layer.data, volume[0])
    assert tuple(layer.scale) == pytest.approx((0.6, 0.7))


def test_a_users_own_reader_choice_is_kept(make_napari_viewer):
    from napari.settings import get_settings

    viewer = make_napari_viewer()
    get_settings().plugins.extension2reader = {"*.nii": "napari"}
    viewer.window.add_plugin_dock_widget("sam-suite", "Segment Anything")
    chosen = get_settings().plugins.extension2reader
    assert chosen["*.nii"] == "napari" and chosen["*.nii.gz"] == "sam-suite"


def test_file_open_of_a_dicom_folder(make_napari_viewer, tmp_path, file_open):
    """napari's own reader takes any folder too (as a stack of files in name order), so File > Open
    asks which reader to use; choosing Segment Anything reads the series in spatial order, in HU,
    with the voxel spacing."""
    from napari.errors import MultipleReaderError

    volume = np.random.default_rng(2).integers(-1000, 2000, size=(4, 12, 10)).astype(np.int16)
    folder = tmp_path / "series"
    _write_dicom_series(folder, volume)
    viewer = make_napari_viewer()
    viewer.window.add_plugin_dock_widget("sam-suite", "Segment Anything")
    with pytest.raises(MultipleReaderError) as asked:
        viewer.open(str(folder), plugin=None)
    assert "sam-suite" in asked.value.available_plugins
    assert file_open(viewer, folder) == [[str(folder)]]  # File > Open Folder shows napari's reader dialog
    layer, = viewer.open(str(folder), plugin="sam-suite")  # the reader dialog's answer
    assert layer.name == "test CT"
    np.testing.assert_array_equal(layer.data, volume)
    assert tuple(layer.scale) == pytest.approx((2.0, 0.6, 0.7))
