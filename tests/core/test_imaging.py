"""Image preparation (the one documented rule) and the official ResizeLongestSide transforms."""

from __future__ import annotations

import numpy as np
import pytest

from sam_core.errors import SamError
from sam_core.imaging import (
    Preparation,
    prepare_image,
    resize_image,
    resized_shape,
    to_input_boxes,
    to_input_coords,
)

RNG = np.random.default_rng(1)


def test_uint8_rgb_passes_unchanged():
    image = RNG.integers(0, 256, (20, 30, 3), dtype=np.uint8)
    rgb, valid = prepare_image(image)
    assert rgb.dtype == np.uint8 and rgb.shape == (20, 30, 3)
    np.testing.assert_array_equal(rgb, image)
    assert valid.dtype == bool and valid.all()


def test_uint8_gray_is_repeated():
    image = RNG.integers(0, 256, (20, 30), dtype=np.uint8)
    rgb, _ = prepare_image(image)
    for c in range(3):
        np.testing.assert_array_equal(rgb[..., c], image)
    rgb1, _ = prepare_image(image[..., None])
    np.testing.assert_array_equal(rgb1, rgb)


def test_rgba_drops_alpha_and_alpha_zero_is_invalid():
    image = RNG.integers(1, 256, (10, 12, 4), dtype=np.uint8)
    image[2:4, 3:5, 3] = 0
    rgb, valid = prepare_image(image)
    assert not valid[2:4, 3:5].any() and valid.sum() == 120 - 4
    np.testing.assert_array_equal(rgb[valid], image[..., :3][valid])
    assert (rgb[~valid] == 0).all()


def test_gray_alpha():
    image = RNG.integers(1, 256, (10, 12, 2), dtype=np.uint8)
    image[0, 0, 1] = 0
    rgb, valid = prepare_image(image)
    assert not valid[0, 0] and valid.sum() == 119
    np.testing.assert_array_equal(rgb[1:, :, 0], image[1:, :, 0])


@pytest.mark.parametrize("dtype", [np.uint16, np.int16, np.int32, np.float32, np.float64])
def test_other_dtypes_percentile_stretch(dtype):
    image = np.linspace(-100 if np.dtype(dtype).kind != "u" else 0, 4000, 50 * 40).reshape(50, 40).astype(dtype)
    rgb, valid = prepare_image(image)
    assert valid.all()
    lo, hi = np.percentile(image.astype(np.float64), (0.5, 99.5))
    expected = np.rint(np.clip((image.astype(np.float64) - lo) * (255.0 / (hi - lo)), 0, 255)).astype(np.uint8)
    np.testing.assert_array_equal(rgb[..., 0], expected)
    assert rgb.min() == 0 and rgb.max() == 255


def test_one_range_for_all_channels_keeps_colour_balance():
    image = np.zeros((10, 10, 3), dtype=np.uint16)
    image[..., 0] = 1000
    image[..., 1] = 600
    image[..., 2] = np.arange(100).reshape(10, 10) * 10  # 0..990
    rgb, _ = prepare_image(image, Preparation(value_range=(0, 1000)))
    assert (rgb[..., 0] == 255).all() and (rgb[..., 1] == 153).all()
    rgb_p, _ = prepare_image(image)
    # red stays brightest, green in the middle: one (lo, hi) for all three channels
    assert rgb_p[..., 0].mean() > rgb_p[..., 1].mean() > 0


def test_value_range_fixed():
    image = np.array([[0, 100, 210], [300, 400, 500]], dtype=np.uint16)
    rgb, _ = prepare_image(image, Preparation(value_range=(100, 300)))
    np.testing.assert_array_equal(rgb[..., 0], [[0, 0, 140], [255, 255, 255]])


def test_value_range_identity_on_uint8():
    image = RNG.integers(0, 256, (8, 9, 3), dtype=np.uint8)
    rgb, _ = prepare_image(image, Preparation(value_range=(0, 255)))
    np.testing.assert_array_equal(rgb, image)
    rgb2, _ = prepare_image(image, Preparation(value_range=(0, 127.5)))
    np.testing.assert_array_equal(rgb2, np.clip(image.astype(int) * 2, 0, 255))


def test_nan_and_nodata_are_invalid_and_zero():
    image = RNG.random((12, 14)).astype(np.float32) + 1
    image[0, :] = np.nan
    image[1, :] = -9999
    rgb, valid = prepare_image(image, Preparation(nodata=-9999))
    assert not valid[:2].any() and valid[2:].all()
    assert (rgb[:2] == 0).all()
    # the stretch ignores nodata: the valid pixels span the full range
    assert rgb[2:].max() == 255 and rgb[2:].min() == 0


def test_nodata_needs_all_channels():
    image = RNG.integers(1, 256, (6, 6, 3), dtype=np.uint8)
    image[0, 0] = 0
    image[1, 1, 0] = 0
    _, valid = prepare_image(image, Preparation(nodata=0))
    assert not valid[0, 0] and valid[1, 1] and valid.sum() == 35


