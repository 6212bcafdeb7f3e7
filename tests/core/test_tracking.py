"""sam_core.tracking: lineage, the Cell Tracking Challenge rules and files, divisions, tracking with
slice propagation (SAM) and with memory (SAM 2.1)."""

from __future__ import annotations

import numpy as np
import pytest

from helpers.timelapse import dividing_disks
from sam_core.errors import SamError
from sam_core.progress import CancelToken, Cancelled
from sam_core.tracking import (Lineage, Track, check_ctc, continuous_tracks, ctc_digits, end_parents, mark_division,
                               read_ctc, replace_tracks, track_objects, track_table, tracks_layer_data, validate, write_ctc)


def _labels():
    """Frames 0..4: id 1 on 0..4, id 2 on 0..1, its children 3 and 4 on 2..4."""
    labels = np.zeros((5, 10, 12), np.int32)
    labels[:, 1:3, 1:3] = 1
    labels[:2, 5:9, 5:9] = 2
    labels[2:, 5:7, 5:9] = 3
    labels[2:, 8:10, 5:9] = 4
    return labels


def test_lineage_from_labels_and_man_track_text_round_trip():
    lineage = Lineage.from_labels(_labels(), {3: 2, 4: 2, 9: 1, 1: 7})  # 9 is absent, 7 is no track
    assert lineage.tracks == (Track(1, 0, 4, 0), Track(2, 0, 1, 0), Track(3, 2, 4, 2), Track(4, 2, 4, 2))
    assert lineage.to_text() == "1 0 4 0\n2 0 1 0\n3 2 4 2\n4 2 4 2\n"
    assert Lineage.from_text(lineage.to_text()) == lineage
    assert validate(_labels(), lineage) == []
    with pytest.raises(SamError, match="line 2 is '2 0 1': each line must be four whole numbers"):
        Lineage.from_text("1 0 4 0\n2 0 1\n")


def test_validate_names_every_broken_rule():
    labels = _labels()
    labels[3, labels[3] == 1] = 0  # a gap in track 1
    labels[0, 0, 11] = 8  # an id the table does not list
    table = Lineage((Track(1, 0, 4), Track(2, 0, 2), Track(3, 2, 4, 2), Track(4, 2, 4, 6), Track(6, 0, 0),
                     Track(3, 2, 4, 2)))
    problems = validate(labels, table)
    assert "track 1 should be on frames 0..4 and only there, but is on frames 0..2, 4" in problems
    assert "track 2 should be on frames 0..2 and only there, but is on frames 0..1" in problems
    assert "track 3 begins on frame 2 but its parent 2 ends on frame 2: a parent must end before its children begin" \
        in problems
    assert "track 4: its parent 6 is not another track of the table" not in problems  # 6 is listed ...
    assert "track 6 is in the table but on no frame of the masks" in problems  # ... but on no frame
    assert "track 3 is listed twice" in problems
    assert "id 8 is in the masks (frames 0) but not in the table" in problems
    with pytest.raises(SamError, match="Cell Tracking Challenge rules: "):
        check_ctc(labels, table)


def test_continuous_tracks_continue_a_returning_object_under_a_new_id():
    labels = _labels()
    labels[1, labels[1] == 1] = 0  # id 1 leaves on frame 1, comes back on 2..3
    labels[4, labels[4] == 1] = 0
    labels[4, 1:3, 10:12] = 5  # and divides: 5 is its child, from frame 4
    fixed, parents, renamed = continuous_tracks(labels, {3: 2, 4: 2, 5: 1})
    assert renamed == {1: [1, 6]}
    assert (fixed[0] == 1).sum() == 4 and (fixed[2:4] == 6).sum() == 8 and not (fixed[1:] == 1).any()
    assert parents == {3: 2, 4: 2, 5: 6, 6: 1}  # the child's parent is the run that ends before it begins
    lineage = Lineage.from_labels(fixed, parents)
    assert validate(fixed, lineage) == [] and validate(labels, Lineage.from_labels(labels, {5: 1})) != []
    assert Track(6, 2, 3, 1) in lineage.tracks and Track(1, 0, 0, 0) in lineage.tracks
    assert labels[2, 1, 1] == 1  # the input is unchanged


