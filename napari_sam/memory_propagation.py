"""Propagation with memory (SAM 2.1) in napari: every object of the shown frame through z or t at once.

"Propagate" with a SAM 2.1 model runs :class:`sam_core.propagation.VideoSession` along the last stack
axis (z of (z, y, x), t of (t, y, x), z of (t, z, y, x); other stack axes stay at the shown slice).

The objects of a run are those on the shown frame, each given to SAM 2.1 as a *mask prompt*, so what
is propagated is what the user sees:

* committed objects on the frame (``SAM objects``), under their own label id;
* the preview's objects (one, or one per prompt), under new ids (the next free ones, as Commit gives).

Results go straight into ``SAM objects`` (one edit: Undo takes it back), on every frame of the run's
range; each object keeps its id on every frame, so a time-lapse object has one id through time. On a
frame where an object was prompted (in this run or an earlier one of the same memory) its label is
the prompt mask itself, not SAM 2.1's low-resolution copy of it.
Pixels of objects that are not propagated are kept unless "commit may overwrite other objects" is on.
The prompts and the preview are cleared after a run.

The memory stays alive per image, stack position, model and contrast (:class:`MemoryPropagation`):
after a run, a click on another frame (the preview) that overlaps a propagated object is a
*correction* of that object on that frame; "Propagate" then re-runs only from that frame away from
the first prompted frame (forward when it is later, backward when earlier), leaving the frames before
it as they are. A preview that overlaps no propagated object, or a committed object not tracked
yet, is a new object: the run then goes both ways from the shown frame. With nothing new on the
shown frame, "Propagate" runs the memory again from its first prompted frame. A cancelled or failed run
writes nothing and forgets the memory, as does deleting a tracked object from ``SAM objects`` (the
next "Propagate" starts again from the shown frame).

Object score: a frame where SAM 2.1's object score says the object is absent gives it no label. With
"stop when the object disappears" (on by default), an object that has been absent on ``stop_absent``
consecutive frames of a pass gets no label on the rest of that pass (it does not come back), and a
pass ends early once every object has stopped. The "From slice" / "To slice" range bounds every run.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Optional, Tuple

import numpy as np
from napari.utils.notifications import show_info, show_warning

if TYPE_CHECKING:
    from napari_sam.image_access import StackView
    from napari_sam.session import SamSession
    from napari_sam.workers import Job
    from sam_core.propagation import VideoSession

#: consecutive absent frames after which an object stops (the panel's default)
DEFAULT_STOP_ABSENT = 2
IMAGE_CHANGED = "The image changed while propagating: the result was dropped. Propagate again."


def model_family(session: "SamSession") -> Optional[str]:
    """The chosen model's family (``sam``, ``sam2``, ``sam3``), or None while a checkpoint file's
    family is unknown (its model is not loaded yet)."""
    from sam_core import zoo

    spec = session.settings.spec()
    if spec.checkpoint is None:
        return zoo.model_info(spec.name).family
    if spec in session.pool:
        return session.pool.get(spec).family
    return None


@dataclass(frozen=True)
class _Key:
    """What one memory belongs to: the image and objects layers, the stack position (the other stack
    axes), the axis, the model and the contrast."""

    image: int
    objects: int
    base: Tuple[int, ...]
    axis: int
    model: tuple
    preparation: Any


@dataclass
class _Memory:
    """A live :class:`VideoSession`, the frame of its first prompts and every mask prompt given to it
    ``{frame: {object id: mask}}``."""

    key: _Key
    video: "VideoSession"
    first_frame: int
    prompts: Dict[int, Dict[int, np.ndarray]] = field(default_factory=dict)


@dataclass
class _Plan:
    """One run: mask prompts ``{object id: mask}`` on ``frame``, the ``direction`` and whether the
    prompts start a new memory."""

    frame: int
    prompts: Dict[int, np.ndarray]
    direction: str
    fresh: bool


class MemoryPropagation:
    """SAM 2.1 propagation of ``session``'s objects (see the module docstring)."""

    def __init__(self, session: "SamSession") -> None:
        self.session = session
        self._memory: Optional[_Memory] = None

    def _key(self, stack: "StackView") -> _Key:
        s = self.session
        base = tuple(v for i, v in enumerate(stack.base) if i != stack.axis)
        return _Key(id(s.access.layer), id(s.layers.objects), base, stack.axis, s.settings.spec().model_key,
                    s.access.preparation())

    def plan(self, stack: "StackView", frame: int) -> Optional[_Plan]:
        """The prompts of a run from ``frame`` (the shown one), or None (with a notification) when there
        is nothing to propagate."""
        s = self.session
        here = stack.index(frame)
        objects = np.asarray(s.layers.objects.data[here])
        preview = np.asarray(s.layers.preview.data[here])
        memory = self._memory if self._memory is not None and self._memory.key == self._key(stack) else None
        if memory is not None and not np.isin(memory.video.object_ids, np.unique(s.layers.objects.data)).all():
            memory = None  # a tracked object was deleted from SAM objects: start anew
        tracked = set(memory.video.object_ids) if memory is not None else set()
        prompts: Dict[int, np.ndarray] = {int(i): objects == i for i in np.unique(objects)
                                          if i > 0 and int(i) not in tracked}
        next_id = int(np.max(s.layers.objects.data)) + 1
        corrected = set()
        for value in np.unique(preview):
            if value <= 0:
                continue
            mask = preview == value
            overlap = {i: int(np.count_nonzero(mask & (objects == i))) for i in tracked - corrected}
            best = max(overlap, key=overlap.get, default=None)
            if best is not None and overlap[best] > 0:
                corrected.add(best)
                prompts[best] = mask
            else:
                prompts[next_id] = mask
                next_id += 1
        if memory is None and not prompts:
            s.fail("Segment an object on this frame first (a point or a box, or a committed object), then propagate.")
            return None
        if memory is None or set(prompts) - tracked or frame == memory.first_frame:
            direction = "both"
        elif not prompts:
            frame, direction = memory.first_frame, "both"  # nothing new: run the memory again
        else:
            direction = "forward" if frame > memory.first_frame else "backward"
        return _Plan(frame, prompts, direction, memory is None)

    def run(self, first: Optional[int] = None, last: Optional[int] = None,
            stop_absent: Optional[int] = DEFAULT_STOP_ABSENT,
            on_done: Optional[Callable[[np.ndarray], None]] = None) -> Optional["Job"]:
        """Propagate the shown frame's objects within frames ``first``..``last`` (inclusive; None: the
        stack's ends) into ``SAM objects``. ``stop_absent``: consecutive absent frames after which an
        object stops (None: never). ``on_done`` gets the label planes written, (frames, Y, X)."""
        s = self.session
        shown = s.shown_stack()
        if shown is None:
            return None
        here, axis, stack = shown
        access = s.access
        plan = self.plan(stack, here[axis])
        if plan is None:
            return None
        lo = 0 if first is None else max(0, first)
        hi = len(stack) - 1 if last is None else min(len(stack) - 1, last)
        if not lo <= plan.frame <= hi:
            s.fail(f"The shown frame {plan.frame} is outside the range {lo} to {hi}: widen 'From slice' / 'To slice'.")
            return None
        key = self._key(stack)
        memory = None if plan.fresh else self._memory
        self._memory = None  # given back when the run ends well: a cancelled run forgets the memory
        objects_layer = s.layers.objects
        preparation = access.preparation()

        def job(progress: Any, cancel: Any) -> Tuple[_Memory, Dict[int, np.ndarray]]:
            from sam_core.frames import open_frames
            from sam_core.progress import check
            from sam_core.propagation import VideoSession

            predictor = s.predictor(progress, cancel)
            with s.lock:
                live = memory or _Memory(key, VideoSession(predictor.model, open_frames(stack),
                                                           preparation=preparation), plan.frame)
                for object_id, mask in sorted(plan.prompts.items()):
                    check(cancel)
                    live.video.add_prompt(plan.frame, object_id, mask=mask)
                    live.prompts.setdefault(plan.frame, {})[object_id] = mask
                planes = _track(live, plan, (lo, hi), stop_absent, progress, cancel)
            return live, planes

        def finished(result: Tuple[_Memory, Dict[int, np.ndarray]]) -> None:
            live, planes = result
            if s.layers.objects is not objects_layer:
                show_warning(IMAGE_CHANGED)
                return
            self._memory = live
            ids = live.video.object_ids
            written = self._write(stack, planes, ids)
            s.clear()
            frames = sorted(planes)
            counts = {i: sum(1 for f in frames if (planes[f] == i).any()) for i in ids}
            summary = ", ".join(f"{i}: {n}" for i, n in counts.items())
            show_info(f"Propagated {len(ids)} object(s) through frames {frames[0]} to {frames[-1]} "
                      f"(frames labelled per id: {summary}); Undo takes it back.")
            if on_done is not None:
                on_done(written)

        return s.run(job, "SAM 2.1 propagation", finished)

    def _write(self, stack: "StackView", planes: Dict[int, np.ndarray], ids: List[int]) -> np.ndarray:
        """Write ``planes`` (frame -> labels of the tracked ``ids``) into ``SAM objects`` as one edit:
        on each frame the tracked ids' old pixels go, other objects' pixels stay (unless overwrite)."""
        s = self.session
        layer = s.layers.objects
        new = np.array(layer.data)
        for frame, labels in planes.items():
            index = stack.index(frame)
            plane = new[index]
            plane[np.isin(plane, ids)] = 0
            free = labels > 0 if s.overwrite else (labels > 0) & (plane == 0)
            plane[free] = labels[free]
        s.history.apply(layer, new, "propagate", tuple(ids))
        return np.stack([new[stack.index(f)] for f in sorted(planes)])


