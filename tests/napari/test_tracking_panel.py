"""Tracking in a time-lapse, driven as a user does (plugin manager, buttons, canvas clicks): objects
tracked with persistent ids, a division marked, the tracks shown, exported in the Cell Tracking
Challenge format and as CSV, and CTC ground truth imported back for correction."""

from __future__ import annotations

import csv

import numpy as np
import pytest
from napari_util import click, click_canvas, iou, needs_demo, wait_for

from helpers.timelapse import centres, dividing_disks
from napari_sam.session import OBJECTS_NAME
from napari_sam.tracking import TRACKS_NAME, is_tracked, parents_of


def ctc_rules(folder):
    """Read a CTC folder and check the format's rules independently of sam_core: masks named
    man_track000.tif ... (uint16), man_track.txt lines 'L B E P', every track on frames B..E and only
    there, parents listed and ending before their children begin, every mask id listed.
    Returns (masks (T, Y, X), {L: (B, E, P)})."""
    import tifffile

    files = sorted(folder.glob("man_track*.tif"))
    masks = np.stack([tifffile.imread(f) for f in files])
    assert [f.name for f in files] == [f"man_track{t:03d}.tif" for t in range(len(files))]
    assert masks.dtype == np.uint16
    lines = (folder / "man_track.txt").read_text().splitlines()
    table = {}
    for line in lines:
        label, begin, end, parent = (int(v) for v in line.split())
        assert label > 0 and label not in table
        table[label] = (begin, end, parent)
    for label, (begin, end, parent) in table.items():
        on = [t for t in range(len(masks)) if (masks[t] == label).any()]
        assert on == list(range(begin, end + 1)), (label, on, begin, end)
        assert parent == 0 or (parent in table and table[parent][1] < begin), (label, parent)
    assert set(np.unique(masks).tolist()) - {0} == set(table)
    return masks, table


def _dialogs(monkeypatch, folder=None, save=None):
    """The plugin's next folder dialog answers ``folder``, its next save dialog ``save``."""
    from qtpy.QtWidgets import QFileDialog

    monkeypatch.setattr(QFileDialog, "getExistingDirectory", staticmethod(lambda *a, **k: str(folder)))
    monkeypatch.setattr(QFileDialog, "getSaveFileName", staticmethod(lambda *a, **k: (str(save), "")))


