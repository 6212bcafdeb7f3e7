"""Propagation with memory (SAM 2.1) through the frames of a movie or the slices of a volume.

A :class:`VideoSession` holds the prompts and results of one or many objects on one stack of
:class:`sam_core.frames.Frames`. Prompts (points, boxes, masks) go on any frame; :meth:`propagate`
tracks every object forward and/or backward from the first prompted frame (or from a given frame,
e.g. after a correction); :meth:`labels` gives the label stack. An object that leaves the field is
reported per frame (``object_score_logits <= 0``: absent, its mask empty), not hallucinated.

Semantics are those of Meta's ``SAM2VideoPredictor`` (sam2==1.1.0): each object is tracked on its
own; a prompted frame's memory is encoded from its binarized mask; memories are stored in bfloat16;
output masks are the low-resolution logits resized (bilinear) to the frame's size, > 0. A correction
on an already tracked frame becomes a prompted (conditioning) frame, as the official
``add_all_frames_to_correct_as_cond=True``. Not done: the official hole filling of masks
(``fill_hole_area=8``), which needs sam2's CUDA extension and which the official predictor skips
without it (with a warning) - the parity tests compare with that CPU behaviour.

Bounded memory: frames are read when needed, one at a time; their image features are kept in a
:class:`FeatureCache`, an LRU with a byte budget (default 2 GB). Coordinates are pixels of the frame,
(x, y): x across, y down; boxes (x0, y0, x1, y1).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, replace
from typing import Callable, Dict, Iterator, List, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from sam_core.errors import SamError
from sam_core.frames import Frames
from sam_core.imaging import Preparation
from sam_core.models.sam2.model import Sam2
from sam_core.models.sam2.tracking import FrameFeatures, FrameState, frame_features, track_step
from sam_core.progress import CancelToken, ProgressFn, check, report

DEFAULT_FEATURE_BUDGET = 2 * 1024 ** 3  # bytes of image features kept (2 GB)
PREVIOUS_LOGITS_LIMIT = 32.0  # a correction's earlier logits are clamped to +-32, as the official predictor does
DIRECTIONS = ("both", "forward", "backward")


def features_nbytes(features: FrameFeatures) -> int:
    """Bytes held by one frame's features."""
    tensors = [*features.high_res, features.pix_feat, features.pos]
    return sum(t.numel() * t.element_size() for t in tensors)


class FeatureCache:
    """Image features of frames, computed when asked for and kept in least-recently-used order
    within ``budget`` bytes (the frame just computed is always kept). ``computed`` counts encoder
    runs, ``peak_entries`` / ``peak_bytes`` the most ever held at once."""

    def __init__(self, compute: Callable[[int], FrameFeatures], budget: int = DEFAULT_FEATURE_BUDGET) -> None:
        if budget <= 0:
            raise SamError(f"the feature budget must be a positive number of bytes, got {budget}")
        self._compute = compute
        self.budget = int(budget)
        self._entries: "OrderedDict[int, FrameFeatures]" = OrderedDict()
        self._sizes: Dict[int, int] = {}
        self.computed = 0
        self.peak_entries = 0
        self.peak_bytes = 0

    @property
    def nbytes(self) -> int:
        return sum(self._sizes.values())

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, index: int) -> FrameFeatures:
        if index in self._entries:
            self._entries.move_to_end(index)
            return self._entries[index]
        features = self._compute(index)
        self.computed += 1
        size = features_nbytes(features)
        while self._entries and self.nbytes + size > self.budget:
            oldest, _ = self._entries.popitem(last=False)
            del self._sizes[oldest]
        self._entries[index] = features
        self._sizes[index] = size
        self.peak_entries = max(self.peak_entries, len(self._entries))
        self.peak_bytes = max(self.peak_bytes, self.nbytes)
        return features


