"""The napari plugin as a user drives it: opened from the Plugins menu (the plugin manager), buttons
pressed with the mouse, points clicked on the canvas, keys pressed on the canvas.

Mechanics use a small random-weight checkpoint (its masks are arbitrary but deterministic, so the
preview must equal what sam_core predicts for the same prompts); quality uses the bundled ``demo`` model.
"""

from __future__ import annotations

import threading

import numpy as np
import pytest
from napari_util import click, click_canvas, drag_box, iou, needs_demo, press, wait_for

from napari_sam.image_access import ImageAccess
from napari_sam.samples import make_cells_2d
from napari_sam.session import BOXES_NAME, OBJECTS_NAME, POINTS_NAME, PREVIEW_NAME


def _predict_directly(viewer, checkpoint, points=None, labels=None, box=None, model=None):
    """What sam_core predicts for these prompts on the layer ``image`` as the plugin prepares it (at the
    plugin's precision, ``auto``)."""
    from sam_core.models.precision import PLUGIN_PRECISION
    from sam_core.predictor import Predictor

    layer = viewer.layers["image"]
    predictor = Predictor(model, checkpoint=None if checkpoint is None else str(checkpoint), precision=PLUGIN_PRECISION)
    embedding = predictor.encode(np.asarray(layer.data), preparation=ImageAccess(layer).preparation())
    return predictor.predict(embedding, points, labels, box)


def _xy(layer):
    """The points of a Points layer as (x, y) pixels of the plane."""
    return np.asarray(layer.data, np.float32)[:, [-1, -2]]


def test_manifest_declares_widget_readers_and_samples():
    from npe2 import PluginManager

    pm = PluginManager.instance()
    pm.discover()
    manifest = pm.get_manifest("sam-suite")
    contributions = manifest.contributions
    assert [w.display_name for w in contributions.widgets] == ["Segment Anything"]
    assert {s.key for s in contributions.sample_data} == {"cells_2d", "volume_3d", "time_series"}
    reader, = contributions.readers
    assert reader.accepts_directories
    assert "*" not in reader.filename_patterns  # only the formats it reads
    from napari_sam import samples

    (image, meta, kind), = samples.volume_3d_sample()
    assert image.ndim == 3 and kind == "image" and meta["scale"] == (2.0, 1.0, 1.0)
    assert samples.time_series_sample()[0][0].ndim == 3
    assert samples.cells_2d_sample()[0][0].dtype == np.uint16


def test_plugin_menu_opens_the_widget_and_the_samples(make_napari_viewer):
    from napari_sam.widget import SamWidget

    viewer = make_napari_viewer()
    viewer.open_sample("sam-suite", "volume_3d")
    assert viewer.layers["volume 3D"].data.ndim == 3
    _, widget = viewer.window.add_plugin_dock_widget("sam-suite", "Segment Anything")
    assert isinstance(widget, SamWidget)
    assert type(widget.viewer).__name__ == "PublicOnlyProxy"  # what napari gives plugins
    assert widget.image_combo.currentText() == "volume 3D"
    assert "demo" in [c.name for c in widget.choices if c is not None]
    # the panels (taller than a screen) scroll inside the dock instead of stretching napari's window
    from qtpy.QtWidgets import QScrollArea

    scroll = widget.findChild(QScrollArea)
    assert scroll is not None and scroll.widget().isAncestorOf(widget.image_combo)
    assert scroll.widget().sizeHint().height() > 1000 > widget.minimumSizeHint().height()


def test_automask_grid_and_thresholds_follow_the_chosen_model(make_widget):
    def settings():
        return widget.points_per_side_spin.value(), widget.pred_iou_spin.value(), widget.stability_spin.value()

    viewer, widget = make_widget(model="demo")
    assert settings() == (16, 0.5, 0.8)
    names = [widget.model_combo.itemText(i).split(" (")[0] for i in range(widget.model_combo.count())]
    widget.model_combo.setCurrentIndex(names.index("vit_b"))
    assert settings() == (32, 0.88, 0.95)


