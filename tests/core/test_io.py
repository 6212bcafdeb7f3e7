"""Reading images (PNG, JPEG, TIFF incl. 16-bit and multichannel) and writing masks and label images."""

from __future__ import annotations

import os

import numpy as np
import pytest
import tifffile
from PIL import Image

from sam_core.errors import SamError
from sam_core.io import read_image, write_label_image, write_mask_png

RNG = np.random.default_rng(3)


def test_png_rgb_gray_rgba_16bit(tmp_path):
    rgb = RNG.integers(0, 256, (20, 30, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    np.testing.assert_array_equal(read_image(tmp_path / "rgb.png"), rgb)
    gray = rgb[..., 0].copy()
    Image.fromarray(gray).save(tmp_path / "gray.png")
    np.testing.assert_array_equal(read_image(tmp_path / "gray.png"), gray)
    rgba = RNG.integers(0, 256, (20, 30, 4), dtype=np.uint8)
    Image.fromarray(rgba).save(tmp_path / "rgba.png")
    np.testing.assert_array_equal(read_image(tmp_path / "rgba.png"), rgba)
    deep = RNG.integers(0, 65536, (20, 30), dtype=np.uint16)
    Image.fromarray(deep).save(tmp_path / "deep.png")
    out = read_image(tmp_path / "deep.png")
    assert out.dtype == np.uint16
    np.testing.assert_array_equal(out, deep)


def test_palette_png_becomes_rgb(tmp_path):
    rgb = np.zeros((10, 10, 3), np.uint8)
    rgb[:5] = (255, 0, 0)
    Image.fromarray(rgb).convert("P").save(tmp_path / "p.png")
    out = read_image(tmp_path / "p.png")
    assert out.shape == (10, 10, 3)
    np.testing.assert_array_equal(out, rgb)


def test_jpeg(tmp_path):
    rgb = np.full((16, 24, 3), 128, np.uint8)
    Image.fromarray(rgb).save(tmp_path / "a.jpg", quality=95)
    out = read_image(tmp_path / "a.jpg")
    assert out.shape == (16, 24, 3) and out.dtype == np.uint8
    assert np.abs(out.astype(int) - 128).max() <= 2


def test_jpeg_exif_orientation(tmp_path):
    rgb = np.zeros((10, 20, 3), np.uint8)
    image = Image.fromarray(rgb)
    exif = image.getexif()
    exif[0x0112] = 6  # rotate 90 degrees to be upright
    image.save(tmp_path / "rot.jpg", exif=exif)
    assert read_image(tmp_path / "rot.jpg").shape == (20, 10, 3)


def test_tiff_16bit_float_and_multichannel(tmp_path):
    deep = RNG.integers(0, 65536, (20, 30), dtype=np.uint16)
    tifffile.imwrite(tmp_path / "deep.tif", deep)
    np.testing.assert_array_equal(read_image(tmp_path / "deep.tif"), deep)
    floats = RNG.random((20, 30, 3)).astype(np.float32)
    tifffile.imwrite(tmp_path / "rgbf.tiff", floats, photometric="rgb")
    np.testing.assert_array_equal(read_image(tmp_path / "rgbf.tiff"), floats)
    many = RNG.integers(0, 4096, (20, 30, 6), dtype=np.uint16)
    tifffile.imwrite(tmp_path / "six.tif", many, photometric="minisblack", planarconfig="contig")
    np.testing.assert_array_equal(read_image(tmp_path / "six.tif"), many)
    planar = RNG.integers(0, 4096, (3, 20, 30), dtype=np.uint16)
    tifffile.imwrite(tmp_path / "planar.tif", planar, photometric="rgb", planarconfig="separate")
    np.testing.assert_array_equal(read_image(tmp_path / "planar.tif"), np.moveaxis(planar, 0, -1))
    # an ImageJ-style channels-first stack
    stack = RNG.integers(0, 255, (5, 20, 30), dtype=np.uint8)
    tifffile.imwrite(tmp_path / "cyx.tif", stack, imagej=True, metadata={"axes": "CYX"})
    np.testing.assert_array_equal(read_image(tmp_path / "cyx.tif"), np.moveaxis(stack, 0, -1))


def test_missing_and_unreadable_files_name_the_file(tmp_path):
    with pytest.raises(SamError, match="not found.*nothing.png"):
        read_image(tmp_path / "nothing.png")
    with pytest.raises(SamError, match="folder"):
        read_image(tmp_path)
    for name in ("bad.png", "bad.jpg", "bad.tif"):
        (tmp_path / name).write_bytes(b"this is not an image")
        with pytest.raises(SamError, match=f"cannot read image .*{name}"):
            read_image(tmp_path / name)
    # a truncated PNG
    Image.fromarray(RNG.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(tmp_path / "full.png")
    data = (tmp_path / "full.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(SamError, match="cut.png"):
        read_image(tmp_path / "cut.png")


def test_write_mask_png(tmp_path):
    mask = RNG.random((12, 17)) > 0.5
    path = write_mask_png(mask, tmp_path / "sub" / "mask.png")
    out = np.array(Image.open(path))
    assert out.dtype == np.uint8 and out.shape == (12, 17)
    np.testing.assert_array_equal(out, mask * 255)
    assert os.listdir(tmp_path / "sub") == ["mask.png"]
    with pytest.raises(SamError):
        write_mask_png(mask, tmp_path / "mask.jpg")
    with pytest.raises(SamError):
        write_mask_png(np.zeros((2, 3, 4)), tmp_path / "m.png")


def test_write_label_image(tmp_path):
    labels = RNG.integers(0, 300, (15, 20))
    write_label_image(labels, tmp_path / "l.tif")
    out = tifffile.imread(tmp_path / "l.tif")
    assert out.dtype == np.uint16
    np.testing.assert_array_equal(out, labels)
    big = labels + 70000
    write_label_image(big, tmp_path / "big.tiff")
    out = tifffile.imread(tmp_path / "big.tiff")
    assert out.dtype == np.uint32
    np.testing.assert_array_equal(out, big)
    write_label_image(labels.astype(np.int32), tmp_path / "l.png")
    np.testing.assert_array_equal(read_image(tmp_path / "l.png"), labels)
    with pytest.raises(SamError, match="16-bit PNG"):
        write_label_image(big, tmp_path / "big.png")
    with pytest.raises(SamError, match="negative"):
        write_label_image(labels - 1, tmp_path / "neg.tif")
    with pytest.raises(SamError):
        write_label_image(labels, tmp_path / "l.bmp")
    assert sorted(os.listdir(tmp_path)) == ["big.tiff", "l.png", "l.tif"]
