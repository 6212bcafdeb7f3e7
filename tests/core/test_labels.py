"""sam_core.labels: one mask per prompt, label edits and per-object measurements."""

from __future__ import annotations

import numpy as np
import pytest

from sam_core.errors import SamError
from sam_core.labels import decode_each, delete, measure, merge, paint


def test_decode_each_equals_one_by_one_prediction(small_vit_checkpoint):
    from sam_core.predictor import Predictor

    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)
    predictor = Predictor(None, checkpoint=str(small_vit_checkpoint))
    embedding = predictor.encode(image)
    points = np.array([[5, 6], [30, 20], [60, 40]], float)
    boxes = np.array([[2, 2, 20, 30], [10, 5, 60, 45]], float)
    masks = decode_each(predictor, embedding, points, boxes)
    assert masks.shape == (5, 48, 64) and masks.dtype == bool
    for i, p in enumerate(points):
        np.testing.assert_array_equal(masks[i], predictor.predict(embedding, p[None]).masks[0])
    for j, b in enumerate(boxes):
        np.testing.assert_array_equal(masks[3 + j], predictor.predict(embedding, box=b).masks[0])
    assert decode_each(predictor, embedding).shape == (0, 48, 64)


def test_paint_first_mask_wins_and_respects_free_pixels():
    masks = np.zeros((3, 4, 4), bool)
    masks[0, :2] = True
    masks[1, 1:3] = True
    masks[2, 3, 3] = True
    free = np.ones((4, 4), bool)
    free[3, 3] = False
    labels = paint(masks, start_id=5, free=free)
    expected = np.zeros((4, 4), np.int32)
    expected[:2] = 5
    expected[2] = 6
    np.testing.assert_array_equal(labels, expected)


def test_merge_and_delete_leave_exact_label_sets():
    labels = np.array([[1, 1, 0], [2, 3, 3], [0, 2, 4]])
    merged = merge(labels, [3, 2])
    np.testing.assert_array_equal(merged, [[1, 1, 0], [2, 2, 2], [0, 2, 4]])
    assert labels[1, 2] == 3  # the input is unchanged
    np.testing.assert_array_equal(delete(labels, [1, 4]), [[0, 0, 0], [2, 3, 3], [0, 2, 0]])
    with pytest.raises(SamError, match="not in the labels"):
        merge(labels, [1, 9])
    with pytest.raises(SamError, match="two different"):
        merge(labels, [2, 2])


def test_measure_equals_regionprops_table_with_the_scale():
    from skimage.measure import regionprops_table

    rng = np.random.default_rng(1)
    labels = np.zeros((4, 20, 30), np.int32)
    labels[1:3, 2:8, 3:12] = 1
    labels[0:4, 10:18, 15:20] = 7
    intensity = rng.random((4, 20, 30, 2))
    scale = (2.0, 0.5, 0.25)
    table = measure(labels, intensity, scale, classes={7: "nucleus"}, tracks={1: 3})
    ref = regionprops_table(labels, intensity_image=intensity, spacing=scale,
                            properties=["label", "area", "centroid", "bbox", "intensity_mean"])
    np.testing.assert_array_equal(table["label"], [1, 7])
    np.testing.assert_allclose(table["volume"], ref["area"])
    np.testing.assert_allclose(table["volume"], [2 * 6 * 9 * 0.25, 4 * 8 * 5 * 0.25])
    for axis in range(3):
        np.testing.assert_allclose(table[f"centroid-{axis}"], ref[f"centroid-{axis}"])
        np.testing.assert_allclose(table[f"bbox-min-{axis}"], ref[f"bbox-{axis}"] * scale[axis])
        np.testing.assert_allclose(table[f"bbox-max-{axis}"], ref[f"bbox-{axis + 3}"] * scale[axis])
    for c in range(2):
        np.testing.assert_allclose(table[f"mean_intensity-{c}"], ref[f"intensity_mean-{c}"])
        np.testing.assert_allclose(table[f"integrated_intensity-{c}"], ref[f"intensity_mean-{c}"] * ref["area"])
    assert table["class"].tolist() == ["", "nucleus"]
    assert table["track_id"].tolist() == [3, 0]
    assert "area" in measure(labels[0], scale=(1.0, 1.0))
    with pytest.raises(SamError, match="one value per labels axis"):
        measure(labels, scale=(1.0, 1.0))


def test_split_and_replace_object():
    from sam_core.labels import replace_object, split

    labels = np.array([[1, 1, 1, 0], [1, 1, 1, 2], [0, 0, 2, 2]])
    mask = np.zeros(labels.shape, bool)
    mask[:, 2:] = True
    mask[2, 2:] = False
    out, object_id, new_id = split(labels, mask)
    assert (object_id, new_id) == (1, 3)  # object 1 overlaps most; object 2 is left alone
    np.testing.assert_array_equal(out, [[1, 1, 3, 0], [1, 1, 3, 2], [0, 0, 2, 2]])
    with pytest.raises(SamError, match="no object"):
        split(labels, np.zeros(labels.shape, bool))
    with pytest.raises(SamError, match="covers all"):
        split(labels, labels == 2)
    redrawn = replace_object(labels, 2, mask)
    np.testing.assert_array_equal(redrawn, [[1, 1, 1, 2], [1, 1, 1, 2], [0, 0, 0, 0]])
    np.testing.assert_array_equal(replace_object(labels, 2, mask, overwrite=True), [[1, 1, 2, 2], [1, 1, 2, 2], [0, 0, 0, 0]])


def test_write_csv_is_atomic_and_round_trips(tmp_path):
    import csv

    from sam_core.labels import write_csv

    labels = np.zeros((6, 6), np.int32)
    labels[1:3, 1:4] = 2
    table = measure(labels, scale=(0.5, 0.5), classes={2: "cell"})
    path = tmp_path / "out" / "measurements.csv"
    write_csv(table, path)
    rows = list(csv.DictReader(path.open()))
    assert rows == [{"label": "2", "area": "1.5", "centroid-0": "0.75", "centroid-1": "1.0", "bbox-min-0": "0.5",
                     "bbox-min-1": "0.5", "bbox-max-0": "1.5", "bbox-max-1": "2.0", "class": "cell"}]
    assert [p.name for p in path.parent.iterdir()] == ["measurements.csv"]
    with pytest.raises(SamError, match="differ in length"):
        write_csv({"a": [1], "b": [1, 2]}, path)
    assert len(list(csv.DictReader(path.open()))) == 1  # the old file is untouched


def test_write_labels_tiff_and_classes_csv(tmp_path):
    import csv

    import tifffile

    from sam_core.labels import write_labels

    labels = np.zeros((2, 5, 5), np.int32)
    labels[0, 1:3, 1:3] = 1
    labels[1, 2:4, 2:4] = 3
    written = write_labels(labels, tmp_path / "objects.tif", classes={1: "cell", 7: "gone"})
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "objects.tif"), labels)
    assert written == str(tmp_path / "objects.classes.csv")
    assert list(csv.reader(open(written))) == [["id", "class"], ["1", "cell"], ["3", ""]]
    with pytest.raises(SamError, match="integers"):
        write_labels(labels.astype(float), tmp_path / "x.tif")
