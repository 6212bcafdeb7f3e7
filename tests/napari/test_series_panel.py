"""Image series in the napari panel, driven as a user does: the plugin manager's widget, the series
buttons, canvas clicks with the ``demo`` model; napari closed and reopened on the same folder."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tifffile
from napari_util import click, click_canvas, needs_demo, wait_for
from PIL import Image
from qtpy.QtCore import Qt

from napari_sam.layers import OBJECTS_NAME
from sam_core import generate_scene
from sam_core.series import MANIFEST_NAME


def _answer_folder(monkeypatch, path):
    """The next folder dialogs of the plugin answer ``path``."""
    from qtpy.QtWidgets import QFileDialog

    monkeypatch.setattr(QFileDialog, "getExistingDirectory", staticmethod(lambda *args, **kwargs: str(path)))


def _series_folder(tmp_path, count=5):
    folder = tmp_path / "fields"
    folder.mkdir()
    truths = []
    for i in range(count):
        scene = generate_scene((19, i), size=128, style="fluorescence")
        Image.fromarray(scene.image).save(folder / f"field_{i}.png")
        truths.append(scene.labels)
    return folder, truths


def _click_largest_object(qtbot, viewer, widget, truth):
    """Click the middle of the largest object of ``truth`` on the canvas and commit the preview."""
    from sam_core.volume import prompts_from_mask

    ids, counts = np.unique(truth[truth > 0], return_counts=True)
    (x, y), = prompts_from_mask(truth == ids[np.argmax(counts)])[0]
    layer = widget.series_panel.controller.layer
    click_canvas(qtbot, viewer, viewer.layers[layer.name], (float(y), float(x)))
    wait_for(qtbot, widget, timeout=120000)
    click(qtbot, widget.commit_button)
    objects = np.array(viewer.layers[OBJECTS_NAME].data)
    assert objects.max() >= 1
    return objects


@pytest.mark.slow  # about 50 s on the loaded 2-core machine (demo encodes 5 images, two viewers)
@needs_demo
def test_a_series_of_5_images_is_saved_closed_reopened_and_resumed(make_widget, qtbot, notes, tmp_path, monkeypatch):
    folder, truths = _series_folder(tmp_path)
    labels_folder = folder / "sam-labels"
    viewer, widget = make_widget(None, model="demo", show=True)
    panel = widget.series_panel
    _answer_folder(monkeypatch, folder)
    click(qtbot, panel.open_folder_button)
    assert panel.position_label.text() == "image 1 of 5: field_0.png (0 saved)"
    assert [layer.name for layer in viewer.layers][0] == "field_0.png"
    wait_for(qtbot, widget, timeout=120000)  # the next images' embeddings, in the background

    first = _click_largest_object(qtbot, viewer, widget, truths[0])
    click(qtbot, panel.next_button)
    assert panel.position_label.text() == "image 2 of 5: field_1.png (1 saved)"
    assert "field_0.png" not in viewer.layers and not np.any(viewer.layers[OBJECTS_NAME].data)
    np.testing.assert_array_equal(tifffile.imread(labels_folder / "field_0_labels.tif"), first)
    click(qtbot, widget.compute_button)  # computed ahead while image 1 was shown
    wait_for(qtbot, widget, timeout=120000)
    assert "Embedding loaded from the cache." in [message for _, message in notes]

    second = _click_largest_object(qtbot, viewer, widget, truths[1])
    widget.classes_edit.clear()
    qtbot.keyClicks(widget.classes_edit, "cell, debris")
    qtbot.keyClick(widget.classes_edit, Qt.Key.Key_Return)
    click(qtbot, panel.next_button)
    assert panel.position_label.text() == "image 3 of 5: field_2.png (2 saved)"
    manifest = json.loads((labels_folder / MANIFEST_NAME).read_text())
    assert manifest["current"] == "field_2.png" and manifest["position"] == 2
    assert manifest["class_names"] == ["cell", "debris"]
    assert [(e["name"], e["done"], e["objects"]) for e in manifest["images"]] == [
        ("field_0.png", True, 1), ("field_1.png", True, 1), ("field_2.png", False, 0),
        ("field_3.png", False, 0), ("field_4.png", False, 0)]
    np.testing.assert_array_equal(tifffile.imread(labels_folder / "field_1_labels.tif"), second)

    third = _click_largest_object(qtbot, viewer, widget, truths[2])  # not saved by a button: napari closes
    wait_for(qtbot, widget)
    viewer.close()
    np.testing.assert_array_equal(tifffile.imread(labels_folder / "field_2_labels.tif"), third)
    assert json.loads((labels_folder / MANIFEST_NAME).read_text())["images"][2]["done"]

    viewer, widget = make_widget(None, model="demo", show=True)  # napari opened again, same folder
    panel = widget.series_panel
    click(qtbot, panel.open_folder_button)
    assert panel.position_label.text() == "image 3 of 5: field_2.png (3 saved)"
    assert "Series resumed at image 3 of 5: field_2.png (3 of 5 images saved in " in notes[-1][1]
    assert widget.classes_edit.text() == "cell, debris"
    np.testing.assert_array_equal(viewer.layers[OBJECTS_NAME].data, third)
    click(qtbot, panel.previous_button)
    assert panel.position_label.text() == "image 2 of 5: field_1.png (3 saved)"
    np.testing.assert_array_equal(viewer.layers[OBJECTS_NAME].data, second)
    click(qtbot, panel.previous_button)
    np.testing.assert_array_equal(viewer.layers[OBJECTS_NAME].data, first)
    click(qtbot, panel.previous_button)
    assert notes[-1][1] == "This is the first image of the series."
    wait_for(qtbot, widget, timeout=120000)


def test_empty_folder_unreadable_image_and_read_only_labels_folder_say_what_to_do(make_widget, qtbot, notes,
                                                                                  tmp_path, monkeypatch):
    from helpers.folders import read_only_folder

    viewer, widget = make_widget(None)
    panel = widget.series_panel
    panel.ahead_spin.setValue(0)
    empty = tmp_path / "empty"
    empty.mkdir()
    _answer_folder(monkeypatch, empty)
    click(qtbot, panel.open_folder_button)
    assert notes[-1][0] == "error" and "No images (.png, .jpg" in notes[-1][1] and str(empty) in notes[-1][1]
    assert panel.position_label.text() == "No series open."

    folder, _ = _series_folder(tmp_path, count=2)
    (folder / "field_0b.png").write_bytes(b"this is no PNG")
    with read_only_folder(tmp_path / "locked") as locked:
        panel.output_edit.setText(str(locked))
        _answer_folder(monkeypatch, folder)
        click(qtbot, panel.open_folder_button)
        assert notes[-1][0] == "error" and "Cannot write" in notes[-1][1] and "read-only" in notes[-1][1]
    assert panel.position_label.text() == "No series open."

    panel.output_edit.setText(str(tmp_path / "labels"))
    click(qtbot, panel.open_folder_button)
    assert panel.position_label.text() == "image 1 of 3: field_0.png (0 saved)"
    click(qtbot, panel.next_button)  # field_0b.png cannot be read: skipped with a note
    assert panel.position_label.text() == "image 3 of 3: field_1.png (1 saved)"
    assert any(severity == "warning" and message.startswith("Skipped field_0b.png: Cannot read image")
               for severity, message in notes)
    manifest = json.loads((tmp_path / "labels" / MANIFEST_NAME).read_text())
    assert "cannot read image" in manifest["images"][1]["error"]
    wait_for(qtbot, widget)


def test_open_image_layers_as_a_series(make_widget, qtbot, tmp_path):
    """Painted objects (napari's brush writes SAM objects' data) are saved per layer when moving on."""
    rng = np.random.default_rng(2)
    viewer, widget = make_widget(None)
    for name in ("plate A", "plate B"):
        viewer.add_image(rng.integers(0, 4000, (64, 80), dtype=np.uint16), name=name)
    panel = widget.series_panel
    panel.ahead_spin.setValue(1)
    panel.output_edit.setText(str(tmp_path / "out"))
    click(qtbot, panel.use_layers_button)
    assert panel.position_label.text() == "image 1 of 2: plate A (0 saved)"
    wait_for(qtbot, widget)
    objects = viewer.layers[OBJECTS_NAME]
    objects.data[10:20, 10:30] = 3  # as napari's paint brush does
    click(qtbot, panel.next_button)
    assert panel.position_label.text() == "image 2 of 2: plate B (1 saved)"
    assert widget.image_combo.currentText() == "plate B" and "plate A" in viewer.layers
    saved = tifffile.imread(tmp_path / "out" / "plate_A_labels.tif")
    assert set(np.unique(saved)) == {0, 3} and (saved == 3).sum() == 200
    click(qtbot, panel.previous_button)
    assert (np.asarray(viewer.layers[OBJECTS_NAME].data) == 3).sum() == 200
    wait_for(qtbot, widget)

    viewer.layers[OBJECTS_NAME].data[30:32, 0:5] = 4  # then the panel is closed: saved
    viewer.window.remove_dock_widget(widget)
    qtbot.waitUntil(lambda: set(np.unique(tifffile.imread(tmp_path / "out" / "plate_A_labels.tif"))) == {0, 3, 4})


def test_the_next_images_are_encoded_in_the_background_and_cancel_stops_it(make_widget, qtbot, notes, tmp_path,
                                                                            monkeypatch):
    folder, _ = _series_folder(tmp_path, count=3)
    viewer, widget = make_widget(None)
    _answer_folder(monkeypatch, folder)
    click(qtbot, widget.series_panel.open_folder_button)
    assert widget.series_panel.position_label.text() == "image 1 of 3: field_0.png (0 saved)"
    assert widget.session.busy  # the panel answers at once; the next two images are encoded meanwhile
    click(qtbot, widget.cancel_button)
    wait_for(qtbot, widget)
    assert widget.progress_bar.format() == "cancelled"
    assert ("info", "Cancelled.") in notes
