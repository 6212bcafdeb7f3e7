"""The values every layer of sam_core shares, and what a predictor and a mask generator offer.

Data flows one way: image -> :class:`Embedding` -> prompts -> :class:`Prediction` (masks) -> labels or
polygons. These types sit below every other module of sam_core (they import nothing from it but
:mod:`sam_core.imaging`), so any module may use them without an import cycle.

Coordinate order, everywhere:

- points are ``(x, y)`` pixels of the original image (x = column, y = row), floats allowed;
- a :class:`Box` (and any box given as four numbers) is ``(x0, y0, x1, y1)`` in the same frame;
- arrays of masks are ``(..., H, W)``, indexed (row, col); sizes are ``(H, W)``.

Model families (SAM 1 / MobileSAM today; SAM 2.1 and SAM 3 next) plug in behind
:class:`PromptPredictor`: a family provides the network, the predictor keeps these contracts.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Dict, List, NamedTuple, Optional, Protocol, Sequence, Tuple, runtime_checkable

import numpy as np

from sam_core.imaging import Preparation

if TYPE_CHECKING:
    import torch

    from sam_core.progress import CancelToken, ProgressFn

__all__ = ["Embedding", "Prediction", "Box", "PromptPredictor", "MaskGenerator", "MaskRecord"]


@dataclass
class Embedding:
    """The image encoder's output for one image, with what is needed to map prompts and masks.

    features: (1, C, h, w) float tensor. original_size: (H, W) of the image. input_size: (h, w) of the
    image resized for the model (before padding). model_id: the weights that computed it (a predictor
    refuses embeddings of other weights). preparation: how the array became the model's RGB input.
    key: the embedding cache key. valid: (H, W) bool mask of valid pixels, or None if all are.
    high_res_features: SAM 2.1 only, the decoder's stride-4 and stride-8 skip features ((1, C/8, 4h,
    4w), (1, C/4, 2h, 2w)); None for SAM 1.
    """

    features: "torch.Tensor"
    original_size: Tuple[int, int]
    input_size: Tuple[int, int]
    model_id: str
    preparation: Preparation
    key: str
    valid: Optional[np.ndarray] = None
    high_res_features: Optional[Tuple["torch.Tensor", ...]] = None


@dataclass
class Prediction:
    """Candidate masks, best first; every predictor returns all three fields.

    masks: bool (K, H, W) (or (B, K, H, W) from a batched call). scores: float32 (K,) predicted IoU.
    logits: float32 (K, low, low) low-resolution logits, usable as the next ``mask_input`` of the
    predictor that made them.
    """

    masks: np.ndarray
    scores: np.ndarray
    logits: np.ndarray


class Box(NamedTuple):
    """An axis-aligned rectangle in pixels of one image: ``(x0, y0, x1, y1)``, x = column, y = row.

    A tuple of four numbers in that order, so it goes wherever a box is taken (``Predictor.predict(box=...)``,
    ``np.asarray(box)``). As a pixel window (integer corners) it is half-open: columns ``x0 .. x1 - 1`` and
    rows ``y0 .. y1 - 1``, so ``image[box.slices]`` is its pixels and ``width = x1 - x0``.
    """

    x0: float
    y0: float
    x1: float
    y1: float

    @classmethod
    def of(cls, values: Sequence[float]) -> "Box":
        """A box from four numbers ``(x0, y0, x1, y1)`` (corners in any order)."""
        x0, y0, x1, y1 = (float(v) for v in values)
        return cls(min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1))

    @property
    def width(self) -> float:
        return self.x1 - self.x0

    @property
    def height(self) -> float:
        return self.y1 - self.y0

    @property
    def xyxy(self) -> Tuple[float, float, float, float]:
        """``(x0, y0, x1, y1)``."""
        return (self.x0, self.y0, self.x1, self.y1)

    @property
    def slices(self) -> Tuple[slice, slice]:
        """``(rows, cols)`` slices: ``image[box.slices]`` is the window's pixels (integer corners)."""
        return slice(int(self.y0), int(self.y1)), slice(int(self.x0), int(self.x1))

    def contains(self, other: "Box") -> bool:
        """True when ``other`` lies inside this box (edges included)."""
        return other.x0 >= self.x0 and other.y0 >= self.y0 and other.x1 <= self.x1 and other.y1 <= self.y1


MaskRecord = Dict[str, Any]
"""One automatic mask in the official ``SamAutomaticMaskGenerator`` record format: ``segmentation``,
``area``, ``bbox`` (XYWH), ``predicted_iou``, ``point_coords``, ``stability_score``, ``crop_box``."""


@runtime_checkable
class PromptPredictor(Protocol):
    """What a predictor offers, whatever runs it (PyTorch SAM, ONNX, a tiled large image, a new model family).

    ``encode`` an image once, then ``predict`` any number of prompts on the embedding. Points are
    (N, 2) ``(x, y)`` pixels with -0.5 <= x <= W and -0.5 <= y <= H; boxes ``(x0, y0, x1, y1)``;
    ``mask_input`` the ``logits`` of an earlier :class:`Prediction`.
    """

    model_id: str

    def encode(self, image: np.ndarray, preparation: Optional[Preparation] = None, *,
               progress: Optional["ProgressFn"] = None, cancel: Optional["CancelToken"] = None) -> Embedding:
        ...

    def predict(self, embedding: Embedding, points: Optional[np.ndarray] = None, labels: Optional[np.ndarray] = None,
                box: Optional[Sequence[float]] = None, mask_input: Optional[np.ndarray] = None,
                multimask: Optional[bool] = None) -> Prediction:
        ...


@runtime_checkable
class MaskGenerator(Protocol):
    """What an automatic mask generator offers: every object of an image as official records.

    ``image`` is any array :func:`sam_core.imaging.prepare_image` accepts; ``progress`` is called and
    ``cancel`` checked between batches of work.
    """

    def generate(self, image: np.ndarray, preparation: Optional[Preparation] = None,
                 progress: Optional["ProgressFn"] = None, cancel: Optional["CancelToken"] = None) -> List[MaskRecord]:
        ...
