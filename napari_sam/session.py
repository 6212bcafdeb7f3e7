"""One annotation session: an image layer, its model and the parts that do the work.

The session holds what the parts share (the chosen image, settings, the predictor pool, the
running jobs) and hands each action to its part:

* :class:`~napari_sam.layers.SessionLayers`  the ``SAM ...`` layers (points, boxes, preview, objects);
* :class:`~napari_sam.preview.PreviewScheduler`  previews of the prompts, off the GUI thread;
* :mod:`napari_sam.prompts`  prompts read from the layers;
* :class:`~napari_sam.history.EditHistory`  commits and other edits of the objects, with undo;
* :class:`~napari_sam.embeddings.Embeddings`  encoding slices or tiles;
* :mod:`napari_sam.propagation` (SAM 2.1: :class:`~napari_sam.memory_propagation.MemoryPropagation`),
  :class:`~napari_sam.automatic.AutomaticSegmentation`,
  :mod:`napari_sam.finetuning`  the longer jobs.

Coordinates: napari data are (..., row, col); prompts go to sam_core as (x, y) = (col, row) pixels
of the image plane. Stack axes (z, t, or t and z) come before the plane; propagation runs along the
last stack axis (z of (t, z, y, x)) with the other stack axes fixed at the shown slice.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, List, Optional, Sequence, Tuple

import numpy as np
from napari.utils.notifications import show_error, show_info, show_warning

from napari_sam import classes as class_table
from napari_sam import finetuning, measurements, propagation
from napari_sam.automatic import AUTO_NAME, AutomaticSegmentation
from napari_sam.editing import ObjectEditor
from napari_sam.embeddings import Embeddings, slice_text
from napari_sam.history import EditHistory
from napari_sam.image_access import ImageAccess, unwrap
from napari_sam.memory_propagation import DEFAULT_STOP_ABSENT, MemoryPropagation
from napari_sam.layers import BOXES_NAME, NEGATIVE, OBJECTS_NAME, POINTS_NAME, POSITIVE, PREVIEW_NAME, SessionLayers
from napari_sam.preview import PreviewScheduler
from napari_sam.prompts import Prompts, prompted_slices, read_prompts, toggle_label
from napari_sam.workers import Job, as_sentence
from sam_core.errors import SamError
from sam_core.models.precision import PLUGIN_PRECISION
from sam_core.pool import ModelSpec, PredictorPool
from sam_core.volume import STOP_IOU

__all__ = [
    "AUTO_NAME", "BOXES_NAME", "KEYS", "ModelChoice", "NEGATIVE", "OBJECTS_NAME", "POINTS_NAME", "POSITIVE",
    "PREVIEW_NAME", "Prompts", "SamSession", "Settings", "slice_text",
]

#: Keys the session binds on its own layers (documented in the widget): they act while one of the
#: ``SAM ...`` layers is the active layer, and leave the viewer's and other plugins' keys alone.
KEYS = {
    "Shift-T": "toggle positive / negative for new (and selected) points",
    "Shift-N": "next candidate mask",
    "Shift-C": "commit the preview as a new object",
    "Shift-X": "clear prompts and preview",
    "Shift-Z": "undo the last commit or edit of the objects",
    "1 … 9": "class of new objects (the class list in the panel)",
}


@dataclass
class ModelChoice:
    """Which model to run: a zoo ``name`` and/or a ``checkpoint`` file (see ``sam_core.pool.ModelSpec.of``)."""

    name: Optional[str] = "demo"
    checkpoint: Optional[str] = None
    label: str = ""

    def __post_init__(self) -> None:
        if not self.label:
            self.label = self.name if self.checkpoint is None else f"{self.name or 'file'}: {Path(self.checkpoint).name}"


@dataclass
class Settings:
    """What the set-up panel chooses."""

    model: ModelChoice = field(default_factory=ModelChoice)
    device: str = "cpu"
    cache_dir: Optional[str] = None
    cache_memory_bytes: int = 1 << 30
    channel_axis: Optional[int] = None
    channels: Optional[Tuple[int, ...]] = None
    #: 2D images whose longest side exceeds ``tile_above`` pixels use tiled embeddings (sam_core.tiling).
    tile_above: int = 2048
    tile_size: int = 1024
    tile_overlap: int = 128

    def spec(self) -> ModelSpec:
        """The chosen model, device and embedding cache as a ``sam_core`` :class:`ModelSpec`, at the
        plugins' precision (``auto``: the panel says which it runs)."""
        return ModelSpec.of(self.model.name, self.model.checkpoint, device=self.device, precision=PLUGIN_PRECISION,
                            cache_dir=self.cache_dir, cache_memory_bytes=self.cache_memory_bytes)


