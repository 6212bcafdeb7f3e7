"""The state of one annotation session: napari layers <-> sam_core calls in worker threads.

Layers the session owns (created on :meth:`SamSession.start`, with the image's scale and translate
so that outputs keep the image's geometry):

* ``SAM points``  Points: clicks; feature ``label`` is ``positive`` (green) or ``negative`` (red).
* ``SAM boxes``   Shapes: rectangles (the last one on a slice is the box prompt).
* ``SAM preview`` Labels: the current object (value 1) on every slice where it is segmented.
* ``SAM objects`` Labels: committed objects, one id each.

Coordinates: napari data are (..., row, col); prompts go to sam_core as (x, y) = (col, row) pixels
of the image plane. Stack axes (z, t, or t and z) come before the plane; propagation runs along the
last stack axis (z of (t, z, y, x)) with the other stack axes fixed at the shown slice.

Model work runs off the GUI thread. Previews are decoded by one worker at a time; a change while
one is decoding queues only the newest request, and results of older requests are dropped.
"""

from __future__ import annotations

import itertools
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np
import pandas as pd
from napari.utils.notifications import show_error, show_info, show_warning

from napari_sam.image_access import ImageAccess, unwrap
from napari_sam.workers import Job, start_job
from sam_core.errors import SamError
from sam_core.volume import STOP_IOU

POINTS_NAME = "SAM points"
BOXES_NAME = "SAM boxes"
PREVIEW_NAME = "SAM preview"
OBJECTS_NAME = "SAM objects"
AUTO_NAME = "SAM automatic"

POSITIVE, NEGATIVE = "positive", "negative"

#: Keys the session binds on its own layers (documented in the widget): they act while one of the
#: ``SAM ...`` layers is the active layer, and leave the viewer's and other plugins' keys alone.
KEYS = {
    "Shift-T": "toggle positive / negative for new (and selected) points",
    "Shift-N": "next candidate mask",
    "Shift-C": "commit the preview as a new object",
    "Shift-X": "clear prompts and preview",
    "Shift-Z": "undo the last commit",
}



def slice_text(index: Tuple[int, ...]) -> str:
    """``index`` (stack indices) for people: ``slice 3``, ``slice 1, 3`` or ``image`` (2D)."""
    return "slice " + ", ".join(str(int(i)) for i in index) if index else "image"


@dataclass
class ModelChoice:
    """Which model to run: a zoo ``name`` and/or a ``checkpoint`` file (see ``sam_core.zoo.load_model``)."""

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


@dataclass
class Prompts:
    """Prompts on one slice: points (N, 2) as (x, y) pixels, labels (N,), box (x0, y0, x1, y1) or None."""

    stack_index: Tuple[int, ...]
    points: Optional[np.ndarray]
    labels: Optional[np.ndarray]
    box: Optional[np.ndarray]


def _renamed(progress: Any, unit: str) -> Any:
    """``progress`` with its messages replaced by ``"<unit> done/total"``."""
    if progress is None:
        return None
    return lambda done, total, message="": progress(done, total, f"{unit} {done}/{total}")