def test_mark_division_ends_the_parent_and_starts_two_children():
    labels = np.zeros((4, 8, 8), np.int32)
    labels[:, 2:6, 2:6] = 1
    labels[:, 0, 0] = 2
    top, bottom = np.zeros((8, 8), bool), np.zeros((8, 8), bool)
    top[1:4, 2:6] = True
    bottom[4:7, 2:6] = True
    out, parents, ids = mark_division(labels, {}, 1, 2, [top, bottom])
    assert ids == (3, 4) and parents == {3: 1, 4: 1}
    assert (out[:2] == labels[:2]).all() and not (out[2:] == 1).any()
    np.testing.assert_array_equal(out[2] == 3, top)
    np.testing.assert_array_equal(out[2] == 4, bottom)
    assert not out[3, 1:7, 2:6].any() and out[3, 0, 0] == 2  # later frames: the children are tracked on from here
    assert validate(out, Lineage.from_labels(out, parents)) == []
    with pytest.raises(SamError, match="two children"):
        mark_division(labels, {}, 1, 2, [top])
    with pytest.raises(SamError, match="with frames before it"):
        mark_division(labels, {}, 1, 0, [top, bottom])
    with pytest.raises(SamError, match="object 7 is on no frame before frame 2"):
        mark_division(labels, {}, 7, 2, [top, bottom])


def test_replace_tracks_changes_only_the_tracked_objects_after_the_start():
    labels = np.zeros((3, 4, 4), np.int32)
    labels[:, 0, :] = 1
    labels[:, 3, :] = 2
    tracked = np.zeros_like(labels)
    tracked[:, 1:, 0] = 1  # object 1 moves; it may not take object 2's pixels
    out = replace_tracks(labels, tracked, 0)
    np.testing.assert_array_equal(out[0], labels[0])
    for t in (1, 2):
        assert (out[t] == 1).sum() == 2 and (out[t, 1:3, 0] == 1).all() and (out[t, 3] == 2).all()


def test_end_parents_ends_a_parent_before_its_first_child():
    labels = _labels()
    labels[2:, 0, 0] = 2  # parent 2 tracked again past the division on frame 2
    out = end_parents(labels, {3: 2, 4: 2, 9: 1})
    np.testing.assert_array_equal(out, _labels())
    same = _labels()
    assert end_parents(same, {3: 2, 4: 2}) is same  # nothing to change: the input itself


def test_a_cancelled_ctc_export_leaves_no_partial_ground_truth(tmp_path):
    labels = _labels()
    cancel = CancelToken()
    frames = []

    def progress(done, total, message):
        frames.append(done)
        if done == 2:
            cancel.cancel()

    with pytest.raises(Cancelled):
        write_ctc(tmp_path / "TRA", labels, Lineage.from_labels(labels), progress=progress, cancel=cancel)
    assert frames[:2] == [1, 2] and list((tmp_path / "TRA").iterdir()) == []


def test_write_and_read_ctc_round_trip(tmp_path):
    labels = _labels()
    lineage = Lineage.from_labels(labels, {3: 2, 4: 2})
    written = write_ctc(tmp_path / "TRA", labels, lineage)
    assert [p.name for p in written] == [f"man_track{t:03d}.tif" for t in range(5)] + ["man_track.txt"]
    assert (tmp_path / "TRA" / "man_track.txt").read_text() == "1 0 4 0\n2 0 1 0\n3 2 4 2\n4 2 4 2\n"
    assert sorted(p.name for p in (tmp_path / "TRA").iterdir()) == sorted(p.name for p in written)  # no leftovers
    back, back_lineage = read_ctc(tmp_path / "TRA")
    np.testing.assert_array_equal(back, labels)
    assert back_lineage == lineage
    import tifffile

    assert tifffile.imread(written[0]).dtype == np.uint16
    assert ctc_digits(1000) == 3 and ctc_digits(1001) == 4


def test_write_ctc_refuses_broken_tracks_and_foreign_masks(tmp_path):
    labels = _labels()
    broken = Lineage((Track(1, 0, 4), Track(2, 0, 1), Track(3, 2, 4, 2), Track(4, 2, 4, 3)))
    with pytest.raises(SamError, match="track 4 begins on frame 2 but its parent 3 ends on frame 4"):
        write_ctc(tmp_path / "a", labels, broken)
    assert not (tmp_path / "a").exists()
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "man_track0007.tif").write_bytes(b"")
    with pytest.raises(SamError, match="already holds CTC masks of another time-lapse"):
        write_ctc(tmp_path / "b", labels, Lineage.from_labels(labels, {3: 2, 4: 2}))


def test_read_ctc_says_what_is_missing(tmp_path):
    with pytest.raises(SamError, match="holds no CTC masks"):
        read_ctc(tmp_path)
    labels = _labels()
    write_ctc(tmp_path / "c", labels, Lineage.from_labels(labels, {3: 2, 4: 2}))
    (tmp_path / "c" / "man_track002.tif").unlink()
    with pytest.raises(SamError, match=r"lacks the masks of frame\(s\) 2"):
        read_ctc(tmp_path / "c")
    (tmp_path / "c" / "man_track.txt").unlink()
    with pytest.raises(SamError, match="no man_track.txt"):
        read_ctc(tmp_path / "c")