def test_buttons_keep_the_prompts_preview_and_layers(make_widget, qtbot, notes):
    """Issue 14.1: on the plugin's proxy viewer, every button used to delete and recreate the layers."""
    image, _ = make_cells_2d((96, 96), count=3)
    viewer, widget = make_widget(image, show=True)
    widget.points_per_side_spin.setValue(4)
    click(qtbot, widget.start_button)
    layers = {name: viewer.layers[name] for name in (POINTS_NAME, BOXES_NAME, PREVIEW_NAME, OBJECTS_NAME)}
    click_canvas(qtbot, viewer, viewer.layers["image"], (48, 40))
    wait_for(qtbot, widget)
    points = np.array(layers[POINTS_NAME].data)
    preview = np.array(layers[PREVIEW_NAME].data)
    scores = widget.candidate_label.text()
    assert len(points) == 1 and scores.startswith("candidate 1/3")
    for button in (widget.start_button, widget.compute_button, widget.auto_button, widget.finetune_button):
        click(qtbot, button)
        wait_for(qtbot, widget)
        for name, before in layers.items():
            assert viewer.layers[name] is before, (button.text(), name)
        np.testing.assert_array_equal(viewer.layers[POINTS_NAME].data, points)
        np.testing.assert_array_equal(viewer.layers[PREVIEW_NAME].data, preview)
        assert widget.candidate_label.text() == scores
    assert "Commit some objects first" in notes[-1][1]  # the fine-tune button's answer, nothing else


@needs_demo
def test_click_preview_cycle_commit_undo_with_the_keys(make_widget, qtbot):
    """The 2D workflow: click -> preview -> Shift-N -> Shift-C -> Shift-Z, on the canvas."""
    from sam_core.volume import prompts_from_mask

    image, labels = make_cells_2d((128, 128), count=4, seed=3)
    viewer, widget = make_widget(image, model="demo", show=True)
    click(qtbot, widget.start_button)
    assert viewer.layers.selection.active is viewer.layers[POINTS_NAME]
    truth = labels == 1
    (x, y), = prompts_from_mask(truth)[0]
    click_canvas(qtbot, viewer, viewer.layers["image"], (y, x))
    wait_for(qtbot, widget)
    points = viewer.layers[POINTS_NAME]
    assert np.abs(_xy(points) - [[x, y]]).max() <= 1.0
    expected = _predict_directly(viewer, None, points=_xy(points), labels=np.array([1]), model="demo")
    preview = viewer.layers[PREVIEW_NAME]
    np.testing.assert_array_equal(preview.data > 0, expected.masks[0])
    assert widget.candidate_label.text().startswith("candidate 1/3")
    for shown in (1, 2):
        press(qtbot, viewer, "n")
        np.testing.assert_array_equal(preview.data > 0, expected.masks[shown])
        assert widget.candidate_label.text().startswith(f"candidate {shown + 1}/3")
        assert f"[{expected.scores[shown]:.3f}]" in widget.candidate_label.text()
    click(qtbot, widget.next_button)  # the button cycles back to the first candidate
    best = int(np.argmax([iou(m, truth) for m in expected.masks]))
    for _ in range(best):
        press(qtbot, viewer, "n")
    assert iou(preview.data > 0, truth) >= 0.8
    mask = preview.data > 0
    press(qtbot, viewer, "c")
    objects = viewer.layers[OBJECTS_NAME]
    np.testing.assert_array_equal(objects.data == 1, mask)
    assert len(points.data) == 0 and not preview.data.any()
    assert widget.candidate_label.text() == "candidates: none"
    press(qtbot, viewer, "z")
    assert not objects.data.any()


def test_shift_t_and_the_button_toggle_new_points_and_say_so(make_widget, qtbot):
    """Issue 14.5: Shift-T did not update the button's text."""
    image, _ = make_cells_2d((96, 96), count=3)
    viewer, widget = make_widget(image, show=True)
    click(qtbot, widget.start_button)
    press(qtbot, viewer, "t")
    assert widget.label_button.text() == "New points: negative (Shift-T)"
    click_canvas(qtbot, viewer, viewer.layers["image"], (30, 30))
    click(qtbot, widget.label_button)
    assert widget.label_button.text() == "New points: positive (Shift-T)"
    click_canvas(qtbot, viewer, viewer.layers["image"], (60, 60))
    wait_for(qtbot, widget)
    assert list(viewer.layers[POINTS_NAME].features["label"]) == ["negative", "positive"]
    assert tuple(viewer.layers[POINTS_NAME].face_color[0][:3]) == (1.0, 0.0, 0.0)


