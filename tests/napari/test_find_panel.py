"""Find objects by name ("Find all") and by example ("like this one") in the napari plugin, with a
random-weight small SAM 3 checkpoint chosen as a user does ("local checkpoint file…"): the found
labels equal ``sam_core.concepts.ConceptPredictor.find`` on the same image and threshold, accepting
them and undoing leave exact label sets, a stack run gives each instance its own id in the stack, and
wrong input gets a clear notification."""

from __future__ import annotations

import numpy as np
import pytest
from napari_util import click, drag_box, wait_for

AUTO = "SAM automatic (image)"


@pytest.fixture(scope="module")
def sam3_file(tmp_path_factory):
    from helpers.official_sam3 import SMALL_SAM3, write_sam3_checkpoint

    return write_sam3_checkpoint(SMALL_SAM3, tmp_path_factory.mktemp("sam3napari") / "small_sam3.pt", seed=1)


def scene(height=80, width=120, seed=0):
    """An RGB uint8 scene: a gradient with two red squares and a blue disc."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    rgb = np.stack([xx * 2.0, yy * 3.0, np.full_like(xx, 90.0)], axis=-1) + rng.normal(0, 4, (height, width, 3))
    rgb[10:35, 10:35] = (210, 30, 30)
    rgb[45:70, 70:95] = (210, 30, 30)
    rgb[(yy - 20) ** 2 + (xx - 90) ** 2 < 12 ** 2] = (30, 40, 220)
    return np.clip(rgb, 0, 255).astype(np.uint8)


def expected_labels(checkpoint, image, threshold, **query):
    """The label image of ``ConceptPredictor.find`` (the CLI's rule: sam_core.automask.masks_to_labels)."""
    from sam_core.automask import masks_to_labels
    from sam_core.concepts import ConceptPredictor, load_concept_model

    predictor = ConceptPredictor(load_concept_model(checkpoint=checkpoint))
    found = predictor.find(predictor.encode(image), threshold=threshold, **query)
    return masks_to_labels(found.records("x"), image.shape[:2]), len(found)


def drawn(qtbot, widget, notes, *args, **kwargs):
    """Draw an example box (``drag_box``'s arguments) and wait for the search it starts."""
    searches = sum(message.startswith("Found") for _, message in notes)
    drag_box(qtbot, *args, **kwargs)
    qtbot.waitUntil(lambda: sum(message.startswith("Found") for _, message in notes) > searches, timeout=60000)
    wait_for(qtbot, widget)


def splitting_threshold(checkpoint, image, **query):
    """A threshold (3 decimals, as the panel shows) that keeps some instances and drops others."""
    from sam_core.concepts import ConceptPredictor, load_concept_model

    predictor = ConceptPredictor(load_concept_model(checkpoint=checkpoint))
    scores = predictor.find(predictor.encode(image), threshold=0.0, **query).scores
    for rank in range(5, len(scores) - 1):
        threshold = np.floor(scores[rank] * 1000) / 1000
        kept = int((scores > threshold).sum())
        if 0 < kept < len(scores) and threshold > 0:
            return float(threshold)
    raise AssertionError(f"no threshold splits the scores {scores}")


def test_find_all_by_text_then_accept_and_undo(make_widget, qtbot, sam3_file, notes):
    from qtpy.QtCore import Qt

    image = scene()
    viewer, widget = make_widget(image, model=sam3_file)
    threshold = splitting_threshold(sam3_file, image, text="red square")
    widget.threshold_spin.setValue(threshold)
    qtbot.keyClicks(widget.find_edit, "red square")
    qtbot.keyClick(widget.find_edit, Qt.Key.Key_Return)  # Enter finds
    wait_for(qtbot, widget)
    expected, count = expected_labels(sam3_file, image, threshold, text="red square")
    found = np.asarray(viewer.layers[AUTO].data)
    assert 0 < count < 30 and found.max() > 0
    np.testing.assert_array_equal(found, expected)
    assert any(f"Found {count} instance(s) of 'red square'" in message for _, message in notes)
    assert widget.progress_bar.format() == "done"

    objects = viewer.layers["SAM objects"]
    objects.data[:3, :3] = 7  # an object committed before: kept by accept, untouched by undo
    before = np.array(objects.data, copy=True)
    click(qtbot, widget.accept_all_button)
    after = np.asarray(objects.data)
    new = (before == 0) & (expected > 0)
    assert set(np.unique(after[new])) == set(range(8, 8 + len(np.unique(expected[new]))))
    np.testing.assert_array_equal(after[~new], before[~new])
    for value in np.unique(expected[new]):  # each instance is one new object with the same pixels
        assert len(np.unique(after[new & (expected == value)])) == 1
    accepted = np.array(after, copy=True)
    qtbot.keyClicks(widget.ids_edit, "8, 9")  # found objects are edited as any object: merge two
    click(qtbot, widget.merge_button)
    assert not (np.asarray(objects.data) == 9).any() and (np.asarray(objects.data) == 8).sum() == np.isin(accepted, [8, 9]).sum()
    click(qtbot, widget.undo_button)
    np.testing.assert_array_equal(np.asarray(objects.data), accepted)
    click(qtbot, widget.undo_button)
    np.testing.assert_array_equal(np.asarray(objects.data), before)

    click(qtbot, widget.find_button)  # the button finds as Enter does, on the same cached features
    wait_for(qtbot, widget)
    np.testing.assert_array_equal(np.asarray(viewer.layers[AUTO].data), expected)


def test_like_this_one_with_a_positive_and_a_negative_box(make_widget, qtbot, sam3_file, notes):
    from napari_sam.concepts import EXAMPLES_NAME
    from napari_sam.prompts import slice_boxes

    image = scene()
    viewer, widget = make_widget(image, model=sam3_file, show=True)
    widget.threshold_spin.setValue(0.0)
    click(qtbot, widget.like_check)
    examples = viewer.layers[EXAMPLES_NAME]
    drawn(qtbot, widget, notes, viewer, viewer.layers["image"], (9, 9), (36, 36), shapes=EXAMPLES_NAME)
    boxes = [tuple(float(v) for v in box) for _, box in slice_boxes(examples, ())]
    assert len(boxes) == 1 and np.abs(np.subtract(boxes[0], (9, 9, 36, 36))).max() < 1.5
    expected, count = expected_labels(sam3_file, image, 0.0, exemplars=boxes)
    assert count > 0
    np.testing.assert_array_equal(np.asarray(viewer.layers[AUTO].data), expected)

    drawn(qtbot, widget, notes, viewer, viewer.layers["image"], (8, 78), (32, 102), shapes=EXAMPLES_NAME, shift=True)
    # Shift made it a negative example (red)
    second = tuple(float(v) for v in slice_boxes(examples, ())[1][1])
    assert np.allclose(np.asarray(examples.edge_color)[1], (1, 0, 0, 1))
    expected, _ = expected_labels(sam3_file, image, 0.0, exemplars=boxes, negatives=[second])
    np.testing.assert_array_equal(np.asarray(viewer.layers[AUTO].data), expected)

    click(qtbot, widget.negative_check)  # the toggle: new boxes are negative without Shift
    drawn(qtbot, widget, notes, viewer, viewer.layers["image"], (50, 10), (70, 30), shapes=EXAMPLES_NAME)
    third = tuple(float(v) for v in slice_boxes(examples, ())[2][1])
    assert np.allclose(np.asarray(examples.edge_color)[2], (1, 0, 0, 1))
    expected, _ = expected_labels(sam3_file, image, 0.0, exemplars=boxes, negatives=[second, third])
    np.testing.assert_array_equal(np.asarray(viewer.layers[AUTO].data), expected)
    assert not [message for severity, message in notes if severity == "error"]


def test_find_all_through_a_stack_gives_unique_ids(make_widget, qtbot, sam3_file):
    stack = np.stack([scene(64, 72, seed=z)[..., z % 3] for z in range(3)])  # (z, y, x) grayscale
    viewer, widget = make_widget(stack, model=sam3_file)
    threshold = min(splitting_threshold(sam3_file, plane, text="square") for plane in stack)  # none is empty
    widget.threshold_spin.setValue(threshold)
    qtbot.keyClicks(widget.find_edit, "square")
    click(qtbot, widget.find_stack_check)
    click(qtbot, widget.find_button)
    wait_for(qtbot, widget)
    found = np.asarray(viewer.layers[AUTO].data)
    first_id = 1
    seen = set()
    for z in range(3):
        expected, count = expected_labels(sam3_file, stack[z], threshold, text="square")
        np.testing.assert_array_equal(found[z], np.where(expected > 0, expected + first_id - 1, 0))
        ids = set(np.unique(found[z])) - {0}
        assert ids and not ids & seen  # each slice's instances have ids of their own
        seen |= ids
        first_id += count

    click(qtbot, widget.find_stack_check)  # back to the shown slice only: the others keep their labels
    viewer.dims.set_point(0, 2)
    click(qtbot, widget.find_button)
    wait_for(qtbot, widget)
    again = np.asarray(viewer.layers[AUTO].data)
    expected, _ = expected_labels(sam3_file, stack[2], threshold, text="square")
    np.testing.assert_array_equal(again[2], expected)
    np.testing.assert_array_equal(again[:2], found[:2])


def test_cancel_stops_a_stack_run(make_widget, qtbot, sam3_file, notes):
    stack = np.stack([scene(64, 72, seed=z)[..., 0] for z in range(4)])
    viewer, widget = make_widget(stack, model=sam3_file)
    qtbot.keyClicks(widget.find_edit, "square")
    click(qtbot, widget.find_stack_check)
    click(qtbot, widget.find_button)
    click(qtbot, widget.cancel_button)  # the model is still loading: the first slice is never searched
    wait_for(qtbot, widget)
    assert ("info", "Cancelled.") in notes
    assert widget.progress_bar.format() == "cancelled"
    assert AUTO not in viewer.layers or not np.asarray(viewer.layers[AUTO].data).any()


def test_clear_messages_for_wrong_model_empty_and_too_long_text(make_widget, qtbot, choose_file, sam3_file,
                                                                small_vit_checkpoint, notes):
    from qtpy.QtWidgets import QApplication

    viewer, widget = make_widget(scene(), model=sam3_file)
    click(qtbot, widget.find_button)  # nothing typed
    assert notes[-1] == ("error", "Type what to find in the 'Find all' field first: a word or a short phrase, e.g. 'cell'.")
    click(qtbot, widget.like_button)  # no example box drawn
    assert notes[-1][0] == "error" and "Draw a box around one example" in notes[-1][1]

    qtbot.keyClicks(widget.find_edit, "nucleus " * 20)
    click(qtbot, widget.find_button)
    wait_for(qtbot, widget)
    assert notes[-1] == ("error", "the text is too long: 40 tokens, SAM 3 reads at most 30 "
                                  "(a short noun phrase such as 'red car' works best)")
    assert AUTO not in viewer.layers

    names = [widget.model_combo.itemText(i) for i in range(widget.model_combo.count())]
    widget.model_combo.setCurrentIndex(names.index("demo"))
    QApplication.processEvents()
    click(qtbot, widget.find_button)
    from sam_core.concepts import concept_models

    severity, message = notes[-1]
    assert severity == "error" and message.startswith("The model 'demo' cannot find objects by name or example")
    assert f"Choose a model that can: {', '.join(concept_models())}" in message
    assert not widget.session.jobs

    names = [widget.model_combo.itemText(i) for i in range(widget.model_combo.count())]
    choose_file(small_vit_checkpoint)  # a SAM 1 checkpoint file: told when it loads, in the worker
    widget.model_combo.setCurrentIndex(names.index("local checkpoint file…"))
    QApplication.processEvents()
    click(qtbot, widget.find_button)
    wait_for(qtbot, widget)
    severity, message = notes[-1]
    assert severity == "error" and f"cannot find objects by text or exemplar; models that can: {', '.join(concept_models())}" in message
    assert AUTO not in viewer.layers
