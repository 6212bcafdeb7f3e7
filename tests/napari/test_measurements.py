"""Measurements of the committed objects, exported with the button (CSV) and shown in the panel."""

from __future__ import annotations

import csv

import numpy as np
from napari_util import click, click_canvas, needs_demo, wait_for

from napari_sam.samples import make_cells_2d
from napari_sam.session import OBJECTS_NAME


@needs_demo
def test_measurements_equal_regionprops_table_with_the_scale(make_widget, qtbot, notes, tmp_path, monkeypatch):
    from qtpy.QtWidgets import QFileDialog
    from skimage.measure import regionprops_table

    from sam_core.volume import prompts_from_mask

    cells, truth = make_cells_2d((128, 160), count=4, seed=3)
    second = (255 - cells).astype(np.uint8)
    image = np.stack([cells, second])  # (C, Y, X): two channels
    viewer, widget = make_widget(image, model="demo", show=True, scale=(1.0, 0.5, 0.25))
    widget.channel_axis_spin.setValue(0)
    widget.channels_edit.setText("0")
    click(qtbot, widget.start_button)
    click(qtbot, widget.each_check)
    for i in (1, 2, 3):
        (x, y), = prompts_from_mask(truth == i)[0]
        click_canvas(qtbot, viewer, viewer.layers[OBJECTS_NAME], (y, x))
    wait_for(qtbot, widget)
    click(qtbot, widget.commit_button)
    objects = np.array(viewer.layers[OBJECTS_NAME].data)
    assert set(np.unique(objects)) == {0, 1, 2, 3}

    path = tmp_path / "measurements.csv"
    monkeypatch.setattr(QFileDialog, "getSaveFileName", staticmethod(lambda *a, **k: (str(path), "")))
    click(qtbot, widget.measure_button)
    wait_for(qtbot, widget)
    assert notes[-1] == ("info", f"Measured 3 object(s); written to {path}.")
    rows = list(csv.DictReader(path.open()))
    ref = regionprops_table(objects, intensity_image=np.moveaxis(image, 0, -1).astype(float), spacing=(0.5, 0.25),
                            properties=["label", "area", "centroid", "bbox", "intensity_mean"])
    column = lambda name: np.array([float(row[name]) for row in rows])  # noqa: E731
    np.testing.assert_array_equal(column("label"), [1, 2, 3])
    np.testing.assert_allclose(column("area"), ref["area"])
    np.testing.assert_allclose(column("area"), [(objects == i).sum() * 0.125 for i in (1, 2, 3)])
    for axis, step in ((0, 0.5), (1, 0.25)):
        np.testing.assert_allclose(column(f"centroid-{axis}"), ref[f"centroid-{axis}"])
        np.testing.assert_allclose(column(f"bbox-min-{axis}"), ref[f"bbox-{axis}"] * step)
        np.testing.assert_allclose(column(f"bbox-max-{axis}"), ref[f"bbox-{axis + 2}"] * step)
    for c in (0, 1):
        np.testing.assert_allclose(column(f"mean_intensity-{c}"), ref[f"intensity_mean-{c}"])
        np.testing.assert_allclose(column(f"integrated_intensity-{c}"), ref[f"intensity_mean-{c}"] * ref["area"])
    table = widget.measure_table
    assert table.rowCount() == 3 and table.horizontalHeaderItem(1).text() == "area"
    assert table.item(0, 0).text() == "1"


@needs_demo
def test_classes_by_keys_in_features_exported_with_labels_and_measurements(make_widget, qtbot, notes, tmp_path,
                                                                          monkeypatch):
    import tifffile
    from napari_util import canvas
    from qtpy.QtCore import Qt
    from qtpy.QtWidgets import QFileDialog

    from sam_core.volume import prompts_from_mask

    image, truth = make_cells_2d((128, 128), count=3, seed=3)
    viewer, widget = make_widget(image, model="demo", show=True)
    widget.classes_edit.clear()
    qtbot.keyClicks(widget.classes_edit, "cell, debris")
    qtbot.keyClick(widget.classes_edit, Qt.Key.Key_Return)
    click(qtbot, widget.start_button)
    objects = viewer.layers[OBJECTS_NAME]
    for key, cell in ((Qt.Key.Key_2, 1), (Qt.Key.Key_1, 2)):
        qtbot.keyClick(canvas(viewer), key)  # the class of new objects, on the plugin's layers
        (x, y), = prompts_from_mask(truth == cell)[0]
        click_canvas(qtbot, viewer, viewer.layers["image"], (y, x))
        wait_for(qtbot, widget)
        click(qtbot, widget.commit_button)
    assert widget.class_label.text() == "New objects: cell (press 1-9)"
    features = objects.features
    assert dict(zip(features["index"], features["class"])) == {1: "debris", 2: "cell"}
    qtbot.keyClick(canvas(viewer), Qt.Key.Key_3)
    assert notes[-1][1].startswith("There is no class 3")

    qtbot.keyClicks(widget.ids_edit, "1")
    click(qtbot, widget.set_class_button)  # id 1 gets the current class, cell
    assert dict(zip(objects.features["index"], objects.features["class"])) == {1: "cell", 2: "cell"}

    path = tmp_path / "objects.tif"
    monkeypatch.setattr(QFileDialog, "getSaveFileName", staticmethod(lambda *a, **k: (str(path), "")))
    click(qtbot, widget.export_labels_button)
    np.testing.assert_array_equal(tifffile.imread(path), objects.data)
    rows = list(csv.reader((tmp_path / "objects.classes.csv").open()))
    assert rows == [["id", "class"], ["1", "cell"], ["2", "cell"]]
    measured = tmp_path / "measurements.csv"
    monkeypatch.setattr(QFileDialog, "getSaveFileName", staticmethod(lambda *a, **k: (str(measured), "")))
    click(qtbot, widget.measure_button)
    wait_for(qtbot, widget)
    assert [row["class"] for row in csv.DictReader(measured.open())] == ["cell", "cell"]
