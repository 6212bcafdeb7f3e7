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
    bad = tmp_path / "bad.nii"
    bad.write_bytes(b"not a nifti file")
    with pytest.raises(SamError):
        read_nifti(str(bad))


def test_viewer_opens_nifti_through_the_plugin(make_napari_viewer, tmp_path):
    data = np.arange(4 * 5 * 6, dtype=np.int16).reshape(6, 5, 4)
    path = tmp_path / "small.nii.gz"
    _write_nifti(path, data, (1.0, 2.0, 3.0))
    viewer = make_napari_viewer()
    layers = viewer.open(str(path), plugin="sam-suite")
    assert layers[0].data.shape == (4, 5, 6)
    assert tuple(layers[0].scale) == pytest.approx((3.0, 2.0, 1.0))