def test_channels_selection_and_axis():
    image = RNG.integers(0, 256, (5, 16, 20), dtype=np.uint8)  # channels first
    rgb, _ = prepare_image(image, Preparation(channels=(4, 2, 0), channel_axis=0))
    np.testing.assert_array_equal(rgb, np.stack([image[4], image[2], image[0]], axis=-1))
    gray, _ = prepare_image(image, Preparation(channels=(3,), channel_axis=0))
    np.testing.assert_array_equal(gray[..., 1], image[3])


def test_bool_image():
    image = np.zeros((5, 5), dtype=bool)
    image[1:3, 1:3] = True
    rgb, _ = prepare_image(image)
    assert set(np.unique(rgb)) == {0, 255} and (rgb[1:3, 1:3] == 255).all()


def test_flat_image():
    rgb, valid = prepare_image(np.full((6, 7), 42.0))
    assert valid.all() and (rgb == 0).all()


def test_preparation_key_is_stable_and_distinct():
    assert Preparation().key() == Preparation().key()
    assert Preparation(channels=[0, 1, 2]).key() == Preparation(channels=(0, 1, 2)).key()
    assert Preparation(value_range=(0, 1)).key() != Preparation(value_range=(0, 2)).key()
    assert Preparation(nodata=0).key() != Preparation().key()
    prep = Preparation(channels=(2, 1, 0), value_range=(1, 9), nodata=-1)
    assert Preparation.from_dict(__import__("json").loads(prep.key())) == prep


@pytest.mark.parametrize(
    "image, preparation, words",
    [
        (np.zeros((0, 10), np.uint8), None, "empty"),
        (np.zeros((4, 4, 3, 2), np.uint8), None, "2D image"),
        (np.zeros((1, 1), np.uint8), None, "at least 2 x 2"),
        (np.zeros((1, 10, 3), np.uint8), None, "at least 2 x 2"),
        (np.full((5, 5), np.nan, np.float32), None, "no valid pixels"),
        (np.zeros((5, 5), np.uint16), Preparation(nodata=0), "no valid pixels"),
        (np.zeros((5, 5, 6), np.uint16), None, "6 channels"),
        (np.zeros((5, 5, 3), np.uint8), Preparation(channels=(5,)), "channel 5 does not exist"),
        (np.zeros((5, 5), np.uint8), Preparation(channels=(1,)), "channel 1 does not exist"),
        (np.zeros((5, 5, 3), np.uint8), Preparation(channel_axis=4), "channel axis"),
        (np.array([["a", "b"], ["c", "d"]]), None, "numbers"),
        (np.zeros((5, 5), np.complex64), None, "numbers"),
    ],
)
def test_bad_input_raises_clear_error(image, preparation, words):
    with pytest.raises(SamError, match=words):
        prepare_image(image, preparation)
    assert issubclass(SamError, ValueError)


@pytest.mark.parametrize(
    "kwargs", [dict(channels=(0, 1)), dict(value_range=(5, 5)), dict(value_range=(0, np.inf)), dict(percentiles=(50, 10))]
)
def test_bad_preparation(kwargs):
    with pytest.raises(SamError):
        Preparation(**kwargs)


# --- equal to the official ResizeLongestSide ------------------------------------------------------------


def _official_transform(long_side):
    from helpers.official import segment_anything

    segment_anything()
    from segment_anything.utils.transforms import ResizeLongestSide

    return ResizeLongestSide(long_side)


def test_transforms_equal_official_on_random_sizes():
    rng = np.random.default_rng(7)
    for _ in range(25):
        h, w = (int(v) for v in rng.integers(2, 400, 2))
        long_side = int(rng.choice([64, 128, 256, 1024]))
        official = _official_transform(long_side)
        assert resized_shape(h, w, long_side) == official.get_preprocess_shape(h, w, long_side)
        coords = rng.random((5, 2)) * (w, h)
        np.testing.assert_array_equal(to_input_coords(coords, (h, w), long_side), official.apply_coords(coords, (h, w)))
        boxes = rng.random((3, 4)) * (w, h, w, h)
        np.testing.assert_array_equal(to_input_boxes(boxes, (h, w), long_side), official.apply_boxes(boxes, (h, w)))
    for h, w in [(37, 91), (300, 200), (128, 128), (5, 700)]:
        image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        official = _official_transform(256)
        np.testing.assert_array_equal(resize_image(image, 256), official.apply_image(image))


def test_big_image_percentiles_on_a_regular_sample():
    image = np.tile(np.arange(2048, dtype=np.uint16), (1100, 1))  # 2.25 M pixels x 3 channels: sampled
    rgb, _ = prepare_image(np.stack([image] * 3, axis=-1))
    lo, hi = np.percentile(image, (0.5, 99.5))
    expected = np.rint(np.clip((image[0].astype(np.float64) - lo) * (255.0 / (hi - lo)), 0, 255))
    assert np.abs(rgb[0, :, 0].astype(int) - expected).max() <= 1
