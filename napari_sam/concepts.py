"""Find every instance of a concept in the shown image or slice, or through a stack (SAM 3).

"Find all" names the concept with a phrase; "like this one" shows it with boxes drawn around examples
on the ``SAM examples`` layer (a rectangle drawn with Shift held, or while new examples are set to
negative, is red: an example of what is NOT meant). The model work is ``sam_core.concepts``'
(:class:`~sam_core.concepts.ConceptPredictor`: encode once per slice, then any number of queries).

What is found fills the image's ``SAM automatic (<image name>)`` labels layer, one id per instance
(best score first), as automatic segmentation does, so it is accepted into ``SAM objects``, edited and
undone by the same path (:meth:`napari_sam.editing.ObjectEditor.accept`). Through a stack (the last
stack axis, the others fixed at the shown slice) every slice is searched on its own and the ids go on
from slice to slice, so each instance has its own id in the whole stack.

Boxes go to sam_core as (x0, y0, x1, y1) = (col, row) pixels of the image plane.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, List, Optional, Sequence, Tuple

import numpy as np
from napari.utils.notifications import show_info

from napari_sam.prompts import slice_boxes
from sam_core.progress import check, report

if TYPE_CHECKING:
    from sam_core.concepts import ConceptPredictor, Findings
    from sam_core.imaging import Preparation
    from sam_core.pool import ModelSpec

    from napari_sam.session import SamSession
    from napari_sam.workers import Job

EXAMPLES_NAME = "SAM examples"
#: Edge colours of example boxes: what to find, and what is not meant.
POSITIVE_EDGE, NEGATIVE_EDGE = "lime", "red"

Box = Tuple[float, float, float, float]


def findings_to_labels(found: "Findings", shape: Tuple[int, int], first_id: int = 1) -> np.ndarray:
    """(H, W) int32 labels of ``found``: instance ``i`` (best first) gets id ``first_id + i``; where
    instances overlap the smaller one stays visible (``sam_core.automask.masks_to_labels``' rule)."""
    from sam_core.automask import masks_to_labels

    records = [{"segmentation": mask, "area": int(mask.sum())} for mask in found.masks]
    labels = masks_to_labels(records, shape)
    return np.where(labels > 0, labels + (first_id - 1), 0).astype(np.int32)


class ConceptSearch:
    """SAM 3 concept queries for a session: the concept model (one at a time, loaded in a worker), the
    ``SAM examples`` layer and the runs that fill the image's ``SAM automatic`` layer."""

    def __init__(self, session: "SamSession") -> None:
        self.session = session
        #: New example boxes are negative (Shift while drawing makes one box negative, too).
        self.negative = False
        #: Called (on the GUI thread) after a box is drawn on the ``SAM examples`` layer.
        self.on_example: List[Callable[[], None]] = []
        self._predictor: Optional[Tuple[Tuple["ModelSpec", "Preparation"], "ConceptPredictor"]] = None
        self._examples: Any = None

    # ----------------------------------------------------------------------------------- model

    def check_model(self) -> bool:
        """Notify and return False when the chosen zoo model cannot take concepts (a checkpoint file is
        checked when it loads, in the worker)."""
        from sam_core.concepts import concept_models

        model = self.session.settings.model
        if model.checkpoint is None and model.name not in concept_models():
            self.session.fail(f"The model {model.name!r} cannot find objects by name or example. Choose a model that "
                              f"can: {', '.join(concept_models())} (or a SAM 3 checkpoint file, "
                              f"'local checkpoint file…').")
            return False
        return True

    def predictor(self, spec: "ModelSpec", preparation: "Preparation", progress: Any = None) -> "ConceptPredictor":
        """The concept predictor of ``spec`` (model, device, embedding cache) for images made RGB by
        ``preparation``: kept while the same model is chosen (call from a worker: it may load or download)."""
        from sam_core.cache import EmbeddingCache
        from sam_core.concepts import ConceptPredictor, load_concept_model
        from sam_core.runtime import keep_freed_memory

        with self.session.lock:
            if self._predictor is not None and self._predictor[0] == (spec, preparation):
                return self._predictor[1]
            old = self._predictor[1] if self._predictor is not None and self._predictor[0][0] == spec else None
            if old is None:
                self._predictor = None  # free the previous model before loading another
                model = load_concept_model(spec.name, spec.checkpoint, device=spec.device, progress=progress)
                keep_freed_memory()  # the workers encode in napari's process (see sam_core.runtime)
                predictor = ConceptPredictor(model, preparation=preparation, cache=EmbeddingCache(
                    memory_bytes=spec.cache_memory_bytes, directory=spec.cache_dir))
            else:  # same model, other channels: keep the model, its cache and the phrases' features
                predictor = ConceptPredictor(old.model, old.tokenizer, preparation, old.cache)
            self._predictor = ((spec, preparation), predictor)
            return predictor

    # ----------------------------------------------------------------------------------- examples

    def examples_layer(self) -> Any:
        """The ``SAM examples`` Shapes layer of the session's image (made, or remade for another image
        geometry), where boxes are drawn around examples."""
        from napari.layers import Shapes

        access = self.session.access
        viewer = self.session.viewer
        layer = self._fitting_examples()
        if layer is not None:
            return layer
        if self._examples is not None and self._examples in viewer.layers:
            viewer.layers.remove(self._examples)
        layer = Shapes(ndim=len(access.spatial_shape), name=EXAMPLES_NAME, face_color="transparent",
                       edge_color=POSITIVE_EDGE, edge_width=2, scale=access.scale, translate=access.translate)
        layer.mouse_drag_callbacks.insert(0, self._on_press)  # before the drawing mode's own callback
        viewer.add_layer(layer)
        self._examples = layer
        return layer

    def _fitting_examples(self) -> Any:
        """The ``SAM examples`` layer when it is in the viewer and fits the session's image, else None."""
        access = self.session.access
        layer = self._examples
        if layer is None or access is None or layer not in self.session.viewer.layers:
            return None
        fits = layer.ndim == len(access.spatial_shape) and np.allclose(layer.scale, access.scale) \
            and np.allclose(layer.translate, access.translate)
        return layer if fits else None

    def start_drawing(self) -> Any:
        """Select the ``SAM examples`` layer in rectangle mode; returns it."""
        layer = self.examples_layer()
        self.session.viewer.layers.selection.active = layer
        layer.mode = "add_rectangle"
        return layer

    def _on_press(self, layer: Any, event: Any):
        """A new rectangle gets its colour when the mouse is pressed (Shift or the toggle: negative);
        ``on_example`` listeners run once it is drawn."""
        if str(layer.mode) != "add_rectangle":
            return
        from qtpy.QtCore import QTimer

        negative = self.negative or "Shift" in event.modifiers
        layer.selected_data = set()  # the colour must go to the new box only
        layer.current_edge_color = NEGATIVE_EDGE if negative else POSITIVE_EDGE
        yield
        while event.type == "mouse_move":
            yield
        QTimer.singleShot(0, self._drawn)  # after the drawing mode has finished the rectangle

    def _drawn(self) -> None:
        for listener in self.on_example:
            listener()

    def examples(self, index: Tuple[int, ...]) -> Tuple[List[Box], List[Box]]:
        """The example boxes on slice ``index``: (what to find, what is not meant), as (x0, y0, x1, y1)
        pixels clipped to the image plane."""
        from napari.utils.colormaps.standardize_color import transform_color

        layer = self._fitting_examples()
        if layer is None:
            return [], []
        height, width = self.session.access.plane_shape
        red = transform_color(NEGATIVE_EDGE)[0]
        colours = np.asarray(layer.edge_color)
        positives: List[Box] = []
        negatives: List[Box] = []
        for number, (x0, y0, x1, y1) in slice_boxes(layer, index):
            box = (float(np.clip(x0, 0, width)), float(np.clip(y0, 0, height)),
                   float(np.clip(x1, 0, width)), float(np.clip(y1, 0, height)))
            (negatives if np.allclose(colours[number], red) else positives).append(box)
        return positives, negatives

    # ----------------------------------------------------------------------------------- runs

    def find(self, text: Optional[str] = None, like: bool = False, whole_stack: bool = False,
             threshold: float = 0.5, on_done: Optional[Callable[[np.ndarray], None]] = None) -> Optional["Job"]:
        """Find the instances of ``text`` (a phrase) or, with ``like``, of the example boxes on the
        shown slice, scoring above ``threshold`` (0..1), on the shown slice, or with ``whole_stack`` (text
        only) on every slice along the last stack axis; fills the image's ``SAM automatic`` layer.
        ``on_done(labels)`` gets the slice's or the stack's labels. None (with a notification) when
        nothing can run."""
        session = self.session
        if not session.ready() or not self.check_model():
            return None
        if like:
            positives, negatives = self.examples(session.current_index())
            if not positives:
                session.fail("Draw a box around one example of what to find on the 'SAM examples' layer first "
                             "(tick 'like this one'); red boxes (Shift, or 'negative examples') only say what is not meant.")
                return None
            text = None
        else:
            text = (text or "").strip()
            positives = negatives = []
            if not text:
                session.fail("Type what to find in the 'Find all' field first: a word or a short phrase, e.g. 'cell'.")
                return None
        access = session.access
        spec = session.settings.spec()
        preparation = access.preparation()
        here = session.current_index()
        whole_stack = whole_stack and not like and bool(access.stack_shape)

        def job(progress: Any, cancel: Any) -> Tuple[Tuple[int, ...], np.ndarray, int]:
            predictor = self.predictor(spec, preparation, progress)
            check(cancel)
            if text is not None:
                predictor.check_text(text)
            if whole_stack:
                axis = len(here) - 1
                stack = access.volume(here, axis)
                return here[:axis], *self._find_stack(predictor, stack, text, threshold, progress, cancel)
            report(progress, 0, 1, "finding")
            labels, count = self._find_plane(predictor, access.plane(here), text, positives, negatives, threshold)
            report(progress, 1, 1, "found")
            return here, labels, count

        what = f"'{text}'" if text is not None else "the examples"

        def finished(result: Tuple[Tuple[int, ...], np.ndarray, int]) -> None:
            index, labels, count = result
            layer = session.automatic_segmentation.result_layer(access)  # the image searched, even if another is chosen now
            layer.data[index] = labels
            layer.refresh()
            if count:
                show_info(f"Found {count} instance(s) of {what} (layer {layer.name}); "
                          f"'Accept all automatic objects' adds them to SAM objects.")
            else:
                show_info(f"Found no instance of {what} scoring above {threshold:g}: try a lower threshold.")
            if on_done is not None:
                on_done(labels)

        return session.run(job, "SAM find", finished)

    def _find_plane(self, predictor: "ConceptPredictor", image: np.ndarray, text: Optional[str],
                    positives: Sequence[Box], negatives: Sequence[Box], threshold: float,
                    first_id: int = 1) -> Tuple[np.ndarray, int]:
        """Labels (ids from ``first_id``) and the number of instances found in one plane."""
        with self.session.lock:
            found = predictor.find(predictor.encode(image), text=text, exemplars=positives, negatives=negatives,
                                   threshold=threshold)
        return findings_to_labels(found, image.shape[:2], first_id), len(found)

    def _find_stack(self, predictor: "ConceptPredictor", stack: Any, text: str, threshold: float,
                    progress: Any, cancel: Any) -> Tuple[np.ndarray, int]:
        """(Z, H, W) labels of every slice of ``stack`` (ids going on from slice to slice) and their count."""
        depth = len(stack)
        planes = []
        count = 0
        report(progress, 0, depth, "finding")
        for z in range(depth):
            check(cancel)
            labels, found = self._find_plane(predictor, stack[z], text, (), (), threshold, first_id=count + 1)
            planes.append(labels)
            count += found
            report(progress, z + 1, depth, f"slice {z + 1}/{depth}")
        return np.stack(planes), count