@dataclass
class FrameResult:
    """One frame after propagation: ``frame`` index, ``object_ids``, ``masks`` (N, H, W) bool at the
    frame's size, ``object_scores`` (N,) logits (> 0: the object is in the frame)."""

    frame: int
    object_ids: List[int]
    masks: np.ndarray
    object_scores: np.ndarray

    @property
    def present(self) -> np.ndarray:
        return self.object_scores > 0


@dataclass
class _Track:
    """One object's outputs: prompted (conditioning) frames, tracked frames and their direction."""

    cond: Dict[int, FrameState]
    tracked: Dict[int, FrameState]
    reverse: Dict[int, bool]

    def output(self, frame: int) -> Optional[FrameState]:
        return self.cond.get(frame, self.tracked.get(frame))


class VideoSession:
    """Prompts and propagation of objects through ``frames`` with a SAM 2.1 ``model`` (see the module
    docstring). ``feature_budget``: bytes of image features kept at most."""

    def __init__(self, model: Sam2, frames: Frames, *, preparation: Optional[Preparation] = None,
                 feature_budget: int = DEFAULT_FEATURE_BUDGET) -> None:
        if getattr(model, "family", None) != "sam2":
            raise SamError(propagation_models_message())
        self.model = model.eval()
        self.frames = frames
        self.preparation = preparation
        self.cache = FeatureCache(self._features, feature_budget)
        self._tracks: "OrderedDict[int, _Track]" = OrderedDict()
        self._memory_pos: Optional[torch.Tensor] = None  # one copy for every frame (it depends on the grid only)

    @property
    def object_ids(self) -> List[int]:
        return list(self._tracks)

    @property
    def stored_nbytes(self) -> int:
        """Bytes kept of the processed frames of every object (memories and their positional encoding,
        object pointers and scores, low-resolution logits); a tensor shared by frames counted once."""
        tensors = {id(t): t for track in self._tracks.values()
                   for state in (*track.cond.values(), *track.tracked.values())
                   for t in (state.mask_logits, state.object_pointer, state.object_score_logits, state.memory,
                             state.memory_pos)}
        return sum(t.numel() * t.element_size() for t in tensors.values())

    def _features(self, index: int) -> FrameFeatures:
        image = self.frames.model_input(index, self.model.image_size, self.model.preprocess, self.preparation)
        with torch.inference_mode():
            return frame_features(self.model, image.to(self.model.device))

    # --- prompts ----------------------------------------------------------------------------------

    def add_prompt(self, frame: int, object_id: int, *, points: Optional[Sequence[Sequence[float]]] = None,
                   labels: Optional[Sequence[int]] = None, box: Optional[Sequence[float]] = None,
                   mask: Optional[np.ndarray] = None) -> np.ndarray:
        """Prompt ``object_id`` on ``frame`` (replacing its earlier prompts there): points (N, 2) (x, y)
        pixels with labels (1 object, 0 background), and/or a box (x0, y0, x1, y1), or a mask (H, W).
        Returns the object's mask (H, W) bool on that frame. A prompt on a frame already tracked is a
        correction: the frame becomes a prompted frame; propagate again from it."""
        self.frames.check_index(frame)
        if object_id < 1:
            raise SamError(f"object ids start at 1, got {object_id}")
        if mask is not None and (points is not None or box is not None):
            raise SamError("give a mask, or points and/or a box, for one object on one frame, not both")
        track = self._tracks.setdefault(object_id, _Track({}, {}, {}))
        first = frame not in track.reverse
        reverse = False if first else track.reverse[frame]
        features = self.cache.get(frame)
        with torch.inference_mode():
            if mask is not None:
                state = track_step(self.model, frame, features, track.cond, track.tracked, self.frames.count,
                                   first_prompted=first, mask_input=self._mask_input(mask), reverse=reverse)
            else:
                coords, codes = self._point_prompt(points, labels, box)
                earlier = track.output(frame)
                previous = None if earlier is None else earlier.mask_logits.clamp(-PREVIOUS_LOGITS_LIMIT,
                                                                                  PREVIOUS_LOGITS_LIMIT)
                state = track_step(self.model, frame, features, track.cond, track.tracked, self.frames.count,
                                   first_prompted=first, point_coords=coords, point_labels=codes, reverse=reverse,
                                   previous_mask_logits=previous)
            state = self._prompted_memory(features, state)
        track.cond[frame] = state
        track.tracked.pop(frame, None)
        return self._video_masks(state.mask_logits)[0]

    def _point_prompt(self, points, labels, box) -> tuple[torch.Tensor, torch.Tensor]:
        coords: List[Sequence[float]] = []
        codes: List[int] = []
        if box is not None:
            x0, y0, x1, y1 = (float(v) for v in box)
            if not (x0 < x1 and y0 < y1):
                raise SamError(f"a box is X0,Y0,X1,Y1 with X0 < X1 and Y0 < Y1, got {list(box)}")
            coords += [(x0, y0), (x1, y1)]
            codes += [2, 3]
        if points is not None:
            points = np.asarray(points, dtype=float).reshape(-1, 2)
            labels = np.ones(len(points), dtype=int) if labels is None else np.asarray(labels).reshape(-1)
            if len(labels) != len(points):
                raise SamError(f"{len(points)} points but {len(labels)} labels")
            if not set(labels.tolist()) <= {0, 1}:
                raise SamError(f"point labels are 1 (object) or 0 (background), got {sorted(set(labels.tolist()))}")
            coords += [tuple(p) for p in points]
            codes += [int(v) for v in labels]
        if not coords:
            raise SamError("a prompt needs points, a box or a mask")
        w, h = self.frames.width, self.frames.height
        for x, y in coords:
            if not (0 <= x <= w and 0 <= y <= h):
                raise SamError(f"the prompt ({x:g}, {y:g}) is outside the frame, which is {w}x{h} pixels "
                               f"(x 0..{w}, y 0..{h})")
        scale = torch.tensor([self.model.image_size / w, self.model.image_size / h], dtype=torch.float32)
        xy = torch.tensor(coords, dtype=torch.float32) * scale
        return xy[None].to(self.model.device), torch.tensor([codes], dtype=torch.int32, device=self.model.device)

    def _mask_input(self, mask: np.ndarray) -> torch.Tensor:
        array = np.asarray(mask)
        if array.shape != (self.frames.height, self.frames.width):
            raise SamError(f"a mask prompt must have the frame's size {self.frames.height}x{self.frames.width} "
                           f"(rows x columns), got {array.shape}")
        x = torch.from_numpy(array.astype(bool)).float()[None, None].to(self.model.device)
        size = self.model.image_size
        if x.shape[-2:] != (size, size):
            x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
            x = (x >= 0.5).float()
        return x

    def _prompted_memory(self, features: FrameFeatures, state: FrameState) -> FrameState:
        """A prompted frame's memory from its binarized low-resolution mask resized to the model input
        (the official video predictor's preflight)."""
        size = self.model.image_size
        full = F.interpolate(state.mask_logits, size=(size, size), mode="bilinear", align_corners=False)
        memory, memory_pos = self.model.encode_memory(features.pix_feat, full, state.object_score_logits,
                                                      binarize=True)
        return self._stored(replace(state, memory=memory, memory_pos=memory_pos))

    # --- propagation ------------------------------------------------------------------------------

    def propagate(self, direction: str = "both", start: Optional[int] = None, *,
                  progress: Optional[ProgressFn] = None, cancel: Optional[CancelToken] = None
                  ) -> Iterator[FrameResult]:
        """Track every object from ``start`` (default: the first prompted frame) to the last frame
        (``forward``), to frame 0 (``backward``), or forward then backward (``both``), as the official
        ``propagate_in_video`` then ``propagate_in_video(reverse=True)``. Yields each frame's result."""
        if direction not in DIRECTIONS:
            raise SamError(f"direction is one of {', '.join(DIRECTIONS)}, got {direction!r}")
        if not self._tracks:
            raise SamError("prompt at least one object (a point, a box or a mask on a frame) before propagating")
        if start is None:
            start = min(t for track in self._tracks.values() for t in track.cond)
        self.frames.check_index(start)
        passes = []
        if direction in ("both", "forward"):
            passes.append((False, list(range(start, self.frames.count))))
        if direction in ("both", "backward") and start > 0:
            passes.append((True, list(range(start, -1, -1))))
        total = sum(len(order) for _, order in passes)
        done = 0
        for reverse, order in passes:
            for frame in order:
                check(cancel)
                yield self._step(frame, reverse)
                done += 1
                report(progress, done, total, f"frame {frame}")

    def _step(self, frame: int, reverse: bool) -> FrameResult:
        states = []
        features = None
        for track in self._tracks.values():
            if frame in track.cond:
                state = track.cond[frame]
            else:
                features = features or self.cache.get(frame)
                with torch.inference_mode():
                    state = track_step(self.model, frame, features, track.cond, track.tracked, self.frames.count,
                                       reverse=reverse)
                state = self._stored(state)
                track.tracked[frame] = state
            track.reverse[frame] = reverse
            states.append(state)
        return self._result(frame, states)

    def _stored(self, state: FrameState) -> FrameState:
        """What is kept of a frame: memory in bfloat16 (as the official predictor stores it), no
        model-size logits (they are only needed for the frame's own memory), and the memory's positional
        encoding, the same for every frame, as one shared copy (as the official predictor keeps it)."""
        pos, shared = state.memory_pos, self._memory_pos
        if shared is not None and shared.shape == pos.shape and torch.equal(shared, pos):
            pos = shared
        else:
            self._memory_pos = pos
        return replace(state, memory=state.memory.to(torch.bfloat16), memory_pos=pos, mask_logits_full=None)

    def _result(self, frame: int, states: List[FrameState]) -> FrameResult:
        logits = torch.cat([s.mask_logits for s in states])
        scores = torch.cat([s.object_score_logits for s in states]).flatten()
        return FrameResult(frame, self.object_ids, self._video_masks(logits), scores.float().cpu().numpy())

    def _video_masks(self, low_res: torch.Tensor) -> np.ndarray:
        return (self.video_logits(low_res) > 0).cpu().numpy()

    def video_logits(self, low_res: torch.Tensor) -> torch.Tensor:
        """(N, 1, low, low) logits -> (N, H, W) at the frame's size (bilinear, as the official output)."""
        size = (self.frames.height, self.frames.width)
        return F.interpolate(low_res.float(), size=size, mode="bilinear", align_corners=False)[:, 0]

    def labels(self, frame: int) -> np.ndarray:
        """(H, W) labels of ``frame``: 0 background, else the id of the object with the highest logit
        above 0 (uint16, or uint32 for ids of 65536 and more)."""
        dtype = np.uint16 if max(self._tracks, default=0) < 65536 else np.uint32
        states = [track.output(frame) for track in self._tracks.values()]
        out = np.zeros((self.frames.height, self.frames.width), dtype=dtype)
        if all(s is None for s in states):
            return out
        ids = np.array(self.object_ids, dtype=dtype)
        logits = torch.stack([self.video_logits(s.mask_logits)[0] if s is not None
                              else torch.full((self.frames.height, self.frames.width), -1e4) for s in states])
        best, index = logits.max(dim=0)
        best, index = best.cpu().numpy(), index.cpu().numpy()
        return np.where(best > 0, ids[index], 0).astype(dtype)


def propagation_models_message() -> str:
    """Which models can propagate (for errors)."""
    from sam_core.models.sam2 import SAM2_CONFIGS

    return ("propagation with memory needs a SAM 2.1 model (" + ", ".join(SAM2_CONFIGS) +
            ", or a SAM 2.1 checkpoint); SAM models (demo, vit_t, vit_b, vit_l, vit_h) segment one image at a time")
