"""napari's "Propagate" with a SAM 2.1 model (issue 17 item 6): memory propagation of every object of
the shown frame, driven as a user does (plugin manager, canvas clicks, buttons). Mechanics are checked
on a small random-weight SAM 2.1 checkpoint whose object scores report objects present on some frames
and absent on others: the labels written equal ``sam_core.VideoSession``'s for the same mask prompts,
ids are kept, Cancel writes nothing, a correction re-propagates from its frame only."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from napari_util import click, click_canvas, wait_for

from napari_sam.samples import make_time_series
from napari_sam.session import OBJECTS_NAME, PREVIEW_NAME

FRAMES, SIDE, SHOWN = 5, 128, 1
CELL = (79, 42)  # (row, col) inside cell 2 of make_time_series on frame SHOWN
IDS = (4, 5)  # a committed object (id 4) and the preview (the next free id)
WAIT = 300000  # ms: the machine may be busy


@pytest.fixture(scope="module")
def sam2_tracker(tmp_path_factory):
    """A small random SAM 2.1 checkpoint with its object-score head spread (objects come and go)."""
    from helpers.sam2_checkpoints import SMALL_SAM2, spread_object_scores, write_official_sam2_checkpoint

    path = write_official_sam2_checkpoint(SMALL_SAM2, tmp_path_factory.mktemp("memprop") / "small_sam2.pt", seed=5)
    return spread_object_scores(path)


@pytest.fixture(scope="module")
def series():
    return make_time_series((FRAMES, SIDE, SIDE))


def _three_objects(make_widget, qtbot, checkpoint, series):
    """A widget on the series showing frame SHOWN, with cell 1 committed as object 4 (as if painted)
    and the preview of a click on cell 2. Returns the viewer, the widget and the two objects' masks on
    SHOWN {id: mask} (random weights: the preview may cover the committed one)."""
    image, truth = series
    viewer, widget = make_widget(image, show=True, model=checkpoint)
    click(qtbot, widget.start_button)
    viewer.dims.set_point(0, SHOWN)
    objects = viewer.layers[OBJECTS_NAME]
    objects.data[SHOWN][truth[SHOWN] == 1] = 4
    click_canvas(qtbot, viewer, viewer.layers["image"], CELL)
    wait_for(qtbot, widget, WAIT)
    masks = {4: truth[SHOWN] == 1, 5: np.asarray(viewer.layers[PREVIEW_NAME].data[SHOWN]) > 0}
    assert masks[5].any()
    return viewer, widget, masks


@pytest.fixture(scope="module")
def runs():
    """Reference runs already made in this module, by prompts (the same clicks give the same masks)."""
    return {}


def _reference(checkpoint, series, layer, prompts, runs=None):
    """sam_core's VideoSession on the same frames, contrast and mask prompts {object id: mask} on SHOWN,
    propagated both ways; returns it with its results {frame: FrameResult}. ``runs``: a cache to share
    (the caller must not prompt the session again)."""
    from sam_core import Preparation, VideoSession, load_model, open_frames

    key = tuple((i, m.tobytes()) for i, m in sorted(prompts.items()))
    if runs is not None and key in runs:
        return runs[key]
    video = VideoSession(load_model(None, checkpoint), open_frames(series[0]),
                         preparation=Preparation(value_range=tuple(float(v) for v in layer.contrast_limits)))
    for object_id, mask in prompts.items():
        video.add_prompt(SHOWN, object_id, mask=mask)
    run = video, {r.frame: r for r in video.propagate("both")}
    if runs is not None:
        runs[key] = run
    return run


def _stop_after(results, ids, absent_frames):
    """{(frame, id)} of objects stopped by the rule: absent on ``absent_frames`` frames in a row of a pass."""
    stopped = set()
    for frames in (range(SHOWN, FRAMES), range(SHOWN, -1, -1)):
        for object_id in ids:
            run, gone = 0, False
            for frame in frames:
                present = bool(results[frame].present[results[frame].object_ids.index(object_id)])
                run = 0 if present else run + 1
                gone = gone or run >= absent_frames
                if gone:
                    stopped.add((frame, object_id))
    return stopped


def _shown_frame_labels(masks):
    """What the shown frame holds after a run: the committed objects as they were, the preview where free."""
    expected = np.zeros(masks[4].shape, np.int32)
    for object_id in IDS:
        expected[masks[object_id] & (expected == 0)] = object_id
    return expected


def test_sam2_propagates_every_object_of_the_frame_keeping_ids(make_widget, qtbot, notes, sam2_tracker, series, runs):
    viewer, widget, masks = _three_objects(make_widget, qtbot, sam2_tracker, series)
    click(qtbot, widget.stop_absent_check)  # off: every frame as SAM 2.1 gives it
    assert not widget.stop_absent_check.isChecked()
    click(qtbot, widget.propagate_button)
    wait_for(qtbot, widget, WAIT)
    objects = np.asarray(viewer.layers[OBJECTS_NAME].data)
    assert not np.asarray(viewer.layers[PREVIEW_NAME].data).any()  # the preview became object 5
    assert set(np.unique(objects)) <= {0, *IDS}
    np.testing.assert_array_equal(objects[SHOWN], _shown_frame_labels(masks))

    video, results = _reference(sam2_tracker, series, viewer.layers["image"], masks, runs)
    assert sorted(results) == list(range(FRAMES))
    for frame in set(range(FRAMES)) - {SHOWN}:
        np.testing.assert_array_equal(objects[frame], video.labels(frame), err_msg=f"frame {frame}")
    present = np.array([results[f].present for f in range(FRAMES)])
    assert present.any() and not present.all()  # the checkpoint reports absent frames: a real check
    for frame in range(FRAMES):  # an object is labelled on a frame only where SAM 2.1 says it is present
        for k, object_id in enumerate(results[frame].object_ids):
            assert present[frame, k] or not (objects[frame] == object_id).any()
    assert notes[-1][1].startswith(f"Propagated 2 object(s) through frames 0 to {FRAMES - 1}")
    assert widget.progress_bar.format() == "done"

    click(qtbot, widget.undo_button)  # one edit: Undo takes the whole propagation back
    objects = np.asarray(viewer.layers[OBJECTS_NAME].data)
    np.testing.assert_array_equal(objects[SHOWN], np.where(masks[4], 4, 0))
    assert not objects[np.arange(FRAMES) != SHOWN].any()


def test_stop_when_the_object_disappears(make_widget, qtbot, sam2_tracker, series, runs):
    viewer, widget, masks = _three_objects(make_widget, qtbot, sam2_tracker, series)
    assert widget.stop_absent_check.isChecked()  # on by default
    widget.absent_frames_spin.setValue(1)
    click(qtbot, widget.propagate_button)
    wait_for(qtbot, widget, WAIT)
    objects = np.asarray(viewer.layers[OBJECTS_NAME].data)

    video, results = _reference(sam2_tracker, series, viewer.layers["image"], masks, runs)
    stopped = _stop_after(results, IDS, 1)
    changed = 0
    for frame in set(range(FRAMES)) - {SHOWN}:
        expected = video.labels(frame)
        for object_id in IDS:
            if (frame, object_id) in stopped:
                changed += int((expected == object_id).any())
                expected[expected == object_id] = 0
        np.testing.assert_array_equal(objects[frame], expected, err_msg=f"frame {frame}")
    assert changed  # an object came back after an absent frame: the rule removed it there


def test_cancel_writes_nothing_and_forgets_the_memory(make_widget, qtbot, notes, sam2_tracker, series, monkeypatch):
    """Synchronised by events: the worker waits after its second frame until the test has pressed Cancel."""
    from sam_core.frames import Frames

    viewer, widget, masks = _three_objects(make_widget, qtbot, sam2_tracker, series)
    before = np.array(viewer.layers[OBJECTS_NAME].data)
    model_input = Frames.model_input
    reads, reached, go = [], threading.Event(), threading.Event()

    def gated(self, *args, **kwargs):
        reads.append(1)
        if len(reads) == 2:
            reached.set()
            assert go.wait(60)
        return model_input(self, *args, **kwargs)

    monkeypatch.setattr(Frames, "model_input", gated)
    click(qtbot, widget.propagate_button)
    qtbot.waitUntil(reached.is_set, timeout=WAIT)
    click(qtbot, widget.cancel_button)
    go.set()
    wait_for(qtbot, widget, WAIT)
    assert ("info", "Cancelled.") in notes
    assert widget.progress_bar.format() == "cancelled"
    np.testing.assert_array_equal(viewer.layers[OBJECTS_NAME].data, before)  # committed labels untouched
    assert np.asarray(viewer.layers[PREVIEW_NAME].data[SHOWN]).any()  # the preview is still there

    click(qtbot, widget.propagate_button)  # a new run from the shown frame, both objects
    wait_for(qtbot, widget, WAIT)
    np.testing.assert_array_equal(viewer.layers[OBJECTS_NAME].data[SHOWN], _shown_frame_labels(masks))
    assert notes[-1][1].startswith(f"Propagated 2 object(s) through frames 0 to {FRAMES - 1}")
    done = np.array(viewer.layers[OBJECTS_NAME].data)

    viewer.dims.set_point(0, FRAMES - 1)  # nothing new on this frame: the memory runs again from frame SHOWN
    click(qtbot, widget.propagate_button)
    wait_for(qtbot, widget, WAIT)
    assert notes[-1][1].startswith(f"Propagated 2 object(s) through frames 0 to {FRAMES - 1}")
    again = np.asarray(viewer.layers[OBJECTS_NAME].data)
    np.testing.assert_array_equal(again[SHOWN], done[SHOWN])  # the prompts stay the labels of their frame
    assert set(np.unique(again)) == set(np.unique(done))


def test_a_correction_re_propagates_from_its_frame(make_widget, qtbot, notes, sam2_tracker, series):
    viewer, widget, masks = _three_objects(make_widget, qtbot, sam2_tracker, series)
    click(qtbot, widget.stop_absent_check)
    click(qtbot, widget.propagate_button)
    wait_for(qtbot, widget, WAIT)
    first = np.array(viewer.layers[OBJECTS_NAME].data)
    frame = FRAMES - 2
    viewer.dims.set_point(0, frame)
    click_canvas(qtbot, viewer, viewer.layers["image"], (40, 40))
    wait_for(qtbot, widget, WAIT)
    correction = np.asarray(viewer.layers[PREVIEW_NAME].data[frame]) > 0
    overlap = {i: int((correction & (first[frame] == i)).sum()) for i in IDS}
    corrected = max(overlap, key=overlap.get)  # the click overlaps this propagated object most: a correction
    assert overlap[corrected] > 0
    click(qtbot, widget.propagate_button)
    wait_for(qtbot, widget, WAIT)
    objects = np.asarray(viewer.layers[OBJECTS_NAME].data)
    np.testing.assert_array_equal(objects[:frame], first[:frame])  # frames before the correction stay
    assert set(np.unique(objects)) <= {0, *IDS}  # no new object
    assert notes[-1][1].startswith(f"Propagated 2 object(s) through frames {frame} to {FRAMES - 1}")

    video, _ = _reference(sam2_tracker, series, viewer.layers["image"], masks)  # its own: prompted again
    video.add_prompt(frame, corrected, mask=correction)
    checked = []
    for result in video.propagate("forward", frame):
        expected = video.labels(result.frame)
        if result.frame == frame:  # the correction where no other object is
            expected[expected == corrected] = 0
            expected[correction & (expected == 0)] = corrected
        np.testing.assert_array_equal(objects[result.frame], expected, err_msg=f"frame {result.frame}")
        checked.append(result.frame)
    assert checked == list(range(frame, FRAMES))


def test_propagating_from_frame_0_and_a_correction_on_it(make_widget, qtbot, notes, sam2_tracker, series):
    """Frame 0 has no backward pass: a run from it goes forward; a correction on it (before the first
    prompted frame) redoes frame 0 only."""
    viewer, widget, _ = _three_objects(make_widget, qtbot, sam2_tracker, series)
    click(qtbot, widget.propagate_button)
    wait_for(qtbot, widget, WAIT)
    first = np.array(viewer.layers[OBJECTS_NAME].data)
    viewer.dims.set_point(0, 0)
    click_canvas(qtbot, viewer, viewer.layers["image"], (60, 60))
    wait_for(qtbot, widget, WAIT)
    click(qtbot, widget.propagate_button)
    wait_for(qtbot, widget, WAIT)
    assert all(severity != "error" for severity, _ in notes), notes
    assert notes[-1][1].startswith("Propagated 2 object(s) through frames 0 to 0")
    np.testing.assert_array_equal(viewer.layers[OBJECTS_NAME].data[1:], first[1:])

    viewer.layers[OBJECTS_NAME].data[...] = 0  # every object erased: a new memory from frame 0, forward only
    viewer.layers[OBJECTS_NAME].data[0][series[1][0] == 1] = 1
    click(qtbot, widget.propagate_button)
    wait_for(qtbot, widget, WAIT)
    assert all(severity != "error" for severity, _ in notes), notes
    assert notes[-1][1].startswith(f"Propagated 1 object(s) through frames 0 to {FRAMES - 1}")


DEMO2_CLIPS = {"movie": (1000, 1, 0), "volume": (1000, 2, 0)}  # held-out seeds (benchmarks/quality_demo2.py)


@pytest.mark.slow
@pytest.mark.parametrize("kind", [
    "movie",
    pytest.param("volume", marks=pytest.mark.xfail(
        strict=True, reason="demo2 misses issue 17's target through 3D blobs (this blob: mean IoU 0.68; all held-out "
                            "volumes: 0.71, target 0.8; benchmarks/RESULTS.md)")),
])
def test_demo2_follows_an_object_from_one_click(make_widget, qtbot, kind):
    """Behaviour with the trained ``demo2``: a generated movie (moving, turning, deforming objects) or
    slices through 3D blobs, never trained on; one click in the largest object of frame 0, Propagate;
    the object's label follows the truth over the 8 frames (mean IoU at least 0.75)."""
    from helpers.demo import require_demo
    from napari_util import iou
    from sam_core.train.prompts import interior_point
    from sam_core.train.sequences import generate_sequence

    require_demo("demo2")
    clip = generate_sequence(DEMO2_CLIPS[kind], kind=kind)
    truth = clip.labels
    target = max(clip.object_ids, key=lambda i: int((truth[0] == i).sum()))
    viewer, widget = make_widget(clip.frames, model="demo2", show=True, rgb=True)
    click(qtbot, widget.start_button)
    viewer.dims.set_point(0, 0)
    x, y = interior_point(truth[0] == target)
    click_canvas(qtbot, viewer, viewer.layers["image"], (y, x))
    wait_for(qtbot, widget, WAIT)
    click(qtbot, widget.propagate_button)
    wait_for(qtbot, widget, WAIT)
    objects = np.asarray(viewer.layers[OBJECTS_NAME].data)
    assert set(np.unique(objects)) <= {0, 1}
    ious = [iou(objects[t] == 1, truth[t] == target) for t in range(len(truth))]
    assert np.mean(ious) >= 0.75, ious
