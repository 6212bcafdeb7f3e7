"""Stacks in the napari plugin: propagation, filling between prompted slices, 4D, automatic labels, tiling."""

from __future__ import annotations

import numpy as np
from napari_util import iou, needs_demo, rectangle, wait_for

from napari_sam.samples import make_cells_2d, make_time_series, make_volume_3d


def test_prompts_on_two_slices_fill_the_slices_between(make_widget, qtbot):
    volume, labels = make_volume_3d((12, 64, 64))
    viewer, widget = make_widget(volume, scale=(2.0, 1.0, 1.0))
    widget.start()
    session = widget.session
    session.points_layer.add([3, 32, 32])
    session.boxes_layer.add_rectangles(rectangle(12, 12, 50, 50, [8]))
    wait_for(qtbot, session)
    assert session.prompted_slices() == [(3,), (8,)]
    assert session.prompts((8,)).box.tolist() == [12.0, 12.0, 50.0, 50.0]
    results = []
    widget.session.propagate(on_done=results.append)
    wait_for(qtbot, session)
    on = (session.preview_layer.data > 0).any(axis=(1, 2))
    assert on[3:9].all() and not on[:3].any() and not on[9:].any()
    object_id = session.commit()
    committed = session.objects_layer.data == object_id
    np.testing.assert_array_equal(committed, results[0])
    assert tuple(session.objects_layer.scale) == (2.0, 1.0, 1.0)


def test_propagate_respects_the_range(make_widget, qtbot):
    volume, _ = make_volume_3d((12, 64, 64))
    viewer, widget = make_widget(volume)
    widget.start()
    session = widget.session
    viewer.dims.set_point(0, 6)
    session.preview_layer.data[6, 20:44, 20:44] = 1  # a start mask as if decoded
    session.propagate(first=5, last=7, stop_iou=0.0, stop_stability=0.0, min_overlap=0.0)
    wait_for(qtbot, session)
    on = (session.preview_layer.data > 0).any(axis=(1, 2))
    assert not on[:5].any() and not on[8:].any() and on[6]


def test_time_series_and_4d_propagate_along_the_last_stack_axis(make_widget, qtbot):
    series, _ = make_time_series((6, 64, 64))
    viewer, widget = make_widget(np.stack([series, series[::-1]]))  # (t=2, z=6, y, x)
    widget.start()
    session = widget.session
    assert session.access.stack_shape == (2, 6)
    viewer.dims.set_point(0, 1)
    viewer.dims.set_point(1, 1)
    assert session.current_index() == (1, 1)
    session.points_layer.add([[1, 1, 30, 30], [1, 4, 30, 30]])
    wait_for(qtbot, session)
    session.propagate()
    wait_for(qtbot, session)
    preview = session.preview_layer.data > 0
    assert not preview[0].any()  # the other time point is untouched
    assert preview[1, 1:5].any(axis=(1, 2)).all()


def test_automatic_segmentation_of_a_slice_and_of_the_stack(make_widget, qtbot):
    volume, _ = make_volume_3d((4, 64, 64))
    viewer, widget = make_widget(volume)
    widget.points_per_side_spin.setValue(4)
    widget.pred_iou_spin.setValue(0.0)
    widget.stability_spin.setValue(0.0)
    viewer.dims.set_point(0, 2)
    results = []
    widget.start()
    widget.session.automatic(False, {"points_per_side": 4, "pred_iou_thresh": 0.0, "stability_score_thresh": 0.0},
                             on_done=results.append)
    wait_for(qtbot, widget.session)
    layer = viewer.layers["SAM automatic"]
    assert layer.data.shape == volume.shape
    assert results[0].shape == (64, 64) and results[0].max() > 0
    np.testing.assert_array_equal(layer.data[2], results[0])
    assert not layer.data[[0, 1, 3]].any()
    widget.automatic(True)
    wait_for(qtbot, widget.session)
    assert layer.data.shape == volume.shape and layer.data[0].max() > 0 and layer.data[3].max() > 0


def test_large_2d_images_use_tiled_embeddings(make_widget, qtbot):
    from sam_core.tiling import TiledPredictor

    image, _ = make_cells_2d((200, 260), count=6)
    viewer, widget = make_widget(image)
    widget.start()
    session = widget.session
    session.settings.tile_above, session.settings.tile_size, session.settings.tile_overlap = 128, 128, 32
    runs = []
    session.compute_embeddings(on_done=runs.append)
    wait_for(qtbot, session)
    predictor = session.predictor()
    assert runs == [6]  # a 2 x 3 grid of 128 px tiles
    session.points_layer.add([100, 130])
    wait_for(qtbot, session)
    expected = TiledPredictor(predictor, image, tile_size=128, overlap=32, preparation=session.access.preparation())
    result = expected.predict(points=[(130.0, 100.0)], labels=[1])
    mask = np.zeros(image.shape, bool)
    p = result.piece
    mask[p.y0 : p.y0 + p.mask.shape[0], p.x0 : p.x0 + p.mask.shape[1]] = p.mask
    np.testing.assert_array_equal(session.preview_layer.data > 0, mask)
    assert predictor.encoder_runs == 6  # decoding used the cached tiles


@needs_demo
def test_demo_propagation_through_a_generated_3d_object(make_widget, qtbot):
    volume, labels = make_volume_3d()
    truth = labels == 1
    viewer, widget = make_widget(volume, model="demo", scale=(2.0, 1.0, 1.0))
    widget.start()
    session = widget.session
    middle = volume.shape[0] // 2
    viewer.dims.set_point(0, middle * 2.0)
    assert session.current_index() == (middle,)
    rows, cols = np.nonzero(truth[middle])
    session.boxes_layer.add_rectangles(rectangle(rows.min() - 2, cols.min() - 2, rows.max() + 2, cols.max() + 2, [middle]))
    wait_for(qtbot, session)
    assert iou(session.preview_layer.data[middle] > 0, truth[middle]) >= 0.8
    widget.propagate()
    wait_for(qtbot, session, timeout=120000)
    assert iou(session.preview_layer.data > 0, truth) >= 0.75
