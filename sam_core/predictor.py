"""Encode an image once, decode prompts many times (the official ``SamPredictor``, plus cache and batches).

Coordinates: points are (x, y) pixels of the ORIGINAL image (x = column, y = row), boxes are
(x0, y0, x1, y1) in the same frame; masks are (..., H, W). A point is on the image when
-0.5 <= x <= W and -0.5 <= y <= H (this covers both the pixel-centre and the pixel-corner conventions).
"""

from __future__ import annotations

import weakref
from dataclasses import replace
from typing import TYPE_CHECKING, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F

from sam_core.cache import EmbeddingCache, cache_key
from sam_core.errors import SamError
from sam_core.identity import model_id
from sam_core.imaging import Preparation, prepare_image, resize_image, to_input_boxes, to_input_coords
from sam_core.progress import CancelToken, ProgressFn, check, report
from sam_core.types import Embedding, Prediction

if TYPE_CHECKING:
    import os

    from sam_core.models.sam import Sam
    from sam_core.models.transformer import ImageContext

# Upscaled float logits of one decode chunk are kept under about this many bytes.
_CHUNK_BYTES = 256 << 20


class Predictor:
    """SAM on one model: ``encode`` images (cached) and ``predict`` masks from prompts.

    ``model`` is a loaded ``Sam`` (or another backend with its surface, such as
    :class:`sam_core.onnx_backend.OnnxModel`) or a zoo name (with an optional ``checkpoint`` file, then
    loaded by :func:`sam_core.zoo.load_model`). ``cache`` defaults to an in-memory :class:`EmbeddingCache`; pass
    ``EmbeddingCache(directory=...)`` to keep embeddings on disk across processes. ``encoder_runs``
    counts how often the image encoder really ran. ``precision`` (``auto``, ``fp32``, ``exact``,
    ``bf16``, ``fp16``, ``int8``; see :mod:`sam_core.models.precision`) sets the encoder's precision;
    None keeps the model's. Cache keys include the precision, so embeddings of different precisions
    never mix.
    """

    def __init__(
        self,
        model: Union["Sam", str, None] = "demo",
        *,
        checkpoint: Union[str, "os.PathLike[str]", None] = None,
        device: Union[str, torch.device, None] = None,
        cache: Optional[EmbeddingCache] = None,
        precision: Optional[str] = None,
    ) -> None:
        from sam_core import zoo

        if model is None or isinstance(model, str):
            model = zoo.load_model(model, checkpoint, device=device)
        elif checkpoint is not None:
            raise SamError("give either a loaded model or a checkpoint file, not both")
        elif device is not None:
            model = model.to(zoo.resolve_device(device))
        if precision is not None:
            if not hasattr(model, "set_precision"):
                raise SamError("this model has no precision setting; load it with sam_core to choose one")
            model.set_precision(precision)
        self.model = model.eval()
        # "sam" (SAM, MobileSAM), "sam2" (SAM 2.1: the model brings its own image transform and decoder,
        # see sam_core.models.sam2.Sam2; embeddings carry its high-resolution features) or "sam3" (SAM 3's
        # interactive head, sam_core.models.sam3.interactive.Sam3Interactive: the same surface as SAM 2.1)
        self.family: str = getattr(model, "family", "sam")
        self._sam2_style = self.family in ("sam2", "sam3")
        self.cache = cache if cache is not None else EmbeddingCache()
        self.encoder_runs = 0
        self.model_id = model_id(model)
        self._dense_pe: Optional[torch.Tensor] = None
        self._context: Optional[tuple] = None  # (weakref to the features, state, no-mask embedding, ImageContext)

    # --- properties ---------------------------------------------------------------------------------

    @property
    def device(self) -> torch.device:
        return self.model.pixel_mean.device

    @property
    def encoder_id(self) -> str:
        """What an embedding depends on: the model's weights and the encoder's precision."""
        return f"{self.model_id}|{getattr(self.model, 'precision', 'fp32')}"

    @property
    def image_size(self) -> int:
        """The model's square input size in pixels."""
        return int(self.model.image_encoder.img_size)

    @property
    def low_res_size(self) -> int:
        """Side of the low-resolution mask logits (and of ``mask_input``)."""
        return int(self.prompt_encoder.mask_input_size[0])

    @property
    def prompt_encoder(self) -> torch.nn.Module:
        """The model's prompt encoder (SAM 2.1 calls it ``sam_prompt_encoder``)."""
        return self.model.sam_prompt_encoder if self._sam2_style else self.model.prompt_encoder

    # --- encoding -----------------------------------------------------------------------------------

    def encode(
        self,
        image: np.ndarray,
        preparation: Optional[Preparation] = None,
        *,
        progress: Optional[ProgressFn] = None,
        cancel: Optional[CancelToken] = None,
    ) -> Embedding:
        """The embedding of ``image`` (any array ``prepare_image`` accepts), from the cache when present."""
        prep = preparation or Preparation()
        array = np.asarray(image)
        key = cache_key(array, self.encoder_id, prep)
        cached = self.cache.get(key)
        if cached is not None:
            report(progress, 1, 1, "embedding from cache")
            return self._on_device(cached)
        check(cancel)
        report(progress, 0, 1, "encoding image")
        rgb, valid = prepare_image(array, prep)
        features, input_size, high_res = self._encode_image(rgb)
        embedding = Embedding(
            features=features,
            original_size=(int(rgb.shape[0]), int(rgb.shape[1])),
            input_size=input_size,
            model_id=self.model_id,
            preparation=prep,
            key=key,
            valid=None if valid.all() else valid,
            high_res_features=high_res,
        )
        embedding = self.cache.put(key, embedding)  # as stored: a later cache hit decodes the same values
        report(progress, 1, 1, "encoded")
        return embedding

    def encode_rgb(self, rgb: np.ndarray) -> Tuple[torch.Tensor, Tuple[int, int]]:
        """Run the encoder on an (H, W, 3) uint8 image (no cache): (features (1, C, h, w), input size)."""
        resized = resize_image(rgb, self.image_size)
        with torch.inference_mode():
            tensor = torch.as_tensor(resized, device=self.device).permute(2, 0, 1).contiguous()[None]
            features = self.model.image_encoder(self.model.preprocess(tensor))
        self.encoder_runs += 1
        # A normal tensor (not an inference tensor), so that training code may use it as an input.
        return features.clone(), (int(resized.shape[0]), int(resized.shape[1]))

    def _encode_image(self, rgb: np.ndarray) -> Tuple[torch.Tensor, Tuple[int, int], Optional[Tuple[torch.Tensor, ...]]]:
        """(features, input size, high-resolution features or None) of an (H, W, 3) uint8 image, as the
        model's family computes them: SAM resizes the longest side and pads; SAM 2.1 resizes to a
        square (:meth:`sam_core.models.sam2.Sam2.preprocess`)."""
        if not self._sam2_style:
            return (*self.encode_rgb(rgb), None)
        with torch.inference_mode():
            tensor = torch.as_tensor(rgb, device=self.device).permute(2, 0, 1)[None]
            out = self.model.encode(self.model.preprocess(tensor))
        self.encoder_runs += 1
        return out.image_embed.clone(), (self.image_size, self.image_size), tuple(t.clone() for t in out.high_res)

    def _on_device(self, embedding: Embedding) -> Embedding:
        tensors = (embedding.features, *(embedding.high_res_features or ()))
        if any(t.device != self.device or t.dtype != torch.float32 for t in tensors):
            high_res = embedding.high_res_features
            return replace(embedding, features=embedding.features.to(self.device, torch.float32),
                           high_res_features=None if high_res is None else
                           tuple(t.to(self.device, torch.float32) for t in high_res))
        return embedding

    # --- decoding -----------------------------------------------------------------------------------

    def predict(
        self,
        embedding: Embedding,
        points: Optional[np.ndarray] = None,
        labels: Optional[np.ndarray] = None,
        box: Optional[Sequence[float]] = None,
        mask_input: Optional[np.ndarray] = None,
        multimask: Optional[bool] = None,
    ) -> Prediction:
        """Candidate masks for one object, best first.

        points: (N, 2) (x, y) pixels of the original image; labels: (N,) 1 positive, 0 negative
        (default: all positive). box: (x0, y0, x1, y1). mask_input: logits (low, low) or (1, low, low)
        of a previous Prediction. multimask None follows the official advice: three candidates when the
        prompt is one point alone, else one. Masks are cleared on invalid pixels of the embedding.
        """
        coords, point_labels = self._check_points(embedding, points, labels)
        boxes = self._check_boxes(embedding, None if box is None else np.asarray(box, dtype=float).reshape(1, -1))
        masks_in = self._check_mask_inputs(mask_input, batched=False)
        if coords is None and boxes is None and masks_in is None:
            raise SamError("give at least one point, a box or a mask input")
        if multimask is None:
            multimask = coords is not None and coords.shape[0] == 1 and boxes is None and masks_in is None
        batch = self._decode_sorted(
            embedding,
            None if coords is None else coords[None],
            None if point_labels is None else point_labels[None],
            boxes,
            masks_in,
            bool(multimask),
        )
        return Prediction(masks=batch.masks[0], scores=batch.scores[0], logits=batch.logits[0])

    def predict_batch(
        self,
        embedding: Embedding,
        points: Optional[np.ndarray] = None,
        labels: Optional[np.ndarray] = None,
        boxes: Optional[np.ndarray] = None,
        mask_inputs: Optional[np.ndarray] = None,
        multimask: bool = False,
    ) -> Prediction:
        """Many objects in one call: points (B, N, 2), labels (B, N), boxes (B, 4), mask_inputs (B, low, low).

        Returns masks (B, K, H, W), scores (B, K), logits (B, K, low, low), each row best first.
        """
        coords = point_labels = None
        if points is not None:
            pts = np.asarray(points, dtype=float)
            if pts.ndim != 3 or pts.shape[-1] != 2:
                raise SamError(f"batched points must have shape (B, N, 2), got {pts.shape}")
            lab = None if labels is None else np.asarray(labels)
            if lab is not None and lab.shape != pts.shape[:2]:
                raise SamError(f"batched labels must have shape {pts.shape[:2]}, got {lab.shape}")
            checked = [self._check_points(embedding, p, None if lab is None else l) for p, l in
                       zip(pts, lab if lab is not None else [None] * len(pts))]
            coords = np.stack([c for c, _ in checked])
            point_labels = np.stack([l for _, l in checked])
        box_arr = None
        if boxes is not None:
            box_arr = np.asarray(boxes, dtype=float)
            if box_arr.ndim != 2 or box_arr.shape[1] != 4:
                raise SamError(f"batched boxes must have shape (B, 4), got {box_arr.shape}")
        box_arr = self._check_boxes(embedding, box_arr)
        masks_in = self._check_mask_inputs(mask_inputs, batched=True)
        sizes = {len(a) for a in (coords, box_arr, masks_in) if a is not None}
        if not sizes:
            raise SamError("give points, boxes or mask inputs")
        if len(sizes) > 1:
            raise SamError(f"points, boxes and mask inputs must describe the same number of objects, got {sorted(sizes)}")
        return self._decode_sorted(embedding, coords, point_labels, box_arr, masks_in, bool(multimask))

    def _check_embedding(self, embedding: Embedding) -> None:
        """Refuse an embedding made by another model: its features mean nothing to this decoder."""
        if embedding.model_id != self.model_id:
            raise SamError(
                f"this embedding was computed by another model ({embedding.model_id}); "
                f"encode the image with this predictor's model ({self.model_id}) first"
            )

    def decode_torch(
        self,
        embedding: Embedding,
        coords: Optional[torch.Tensor],
        labels: Optional[torch.Tensor],
        boxes: Optional[torch.Tensor] = None,
        mask_input: Optional[torch.Tensor] = None,
        multimask: bool = True,
        upscale: bool = True,
        iou_floor: Optional[float] = None,
    ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Low-level batched decoding, as the official ``predict_torch`` with ``return_logits=True``.

        coords (B, N, 2) and boxes (B, 4) are in the MODEL-INPUT frame (see ``to_input_coords``);
        labels (B, N); mask_input (B, 1, low, low). Returns (mask logits (B, K, H, W) at the original
        size, or the low-res logits when ``upscale`` is False; IoU predictions (B, K); low-res logits
        (B, K, low, low)), unsorted, on the model's device. For callers that drop every candidate whose
        predicted IoU is not above ``iou_floor``: prompts with no candidate above it may come back with
        logits of -inf (their masks are not computed; see ``MaskDecoder.forward``).
        """
        self._check_embedding(embedding)
        if self._sam2_style:
            return self._decode_sam2(embedding, coords, labels, boxes, mask_input, multimask, upscale)
        features = self._on_device(embedding).features
        with torch.inference_mode():
            points = None if coords is None else (coords.to(self.device), labels.to(self.device))
            sparse, dense = self.model.prompt_encoder(
                points=points,
                boxes=None if boxes is None else boxes.to(self.device),
                masks=None if mask_input is None else mask_input.to(self.device),
            )
            context = None
            if mask_input is None and getattr(self.model.mask_decoder, "fused", False):
                context = self._image_context(embedding.features, features, dense)
            low_res, iou = self.model.mask_decoder(
                image_embeddings=features,
                image_pe=self.dense_pe(),
                sparse_prompt_embeddings=sparse,
                dense_prompt_embeddings=dense,
                multimask_output=multimask,
                iou_floor=iou_floor,
                context=context,
            )
            masks = self.upscale(low_res, embedding.input_size, embedding.original_size) if upscale else low_res
        return masks, iou, low_res

    def upscale(self, low_res: torch.Tensor, input_size: Sequence[int], original_size: Sequence[int]) -> torch.Tensor:
        """Low-res logits (B, K, low, low) -> logits (B, K, H, W) at the original size, as the official
        ``Sam.postprocess_masks``: bilinear to the model input, crop the padding, bilinear to (H, W).
        The second resize is skipped when it would keep the size (it is the identity then, bit for bit).
        SAM 2.1 resizes the logits straight to (H, W) (``input_size`` unused).
        """
        size = self.image_size
        with torch.inference_mode():
            if self._sam2_style:
                return self.model.upscale(low_res, tuple(original_size))
            masks = F.interpolate(low_res, (size, size), mode="bilinear", align_corners=False)
            masks = masks[..., : input_size[0], : input_size[1]]
            if tuple(original_size) != tuple(masks.shape[-2:]):
                masks = F.interpolate(masks, tuple(original_size), mode="bilinear", align_corners=False)
        return masks

    def dense_pe(self) -> torch.Tensor:
        """The prompt encoder's dense positional encoding, computed once (it is the same for every image)."""
        pe = self._dense_pe
        if pe is None or pe.device != self.device:
            with torch.inference_mode():
                pe = self.prompt_encoder.get_dense_pe()
            self._dense_pe = pe
        return pe

    def _decode_sam2(self, embedding: Embedding, coords: Optional[torch.Tensor], labels: Optional[torch.Tensor],
                     boxes: Optional[torch.Tensor], mask_input: Optional[torch.Tensor], multimask: bool,
                     upscale: bool) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """:meth:`decode_torch` for SAM 2.1, as ``SAM2ImagePredictor._predict``: boxes become corner points
        before the points, the logits are resized straight to the original size, and the low-res
        logits returned are clamped to +-32 (the masks come from the unclamped ones)."""
        from sam_core.models.sam2.model import LOW_RES_CLAMP, Sam2Features

        on_device = self._on_device(embedding)
        if on_device.high_res_features is None:
            raise SamError("this embedding has no high-resolution features: encode the image again with this SAM 2.1 model")
        features = Sam2Features(on_device.features, tuple(on_device.high_res_features))

        def move(tensor: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
            return None if tensor is None else tensor.to(self.device)

        with torch.inference_mode():
            low_res, iou, _, _ = self.model.decode(features, move(coords), move(labels), move(boxes), move(mask_input),
                                                   multimask, dense_pe=self.dense_pe())
        masks = self.upscale(low_res, embedding.input_size, embedding.original_size) if upscale else low_res
        return masks, iou, low_res.clamp(-LOW_RES_CLAMP, LOW_RES_CLAMP)

    def to_input_coords(self, coords: np.ndarray, original_size: Sequence[int]) -> np.ndarray:
        """(..., 2) (x, y) pixels of an image of ``original_size`` (H, W) -> the model-input frame that
        :meth:`decode_torch` takes (SAM: the longest side scaled to ``image_size``; SAM 2.1: each axis
        scaled to ``image_size``)."""
        if self._sam2_style:
            return self.model.input_coords(coords, tuple(original_size))
        return to_input_coords(coords, original_size, self.image_size)

    def to_input_boxes(self, boxes: np.ndarray, original_size: Sequence[int]) -> np.ndarray:
        """(B, 4) boxes (x0, y0, x1, y1) -> the model-input frame (see :meth:`to_input_coords`)."""
        if self._sam2_style:
            return self.to_input_coords(np.asarray(boxes, dtype=float).reshape(-1, 2, 2), original_size).reshape(-1, 4)
        return to_input_boxes(boxes, original_size, self.image_size)

    def _image_context(self, source: torch.Tensor, features: torch.Tensor, dense: torch.Tensor) -> "ImageContext":
        """The decoder's per-image context (``MaskDecoder.image_context``) for prompts without mask input
        on the embedding whose features tensor is ``source`` (``features`` on this device), reused while
        the same embedding is decoded again (one click after another), the decoder's weights stay
        (``MaskDecoder.context_version``) and the "no mask" dense embedding keeps its values (it is the
        same at every position, so one position is compared)."""
        state = (self.device, self.model.mask_decoder.context_version())
        try:
            state += (source._version,)
        except RuntimeError:  # an inference tensor: never modified in place
            pass
        no_mask = dense[:1, :, :1, :1]
        held = self._context
        if held is not None and held[0]() is source and held[1] == state and torch.equal(held[2], no_mask):
            return held[3]
        context = self.model.mask_decoder.image_context(features, self.dense_pe(), dense)
        self._context = (weakref.ref(source), state, no_mask.clone(), context)
        return context

    # --- helpers ------------------------------------------------------------------------------------

    def _decode_sorted(
        self,
        embedding: Embedding,
        coords: Optional[np.ndarray],
        labels: Optional[np.ndarray],
        boxes: Optional[np.ndarray],
        masks_in: Optional[np.ndarray],
        multimask: bool,
    ) -> Prediction:
        """Decode B objects from original-frame prompts, in chunks, each row sorted best first."""
        size = embedding.original_size
        batch = len(next(a for a in (coords, boxes, masks_in) if a is not None))
        candidates = 3 if multimask else 1
        chunk = max(1, _CHUNK_BYTES // (candidates * size[0] * size[1] * 4))
        masks_out, scores_out, logits_out = [], [], []
        for start in range(0, batch, chunk):
            part = slice(start, start + chunk)
            c = l = b = m = None
            if coords is not None:
                c = torch.as_tensor(self.to_input_coords(coords[part], size), dtype=torch.float)
                l = torch.as_tensor(labels[part], dtype=torch.int)
            if boxes is not None:
                b = torch.as_tensor(self.to_input_boxes(boxes[part], size), dtype=torch.float)
            if masks_in is not None:
                m = torch.as_tensor(masks_in[part], dtype=torch.float)
            logits, iou, low_res = self.decode_torch(embedding, c, l, b, m, multimask=multimask)
            with torch.inference_mode():
                # threshold first: sorting booleans is cheaper than sorting full-size float logits
                masks = logits > self.model.mask_threshold
                order = torch.argsort(iou, dim=1, descending=True, stable=True)
                rows = torch.arange(order.shape[0], device=order.device)[:, None]
                masks, iou, low_res = masks[rows, order], iou[rows, order], low_res[rows, order]
            masks_out.append(masks.cpu().numpy())
            scores_out.append(iou.float().cpu().numpy())
            logits_out.append(low_res.float().cpu().numpy())
        masks_np = np.concatenate(masks_out)
        if embedding.valid is not None:
            masks_np &= embedding.valid
        return Prediction(masks=masks_np, scores=np.concatenate(scores_out), logits=np.concatenate(logits_out))

    def _check_points(
        self, embedding: Embedding, points: Optional[np.ndarray], labels: Optional[np.ndarray]
    ) -> Tuple[Optional[np.ndarray], Optional[np.ndarray]]:
        if points is None:
            if labels is not None:
                raise SamError("labels were given without points")
            return None, None
        coords = np.asarray(points, dtype=float)
        if coords.ndim == 1 and coords.size == 2:
            coords = coords[None]
        if coords.ndim != 2 or coords.shape[1] != 2 or len(coords) == 0:
            raise SamError(f"points must be (x, y) pairs, shape (N, 2); got shape {coords.shape}")
        if not np.isfinite(coords).all():
            raise SamError("points must be finite numbers")
        if labels is None:
            point_labels = np.ones(len(coords), dtype=np.int64)
        else:
            point_labels = np.asarray(labels).reshape(-1)
            if point_labels.shape != (len(coords),):
                raise SamError(f"give one label per point: {len(coords)} points, {point_labels.size} labels")
            if not np.isin(point_labels, (0, 1)).all():
                raise SamError(f"point labels must be 1 (positive) or 0 (negative), got {np.unique(point_labels).tolist()}")
            point_labels = point_labels.astype(np.int64)
        height, width = embedding.original_size
        outside = (coords[:, 0] < -0.5) | (coords[:, 0] > width) | (coords[:, 1] < -0.5) | (coords[:, 1] > height)
        if outside.any():
            x, y = coords[np.argmax(outside)]
            raise SamError(f"point ({x:g}, {y:g}) is outside the image ({width} x {height} pixels, x across, y down)")
        return coords, point_labels

    def _check_boxes(self, embedding: Embedding, boxes: Optional[np.ndarray]) -> Optional[np.ndarray]:
        """Boxes (B, 4): corners ordered, clipped to the image; a box off the image or empty is an error."""
        if boxes is None:
            return None
        if boxes.ndim != 2 or boxes.shape[1] != 4:
            raise SamError(f"a box is four numbers x0, y0, x1, y1; got shape {boxes.shape[1:]}")
        if not np.isfinite(boxes).all():
            raise SamError("box corners must be finite numbers")
        height, width = embedding.original_size
        x0 = np.clip(np.minimum(boxes[:, 0], boxes[:, 2]), 0, width)
        x1 = np.clip(np.maximum(boxes[:, 0], boxes[:, 2]), 0, width)
        y0 = np.clip(np.minimum(boxes[:, 1], boxes[:, 3]), 0, height)
        y1 = np.clip(np.maximum(boxes[:, 1], boxes[:, 3]), 0, height)
        bad = (x1 <= x0) | (y1 <= y0)
        if bad.any():
            raise SamError(
                f"box {boxes[np.argmax(bad)].tolist()} is empty or outside the image ({width} x {height} pixels)"
            )
        return np.stack([x0, y0, x1, y1], axis=1)

    def _check_mask_inputs(self, mask_input: Optional[np.ndarray], batched: bool) -> Optional[np.ndarray]:
        """Mask inputs as (B, 1, low, low) float32."""
        if mask_input is None:
            return None
        if isinstance(mask_input, torch.Tensor):
            mask_input = mask_input.detach().cpu().numpy()
        array = np.asarray(mask_input, dtype=np.float32)
        low = self.low_res_size
        if batched:
            ok = array.ndim in (3, 4) and array.shape[-2:] == (low, low) and (array.ndim == 3 or array.shape[1] == 1)
            expected = f"(B, {low}, {low})"
        else:
            ok = array.ndim in (2, 3, 4) and array.shape[-2:] == (low, low) and int(np.prod(array.shape[:-2])) == 1
            expected = f"({low}, {low}) or (1, {low}, {low})"
        if not ok:
            raise SamError(f"mask input must be low-resolution logits of shape {expected}, got {array.shape}")
        return array.reshape(-1, 1, low, low)