def test_box_and_negative_point_give_the_predictors_mask_with_scale_and_translate(make_widget, qtbot,
                                                                                  small_vit_checkpoint):
    image, _ = make_cells_2d((128, 128), count=4)
    viewer, widget = make_widget(image, show=True, scale=(0.5, 0.25), translate=(10.0, -3.0))
    click(qtbot, widget.start_button)
    for name in (POINTS_NAME, BOXES_NAME, PREVIEW_NAME, OBJECTS_NAME):
        assert tuple(viewer.layers[name].scale) == (0.5, 0.25)
        assert tuple(viewer.layers[name].translate) == (10.0, -3.0)
    drag_box(qtbot, viewer, viewer.layers["image"], (20, 30), (70, 90))
    box, = viewer.layers[BOXES_NAME].data
    assert np.abs(box[:, -2:].min(axis=0) - [20, 30]).max() <= 1 and np.abs(box[:, -2:].max(axis=0) - [70, 90]).max() <= 1
    viewer.layers.selection.active = viewer.layers[POINTS_NAME]
    click_canvas(qtbot, viewer, viewer.layers["image"], (45, 60))
    click(qtbot, widget.label_button)
    click_canvas(qtbot, viewer, viewer.layers["image"], (50, 62))  # changes in a row: the last result shows
    wait_for(qtbot, widget)
    points = viewer.layers[POINTS_NAME]
    assert list(points.features["label"]) == ["positive", "negative"]
    (r0, c0), (r1, c1) = box.min(axis=0), box.max(axis=0)
    expected = _predict_directly(viewer, small_vit_checkpoint, points=_xy(points), labels=np.array([1, 0]),
                                 box=np.array([c0, r0, c1, r1], np.float32))
    assert widget.candidate_label.text().startswith("candidate 1/1")
    np.testing.assert_array_equal(viewer.layers[PREVIEW_NAME].data > 0, expected.masks[0])


def test_commit_never_overwrites_unless_asked_and_undo(make_widget, qtbot):
    image, _ = make_cells_2d((128, 128), count=4)
    viewer, widget = make_widget(image)
    click(qtbot, widget.start_button)
    preview, objects = viewer.layers[PREVIEW_NAME], viewer.layers[OBJECTS_NAME]
    first = np.zeros((128, 128), bool)
    first[10:60, 10:60] = True
    second = np.zeros((128, 128), bool)
    second[40:100, 40:100] = True
    preview.data[:] = first  # as if decoded
    click(qtbot, widget.commit_button)
    preview.data[:] = second
    click(qtbot, widget.commit_button)
    assert (objects.data[first] == 1).all()  # object 1 kept where they overlap
    assert (objects.data[second & ~first] == 2).all()
    click(qtbot, widget.undo_button)
    np.testing.assert_array_equal(objects.data, first.astype(np.int32))
    click(qtbot, widget.overwrite_check)
    assert widget.overwrite_check.isChecked()
    preview.data[:] = second
    click(qtbot, widget.commit_button)
    assert (objects.data[second] == 2).all()
    click(qtbot, widget.undo_button)
    click(qtbot, widget.undo_button)
    assert not objects.data.any()


