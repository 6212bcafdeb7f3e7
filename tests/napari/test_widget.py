"""The napari plugin with a real viewer: prompts -> preview, candidates, commit/undo, cache, bad situations.

Mechanics use a small random-weight checkpoint (its masks are arbitrary but deterministic, so the
preview must equal what sam_core predicts for the same prompts); quality uses the bundled ``demo`` model.
"""

from __future__ import annotations

import numpy as np
import pytest
from napari_util import iou, needs_demo, rectangle, wait_for

from napari_sam.samples import make_cells_2d
from napari_sam.session import BOXES_NAME, OBJECTS_NAME, POINTS_NAME, PREVIEW_NAME


def _predict_directly(session, image, points=None, labels=None, box=None):
    predictor = session.predictor()
    embedding = predictor.encode(image, preparation=session.access.preparation())
    return predictor.predict(embedding, points, labels, box)


def test_manifest_declares_widget_readers_and_samples():
    from npe2 import PluginManager

    pm = PluginManager.instance()
    pm.discover()
    manifest = pm.get_manifest("sam-suite")
    contributions = manifest.contributions
    assert [w.display_name for w in contributions.widgets] == ["Segment Anything"]
    assert {s.key for s in contributions.sample_data} == {"cells_2d", "volume_3d", "time_series"}
    assert contributions.readers[0].accepts_directories
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
    assert widget.image_combo.currentText() == "volume 3D"
    assert "demo" in [c.name for c in widget.choices if c is not None]


def test_automask_grid_and_thresholds_follow_the_chosen_model(make_widget):
    def settings():
        return widget.points_per_side_spin.value(), widget.pred_iou_spin.value(), widget.stability_spin.value()

    viewer, widget = make_widget(model="demo")
    assert settings() == (16, 0.5, 0.8)
    widget.model_combo.setCurrentIndex([c.name if c else None for c in widget.choices].index("vit_b"))
    assert settings() == (32, 0.88, 0.95)


def test_points_give_the_predictors_mask_with_scale_and_translate(make_widget, qtbot):
    image, _ = make_cells_2d((128, 128), count=4)
    viewer, widget = make_widget(image, scale=(0.5, 0.25), translate=(10.0, -3.0))
    assert widget.start()
    session = widget.session
    for name in (POINTS_NAME, BOXES_NAME, PREVIEW_NAME, OBJECTS_NAME):
        assert tuple(viewer.layers[name].scale) == (0.5, 0.25)
        assert tuple(viewer.layers[name].translate) == (10.0, -3.0)
    session.points_layer.add([40, 90])  # (row, col) in data coordinates
    wait_for(qtbot, session)
    expected = _predict_directly(session, image, points=np.array([[90.0, 40.0]]), labels=np.array([1]))
    assert len(session.candidates.scores) == 3
    np.testing.assert_array_equal(session.preview_layer.data > 0, expected.masks[0])
    np.testing.assert_allclose(session.candidates.scores, expected.scores, atol=1e-4)


def test_box_and_negative_point_and_newest_request_wins(make_widget, qtbot):
    image, _ = make_cells_2d((128, 128), count=4)
    viewer, widget = make_widget(image)
    widget.start()
    session = widget.session
    session.boxes_layer.add_rectangles(np.array([[20, 30], [70, 90]]))
    session.points_layer.add([45, 60])
    assert session.toggle_label() == "negative"
    session.points_layer.add([50, 62])  # three changes in a row: only the last result may show
    wait_for(qtbot, session)
    assert list(session.points_layer.features["label"]) == ["positive", "negative"]
    assert tuple(session.points_layer.face_color[1][:3]) == (1.0, 0.0, 0.0)
    expected = _predict_directly(
        session, image, points=np.array([[60.0, 45.0], [62.0, 50.0]]), labels=np.array([1, 0]),
        box=np.array([30.0, 20.0, 90.0, 70.0]),
    )
    assert len(session.candidates.scores) == 1
    np.testing.assert_array_equal(session.preview_layer.data > 0, expected.masks[0])