class SamSession:
    """Interactive segmentation of one napari image layer with a sam_core ``Predictor``."""

    def __init__(self, viewer: Any) -> None:
        self.viewer = viewer
        self.settings = Settings()
        self.pool = PredictorPool(size=2)
        self.access: Optional[ImageAccess] = None
        self.overwrite = False
        #: "One object per prompt": every positive point and every box is its own object (batched decode).
        self.one_per_prompt = False
        #: The class list (keys 1-9 choose one) and the class new objects get.
        self.class_list = class_table.ClassList()
        #: Held by workers while they use the predictor (one model call at a time).
        self.lock = threading.RLock()
        self.layers = SessionLayers(viewer)
        self.previews = PreviewScheduler(self)
        self.history = EditHistory()
        self.embeddings = Embeddings(self)
        self.automatic_segmentation = AutomaticSegmentation(self)
        self.memory_propagation = MemoryPropagation(self)
        self.editor = ObjectEditor(self)
        self.jobs: List[Job] = []
        self.on_candidates = self.previews.on_candidates
        #: Called with the label of new points (``positive`` or ``negative``) whenever it changes.
        self.on_label: List[Callable[[str], None]] = []
        #: Called with each new job (embeddings, propagation, automatic, fine-tuning) before it starts,
        #: so that its progress and end are never missed, however fast it is.
        self.on_job: List[Callable[[Job], None]] = []

    # ----------------------------------------------------------------------------------- layers

    @property
    def points_layer(self) -> Any:
        return self.layers.points

    @property
    def boxes_layer(self) -> Any:
        return self.layers.boxes

    @property
    def preview_layer(self) -> Any:
        return self.layers.preview

    @property
    def objects_layer(self) -> Any:
        return self.layers.objects

    @property
    def candidates(self) -> Any:
        """The last decoded candidates (a ``Prediction``) of the preview, or None."""
        return self.previews.candidates

    # ----------------------------------------------------------------------------------- set-up

    def fail(self, message: str) -> None:
        """Tell the user what is wrong (an error notification)."""
        show_error(message)

    def set_image(self, layer: Any) -> bool:
        """Use ``layer`` (a napari Image layer); False (with a notification) if it cannot be used."""
        if layer is None:
            self.fail("No image layer: open an image (or a sample from File > Open Sample > Segment Anything) and choose it.")
            return False
        try:
            access = ImageAccess(layer, self.settings.channel_axis, self.settings.channels)
        except SamError as error:
            self.fail(str(error))
            return False
        new = self.access is None or self.access.layer is not unwrap(layer) or not self.layers.fits(access)
        self.access = access
        if new:
            self._make_layers()
        return True

    def _make_layers(self) -> None:
        self.previews.invalidate()  # results of decodes still running belong to the old layers
        keys = {
            "Shift-T": self.toggle_label,
            "Shift-N": self.next_candidate,
            "Shift-C": self.commit,
            "Shift-X": self.clear,
            "Shift-Z": self.undo,
        }
        for number in range(1, 10):
            keys[str(number)] = lambda number=number: self.class_list.choose(number)
        self.layers.make(self.access, keys, self._on_prompts_changed)
        self.history.clear()
        self.editor.refining = None
        self.previews.forget()
        self._emit_label(POSITIVE)

    def _emit_label(self, label: str) -> None:
        for listener in self.on_label:
            listener(label)

    # ----------------------------------------------------------------------------------- model

    def predictor(self, progress: Any = None, cancel: Any = None) -> Any:
        """The predictor of the chosen model, device and cache, from the session's pool (call from a
        worker: a zoo model that is not here yet is downloaded first, with ``progress`` and ``cancel``)."""
        from sam_core.runtime import keep_freed_memory

        spec = self.settings.spec()
        with self.lock:
            fresh = spec not in self.pool
            predictor = self.pool.get(spec, progress=progress, cancel=cancel)
            if fresh:
                keep_freed_memory()  # the workers encode in napari's process (see sam_core.runtime)
            return predictor

    def check_model(self) -> bool:
        """Notify and return False when the chosen model file is missing (before any worker starts)."""
        from sam_core import zoo

        model = self.settings.model
        if model.checkpoint is not None:
            if not Path(model.checkpoint).is_file():
                self.fail(f"Model file {model.checkpoint} does not exist: choose another file or model.")
                return False
            return True
        try:
            info = zoo.model_info(model.name)
        except SamError as error:
            self.fail(str(error))
            return False
        if info.bundled is not None and not info.bundled.is_file():
            self.fail(f"The bundled model {model.name!r} is missing from this installation ({info.bundled}).")
            return False
        return True

    def ready(self) -> bool:
        """True when an image is chosen and the model can be loaded (else notifies)."""
        if self.access is None:
            self.fail("No image layer chosen: choose an image layer in the set-up panel first.")
            return False
        return self.check_model()

    def run(self, func: Callable[..., Any], description: str, on_result: Callable[[Any], None]) -> Job:
        """Start ``func(progress, cancel)`` in a worker; it is listed in ``jobs`` until it finishes."""
        holder: List[Job] = []

        def finished() -> None:
            if holder and holder[0] in self.jobs:
                self.jobs.remove(holder[0])

        job = Job(func, description, on_result, finished)
        holder.append(job)
        self.jobs.append(job)
        for listener in self.on_job:
            listener(job)
        return job.start()

    # ----------------------------------------------------------------------------------- prompts

    def current_index(self) -> Tuple[int, ...]:
        """Stack indices of the slice the viewer shows (empty for 2D)."""
        return self.access.stack_index(self.viewer.dims.point)

    def shown_stack(self) -> Optional[Tuple[Tuple[int, ...], int, Any]]:
        """(shown stack index, the axis propagation runs along (the last stack axis), the stack through the
        shown slice along it), or None with a message for a 2D image."""
        if not self.access.stack_shape:
            self.fail("Propagation needs a stack (z or t): this image is 2D.")
            return None
        here = self.current_index()
        axis = len(here) - 1
        return here, axis, self.access.volume(here, axis)

    def prompts(self, stack_index: Optional[Tuple[int, ...]] = None) -> Optional[Prompts]:
        """The prompts on one slice (default: the shown one), or None if there are none."""
        if self.access is None or self.layers.points is None:
            return None
        index = self.current_index() if stack_index is None else tuple(stack_index)
        return read_prompts(self.layers.points, self.layers.boxes, index, len(self.access.spatial_shape))

    def prompted_slices(self) -> List[Tuple[int, ...]]:
        """Stack indices of all slices that hold prompts."""
        return prompted_slices(self.layers.points, self.layers.boxes, len(self.access.stack_shape))

    def toggle_label(self) -> str:
        """Switch new points between positive and negative; in select mode the selected points switch too."""
        if self.layers.points is None:
            return POSITIVE
        new, changed = toggle_label(self.layers.points)
        if changed:
            self.request_preview()
        show_info(f"New points are {new}.")
        self._emit_label(new)
        return new

    # ----------------------------------------------------------------------------------- preview

    def _on_prompts_changed(self, event: Any = None) -> None:
        action = str(getattr(event, "action", "")).lower()
        if action.endswith("ing"):  # napari announces "adding", "removing", "changing" before the change
            return
        self.request_preview()

    def request_preview(self) -> None:
        """Decode the shown slice's prompts off the GUI thread (newest request wins)."""
        self.previews.request()

    def next_candidate(self) -> Optional[float]:
        """Show the next candidate mask of the current prediction; returns its predicted IoU."""
        return self.previews.next_candidate()

    # ----------------------------------------------------------------------------------- commit

    def commit(self) -> Optional[int]:
        """Write the preview into ``SAM objects`` under a new id (one per preview object in "one object
        per prompt" mode, in one undo step); clears prompts. Returns the first new id.

        Pixels of other objects are kept unless ``overwrite`` is set.
        """
        if self.layers.preview is None:
            self.fail("Nothing to commit: start a session first.")
            return None
        if self.editor.refining is not None:
            return self.editor.finish_refine()
        new_ids = self.history.commit(self.layers.objects, self.layers.preview.data, self.overwrite)
        if not new_ids:
            show_warning("Nothing to commit: the preview is empty (or covered by committed objects).")
            return None
        if len(new_ids) > 1:
            show_info(f"Committed {len(new_ids)} objects (ids {new_ids[0]} to {new_ids[-1]}).")
        self.label_new(new_ids)
        self.clear()
        return new_ids[0]

    # ----------------------------------------------------------------------------------- classes

    def label_new(self, ids: Sequence[int]) -> None:
        """Give new objects ``ids`` the current class (stored in the objects layer's features)."""
        if self.class_list.current is not None and ids:
            class_table.set_classes(self.layers.objects, ids, self.class_list.current)

    def set_class(self, ids: Sequence[int], name: Optional[str]) -> None:
        """Give the objects ``ids`` the class ``name`` (None: no class)."""
        if not ids:
            self.fail("Type the ids of the objects in the 'Object ids' box first.")
            return
        class_table.set_classes(self.layers.objects, ids, name)

    def export_labels(self, path: str) -> Optional[str]:
        """Write the objects as a TIFF at ``path`` and their classes as ``<name>.classes.csv`` (id, class)."""
        if self.layers.objects is None:
            self.fail("Start a session first: there are no objects to export.")
            return None
        return class_table.export_labels(self.layers.objects, path)

    def edit(self, action: str, ids: Sequence[int] = ()) -> Any:
        """Run one edit of the objects (see :class:`ObjectEditor`): ``accept`` (ids: all when empty),
        ``delete``, ``merge``, ``split`` or ``refine`` (one id); a bad request notifies and returns None."""
        try:
            if action == "accept":
                return self.editor.accept(list(ids) or None)
            if action == "delete":
                return self.editor.delete(self._need_ids(ids, 1))
            if action == "merge":
                return self.editor.merge(self._need_ids(ids, 2))
            if action == "split":
                return self.editor.split()
            if action == "refine":
                return self.editor.start_refine(self._need_ids(ids, 1)[0])
        except SamError as error:
            self.fail(as_sentence(error))
            return None
        raise ValueError(f"unknown edit {action!r}")

    @staticmethod
    def _need_ids(ids: Sequence[int], count: int) -> list:
        if len(ids) < count:
            raise SamError(f"type {'an object id' if count == 1 else f'{count} or more object ids'} in the 'Object ids' box "
                           "(ids are the values of the SAM objects layer: hover over an object to see its id)")
        return list(ids)

    def undo(self) -> Optional[int]:
        """Undo the last edit of the objects; returns the (first) id it made."""
        edit = self.history.undo(self.layers.objects) if self.layers.objects is not None else None
        if edit is None:
            show_info("Nothing to undo.")
            return None
        return edit.ids[0] if edit.ids else None

    def clear(self) -> None:
        """Remove all prompts and the preview."""
        if self.layers.points is None:
            return
        self.editor.refining = None
        self.previews.invalidate()
        self.layers.clear_prompts()
        self.previews.forget()

    # ----------------------------------------------------------------------------------- jobs

    def compute_embeddings(self, all_slices: bool = False, on_done: Optional[Callable[[int], None]] = None) -> Optional[Job]:
        """Encode the shown slice, or every slice of the stack (see :meth:`Embeddings.compute`)."""
        return self.embeddings.compute(all_slices, on_done)

    def propagate(self, first: Optional[int] = None, last: Optional[int] = None, stop_iou: float = STOP_IOU,
                  stop_stability: float = 0.5, min_overlap: float = 0.3,
                  on_done: Optional[Callable[[np.ndarray], None]] = None,
                  stop_absent: Optional[int] = DEFAULT_STOP_ABSENT) -> Optional[Job]:
        """Carry the object through the stack into the preview, or with SAM 2.1 every object of the shown
        frame into the objects (see :func:`napari_sam.propagation.propagate`)."""
        return propagation.propagate(self, first, last, stop_iou, stop_stability, min_overlap, on_done, stop_absent)

    def automatic(self, whole_stack: bool = False, params: Optional[dict] = None, link_iou: float = 0.3,
                  on_done: Optional[Callable[[np.ndarray], None]] = None) -> Optional[Job]:
        """Automatic masks of the shown image/slice (or the whole stack, linked in 3D) into the image's
        ``SAM automatic (<image name>)`` layer (see :class:`AutomaticSegmentation`)."""
        return self.automatic_segmentation.run(whole_stack, params, link_iou, on_done)

    def finetune(self, output: str, epochs: int = 5, on_done: Optional[Callable[[ModelChoice], None]] = None) -> Optional[Job]:
        """Fine-tune the chosen model's mask decoder on the committed objects; writes ``output``."""
        return finetuning.finetune(self, output, epochs, on_done)

    def measure(self, path: str, on_done: Optional[Callable[[dict], None]] = None) -> Optional[Job]:
        """Export per-object measurements of the committed objects to ``path`` (CSV; see
        :func:`napari_sam.measurements.export`)."""
        return measurements.export(self, path, on_done)

    def cancel_all(self) -> None:
        """Ask every running job to stop."""
        for job in list(self.jobs):
            job.cancel()

    @property
    def busy(self) -> bool:
        """True while a job or a preview decode runs or waits."""
        return bool(self.jobs) or self.previews.busy

    def wait(self, timeout_ms: int = 60000) -> None:
        """Process Qt events until no job runs (for scripts and tests)."""
        import time

        from qtpy.QtWidgets import QApplication

        end = time.monotonic() + timeout_ms / 1000
        while self.busy and time.monotonic() < end:
            QApplication.processEvents()
            time.sleep(0.01)