def test_restarting_keeps_committed_objects_and_forgets_the_candidates(make_widget, qtbot):
    """Issue 14.5: the candidate label kept stale scores after a reset."""
    image, labels = make_cells_2d((96, 96), count=3)
    viewer, widget = make_widget(image, show=True)
    click(qtbot, widget.start_button)
    viewer.layers[PREVIEW_NAME].data[:] = labels == 1
    click(qtbot, widget.commit_button)
    click_canvas(qtbot, viewer, viewer.layers["image"], (48, 48))
    wait_for(qtbot, widget)
    assert widget.candidate_label.text().startswith("candidate 1/3")
    click(qtbot, widget.start_button)  # same image (e.g. after choosing another model): all stays
    assert (viewer.layers[OBJECTS_NAME].data == 1).sum() == (labels == 1).sum()
    assert widget.candidate_label.text().startswith("candidate 1/3")
    viewer.add_image(np.zeros((4, 32, 32), np.uint8), name="other")
    widget.image_combo.setCurrentText("other")
    click(qtbot, widget.start_button)
    assert widget.candidate_label.text() == "candidates: none"
    assert viewer.layers[OBJECTS_NAME].data.shape == (4, 32, 32)
    kept = [layer for layer in viewer.layers if layer.name.startswith(OBJECTS_NAME + " (previous")]
    assert len(kept) == 1 and (kept[0].data == 1).sum() == (labels == 1).sum()


def test_second_compute_runs_no_encoder_also_after_restart(make_widget, qtbot, monkeypatch, notes):
    import sam_core.runtime

    kept = []
    monkeypatch.setattr(sam_core.runtime, "keep_freed_memory", lambda: kept.append(True) or True)
    volume = np.stack([make_cells_2d((96, 96), count=3, seed=s)[0] for s in range(4)])
    viewer, widget = make_widget(volume)
    click(qtbot, widget.all_slices_check)
    for _ in range(2):
        click(qtbot, widget.compute_button)
        wait_for(qtbot, widget)
    ready = [message for _, message in notes if message.startswith("Embeddings ready")]
    assert ready == ["Embeddings ready (4 computed, 0 from the cache).", "Embeddings ready (0 computed, 4 from the cache)."]
    assert widget.progress_bar.format() == "done"
    assert kept  # the workers encode in napari's process, which keeps freed memory from then on
    # A new session (as after a restart) finds the embeddings on disk.
    viewer2, widget2 = make_widget(volume)
    click(qtbot, widget2.all_slices_check)
    click(qtbot, widget2.compute_button)
    wait_for(qtbot, widget2)
    assert notes[-1][1] == "Embeddings ready (0 computed, 4 from the cache)."


def test_cancel_stops_between_slices_says_so_and_a_rerun_resumes(make_widget, qtbot, notes, monkeypatch):
    """Issue 14.5: after Cancel the bar read "40/40 slice (1,)" as if done. Synchronised by events:
    the worker waits after its second slice until the test has pressed Cancel."""
    from sam_core.predictor import Predictor

    encode = Predictor.encode
    encoded, reached, go = [], threading.Event(), threading.Event()

    def gated(self, *args, **kwargs):
        result = encode(self, *args, **kwargs)
        encoded.append(1)
        if len(encoded) == 2:
            reached.set()
            assert go.wait(60)
        return result

    monkeypatch.setattr(Predictor, "encode", gated)
    volume = np.stack([make_cells_2d((96, 96), count=3, seed=s)[0] for s in range(5)])
    viewer, widget = make_widget(volume)
    click(qtbot, widget.all_slices_check)
    click(qtbot, widget.compute_button)
    qtbot.waitUntil(reached.is_set, timeout=60000)
    qtbot.waitUntil(lambda: widget.progress_bar.value() == 1, timeout=60000)
    assert widget.progress_bar.format() == "slice 0 (%p%)"  # no Python tuples
    click(qtbot, widget.cancel_button)
    go.set()
    wait_for(qtbot, widget)
    assert ("info", "Cancelled.") in notes
    assert widget.progress_bar.format() == "cancelled" and widget.progress_bar.value() == 0
    click(qtbot, widget.compute_button)
    wait_for(qtbot, widget)
    assert notes[-1][1] == "Embeddings ready (3 computed, 2 from the cache)."  # only the slices not done
    assert widget.progress_bar.format() == "done"


def test_local_checkpoint_file_opens_one_dialog(make_widget, choose_file, small_vit_checkpoint, qtbot):
    """Issue 14.5: choosing "local checkpoint file…" opened the file dialog twice."""
    viewer, widget = make_widget(model="demo")
    calls = choose_file(small_vit_checkpoint)
    widget.model_combo.setCurrentIndex(widget.model_combo.count() - 1)
    assert len(calls) == 1
    assert widget.model_combo.currentText() == f"file: {small_vit_checkpoint.name}"
    assert widget.model_combo.itemText(widget.model_combo.count() - 1) == "local checkpoint file…"