def _track(memory: _Memory, plan: _Plan, bounds: Tuple[int, int], stop_absent: Optional[int],
           progress: Any, cancel: Any) -> Dict[int, np.ndarray]:
    """Run ``memory``'s session from ``plan.frame`` within ``bounds`` (first, last frame); returns each
    frame's labels (every frame of the range: frames a pass did not reach, after every object stopped,
    are empty). On a prompted frame the prompt masks are their objects' labels, where no other object
    is (lower ids first: committed objects keep their pixels, as Commit does)."""
    video = memory.video
    lo, hi = bounds
    passes = []
    if plan.direction in ("both", "forward"):
        passes.append(("forward", list(range(plan.frame, hi + 1))))
    if plan.direction in ("both", "backward") and plan.frame > 0:
        passes.append(("backward", list(range(plan.frame, lo - 1, -1))))
    elif plan.direction == "backward":  # a correction on frame 0: VideoSession's backward pass from 0 is empty
        passes.append(("forward", [plan.frame]))
    total = sum(len(frames) for _, frames in passes)
    empty = np.zeros((video.frames.height, video.frames.width), np.uint16)
    planes: Dict[int, np.ndarray] = {}
    done = 0
    for direction, frames in passes:
        absent = {i: 0 for i in video.object_ids}
        stopped: set = set()
        results = video.propagate(direction, plan.frame, cancel=cancel)
        for frame in frames:
            done += 1
            if stopped >= set(absent):  # every object stopped: the rest of the pass stays empty
                planes.setdefault(frame, empty)
                continue
            result = next(results)
            for object_id, present in zip(result.object_ids, result.present):
                absent[object_id] = 0 if present else absent[object_id] + 1
                if stop_absent is not None and absent[object_id] >= stop_absent:
                    stopped.add(object_id)
            if frame not in planes:
                labels = video.labels(frame)
                labels[np.isin(labels, list(stopped))] = 0
                prompts = memory.prompts.get(frame, {})
                labels[np.isin(labels, list(prompts))] = 0
                for object_id, mask in sorted(prompts.items()):
                    labels[mask & (labels == 0)] = object_id
                planes[frame] = labels
            progress(done, total, f"frame {frame}")
        results.close()
    return planes