def test_candidate_cycling_commit_never_overwrites_and_undo(make_widget, qtbot):
    image, _ = make_cells_2d((128, 128), count=4)
    viewer, widget = make_widget(image)
    widget.start()
    session = widget.session
    session.points_layer.add([64, 64])
    wait_for(qtbot, session)
    masks, scores = session.candidates.masks, session.candidates.scores
    assert session.next_candidate() == pytest.approx(float(scores[1]))
    np.testing.assert_array_equal(session.preview_layer.data > 0, masks[1])
    assert "[" in widget.candidate_label.text() and "2/3" in widget.candidate_label.text()
    # The key bound on the viewer does the same, also while the points layer is active.
    from qtpy.QtCore import Qt

    assert viewer.layers.selection.active is session.points_layer
    qtbot.keyClick(viewer.window._qt_viewer.canvas.native, Qt.Key.Key_N, Qt.KeyboardModifier.ShiftModifier)
    np.testing.assert_array_equal(session.preview_layer.data > 0, masks[2])

    first = np.zeros((128, 128), bool)
    first[10:60, 10:60] = True
    session.preview_layer.data[:] = first
    assert session.commit() == 1
    assert len(session.points_layer.data) == 0 and not session.preview_layer.data.any()
    second = np.zeros((128, 128), bool)
    second[40:100, 40:100] = True
    session.preview_layer.data[:] = second
    assert session.commit() == 2
    objects = session.objects_layer.data
    assert (objects[first] == 1).all()  # object 1 kept where they overlap
    assert (objects[second & ~first] == 2).all()
    assert session.undo() == 2
    np.testing.assert_array_equal(session.objects_layer.data, first.astype(np.int32))
    session.overwrite = True
    session.preview_layer.data[:] = second
    assert session.commit() == 2
    assert (session.objects_layer.data[second] == 2).all()
    assert session.undo() == 2 and session.undo() == 1
    assert not session.objects_layer.data.any()


def test_restarting_keeps_committed_objects(make_widget, qtbot):
    image, labels = make_cells_2d((96, 96), count=3)
    viewer, widget = make_widget(image)
    widget.start()
    widget.session.preview_layer.data[:] = labels == 1
    widget.session.commit()
    assert widget.start()  # same image (e.g. after choosing another model): the objects stay
    assert (viewer.layers[OBJECTS_NAME].data == 1).sum() == (labels == 1).sum()
    viewer.add_image(np.zeros((4, 32, 32), np.uint8), name="other")
    widget.image_combo.setCurrentText("other")
    assert widget.start()
    assert viewer.layers[OBJECTS_NAME].data.shape == (4, 32, 32)
    kept = [layer for layer in viewer.layers if layer.name.startswith(OBJECTS_NAME + " (previous")]
    assert len(kept) == 1 and (kept[0].data == 1).sum() == (labels == 1).sum()


def test_second_compute_runs_no_encoder_also_after_restart(make_widget, qtbot, monkeypatch):
    import sam_core.runtime

    kept = []
    monkeypatch.setattr(sam_core.runtime, "keep_freed_memory", lambda: kept.append(True) or True)
    volume = np.stack([make_cells_2d((96, 96), count=3, seed=s)[0] for s in range(4)])
    viewer, widget = make_widget(volume)
    widget.start()
    runs = []
    widget.all_slices_check.setChecked(True)
    widget.session.compute_embeddings(True, on_done=runs.append)
    wait_for(qtbot, widget.session)
    widget.session.compute_embeddings(True, on_done=runs.append)
    wait_for(qtbot, widget.session)
    assert runs == [4, 0]
    assert kept  # the workers encode in napari's process, which keeps freed memory from then on
    # A new session (as after a restart) finds the embeddings on disk.
    viewer2, widget2 = make_widget(volume)
    widget2.start()
    widget2.session.compute_embeddings(True, on_done=runs.append)
    wait_for(qtbot, widget2.session)
    assert runs[-1] == 0
    assert any((widget2.cache_edit.text() and p.suffix) for p in __import__("pathlib").Path(widget2.cache_edit.text()).iterdir())


def test_cancelled_compute_resumes_where_it_stopped(make_widget, qtbot, notes):
    volume = np.stack([make_cells_2d((96, 96), count=3, seed=s)[0] for s in range(5)])
    viewer, widget = make_widget(volume)
    widget.all_slices_check.setChecked(True)
    widget.compute_embeddings()
    widget.cancel_button.click()
    wait_for(qtbot, widget.session)
    assert ("info", "Cancelled.") in notes
    predictor = widget.session.predictor()
    before = predictor.encoder_runs
    assert before < 5
    runs = []
    widget.session.compute_embeddings(True, on_done=runs.append)
    wait_for(qtbot, widget.session)
    assert runs == [5 - before]  # only the slices not encoded before the cancel