def test_corrupt_checkpoint_shows_sam_cores_message(make_widget, choose_file, qtbot, notes, tmp_path):
    """Issue 14.5: the plugin shows sam_core's one-line message for a corrupt checkpoint."""
    from sam_core.errors import SamError
    from sam_core.predictor import Predictor

    corrupt = tmp_path / "corrupt.pth"
    corrupt.write_bytes(np.random.default_rng(0).bytes(4096))
    with pytest.raises(SamError) as raised:
        Predictor(None, checkpoint=str(corrupt))
    viewer, widget = make_widget(make_cells_2d((64, 64), count=2)[0], model="demo")
    choose_file(corrupt)
    widget.model_combo.setCurrentIndex(widget.model_combo.count() - 1)
    click(qtbot, widget.compute_button)
    wait_for(qtbot, widget)
    assert notes[-1] == ("error", str(raised.value))
    assert "corrupt.pth" in notes[-1][1] and "weights_only" not in notes[-1][1]  # never advise weights_only=False
    assert widget.progress_bar.format().startswith("failed")


def test_bad_situations_notify_and_raise_nothing(make_widget, qtbot, notes, tmp_path, choose_file):
    viewer, widget = make_widget(None)
    click(qtbot, widget.start_button)
    click(qtbot, widget.compute_button)
    assert "No image layer" in notes[-1][1]

    viewer.add_image(np.zeros((2, 2, 3, 16, 16), np.float32), name="five")
    widget.image_combo.setCurrentText("five")
    click(qtbot, widget.start_button)
    assert "supported are 2D" in notes[-1][1]

    viewer.add_image(np.full((32, 32), 7, np.uint8), name="flat")
    widget.image_combo.setCurrentText("flat")
    click(qtbot, widget.start_button)
    viewer.layers[POINTS_NAME].add([10, 10])
    wait_for(qtbot, widget)
    assert "empty" in notes[-1][1]

    choose_file(tmp_path / "missing.pth")
    widget.model_combo.setCurrentIndex(widget.model_combo.count() - 1)
    viewer.add_image(make_cells_2d((64, 64), count=2)[0], name="cells")
    widget.image_combo.setCurrentText("cells")
    click(qtbot, widget.compute_button)
    assert "missing.pth" in notes[-1][1] and "does not exist" in notes[-1][1]
    assert all(severity == "error" for severity, _ in notes)


def test_channels_contrast_and_ct_window(make_widget, qtbot, notes):
    from napari_sam.windows import window_range

    channels = np.stack([make_cells_2d((64, 64), count=2, seed=s, bit16=True)[0] for s in range(3)])
    viewer, widget = make_widget(channels)  # (C, Y, X) shown as a stack by napari
    widget.channel_axis_spin.setValue(0)
    widget.channels_edit.setText("1")
    click(qtbot, widget.start_button)
    access = widget.session.access
    assert access.spatial_shape == (64, 64) and access.stack_shape == ()
    assert access.plane(()).shape == (64, 64, 3)
    assert viewer.layers[POINTS_NAME].ndim == 2
    layer = viewer.layers["image"]
    layer.contrast_limits = (100.0, 3000.0)
    prep = access.preparation()
    assert prep.value_range == (100.0, 3000.0) and prep.channels == (1,)
    widget.window_combo.setCurrentText("CT bone")
    assert tuple(layer.contrast_limits) == pytest.approx(window_range("bone"))
    assert widget.session.access.preparation().value_range == pytest.approx(window_range("bone"))
    widget.channels_edit.setText("0,1")
    click(qtbot, widget.start_button)
    assert "Channels: give one index or three" in notes[-1][1]