class SamSession:
    """Interactive segmentation of one napari image layer with a sam_core ``Predictor``."""

    def __init__(self, viewer: Any) -> None:
        self.viewer = viewer
        self.settings = Settings()
        self.access: Optional[ImageAccess] = None
        self.points_layer = None
        self.boxes_layer = None
        self.preview_layer = None
        self.objects_layer = None
        self.candidates = None  # Prediction of the current slice
        self.candidate_index = 0
        self.candidate_slice: Tuple[int, ...] = ()
        self.overwrite = False
        self._predictors: Dict[tuple, Any] = {}
        self._lock = threading.RLock()
        self._generation = 0
        self._pending: Optional[Tuple[int, Prompts]] = None
        self._decoding: Optional[Job] = None
        self._undo: List[Tuple[Tuple[np.ndarray, ...], np.ndarray, int]] = []
        self._automatic_layers: List[Tuple[Any, Any]] = []  # (image layer, its SAM automatic layer)
        self.jobs: List[Job] = []
        self.on_candidates: List[Callable[[Optional[np.ndarray], int], None]] = []
        #: Called with the label of new points (``positive`` or ``negative``) whenever it changes.
        self.on_label: List[Callable[[str], None]] = []
        #: Called with each new job (embeddings, propagation, automatic, fine-tuning) before it starts,
        #: so that its progress and end are never missed, however fast it is.
        self.on_job: List[Callable[[Job], None]] = []

    # ----------------------------------------------------------------------------------- set-up

    def _fail(self, message: str) -> None:
        show_error(message)

    def set_image(self, layer: Any) -> bool:
        """Use ``layer`` (a napari Image layer); False (with a notification) if it cannot be used."""
        if layer is None:
            self._fail("No image layer: open an image (or a sample from File > Open Sample > Segment Anything) and choose it.")
            return False
        try:
            access = ImageAccess(layer, self.settings.channel_axis, self.settings.channels)
        except SamError as error:
            self._fail(str(error))
            return False
        if self.access is None or self.access.layer is not unwrap(layer) or self._spatial_changed(access):
            self.access = access
            self._make_layers()
        else:
            self.access = access
        return True

    def _spatial_changed(self, access: ImageAccess) -> bool:
        return self.preview_layer is None or tuple(self.preview_layer.data.shape) != access.spatial_shape

    def _layer_kwargs(self) -> dict:
        return {"scale": self.access.scale, "translate": self.access.translate}

    def _replace_layer(self, name: str, layer: Any) -> Any:
        """Put ``layer`` in the viewer instead of the layer called ``name``; returns ``layer`` itself."""
        if name in self.viewer.layers:
            self.viewer.layers.remove(name)
        self.viewer.add_layer(layer)
        return layer

    def _objects_layer(self, shape: Tuple[int, ...], kw: dict) -> Any:
        """The committed objects layer: reused when it fits the image, and never deleted with objects in it."""
        from napari.layers import Labels

        if OBJECTS_NAME in self.viewer.layers:
            old = unwrap(self.viewer.layers[OBJECTS_NAME])
            same = tuple(old.data.shape) == shape and np.allclose(old.scale, kw["scale"]) \
                and np.allclose(old.translate, kw["translate"])
            if same:
                return old
            if np.any(old.data):
                old.name = f"{OBJECTS_NAME} (previous image)"  # napari keeps names unique
        return self._replace_layer(OBJECTS_NAME, Labels(np.zeros(shape, np.int32), name=OBJECTS_NAME, **kw))

    def _make_layers(self) -> None:
        from napari.layers import Labels, Points, Shapes

        self._generation += 1  # results of decodes still running belong to the old layers
        self._pending = None
        shape = self.access.spatial_shape
        ndim = len(shape)
        kw = self._layer_kwargs()
        self.objects_layer = self._objects_layer(shape, kw)
        self.preview_layer = self._replace_layer(
            PREVIEW_NAME, Labels(np.zeros(shape, np.uint8), name=PREVIEW_NAME, opacity=0.6, **kw)
        )
        self.boxes_layer = self._replace_layer(
            BOXES_NAME,
            Shapes(ndim=ndim, name=BOXES_NAME, face_color="transparent", edge_color="yellow", edge_width=2, **kw),
        )
        features = pd.DataFrame({"label": pd.Categorical([], categories=[POSITIVE, NEGATIVE])})
        self.points_layer = self._replace_layer(
            POINTS_NAME,
            Points(
                np.zeros((0, ndim)), ndim=ndim, name=POINTS_NAME, features=features, face_color="label",
                face_color_cycle={POSITIVE: "lime", NEGATIVE: "red"}, size=8, **kw,
            ),
        )
        self.points_layer.feature_defaults["label"] = POSITIVE
        self.points_layer.mode = "add"
        self.points_layer.events.data.connect(self._on_prompts_changed)
        self.boxes_layer.events.data.connect(self._on_prompts_changed)
        for layer in (self.points_layer, self.boxes_layer, self.preview_layer, self.objects_layer):
            self._bind_keys(layer)
        self._undo.clear()
        self.candidates = None
        self._emit_candidates()
        self._emit_label(POSITIVE)

    def _bind_keys(self, layer: Any) -> None:
        """Bind the session's keys (see :data:`KEYS`) on one of its own layers."""
        actions = {
            "Shift-T": self.toggle_label,
            "Shift-N": self.next_candidate,
            "Shift-C": self.commit,
            "Shift-X": self.clear,
            "Shift-Z": self.undo,
        }
        for key, action in actions.items():
            # overwrite: the objects layer is kept across sessions and already holds these keys
            layer.bind_key(key, lambda _layer, action=action: action(), overwrite=True)

    def _emit_label(self, label: str) -> None:
        for listener in self.on_label:
            listener(label)

    # ----------------------------------------------------------------------------------- model

    def predictor(self, progress: Any = None, cancel: Any = None) -> Any:
        """The predictor of the chosen model, device and cache (created once; call from a worker).

        A zoo model that is not here yet is downloaded first, with ``progress`` and ``cancel``.
        """
        from sam_core import zoo
        from sam_core.cache import EmbeddingCache
        from sam_core.predictor import Predictor
        from sam_core.runtime import keep_freed_memory

        s = self.settings
        key = (s.model.name, s.model.checkpoint, s.device, s.cache_dir)
        with self._lock:
            predictor = self._predictors.get(key)
            if predictor is None:
                if s.model.checkpoint is not None and not Path(s.model.checkpoint).is_file():
                    raise SamError(f"model file {s.model.checkpoint} does not exist: choose another file or model")
                if s.model.checkpoint is None:
                    zoo.ensure_checkpoint(s.model.name, progress=progress, cancel=cancel)
                cache = EmbeddingCache(memory_bytes=s.cache_memory_bytes, directory=s.cache_dir)
                predictor = Predictor(s.model.name, checkpoint=s.model.checkpoint, device=s.device, cache=cache)
                keep_freed_memory()  # the workers encode in napari's process (see sam_core.runtime)
                self._predictors[key] = predictor
            return predictor

    def check_model(self) -> bool:
        """Notify and return False when the chosen model file is missing (before any worker starts)."""
        from sam_core import zoo

        model = self.settings.model
        if model.checkpoint is not None:
            if not Path(model.checkpoint).is_file():
                self._fail(f"Model file {model.checkpoint} does not exist: choose another file or model.")
                return False
            return True
        try:
            info = zoo.model_info(model.name)
        except SamError as error:
            self._fail(str(error))
            return False
        if info.bundled is not None and not info.bundled.is_file():
            self._fail(f"The bundled model {model.name!r} is missing from this installation ({info.bundled}).")
            return False
        return True

    def _tiled(self) -> bool:
        return not self.access.stack_shape and max(self.access.plane_shape) > self.settings.tile_above

    def _tiled_predictor(self, predictor: Any, preparation: Any) -> Any:
        """The tiled predictor of this (2D, large) image; tiles are read lazily from the layer's data."""
        from sam_core.tiling import TiledPredictor

        s = self.settings
        key = (id(predictor), id(self.access.layer), preparation, s.tile_size, s.tile_overlap)
        if getattr(self, "_tiled_key", None) != key:
            self._tiled_key = key
            self._tiled_cache = TiledPredictor(
                predictor, self.access.lazy_plane(()), tile_size=s.tile_size, overlap=s.tile_overlap,
                preparation=preparation,
            )
        return self._tiled_cache

    def _embed(self, predictor: Any, stack_index: Tuple[int, ...], preparation: Any,
               progress: Any = None, cancel: Any = None) -> Any:
        """Encode one slice (through the predictor's cache); a large 2D image: all of its tiles."""
        if self._tiled():
            tiled = self._tiled_predictor(predictor, preparation)
            tiled.encode_all(progress=progress, cancel=cancel)
            return tiled
        image = self.access.plane(stack_index)
        finite = image[np.isfinite(image)] if np.issubdtype(image.dtype, np.floating) else image
        if finite.size == 0 or finite.min() == finite.max():
            where = slice_text(stack_index) if stack_index else "the image"
            raise SamError(f"{where} is empty (no valid pixels, or all pixels have one value): nothing to segment")
        return predictor.encode(image, preparation=preparation)

    def _decode(self, predictor: Any, prompts: Prompts, preparation: Any) -> Any:
        """Candidates for one slice's prompts: a ``Prediction`` (tiled images: one candidate, no logits)."""
        from sam_core.predictor import Prediction

        if self._tiled():
            tiled = self._tiled_predictor(predictor, preparation)
            result = tiled.predict(points=prompts.points, labels=prompts.labels, box=prompts.box)
            mask = np.zeros(self.access.plane_shape, bool)
            piece = result.piece
            mask[piece.y0 : piece.y0 + piece.mask.shape[0], piece.x0 : piece.x0 + piece.mask.shape[1]] = piece.mask
            return Prediction(masks=mask[None], scores=np.array([result.score], np.float32), logits=None)
        embedding = self._embed(predictor, prompts.stack_index, preparation)
        return predictor.predict(embedding, prompts.points, prompts.labels, prompts.box)

    def _ready(self) -> bool:
        if self.access is None:
            self._fail("No image layer chosen: choose an image layer in the set-up panel first.")
            return False
        return self.check_model()

    # ----------------------------------------------------------------------------------- prompts

    def current_index(self) -> Tuple[int, ...]:
        """Stack indices of the slice the viewer shows (empty for 2D)."""
        return self.access.stack_index(self.viewer.dims.point)

    def prompts(self, stack_index: Optional[Tuple[int, ...]] = None) -> Optional[Prompts]:
        """The prompts on one slice (default: the shown one), or None if there are none."""
        if self.access is None or self.points_layer is None:
            return None
        index = self.current_index() if stack_index is None else tuple(stack_index)
        nstack = len(index)
        data = np.asarray(self.points_layer.data, dtype=float).reshape(-1, len(self.access.spatial_shape))
        on = np.all(np.round(data[:, :nstack]) == np.asarray(index), axis=1) if nstack else np.ones(len(data), bool)
        points = labels = None
        if on.any():
            points = data[on][:, [-1, -2]].astype(np.float32)
            kinds = np.asarray(self.points_layer.features["label"])[on]
            labels = (kinds != NEGATIVE).astype(np.int64)
        box = None
        for vertices in reversed(list(self.boxes_layer.data)):
            vertices = np.asarray(vertices, dtype=float)
            if nstack and not np.all(np.round(vertices[:, :nstack]) == np.asarray(index)):
                continue
            rows, cols = vertices[:, -2], vertices[:, -1]
            box = np.array([cols.min(), rows.min(), cols.max(), rows.max()], dtype=np.float32)
            break
        if points is None and box is None:
            return None
        return Prompts(index, points, labels, box)

    def prompted_slices(self) -> List[Tuple[int, ...]]:
        """Stack indices of all slices that hold prompts."""
        nstack = len(self.access.stack_shape)
        if not nstack:
            return [()] if self.prompts(()) is not None else []
        found = set()
        for row in np.asarray(self.points_layer.data, dtype=float):
            found.add(tuple(int(v) for v in np.round(row[:nstack])))
        for vertices in self.boxes_layer.data:
            found.add(tuple(int(v) for v in np.round(np.asarray(vertices)[0, :nstack])))
        return sorted(found)

    def toggle_label(self) -> str:
        """Switch new points between positive and negative; in select mode the selected points switch too."""
        layer = self.points_layer
        if layer is None:
            return POSITIVE
        current = layer.feature_defaults["label"].iloc[0] if hasattr(layer.feature_defaults["label"], "iloc") else layer.feature_defaults["label"]
        new = NEGATIVE if current == POSITIVE else POSITIVE
        layer.feature_defaults["label"] = new
        selected = sorted(layer.selected_data) if str(layer.mode) == "select" else []
        if selected:
            features = layer.features.copy()
            features.loc[selected, "label"] = new
            layer.features = features
            layer.refresh_colors()
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
        if self.access is None:
            return
        self._generation += 1
        prompts = self.prompts()
        if prompts is None:
            self._set_preview_plane(self.current_index(), None)
            self.candidates = None
            self._emit_candidates()
            return
        if not self.check_model():
            return
        self._pending = (self._generation, prompts)
        if self._decoding is None:
            self._start_decode()

    def _start_decode(self) -> None:
        if self._pending is None:
            return
        generation, prompts = self._pending
        self._pending = None
        preparation = self.access.preparation()

        def job(progress: Any, cancel: Any) -> Any:
            predictor = self.predictor(progress, cancel)
            with self._lock:
                prediction = self._decode(predictor, prompts, preparation)
            return generation, prompts.stack_index, prediction

        self._decoding = start_job(job, "SAM model", self._on_decoded, self._decode_finished)

    def _decode_finished(self) -> None:
        self._decoding = None
        self._start_decode()

    def _on_decoded(self, result: Tuple[int, Tuple[int, ...], Any]) -> None:
        generation, index, prediction = result
        if generation != self._generation:
            return  # stale: the prompts changed since this request
        self.candidates = prediction
        self.candidate_slice = index
        self.candidate_index = 0
        self._show_candidate()

    def _show_candidate(self) -> None:
        mask = None if self.candidates is None else self.candidates.masks[self.candidate_index]
        self._set_preview_plane(self.candidate_slice, mask)
        self._emit_candidates()

    def _emit_candidates(self) -> None:
        scores = None if self.candidates is None else np.asarray(self.candidates.scores)
        for listener in self.on_candidates:
            listener(scores, self.candidate_index)

    def _set_preview_plane(self, index: Tuple[int, ...], mask: Optional[np.ndarray]) -> None:
        data = self.preview_layer.data
        data[index] = 0 if mask is None else np.asarray(mask, dtype=np.uint8)
        self.preview_layer.refresh()

    def next_candidate(self) -> Optional[float]:
        """Show the next candidate mask of the current prediction; returns its predicted IoU."""
        if self.candidates is None:
            show_info("No candidates yet: add a point or a box.")
            return None
        count = len(self.candidates.scores)
        if count == 1:
            show_info("Only one candidate for these prompts (one point alone gives three).")
        self.candidate_index = (self.candidate_index + 1) % count
        self._show_candidate()
        return float(self.candidates.scores[self.candidate_index])

    # ----------------------------------------------------------------------------------- commit

    def commit(self) -> Optional[int]:
        """Write the preview into ``SAM objects`` under a new id; clears prompts. Returns the id.

        Pixels of other objects are kept unless ``overwrite`` is set.
        """
        if self.preview_layer is None:
            self._fail("Nothing to commit: start a session first.")
            return None
        mask = self.preview_layer.data > 0
        if not self.overwrite:
            mask &= self.objects_layer.data == 0
        if not mask.any():
            show_warning("Nothing to commit: the preview is empty (or covered by committed objects).")
            return None
        data = self.objects_layer.data
        new_id = int(data.max()) + 1
        where = np.nonzero(mask)
        self._undo.append((where, data[where].copy(), new_id))
        data[where] = new_id
        self.objects_layer.refresh()
        self.clear()
        return new_id

    def undo(self) -> Optional[int]:
        """Undo the last commit; returns the id removed."""
        if not self._undo:
            show_info("Nothing to undo.")
            return None
        where, old, object_id = self._undo.pop()
        self.objects_layer.data[where] = old
        self.objects_layer.refresh()
        return object_id

    def clear(self) -> None:
        """Remove all prompts and the preview."""
        if self.points_layer is None:
            return
        self._generation += 1
        self._pending = None
        with self.points_layer.events.data.blocker(), self.boxes_layer.events.data.blocker():
            self.points_layer.data = np.zeros((0, self.points_layer.ndim))
            self.boxes_layer.data = []
        self.preview_layer.data[...] = 0
        self.preview_layer.refresh()
        self.candidates = None
        self._emit_candidates()

    # ----------------------------------------------------------------------------------- embeddings

    def compute_embeddings(self, all_slices: bool = False, on_done: Optional[Callable[[int], None]] = None) -> Optional[Job]:
        """Encode the shown slice, or every slice of the stack (cached on disk, so a rerun resumes).

        ``on_done(encoder_runs)`` receives how many times the encoder really ran in this job.
        """
        if not self._ready():
            return None
        access = self.access
        indices = list(itertools.product(*[range(n) for n in access.stack_shape])) if all_slices else [self.current_index()]
        preparation = access.preparation()

        def job(progress: Any, cancel: Any) -> int:
            from sam_core.progress import check

            predictor = self.predictor(progress, cancel)
            before = predictor.encoder_runs
            for done, index in enumerate(indices):
                check(cancel)
                with self._lock:
                    self._embed(predictor, index, preparation, None, cancel)
                progress(done + 1, len(indices), slice_text(index))
            return predictor.encoder_runs - before

        def finished(runs: int) -> None:
            show_info(f"Embeddings ready ({runs} computed, {len(indices) - runs} from the cache)." if len(indices) > 1
                      else ("Embedding computed." if runs else "Embedding loaded from the cache."))
            if on_done is not None:
                on_done(runs)

        return self._run(job, "SAM embeddings", finished)

    def _run(self, func: Callable[..., Any], description: str, on_result: Callable[[Any], None]) -> Job:
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

    # ----------------------------------------------------------------------------------- volumes

    def propagate(self, first: Optional[int] = None, last: Optional[int] = None, stop_iou: float = STOP_IOU,
                  stop_stability: float = 0.5, min_overlap: float = 0.3,
                  on_done: Optional[Callable[[np.ndarray], None]] = None) -> Optional[Job]:
        """Carry the object through the stack (last stack axis) into the preview.

        With prompts on two or more slices of that axis, the slices between them are filled
        (``sam_core.volume.fill_between``); else the preview on the shown slice is propagated both
        ways (``sam_core.volume.propagate``) within ``first``..``last`` (inclusive slice indices).
        """
        from sam_core import volume as V

        if not self._ready():
            return None
        if not self.access.stack_shape:
            self._fail("Propagation needs a stack (z or t): this image is 2D.")
            return None
        here = self.current_index()
        axis = len(here) - 1
        stack = self.access.volume(here, axis)
        keys = [i for i in self.prompted_slices() if i[:axis] == here[:axis] and i[axis + 1:] == here[axis + 1:]]
        preparation = self.access.preparation()
        start_mask = self.preview_layer.data[here] > 0
        logits = None
        if self.candidates is not None and self.candidate_slice == here:
            logits = self.candidates.logits[self.candidate_index]
        if len(keys) < 2 and not start_mask.any():
            self._fail("Segment the object on this slice first (add a point or a box), then propagate.")
            return None
        key_prompts = [self.prompts(k) for k in keys] if len(keys) >= 2 else []
        preview = self.preview_layer

        def job(progress: Any, cancel: Any) -> np.ndarray:
            predictor = self.predictor(progress, cancel)
            with self._lock:
                if key_prompts:
                    masks = {}
                    for p in key_prompts:
                        masks[p.stack_index[axis]] = self._decode(predictor, p, preparation).masks[0]
                    return V.fill_between(predictor, stack, masks, preparation=preparation,
                                          progress=progress, cancel=cancel)
                index_range = None if first is None and last is None else (
                    0 if first is None else first, len(stack) - 1 if last is None else last)
                return V.propagate(
                    predictor, stack, here[axis], start_mask, index_range=index_range, start_logits=logits,
                    stop_iou=stop_iou, stop_stability=stop_stability, min_overlap=min_overlap,
                    preparation=preparation, progress=progress, cancel=cancel,
                )

        def finished(result: np.ndarray) -> None:
            if self.preview_layer is not preview:
                show_warning("The image changed while propagating: the result was dropped. Propagate again.")
                return
            for i in range(len(stack)):
                self.preview_layer.data[stack.index(i)] = result[i].astype(np.uint8)
            self.preview_layer.refresh()
            count = int(result.reshape(len(result), -1).any(axis=1).sum())
            show_info(f"Object found on {count} slice(s); commit it to keep it.")
            if on_done is not None:
                on_done(result)

        return self._run(job, "SAM propagation", finished)

    # ----------------------------------------------------------------------------------- automatic

    def automatic(self, whole_stack: bool = False, params: Optional[dict] = None, link_iou: float = 0.3,
                  on_done: Optional[Callable[[np.ndarray], None]] = None) -> Optional[Job]:
        """Automatic masks of the shown image/slice (or the whole stack, linked in 3D) into the image's
        ``SAM automatic (<image name>)`` layer (one per image, kept when another image is segmented)."""
        from sam_core.automask import AutomaticMaskGenerator, masks_to_labels
        from sam_core import volume as V

        if not self._ready():
            return None
        access = self.access
        params = dict(params or {})
        preparation = access.preparation()
        here = self.current_index()
        if whole_stack and not access.stack_shape:
            whole_stack = False
        tiled = self._tiled()
        s = self.settings
        kw = self._layer_kwargs()

        def job(progress: Any, cancel: Any) -> Tuple[Tuple[int, ...], np.ndarray]:
            generator = AutomaticMaskGenerator(self.predictor(progress, cancel), **params)

            def segment(image: np.ndarray, **options: Any) -> np.ndarray:
                with self._lock:
                    records = generator.generate(image, preparation=preparation, **options)
                return masks_to_labels(records, image.shape[:2])

            if tiled:
                from sam_core.imaging import prepare_image
                from sam_core.tiling import automask_tiled, pieces_to_labels, remove_overlaps

                rgb, _ = prepare_image(access.plane(()), preparation)
                pieces = automask_tiled(rgb, generator, tile_size=s.tile_size, overlap=s.tile_overlap,
                                        progress=progress, cancel=cancel)
                return (), pieces_to_labels(remove_overlaps(pieces), rgb.shape[:2])
            if whole_stack:
                axis = len(here) - 1
                stack = access.volume(here, axis)
                labels = V.automask_volume(segment, stack, min_iou=link_iou, progress=progress, cancel=cancel)
                return here[:axis], labels
            return here, segment(access.plane(here), progress=_renamed(progress, "point batch"), cancel=cancel)

        def finished(result: Tuple[Tuple[int, ...], np.ndarray]) -> None:
            index, labels = result
            layer = self._automatic_layer(access, kw)  # the image segmented, even if another is chosen now
            layer.data[index] = labels
            layer.refresh()
            show_info(f"Automatic segmentation: {int(len(np.unique(labels)) - 1)} object(s).")
            if on_done is not None:
                on_done(labels)

        return self._run(job, "SAM automatic", finished)

    def _automatic_layer(self, access: ImageAccess, kw: dict) -> Any:
        """The ``SAM automatic`` layer of ``access``'s image: reused while it is in the viewer, else new."""
        from napari.layers import Labels

        shape = access.spatial_shape
        for image, layer in self._automatic_layers:
            if image is access.layer and layer in self.viewer.layers and tuple(layer.data.shape) == shape:
                return layer
        layer = Labels(np.zeros(shape, np.int32), name=f"{AUTO_NAME} ({access.layer.name})", **kw)
        self.viewer.add_layer(layer)
        self._automatic_layers = [(i, l) for i, l in self._automatic_layers if l in self.viewer.layers]
        self._automatic_layers.append((access.layer, layer))
        return layer

    # ----------------------------------------------------------------------------------- fine-tuning

    def finetune(self, output: str, epochs: int = 5, on_done: Optional[Callable[[ModelChoice], None]] = None) -> Optional[Job]:
        """Fine-tune the chosen model's mask decoder on the committed objects; writes ``output``.

        Every plane holding committed objects is one training image, prepared as the model sees it
        (contrast limits, channels), with the committed ids as its instance labels. A fresh copy of
        the model is trained (sam_core.train.finetune, encoder frozen, all planes used for training);
        ``on_done`` receives the new :class:`ModelChoice` (the same configuration, the new file).
        """
        if not self._ready():
            return None
        objects = self.objects_layer.data
        planes = [idx for idx in itertools.product(*[range(n) for n in self.access.stack_shape]) if objects[idx].any()]
        if not planes:
            self._fail("Commit some objects first: fine-tuning trains on the committed annotations.")
            return None
        if self._tiled():
            self._fail("Fine-tuning from a tiled (very large) image is not supported here: "
                       "export crops and run python -m sam_core finetune.")
            return None
        labels = [np.asarray(objects[idx]) for idx in planes]
        preparation = self.access.preparation()
        base, device = self.settings.model, self.settings.device
        access = self.access

        def job(progress: Any, cancel: Any) -> str:
            from sam_core.imaging import prepare_image
            from sam_core.train.finetune import finetune
            from sam_core.zoo import load_model

            images = [prepare_image(access.plane(idx), preparation)[0] for idx in planes]
            model = load_model(base.name, base.checkpoint, device=device)
            finetune(model, images, labels, epochs=epochs, val_fraction=0.0, checkpoint_path=output,
                     resume=False, progress=progress, cancel=cancel)
            return output

        def finished(path: str) -> None:
            choice = ModelChoice(base.name, path, label=f"fine-tuned: {Path(path).name}")
            show_info(f"Fine-tuned model written to {path}; it is now in the model list.")
            if on_done is not None:
                on_done(choice)

        return self._run(job, "SAM fine-tuning", finished)

    # ----------------------------------------------------------------------------------- misc

    def cancel_all(self) -> None:
        """Ask every running job to stop."""
        for job in list(self.jobs):
            job.cancel()

    @property
    def busy(self) -> bool:
        """True while a job or a preview decode runs or waits."""
        return bool(self.jobs) or self._decoding is not None or self._pending is not None

    def wait(self, timeout_ms: int = 60000) -> None:
        """Process Qt events until no job runs (for scripts and tests)."""
        import time

        from qtpy.QtWidgets import QApplication

        end = time.monotonic() + timeout_ms / 1000
        while self.busy and time.monotonic() < end:
            QApplication.processEvents()
            time.sleep(0.01)
