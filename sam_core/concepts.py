"""Find every instance of a concept (SAM 3): a phrase, exemplar boxes, or both.

``ConceptPredictor(model).encode(image)`` runs the vision backbone once and returns an
:class:`~sam_core.types.Embedding` (the 1x feature map as ``features``, the 4x and 2x maps as
``high_res_features``), kept in the predictor's :class:`~sam_core.cache.EmbeddingCache` like SAM's;
``find(embedding, text=..., exemplars=..., negatives=...)`` then answers any number of queries on
those features without encoding again (text features are kept per phrase on the predictor).
Boxes are pixels (x0, y0, x1, y1) of the original image, x = column, y = row; masks (N, H, W) bool.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from sam_core.cache import EmbeddingCache, cache_key
from sam_core.errors import SamError
from sam_core.identity import model_id
from sam_core.imaging import Preparation, prepare_image
from sam_core.models.sam3.decoder import cxcywh_to_xyxy
from sam_core.models.sam3.model import ImageFeatures, Sam3, TextFeatures
from sam_core.models.sam3.tokenizer import ClipTokenizer
from sam_core.models.sam3.vision import sam3_input
from sam_core.types import Embedding

# what SAM 3 reads for an exemplar-only query (the sam3 package's placeholder phrase)
VISUAL_PHRASE = "visual"

Box = Sequence[float]


@dataclass(frozen=True)
class Findings:
    """Instances found, best first: ``masks`` (N, H, W) bool, ``boxes`` (N, 4) float pixels
    (x0, y0, x1, y1), ``scores`` (N,) in [0, 1] (query score times presence score)."""

    masks: np.ndarray
    boxes: np.ndarray
    scores: np.ndarray

    def __len__(self) -> int:
        return len(self.scores)

    def records(self, label: str) -> list[dict]:
        """COCO-style records, best first: ``segmentation`` (compressed RLE), ``area`` (pixels),
        ``bbox`` (x, y, width, height in pixels), ``score`` and ``class`` (``label``)."""
        from sam_core.masks import coco_encode_rle, mask_to_rle

        rles = mask_to_rle(torch.from_numpy(self.masks))
        out = []
        for rle, box, score, mask in zip(rles, self.boxes, self.scores, self.masks):
            x0, y0, x1, y1 = (float(v) for v in box)
            out.append({"segmentation": coco_encode_rle(rle), "area": int(mask.sum()),
                        "bbox": [x0, y0, x1 - x0, y1 - y0], "score": float(score), "class": label})
        return out


def prepare_sam3_input(rgb: np.ndarray, resolution: int) -> torch.Tensor:
    """(1, 3, S, S) float input from RGB uint8 (H, W, 3): resized to S x S (aspect not kept) with
    antialiased bilinear interpolation, rounded to uint8 as torchvision does, then scaled to [-1, 1]."""
    return sam3_input(torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1)[None], resolution)


class ConceptPredictor:
    """SAM 3 concept queries on cached image features.

    ``cache``: where embeddings are kept (default: memory only, 2 GB; a full-size SAM 3 embedding
    takes about 115 MB). ``preparation``: how arrays become RGB (see :mod:`sam_core.imaging`).
    """

    def __init__(self, model: Sam3, tokenizer: Optional[ClipTokenizer] = None,
                 preparation: Optional[Preparation] = None, cache: Optional[EmbeddingCache] = None) -> None:
        self.model = model.eval()
        self.model_id = model_id(model)
        self.tokenizer = tokenizer or ClipTokenizer()
        self.preparation = preparation or Preparation()
        self.cache = cache if cache is not None else EmbeddingCache(memory_bytes=2 << 30)
        self._texts: dict[str, TextFeatures] = {}

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def max_text_tokens(self) -> int:
        """Tokens a phrase may take, not counting the start and end tokens."""
        return self.model.config.context_length - 2

    @torch.inference_mode()
    def encode(self, image: np.ndarray) -> Embedding:
        """Encode an image (H, W), (H, W, C) of any numeric type, made RGB uint8 by the project's one
        rule (``sam_core.imaging.prepare_image``), or return its cached embedding."""
        key = cache_key(np.asarray(image), self.model_id, self.preparation)
        known = self.cache.get(key)
        if known is not None:
            return known
        rgb, valid = prepare_image(image, self.preparation)
        size = self.model.config.image_size
        levels = self.model.encode_image(prepare_sam3_input(rgb, size).to(self.device)).levels
        embedding = Embedding(features=levels[-1], original_size=(int(rgb.shape[0]), int(rgb.shape[1])),
                              input_size=(size, size), model_id=self.model_id, preparation=self.preparation,
                              key=key, valid=None if valid.all() else valid, high_res_features=tuple(levels[:-1]))
        return self.cache.put(key, embedding)

    def _features(self, embedding: Embedding) -> ImageFeatures:
        if embedding.model_id != self.model_id or not embedding.high_res_features:
            raise SamError(f"this embedding was computed by another model ({embedding.model_id}); encode the "
                           f"image with this predictor's SAM 3 model ({self.model_id}) first")
        levels = [t.to(self.device) for t in (*embedding.high_res_features, embedding.features)]
        return ImageFeatures(levels, self.model.positions(levels))

    def check_text(self, text: str) -> str:
        """The phrase stripped; :class:`SamError` when it is empty or longer than the token limit."""
        phrase = (text or "").strip()
        if not phrase:
            raise SamError("the text is empty: give a word or a short phrase, e.g. --text \"building\"")
        tokens = len(self.tokenizer.encode(phrase))
        if tokens > self.max_text_tokens:
            raise SamError(f"the text is too long: {tokens} tokens, SAM 3 reads at most {self.max_text_tokens} "
                           f"(a short noun phrase such as 'red car' works best)")
        return phrase

    @torch.inference_mode()
    def _text(self, phrase: str) -> TextFeatures:
        known = self._texts.get(phrase)
        if known is None:
            ids = self.tokenizer([phrase], context_length=self.model.config.context_length).to(self.device)
            known = self._texts[phrase] = self.model.encode_text(ids)
        return known

    @staticmethod
    def check_box(box: Box, image_size: tuple[int, int], what: str = "exemplar box") -> tuple[float, float, float, float]:
        """A box (x0, y0, x1, y1) in pixels, checked to lie in the image and to have an area."""
        height, width = image_size
        try:
            x0, y0, x1, y1 = (float(v) for v in box)
        except (TypeError, ValueError):
            raise SamError(f"the {what} {box!r} is not four numbers x0,y0,x1,y1") from None
        if not all(np.isfinite((x0, y0, x1, y1))):
            raise SamError(f"the {what} {box!r} holds a non-finite number")
        if x1 <= x0 or y1 <= y0:
            raise SamError(f"the {what} ({x0:g},{y0:g},{x1:g},{y1:g}) has no area: give x0,y0,x1,y1 with x1 > x0 and y1 > y0")
        if x0 < 0 or y0 < 0 or x1 > width or y1 > height:
            raise SamError(f"the {what} ({x0:g},{y0:g},{x1:g},{y1:g}) is outside the image, which is "
                           f"{width} x {height} pixels (x from 0 to {width}, y from 0 to {height})")
        return x0, y0, x1, y1

    @torch.inference_mode()
    def find(self, embedding: Embedding, text: Optional[str] = None, exemplars: Sequence[Box] = (),
             negatives: Sequence[Box] = (), threshold: float = 0.5, max_instances: Optional[int] = None) -> Findings:
        """Every instance scoring above ``threshold`` (best first, at most ``max_instances``) of the
        concept given by ``text`` and/or exemplar boxes (``negatives``: boxes of what is not meant).
        Masks are cleared on invalid pixels of the embedding (nodata, transparent)."""
        if text is None and not exemplars and not negatives:
            raise SamError("nothing to find: give a text, or at least one exemplar box")
        phrase = self.check_text(text) if text is not None else VISUAL_PHRASE
        height, width = embedding.original_size
        checked = [self.check_box(b, embedding.original_size) for b in exemplars]
        checked += [self.check_box(b, embedding.original_size, "negative box") for b in negatives]
        labels = torch.tensor([1] * len(exemplars) + [0] * len(negatives), dtype=torch.long, device=self.device)
        boxes = torch.tensor([[(x0 + x1) / 2 / width, (y0 + y1) / 2 / height, (x1 - x0) / width, (y1 - y0) / height]
                              for x0, y0, x1, y1 in checked], dtype=torch.float32, device=self.device).view(-1, 4)
        out = self.model.find(self._features(embedding), self._text(phrase), boxes, labels)
        order = torch.argsort(out.scores, descending=True, stable=True)
        order = order[out.scores[order] > threshold]
        if max_instances is not None:
            order = order[:max_instances]
        scale = torch.tensor([width, height, width, height], dtype=torch.float32, device=self.device)
        pixel_boxes = cxcywh_to_xyxy(out.boxes[order]) * scale
        masks = np.zeros((len(order), height, width), dtype=bool)
        for start in range(0, len(order), 16):  # bounded float memory on large images
            logits = out.mask_logits[order[start:start + 16]][:, None]
            masks[start:start + 16] = (F.interpolate(logits, size=(height, width), mode="bilinear",
                                                     align_corners=False)[:, 0] > 0).cpu().numpy()
        if embedding.valid is not None:
            masks &= embedding.valid
        return Findings(masks=masks, boxes=pixel_boxes.cpu().numpy().astype(np.float64),
                        scores=out.scores[order].cpu().numpy().astype(np.float64))


def concept_models() -> list[str]:
    """Zoo names of the models that take concepts."""
    from sam_core.zoo import MODELS

    return [name for name, info in MODELS.items() if info.family == "sam3"]


def load_concept_model(name: Optional[str] = None, checkpoint: Optional[str] = None, *,
                       device: Optional[str] = None, cache_dir: Optional[str] = None, token: Optional[str] = None,
                       download: bool = True, progress=None) -> Sam3:
    """A SAM 3 model in eval mode: from ``checkpoint`` (a file: official ``sam3.pt`` or a state dict
    saved from the model) or zoo model ``name`` (default ``sam3``), downloaded first if needed (a
    gated model needs a Hugging Face ``token`` or ``HF_TOKEN``). A model that cannot take concepts
    raises :class:`SamError` naming those that can."""
    from pathlib import Path

    from sam_core import zoo
    from sam_core.models.sam3.build import load_sam3, read_sam3_state_dict

    able = ", ".join(concept_models())
    if name is not None and zoo.model_info(name).family != "sam3":
        raise SamError(f"model {name!r} cannot find objects by text or exemplar; models that can: {able} "
                       f"(or pass a SAM 3 checkpoint with --checkpoint)")
    if checkpoint is not None:
        path = Path(checkpoint).expanduser()
        if not path.is_file():
            raise SamError(f"checkpoint file {path} does not exist")
        try:
            state = read_sam3_state_dict(path)
        except SamError:
            if _is_sam1_or_2(path):
                raise SamError(f"{path} holds a point-and-box SAM model, which cannot find objects by text or "
                               f"exemplar; models that can: {able}") from None
            raise
    else:
        path = zoo.ensure_checkpoint(name or "sam3", cache_dir, progress=progress, download=download, token=token)
        state = read_sam3_state_dict(path)
    model = load_sam3(state, device=zoo.resolve_device(device))
    model.model_id = f"sam3:file:{zoo._file_identity(path)}"  # the key of its cached embeddings
    return model


def _is_sam1_or_2(path) -> bool:
    try:
        from sam_core.models.build import read_state_dict

        read_state_dict(path)
        return True
    except SamError:
        return False