def test_rgb_layer_is_seen_as_rgb(make_widget, qtbot, small_vit_checkpoint):
    gray, _ = make_cells_2d((96, 96), count=3)
    rgb = np.stack([gray, gray // 2, 255 - gray], axis=-1)
    viewer, widget = make_widget(rgb, show=True)
    assert viewer.layers["image"].rgb
    click(qtbot, widget.start_button)
    assert viewer.layers[POINTS_NAME].ndim == 2
    click_canvas(qtbot, viewer, viewer.layers["image"], (48, 30))
    wait_for(qtbot, widget)
    points = viewer.layers[POINTS_NAME]
    expected = _predict_directly(viewer, small_vit_checkpoint, points=_xy(points), labels=np.array([1]))
    np.testing.assert_array_equal(viewer.layers[PREVIEW_NAME].data > 0, expected.masks[0])


def test_dask_layers_are_read_slice_by_slice(make_widget, qtbot):
    da = pytest.importorskip("dask.array")
    volume = np.stack([make_cells_2d((64, 64), count=2, seed=s)[0] for s in range(6)])
    read = []

    def load(block, block_info=None):
        read.append(block_info[0]["chunk-location"][0])
        return block

    lazy = da.from_array(volume, chunks=(1, 64, 64)).map_blocks(load, dtype=volume.dtype)
    viewer, widget = make_widget(lazy, contrast_limits=(0, 255))
    viewer.dims.set_point(0, 3)
    click(qtbot, widget.start_button)
    read.clear()
    click(qtbot, widget.compute_button)
    wait_for(qtbot, widget)
    assert set(read) == {3}


def test_finetune_button_trains_and_adds_a_model(make_widget, qtbot, tmp_path, notes):
    """Issue 14.2: the button handed Qt's ``checked`` (False) to ``finetune(output=...)``."""
    image, labels = make_cells_2d((128, 128), count=4)
    viewer, widget = make_widget(image, show=True)
    click(qtbot, widget.start_button)
    click(qtbot, widget.finetune_button)
    assert "Commit some objects first" in notes[-1][1]
    for object_id in (1, 2, 3):
        viewer.layers[PREVIEW_NAME].data[:] = labels == object_id  # as if segmented
        click(qtbot, widget.commit_button)
    widget.epochs_spin.setValue(1)
    count = widget.model_combo.count()
    click(qtbot, widget.finetune_button)
    wait_for(qtbot, widget, timeout=120000)
    written = list((tmp_path / "finetuned").glob("finetuned-*.pt"))
    assert len(written) == 1
    assert widget.model_combo.count() == count + 1
    assert widget.model_combo.currentText() == f"fine-tuned: {written[0].name}"
    assert any("it is now in the model list" in message for _, message in notes)
    click(qtbot, widget.start_button)  # the fine-tuned model loads and segments
    click_canvas(qtbot, viewer, viewer.layers["image"], (64, 64))
    wait_for(qtbot, widget)
    assert widget.candidate_label.text().startswith("candidate 1/3")
    assert [message for severity, message in notes if severity == "error"] == [
        "Commit some objects first: fine-tuning trains on the committed annotations."]


@needs_demo
def test_demo_preview_segments_known_objects(make_widget, qtbot):
    from sam_core.volume import prompts_from_mask

    image, labels = make_cells_2d((256, 256), count=8, seed=3)
    viewer, widget = make_widget(image, model="demo", show=True)
    click(qtbot, widget.start_button)
    scores = []
    for object_id in (1, 2, 3, 4):
        truth = labels == object_id
        if object_id <= 2:  # a box around the object
            rows, cols = np.nonzero(truth)
            drag_box(qtbot, viewer, viewer.layers["image"], (rows.min() - 2, cols.min() - 2),
                     (rows.max() + 2, cols.max() + 2))
        else:  # one click at the object's centre
            (x, y), = prompts_from_mask(truth)[0]
            viewer.layers.selection.active = viewer.layers[POINTS_NAME]
            click_canvas(qtbot, viewer, viewer.layers["image"], (y, x))
        wait_for(qtbot, widget)
        scores.append(iou(viewer.layers[PREVIEW_NAME].data > 0, truth))
        click(qtbot, widget.commit_button)
    assert min(scores) >= 0.8, scores
    assert set(np.unique(viewer.layers[OBJECTS_NAME].data)) == {0, 1, 2, 3, 4}