@pytest.mark.slow  # about 45 s: demo tracks three disks through six frames, the daughters, then again
@needs_demo
def test_demo_track_divide_export_and_reimport_a_time_lapse(make_widget, qtbot, notes, tmp_path, monkeypatch):
    image, truth, truth_parents = dividing_disks()
    viewer, widget = make_widget(image, model="demo", show=True)
    panel = widget.tracking_panel
    click(qtbot, widget.start_button)
    click(qtbot, widget.each_check)  # one object per prompt: three clicks, three objects
    viewer.dims.set_point(0, 0)  # the first frame (napari opens on the middle one)
    for (row, col), _ in centres(0).values():
        click_canvas(qtbot, viewer, viewer.layers["image"], (row, col))
    wait_for(qtbot, widget)
    click(qtbot, widget.commit_button)
    objects = viewer.layers[OBJECTS_NAME]
    for i in (1, 2, 3):
        assert iou(objects.data[0] == i, truth[0] == i) >= 0.8, i

    click(qtbot, panel.track_button)
    wait_for(qtbot, widget, timeout=180000)
    assert notes[-1][1] == "3 object(s) tracked from frame 0 to frame 5."
    for t in range(6):
        for i in (1, 2):
            assert iou(objects.data[t] == i, truth[t] == i) >= 0.8, (t, i)
    for t in range(3):
        assert iou(objects.data[t] == 3, truth[t] == 3) >= 0.8, t

    viewer.dims.set_point(0, 3)  # object 3 divides on frame 3: one click in each child
    widget.ids_edit.setText("3")
    for label in (4, 5):
        click_canvas(qtbot, viewer, viewer.layers["image"], centres(3)[label][0])
    wait_for(qtbot, widget)
    click(qtbot, panel.divide_button)
    wait_for(qtbot, widget, timeout=180000)
    assert notes[-1][1] == "Object 3 divides on frame 3 into objects 4 and 5."
    data = np.asarray(objects.data)
    assert (data[:3] == 3).any(axis=(1, 2)).all() and not (data[3:] == 3).any()
    for t in range(3, 6):
        for i in (4, 5):
            assert iou(data[t] == i, truth[t] == i) >= 0.7, (t, i)
    assert parents_of(objects) == truth_parents
    assert len(viewer.layers["SAM points"].data) == 0  # the division's clicks are used up
    tracks = viewer.layers[TRACKS_NAME]
    assert tracks.graph == {4: [3], 5: [3]}
    assert len(tracks.data) == 6 * 2 + 3 + 3 * 2  # one centroid per object and frame

    viewer.dims.set_point(0, 0)  # tracking again from the first frame keeps the division
    click(qtbot, panel.track_button)
    wait_for(qtbot, widget, timeout=180000)
    data = np.asarray(objects.data)
    assert not (data[3:] == 3).any() and parents_of(objects) == truth_parents
    for t in range(3, 6):
        for i in (4, 5):
            assert iou(data[t] == i, truth[t] == i) >= 0.7, (t, i)

    _dialogs(monkeypatch, tmp_path / "01_GT" / "TRA", tmp_path / "tracks.csv")
    click(qtbot, panel.export_ctc_button)
    wait_for(qtbot, widget)
    masks, table = ctc_rules(tmp_path / "01_GT" / "TRA")
    assert table == {1: (0, 5, 0), 2: (0, 5, 0), 3: (0, 2, 0), 4: (3, 5, 3), 5: (3, 5, 3)}
    np.testing.assert_array_equal(masks, data)

    click(qtbot, panel.export_csv_button)
    wait_for(qtbot, widget)
    with open(tmp_path / "tracks.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0]) == ["frame", "id", "parent", "centroid-y", "centroid-x", "area"]
    assert len(rows) == 21
    assert {(r["frame"], r["id"], r["parent"]) for r in rows if r["id"] in ("4", "5")} == {
        (str(t), str(i), "3") for t in range(3, 6) for i in (4, 5)}
    first = next(r for r in rows if r["frame"] == "4" and r["id"] == "1")
    (row, col), = np.argwhere(data[4] == 1).mean(axis=0)[None]
    assert float(first["centroid-y"]) == pytest.approx(row) and float(first["centroid-x"]) == pytest.approx(col)
    assert int(float(first["area"])) == (data[4] == 1).sum()

    viewer2, widget2 = make_widget(image, model="demo")  # a new viewer: the ground truth comes back
    click(qtbot, widget2.start_button)
    click(qtbot, widget2.tracking_panel.import_ctc_button)
    wait_for(qtbot, widget2)
    imported = viewer2.layers[OBJECTS_NAME]
    np.testing.assert_array_equal(imported.data, data)
    assert parents_of(imported) == truth_parents
    assert viewer2.layers[TRACKS_NAME].graph == {4: [3], 5: [3]}
    assert notes[-1][1].startswith("Imported 5 tracks on 6 frames from ")


def test_tracking_says_what_is_missing(make_widget, qtbot, notes, tmp_path, monkeypatch):
    image, truth, _ = dividing_disks(frames=3, shape=(48, 48))
    viewer, widget = make_widget(image)
    panel = widget.tracking_panel
    viewer.dims.set_point(0, 0)
    click(qtbot, panel.track_button)
    assert notes[-1] == ("error", "No committed object on frame 0: segment the objects on this frame, commit them, "
                                  "then track.")
    click(qtbot, panel.tracks_button)
    assert notes[-1] == ("info", "No objects to draw: commit and track some objects first.")
    viewer.layers[OBJECTS_NAME].data[0] = truth[0]  # as if committed
    click(qtbot, panel.track_button)
    click(qtbot, widget.cancel_button)  # the model is still loading: no frame is tracked
    wait_for(qtbot, widget)
    assert ("info", "Cancelled.") in notes and widget.progress_bar.format() == "cancelled"
    assert not np.asarray(viewer.layers[OBJECTS_NAME].data[1:]).any()
    viewer.dims.set_point(0, 1)
    widget.ids_edit.setText("1")
    click(qtbot, panel.divide_button)
    assert notes[-1] == ("error", "Click one point inside each of the two children of object 1 on this frame "
                                  "(frame 1, where it divides), then press 'Mark division' (0 given).")
    _dialogs(monkeypatch, tmp_path / "empty")
    (tmp_path / "empty").mkdir()
    click(qtbot, panel.import_ctc_button)
    wait_for(qtbot, widget)
    assert notes[-1][0] == "error" and "holds no CTC masks" in notes[-1][1]
    viewer2, widget2 = make_widget(truth[0].astype(np.uint8) * 100)
    for button in (widget2.tracking_panel.track_button, widget2.tracking_panel.tracks_button):
        click(qtbot, button)
        assert notes[-1] == ("error", "Tracking needs a time-lapse with axes (t, y, x): this image has 2 "
                                      "non-channel axes (48, 48).")


@pytest.mark.slow  # builds Meta's model to write the checkpoint, then runs SAM 2.1 twice
def test_sam2_tracking_uses_the_memory(make_widget, qtbot, notes, choose_file, tmp_path):
    from qtpy.QtWidgets import QApplication

    from helpers.sam2_checkpoints import SMALL_SAM2, spread_object_scores, write_official_sam2_checkpoint
    from sam_core.predictor import Predictor
    from sam_core.tracking import replace_tracks, track_objects

    path = spread_object_scores(write_official_sam2_checkpoint(SMALL_SAM2, tmp_path / "small_sam2.pt", seed=5))
    image, truth, _ = dividing_disks(frames=3, shape=(64, 72))
    viewer, widget = make_widget(image)
    choose_file(path)  # a SAM 2.1 checkpoint, chosen as a user does
    names = [widget.model_combo.itemText(i) for i in range(widget.model_combo.count())]
    widget.model_combo.setCurrentIndex(names.index("local checkpoint file…"))
    QApplication.processEvents()
    click(qtbot, widget.start_button)
    viewer.dims.set_point(0, 0)
    objects = viewer.layers[OBJECTS_NAME]
    objects.data[0] = np.where(truth[0] <= 2, truth[0], 0)  # objects 1 and 2 as if committed
    click(qtbot, widget.tracking_panel.track_button)
    wait_for(qtbot, widget, timeout=180000)
    assert notes[-1][1] == "2 object(s) tracked from frame 0 to frame 2."
    predictor = Predictor(None, checkpoint=str(path))
    start = np.where(truth[0] <= 2, truth[0], 0)
    expected = track_objects(predictor, image, 0, {1: start == 1, 2: start == 2},
                             preparation=widget.session.access.preparation())
    np.testing.assert_array_equal(objects.data, replace_tracks(np.stack([start] + [np.zeros_like(start)] * 2),
                                                               expected, 0))


def test_import_ctc_and_undo_take_the_lineage_along(make_widget, qtbot, notes, tmp_path, monkeypatch):
    from sam_core.tracking import Lineage, write_ctc

    image, truth, parents = dividing_disks(frames=5, divide_at=2)
    broken = truth.copy()
    broken[3][broken[3] == 1] = 0  # object 1 is lost on frame 3: a gap the CTC rules forbid
    write_ctc(tmp_path / "gt", truth, Lineage.from_labels(truth, parents))
    write_ctc(tmp_path / "broken", truth, Lineage.from_labels(truth, parents))
    import tifffile

    tifffile.imwrite(tmp_path / "broken" / "man_track003.tif", broken[3].astype(np.uint16))
    viewer, widget = make_widget(image)
    click(qtbot, widget.start_button)
    objects = viewer.layers[OBJECTS_NAME]
    _dialogs(monkeypatch, tmp_path / "gt")
    click(qtbot, widget.tracking_panel.import_ctc_button)
    wait_for(qtbot, widget)
    np.testing.assert_array_equal(objects.data, truth)
    assert parents_of(objects) == parents and viewer.layers[TRACKS_NAME].graph == {4: [3], 5: [3]}
    measured = tmp_path / "measurements.csv"
    _dialogs(monkeypatch, save=measured)
    click(qtbot, widget.measure_button)  # tracked objects are measured with their track id
    wait_for(qtbot, widget)
    rows = list(csv.DictReader(measured.open()))
    assert [(row["label"], row["track_id"]) for row in rows] == [(str(i), str(i)) for i in range(1, 6)]
    click(qtbot, widget.undo_button)  # the import is one edit: pixels, lineage and tracks go back
    assert not np.asarray(objects.data).any() and parents_of(objects) == {} and TRACKS_NAME not in viewer.layers
    assert not is_tracked(objects)

    _dialogs(monkeypatch, tmp_path / "broken")
    click(qtbot, widget.tracking_panel.import_ctc_button)
    wait_for(qtbot, widget)
    np.testing.assert_array_equal(objects.data, broken)  # imported for correction ...
    assert notes[-1] == ("warning", "The ground truth breaks 1 CTC rule(s), e.g. track 1 should be on frames 0..4 "
                                    "and only there, but is on frames 0..2, 4; correct the objects and export again.")
    _dialogs(monkeypatch, tmp_path / "fixed")
    click(qtbot, widget.tracking_panel.export_ctc_button)  # ... and exported valid: 1 continues as a new id
    wait_for(qtbot, widget)
    masks, table = ctc_rules(tmp_path / "fixed")
    assert table[6] == (4, 4, 1) and table[1] == (0, 2, 0) and table[4] == (2, 4, 3)
    assert "Objects that leave and come back continue under new ids (CTC): 1 -> 1, 6." in notes[-1][1]