def test_track_table_and_tracks_layer_data():
    from sam_core.labels import measure

    labels = _labels()
    lineage = Lineage.from_labels(labels, {3: 2, 4: 2})
    table = track_table(labels, lineage, scale=(1.0, 0.5, 2.0))
    assert list(table) == ["frame", "id", "parent", "centroid-y", "centroid-x", "area"]
    assert table["frame"].tolist() == [0, 0, 1, 1, 2, 2, 2, 3, 3, 3, 4, 4, 4]
    assert table["id"].tolist() == [1, 2, 1, 2, 1, 3, 4, 1, 3, 4, 1, 3, 4]
    assert table["parent"].tolist() == [0, 0, 0, 0, 0, 2, 2, 0, 2, 2, 0, 2, 2]
    expected = measure(labels[2], scale=(0.5, 2.0))
    np.testing.assert_allclose(table["centroid-y"][4:7], expected["centroid-0"])
    np.testing.assert_allclose(table["centroid-x"][4:7], expected["centroid-1"])
    np.testing.assert_allclose(table["area"][4:7], expected["area"])
    data, graph = tracks_layer_data(labels, lineage)
    assert data.shape == (13, 4) and graph == {3: [2], 4: [2]}
    np.testing.assert_allclose(data[5], [3, 2, 5.5, 6.5])  # id 3 on frame 2: rows 5..6, cols 5..8


def test_track_objects_with_slice_propagation_is_propagate_per_object(small_vit_checkpoint):
    from sam_core.predictor import Predictor
    from sam_core.volume import propagate

    image, truth, _ = dividing_disks(frames=4, shape=(64, 72))
    predictor = Predictor(None, checkpoint=str(small_vit_checkpoint))
    starts = {7: truth[1] == 1, 3: truth[1] == 2}
    out = track_objects(predictor, image, 1, starts, last=2, stop_iou=0.0)
    assert not out[0].any() and not out[3].any()
    expected = np.zeros_like(out)
    for object_id, mask in starts.items():
        found = propagate(predictor, image, 1, mask, direction="forward", index_range=(1, 2), stop_iou=0.0)
        expected[found & (expected == 0)] = object_id
    np.testing.assert_array_equal(out, expected)
    seen = []
    track_objects(predictor, image, 0, starts, stop_iou=0.0, progress=lambda d, t, m: seen.append((d, t)))
    assert seen[-1] == (6, 6) and all(b == 6 for _, b in seen) and [d for d, _ in seen] == sorted(d for d, _ in seen)
    cancel = CancelToken()
    cancel.cancel()
    with pytest.raises(Cancelled):
        track_objects(predictor, image, 1, starts, cancel=cancel)
    with pytest.raises(SamError, match="no object on frame 1 to track"):
        track_objects(predictor, image, 1, {1: np.zeros((64, 72), bool)})


@pytest.mark.slow  # builds Meta's model to write the checkpoint; about 40 s on the shared machine
def test_track_objects_with_sam2_memory_is_the_video_session(tmp_path):
    from helpers.sam2_checkpoints import SMALL_SAM2, spread_object_scores, write_official_sam2_checkpoint
    from sam_core.frames import open_frames
    from sam_core.predictor import Predictor
    from sam_core.propagation import VideoSession

    path = spread_object_scores(write_official_sam2_checkpoint(SMALL_SAM2, tmp_path / "small_sam2.pt", seed=5))
    image, truth, _ = dividing_disks(frames=3, shape=(64, 72))
    predictor = Predictor(None, checkpoint=str(path))
    assert predictor.family == "sam2"
    out = track_objects(predictor, image, 1, {1: truth[1] == 1, 2: truth[1] == 2})
    session = VideoSession(predictor.model, open_frames(image))
    session.add_prompt(1, 1, mask=truth[1] == 1)
    session.add_prompt(1, 2, mask=truth[1] == 2)
    for result in session.propagate("forward", 1):
        np.testing.assert_array_equal(out[result.frame], session.labels(result.frame))
    assert not out[0].any() and set(np.unique(out[1:])) <= {0, 1, 2}


@pytest.mark.usefixtures("demo_checkpoint")
def test_demo_tracks_moving_disks_with_persistent_ids():
    from sam_core.predictor import Predictor
    from sam_core.masks import mask_iou

    image, truth, _ = dividing_disks()
    predictor = Predictor("demo")
    out = track_objects(predictor, image, 0, {1: truth[0] == 1, 2: truth[0] == 2})
    for t in range(len(image)):
        for object_id in (1, 2):
            assert mask_iou(out[t] == object_id, truth[t] == object_id) >= 0.8, (t, object_id)
