"""Carrying the current object through a stack (along the last stack axis) into the preview.

With a SAM 2.1 model, "Propagate" uses memory propagation instead (:mod:`napari_sam.memory_propagation`);
the rest of this docstring is the SAM (1) slice propagation, which every other model keeps.
With prompts on two or more slices of that axis, the slices between them are filled
(``sam_core.volume.fill_between``); else the preview on the shown slice is propagated both ways
(``sam_core.volume.propagate``). Other stack axes stay at the shown slice. In "one object per prompt"
mode every object of the shown slice's preview is propagated on its own, keeping its preview value
(where two objects reach the same pixel, the lower value keeps it).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Optional

import numpy as np
from napari.utils.notifications import show_info, show_warning

from napari_sam.memory_propagation import DEFAULT_STOP_ABSENT, IMAGE_CHANGED, model_family
from sam_core.volume import STOP_IOU

if TYPE_CHECKING:
    from napari_sam.session import SamSession
    from napari_sam.workers import Job


def propagate(session: "SamSession", first: Optional[int] = None, last: Optional[int] = None,
              stop_iou: float = STOP_IOU, stop_stability: float = 0.5, min_overlap: float = 0.3,
              on_done: Optional[Callable[[np.ndarray], None]] = None,
              stop_absent: Optional[int] = DEFAULT_STOP_ABSENT) -> Optional["Job"]:
    """Propagate ``session``'s object within slices ``first``..``last`` (inclusive; None: the stack's end).
    A SAM 2.1 model propagates every object of the shown frame with memory (``stop_absent``: see
    :meth:`MemoryPropagation.run`; ``stop_iou``, ``stop_stability`` and ``min_overlap`` are SAM's)."""
    from sam_core import volume as V

    if not session.ready():
        return None
    family = model_family(session)
    if family is None:  # a checkpoint file not loaded yet: load it (off the GUI thread), then decide
        shown = session.layers.preview

        def loaded(_: Any) -> None:
            if session.layers.preview is not shown:
                show_warning(IMAGE_CHANGED)
            else:
                propagate(session, first, last, stop_iou, stop_stability, min_overlap, on_done, stop_absent)

        return session.run(lambda progress, cancel: session.predictor(progress, cancel), "SAM model", loaded)
    if family == "sam2":
        return session.memory_propagation.run(first, last, stop_absent, on_done)
    shown = session.shown_stack()
    if shown is None:
        return None
    here, axis, stack = shown
    access = session.access
    keys = [i for i in session.prompted_slices() if i[:axis] == here[:axis] and i[axis + 1:] == here[axis + 1:]]
    preparation = access.preparation()
    preview = session.layers.preview
    start_mask = preview.data[here] > 0
    logits = session.previews.logits_at(here)
    each = session.one_per_prompt
    if each:
        keys = []
        plane = np.asarray(preview.data[here])
        starts = {int(i): plane == i for i in np.unique(plane) if i > 0}
    if len(keys) < 2 and not start_mask.any():
        session.fail("Segment the object on this slice first (add a point or a box), then propagate.")
        return None
    key_prompts = [session.prompts(k) for k in keys] if len(keys) >= 2 else []

    def job(progress: Any, cancel: Any) -> np.ndarray:
        from sam_core.progress import check

        predictor = session.predictor(progress, cancel)
        index_range = None if first is None and last is None else (
            0 if first is None else first, len(stack) - 1 if last is None else last)
        with session.lock:
            if each:
                result = np.zeros((len(stack),) + start_mask.shape, np.int32)
                for done, (value, mask) in enumerate(starts.items()):
                    check(cancel)
                    found = V.propagate(
                        predictor, stack, here[axis], mask, index_range=index_range, stop_iou=stop_iou,
                        stop_stability=stop_stability, min_overlap=min_overlap, preparation=preparation,
                        cancel=cancel,
                    )
                    result[found & (result == 0)] = value
                    progress(done + 1, len(starts), f"object {done + 1}/{len(starts)}")
                return result
            if key_prompts:
                masks = {p.stack_index[axis]: session.embeddings.decode(predictor, p, preparation).masks[0]
                         for p in key_prompts}
                return V.fill_between(predictor, stack, masks, preparation=preparation,
                                      progress=progress, cancel=cancel)
            return V.propagate(
                predictor, stack, here[axis], start_mask, index_range=index_range, start_logits=logits,
                stop_iou=stop_iou, stop_stability=stop_stability, min_overlap=min_overlap,
                preparation=preparation, progress=progress, cancel=cancel,
            )

    def finished(result: np.ndarray) -> None:
        if session.layers.preview is not preview:
            show_warning(IMAGE_CHANGED)
            return
        for i in range(len(stack)):
            preview.data[stack.index(i)] = result[i].astype(np.int32)
        preview.refresh()
        count = int(result.reshape(len(result), -1).any(axis=1).sum())
        if each:
            show_info(f"{len(starts)} object(s) found on {count} slice(s); commit to keep them.")
        else:
            show_info(f"Object found on {count} slice(s); commit it to keep it.")
        if on_done is not None:
            on_done(result)

    return session.run(job, "SAM propagation", finished)
