"""Image series (sam_core.series): listing, label files, manifest written atomically, resume, errors,
and the embeddings of the next images computed into the cache (with cancel)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tifffile
from PIL import Image

from helpers.folders import read_only_folder
from sam_core.errors import SamError
from sam_core.imaging import Preparation
from sam_core.progress import Cancelled, CancelToken
from sam_core.series import (MANIFEST_NAME, display_range, encode_ahead, folder_loader, label_file_names,
                             open_folder, open_names)


def _folder(tmp_path, names=("b.png", "a.png", "c.tif")):
    folder = tmp_path / "images"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for name in names:
        image = rng.integers(0, 256, (24, 32), dtype=np.uint8)
        if name.endswith(".tif"):
            tifffile.imwrite(folder / name, image)
        else:
            Image.fromarray(image).save(folder / name)
    (folder / "notes.txt").write_text("not an image")
    return folder


def test_images_are_listed_by_name_and_the_labels_go_to_sam_labels(tmp_path):
    folder = _folder(tmp_path)
    series = open_folder(folder)
    assert [image.name for image in series.images] == ["a.png", "b.png", "c.tif"]
    assert series.output == folder / "sam-labels"
    assert series.position == 0 and series.describe() == "image 1 of 3: a.png"
    manifest = json.loads((folder / "sam-labels" / MANIFEST_NAME).read_text())
    assert manifest["current"] == "a.png" and [e["done"] for e in manifest["images"]] == [False] * 3


def test_label_file_names_are_unique_and_plain():
    assert label_file_names(["a.png", "a.tif", "b c[1].png", "layer"]) == [
        "a_png_labels.tif", "a_tif_labels.tif", "b_c_1__labels.tif", "layer_labels.tif"]


def test_saved_labels_and_classes_come_back_and_the_series_resumes(tmp_path):
    folder = _folder(tmp_path)
    series = open_folder(folder)
    labels = np.zeros((24, 32), np.int32)
    labels[2:6, 3:9] = 1
    labels[10:20, 10:12] = 4
    path = series.save_labels(0, labels, {1: "cell", 4: "nucleus", 9: "gone"})
    assert path == folder / "sam-labels" / "a_labels.tif"
    series.move_to(1)
    series.save_labels(1, np.zeros((24, 32), np.int32))  # an image without objects is done too
    series.move_to(2)
    series.class_names = ["cell", "nucleus"]
    series.write_manifest()
    leftovers = [p.name for p in series.output.iterdir() if p.name.startswith(".")]
    assert leftovers == []  # atomic writes leave no temporary file
    manifest = json.loads(series.manifest_path.read_text())
    assert manifest["position"] == 2 and manifest["current"] == "c.tif"
    assert manifest["images"][0] == {"name": "a.png", "labels": "a_labels.tif", "done": True, "objects": 2,
                                     "classes": {"1": "cell", "4": "nucleus"}}
    assert (series.output / "a_labels.classes.csv").read_text() == "id,class\n1,cell\n4,nucleus\n"

    (folder / "0_new.png").write_bytes((folder / "a.png").read_bytes())  # an image added meanwhile
    again = open_folder(folder)
    assert [image.name for image in again.images] == ["0_new.png", "a.png", "b.png", "c.tif"]
    assert again.current.name == "c.tif" and again.position == 3  # resumed by name
    assert again.class_names == ["cell", "nucleus"]
    np.testing.assert_array_equal(again.load_labels(1), labels)
    assert again.images[1].classes == {1: "cell", 4: "nucleus"}
    assert again.load_labels(2).max() == 0 and again.images[2].done
    assert again.load_labels(0) is None and again.load_labels(3) is None


def test_navigation_stays_inside_the_series(tmp_path):
    series = open_names(["x", "y", "z"], tmp_path / "out")
    assert series.next_index(-1) is None and series.next_index(1) == 1
    series.move_to(2)
    assert series.next_index(1) is None and series.ahead(2) == []
    series.move_to(0)
    assert series.ahead(2) == [1, 2] and series.ahead(5) == [1, 2]
    with pytest.raises(SamError, match="there is no image 4: the series has 3"):
        series.move_to(3)


def test_an_empty_folder_says_so(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(SamError, match="no images .* in .*empty"):
        open_folder(tmp_path / "empty")
    with pytest.raises(SamError, match="does not exist"):
        open_folder(tmp_path / "missing")
    with pytest.raises(SamError, match="the series has no images"):
        open_names([], tmp_path / "out")


def test_a_read_only_output_folder_is_refused_before_anything_is_written(tmp_path):
    folder = _folder(tmp_path)
    with read_only_folder(tmp_path / "locked") as locked:
        with pytest.raises(SamError, match="cannot write .*locked.*(read-only|permission)"):
            open_folder(folder, locked)
    (tmp_path / "a_file").write_text("")
    with pytest.raises(SamError, match="is a file, not a folder"):
        open_folder(folder, tmp_path / "a_file")


def test_a_damaged_manifest_is_never_overwritten(tmp_path):
    folder = _folder(tmp_path)
    out = folder / "sam-labels"
    out.mkdir()
    (out / MANIFEST_NAME).write_text("{ not json")
    with pytest.raises(SamError, match="manifest .* cannot be used .*move the manifest away"):
        open_folder(folder)
    assert (out / MANIFEST_NAME).read_text() == "{ not json"


def test_an_unreadable_image_is_named(tmp_path):
    folder = _folder(tmp_path)
    (folder / "bad.png").write_bytes(b"not a png at all")
    series = open_folder(folder)
    bad = series.index_of("bad.png")
    with pytest.raises(SamError, match="cannot read image .*bad.png"):
        series.read(bad)
    series.mark_unreadable(bad, "cannot read")
    series.write_manifest()
    assert json.loads(series.manifest_path.read_text())["images"][bad]["error"] == "cannot read"


def test_display_range():
    assert display_range(np.zeros((2, 2), np.uint8)) == (0.0, 255.0)
    assert display_range(np.array([[3, 900]], np.uint16)) == (3.0, 900.0)
    assert display_range(np.array([[np.nan, 1.5, -2.0]])) == (-2.0, 1.5)
    assert display_range(np.full((2, 2), 7, np.uint16)) is None


def test_encode_ahead_fills_the_cache_skips_unreadable_images_and_cancels(tmp_path, small_vit_checkpoint):
    from sam_core.predictor import Predictor

    folder = _folder(tmp_path)
    (folder / "bad.png").write_bytes(b"broken")
    series = open_folder(folder)
    predictor = Predictor(None, checkpoint=small_vit_checkpoint)
    items = [(series.images[i].name, folder_loader(series, i)) for i in series.ahead(3)]  # b.png, bad.png, c.tif
    seen = []
    runs, skipped = encode_ahead(predictor, items, progress=lambda d, t, m: seen.append((d, t, m)))
    assert runs == 2
    assert [name for name, _ in skipped] == ["bad.png"] and "cannot read image" in skipped[0][1]
    assert seen == [(1, 3, "b.png"), (2, 3, "bad.png"), (3, 3, "c.tif")]
    before = predictor.encoder_runs
    image = series.read(series.index_of("c.tif"))  # what a front end encodes when it shows the image
    predictor.encode(image, preparation=Preparation(value_range=(0.0, 255.0)))
    assert predictor.encoder_runs == before  # from the cache

    token = CancelToken()
    token.cancel()
    with pytest.raises(Cancelled):
        encode_ahead(predictor, items, cancel=token)