def test_bad_situations_notify_and_raise_nothing(make_widget, qtbot, notes, tmp_path):
    viewer, widget = make_widget(None)
    assert not widget.start()
    assert not widget.compute_embeddings()
    assert "No image layer" in notes[-1][1]

    viewer.add_image(np.zeros((2, 2, 3, 16, 16), np.float32), name="five")
    widget.image_combo.setCurrentText("five")
    assert not widget.start()
    assert "supported are 2D" in notes[-1][1]

    viewer.add_image(np.full((32, 32), 7, np.uint8), name="flat")
    widget.image_combo.setCurrentText("flat")
    assert widget.start()
    widget.session.points_layer.add([10, 10])
    wait_for(qtbot, widget.session)
    assert "empty" in notes[-1][1]

    from napari_sam.session import ModelChoice

    widget.add_model(ModelChoice(None, str(tmp_path / "missing.pth")))
    viewer.add_image(make_cells_2d((64, 64), count=2)[0], name="cells")
    widget.image_combo.setCurrentText("cells")
    assert widget.compute_embeddings() is None
    assert "missing.pth" in notes[-1][1] and "does not exist" in notes[-1][1]
    assert all(severity == "error" for severity, _ in notes)


def test_channels_contrast_and_ct_window(make_widget, qtbot):
    from napari_sam.windows import window_range

    channels = np.stack([make_cells_2d((64, 64), count=2, seed=s, bit16=True)[0] for s in range(3)])
    viewer, widget = make_widget(channels)  # (C, Y, X) shown as a stack by napari
    widget.channel_axis_spin.setValue(0)
    widget.channels_edit.setText("1")
    assert widget.start()
    access = widget.session.access
    assert access.spatial_shape == (64, 64) and access.stack_shape == ()
    assert access.plane(()).shape == (64, 64, 3)
    layer = viewer.layers["image"]
    layer.contrast_limits = (100.0, 3000.0)
    prep = access.preparation()
    assert prep.value_range == (100.0, 3000.0) and prep.channels == (1,)
    widget.window_combo.setCurrentText("CT bone")
    assert tuple(layer.contrast_limits) == pytest.approx(window_range("bone"))
    assert widget.session.access.preparation().value_range == pytest.approx(window_range("bone"))
    widget.channels_edit.setText("0,1")
    assert not widget.start()


def test_rgb_layer_is_seen_as_rgb(make_widget, qtbot):
    gray, _ = make_cells_2d((96, 96), count=3)
    rgb = np.stack([gray, gray // 2, 255 - gray], axis=-1)
    viewer, widget = make_widget(rgb)
    assert viewer.layers["image"].rgb
    widget.start()
    session = widget.session
    assert session.access.spatial_shape == (96, 96) and session.access.plane(()).shape == (96, 96, 3)
    assert session.points_layer.ndim == 2
    session.points_layer.add([48, 30])
    wait_for(qtbot, session)
    expected = _predict_directly(session, rgb, points=np.array([[30.0, 48.0]]), labels=np.array([1]))
    np.testing.assert_array_equal(session.preview_layer.data > 0, expected.masks[0])


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
    widget.start()
    read.clear()
    widget.session.compute_embeddings(False)
    wait_for(qtbot, widget.session)
    assert set(read) == {3}


def test_finetune_from_committed_objects_adds_a_model(make_widget, qtbot, tmp_path, notes):
    image, labels = make_cells_2d((128, 128), count=4)
    viewer, widget = make_widget(image)
    widget.start()
    session = widget.session
    widget.finetune(str(tmp_path / "none.pt"))
    assert "Commit some objects first" in notes[-1][1]
    for object_id in (1, 2, 3):
        session.preview_layer.data[:] = labels == object_id
        session.commit()
    widget.epochs_spin.setValue(1)
    count = len(widget.choices)
    widget.finetune(str(tmp_path / "tuned.pt"))
    wait_for(qtbot, session, timeout=120000)
    assert (tmp_path / "tuned.pt").is_file()
    assert len(widget.choices) == count + 1
    assert widget.model_combo.currentText() == "fine-tuned: tuned.pt"
    assert widget.start()  # the fine-tuned model loads and segments
    session.points_layer.add([64, 64])
    wait_for(qtbot, session)
    assert session.candidates is not None


@needs_demo
def test_demo_preview_segments_known_objects(make_widget, qtbot):
    from sam_core.volume import prompts_from_mask

    image, labels = make_cells_2d((256, 256), count=8, seed=3)
    viewer, widget = make_widget(image, model="demo")
    widget.start()
    session = widget.session
    scores = []
    for object_id in (1, 2, 3, 4):
        truth = labels == object_id
        if object_id <= 2:  # a box around the object
            rows, cols = np.nonzero(truth)
            session.boxes_layer.add_rectangles(rectangle(rows.min() - 2, cols.min() - 2, rows.max() + 2, cols.max() + 2))
        else:  # one click at the object's centre
            (x, y), = prompts_from_mask(truth)[0]
            session.points_layer.add([y, x])
        wait_for(qtbot, session)
        scores.append(iou(session.preview_layer.data > 0, truth))
        assert session.commit() == object_id
    assert min(scores) >= 0.8, scores
    assert set(np.unique(session.objects_layer.data)) == {0, 1, 2, 3, 4}
