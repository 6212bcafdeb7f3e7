"""Automatic mask generation: the official ``SamAutomaticMaskGenerator`` algorithm, fast.

A grid of single positive points is decoded over the image (and, with ``crop_n_layers > 0``, over
overlapping crops with their own grids); candidate masks are filtered by predicted IoU and stability
score, masks touching a crop edge that is not an image edge are dropped, duplicates are removed by box
NMS inside each crop and across crops (masks of smaller crops preferred), and optionally small islands
and holes are removed. Parameters, defaults and output records are the official ones, and with the
same checkpoint the masks equal the official package's.

Why it is faster with identical output: the predicted-IoU filter runs on the decoder's low-resolution
output, so only surviving candidates are upsampled to full resolution; masks stay on the device as
booleans; stability scores, boxes and NMS are vectorized torch; RLE is computed only at the end, only
for kept masks and only when the output mode asks for it; records are built once, never deep-copied.

``skip_covered_points=True`` is an optional fast mode that is *not* the official algorithm: grid points
that fall inside a mask already kept in the same crop are not decoded (fewer decoder calls, nearly the
same masks on images with large objects). It is off by default.

Images that are not 8-bit RGB are prepared by :func:`sam_core.imaging.prepare_image`; pixels it marks
invalid (NaN, nodata, alpha 0) are never part of a mask (their logits are set to -inf before the
stability score). For 8-bit RGB images every pixel is valid and nothing changes.

With a SAM 2.1 predictor the algorithm is the official ``SAM2AutomaticMaskGenerator``'s: prompts go
through the SAM 2.1 image path (square input, direct upscale of the logits), and ``use_m2m=True`` adds
its mask-to-mask refinement (every candidate decoded again from its own point and low-resolution logits,
one mask each, before the filters). Its recommended thresholds differ from SAM's (``pred_iou_thresh``
0.8; see :func:`sam_core.zoo.automask_defaults`). ``min_mask_region_area`` is not offered with SAM 2.1:
the official generator hands it to a CUDA-only post-processing step.

Coordinates: points ``(x, y)`` pixels; ``bbox`` and ``crop_box`` are XYWH pixels of the original image.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from sam_core import masks as M
from sam_core.errors import SamError
from sam_core.imaging import Preparation, prepare_image
from sam_core.progress import CancelToken, ProgressFn, check, report

OUTPUT_MODES = ("binary_mask", "uncompressed_rle", "coco_rle")


@dataclass
class _CropResult:
    """Masks kept in one crop after NMS; tensors on the model's device, one row per mask."""

    crop_box: List[int]
    masks: torch.Tensor  # bool (n, h, w) in the crop's frame
    iou: torch.Tensor  # float (n,)
    stability: torch.Tensor  # float (n,)
    boxes: torch.Tensor  # int64 (n, 4) XYXY in the image's frame
    points: np.ndarray  # float64 (n, 2) (x, y) in the image's frame


class AutomaticMaskGenerator:
    """Segment everything in an image with a grid of point prompts (official algorithm and defaults).

    Arguments are those of the official ``SamAutomaticMaskGenerator`` (see its documentation), with a
    :class:`~sam_core.predictor.Predictor` in place of the model, plus ``skip_covered_points`` (see the
    module documentation; off by default). ``min_mask_region_area`` and ``coco_rle`` need neither
    OpenCV nor pycocotools. ``use_m2m`` and ``multimask_output`` are ``SAM2AutomaticMaskGenerator``'s
    (mask-to-mask refinement, off; three candidates per point, on).
    """

    def __init__(
        self,
        predictor: Any,
        points_per_side: Optional[int] = 32,
        points_per_batch: int = 64,
        pred_iou_thresh: float = 0.88,
        stability_score_thresh: float = 0.95,
        stability_score_offset: float = 1.0,
        box_nms_thresh: float = 0.7,
        crop_n_layers: int = 0,
        crop_nms_thresh: float = 0.7,
        crop_overlap_ratio: float = 512 / 1500,
        crop_n_points_downscale_factor: int = 1,
        point_grids: Optional[List[np.ndarray]] = None,
        min_mask_region_area: int = 0,
        output_mode: str = "binary_mask",
        skip_covered_points: bool = False,
        use_m2m: bool = False,
        multimask_output: bool = True,
    ) -> None:
        if (points_per_side is None) == (point_grids is None):
            raise SamError("give exactly one of points_per_side or point_grids")
        if points_per_side is not None and int(points_per_side) < 1:
            raise SamError(f"points per side must be at least 1, got {points_per_side}")
        if int(points_per_batch) < 1:
            raise SamError(f"points per batch must be at least 1, got {points_per_batch}")
        if int(crop_n_layers) < 0:
            raise SamError(f"the number of crop layers must be 0 or more, got {crop_n_layers}")
        if int(crop_n_points_downscale_factor) < 1:
            raise SamError(
                f"the crop points downscale factor must be at least 1, got {crop_n_points_downscale_factor}"
            )
        if int(min_mask_region_area) < 0:
            raise SamError(f"the minimum mask region area must be 0 or more, got {min_mask_region_area}")
        if int(min_mask_region_area) > 0 and getattr(predictor, "family", "sam") == "sam2":
            raise SamError("min_mask_region_area is not available with SAM 2.1 models (the official generator "
                           "leaves it to a CUDA-only step); use 0, or a SAM model")
        if output_mode not in OUTPUT_MODES:
            raise SamError(f"unknown output mode {output_mode!r}: choose one of {', '.join(OUTPUT_MODES)}")
        for name, value in (
            ("pred_iou_thresh", pred_iou_thresh),
            ("stability_score_thresh", stability_score_thresh),
            ("box_nms_thresh", box_nms_thresh),
            ("crop_nms_thresh", crop_nms_thresh),
        ):
            if not 0.0 <= float(value) <= 1.0:
                raise SamError(f"{name} must be between 0 and 1, got {value}")
        if points_per_side is not None:
            self.point_grids = M.build_all_layer_point_grids(
                int(points_per_side), int(crop_n_layers), int(crop_n_points_downscale_factor)
            )
        else:
            self.point_grids = [np.asarray(grid, dtype=np.float64).reshape(-1, 2) for grid in point_grids]
            if len(self.point_grids) < int(crop_n_layers) + 1:
                raise SamError(
                    f"point_grids has {len(self.point_grids)} grid(s) but {int(crop_n_layers) + 1} "
                    "crop layers need one each"
                )
        self.predictor = predictor
        self.points_per_batch = int(points_per_batch)
        self.pred_iou_thresh = float(pred_iou_thresh)
        self.stability_score_thresh = float(stability_score_thresh)
        self.stability_score_offset = float(stability_score_offset)
        self.box_nms_thresh = float(box_nms_thresh)
        self.crop_n_layers = int(crop_n_layers)
        self.crop_nms_thresh = float(crop_nms_thresh)
        self.crop_overlap_ratio = float(crop_overlap_ratio)
        self.crop_n_points_downscale_factor = int(crop_n_points_downscale_factor)
        self.min_mask_region_area = int(min_mask_region_area)
        self.output_mode = output_mode
        self.skip_covered_points = bool(skip_covered_points)
        self.use_m2m = bool(use_m2m)
        self.multimask_output = bool(multimask_output)

    # -----------------------------------------------------------------------------------------
    def generate(
        self,
        image: np.ndarray,
        preparation: Optional[Preparation] = None,
        progress: Optional[ProgressFn] = None,
        cancel: Optional[CancelToken] = None,
    ) -> List[Dict[str, Any]]:
        """Masks of everything in ``image`` as the official records, in the official order.

        ``image`` is any array that :func:`sam_core.imaging.prepare_image` accepts (uint8 RGB passes
        unchanged, exactly as the official generator takes it). Each record holds ``segmentation``
        (bool (H, W) array, or an RLE dict per ``output_mode``), ``area`` (pixels), ``bbox`` (XYWH),
        ``predicted_iou``, ``point_coords`` (``[[x, y]]``), ``stability_score`` and ``crop_box`` (XYWH).
        ``progress(done, total, message)`` is called after each batch of points; ``cancel`` is checked
        between batches (raises :class:`~sam_core.progress.Cancelled`).
        """
        rgb, valid = prepare_image(image, preparation)
        orig_h, orig_w = rgb.shape[:2]
        crop_boxes, layer_idxs = M.generate_crop_boxes((orig_h, orig_w), self.crop_n_layers, self.crop_overlap_ratio)
        total = sum(math.ceil(len(self.point_grids[layer]) / self.points_per_batch) for layer in layer_idxs)
        counter = _Counter(progress, total)
        report(progress, 0, total, "encoding")
        with torch.inference_mode():
            crops = [
                self._process_crop(rgb, valid, crop_box, layer, f"crop {i + 1}/{len(crop_boxes)}", counter, cancel)
                for i, (crop_box, layer) in enumerate(zip(crop_boxes, layer_idxs))
            ]
            check(cancel)
            iou = torch.cat([c.iou for c in crops])
            stability = torch.cat([c.stability for c in crops])
            boxes = torch.cat([c.boxes for c in crops])
            points = np.concatenate([c.points for c in crops])
            crop_index = np.concatenate([np.full(len(c.iou), i, dtype=np.int64) for i, c in enumerate(crops)])
            keep = self._nms_across_crops(boxes, crop_index, crop_boxes)
            masks = _full_masks(crops, keep.tolist(), orig_h, orig_w)
            iou, stability, boxes = iou[keep], stability[keep], boxes[keep]
            keep_np = keep.cpu().numpy()
            points, crop_index = points[keep_np], crop_index[keep_np]
            if self.min_mask_region_area > 0 and len(masks) > 0:
                check(cancel)
                nms_thresh = max(self.box_nms_thresh, self.crop_nms_thresh)
                order, masks, changed = M.postprocess_small_regions(masks, self.min_mask_region_area, nms_thresh)
                boxes = torch.where(changed[:, None], M.masks_to_boxes(masks), boxes)
                masks, iou, stability, boxes = masks[order], iou[order], stability[order], boxes[order]
                order_np = order.cpu().numpy()
                points, crop_index = points[order_np], crop_index[order_np]
            return self._records(masks, iou, stability, boxes, points, crop_index, crop_boxes)

    # -----------------------------------------------------------------------------------------
    def _process_crop(
        self,
        rgb: np.ndarray,
        valid: np.ndarray,
        crop_box: List[int],
        layer: int,
        message: str,
        counter: "_Counter",
        cancel: Optional[CancelToken],
    ) -> _CropResult:
        """Decode the crop's point grid in batches; keep thresholded masks; NMS within the crop."""
        x0, y0, x1, y1 = crop_box
        check(cancel)
        embedding = self.predictor.encode(np.ascontiguousarray(rgb[y0:y1, x0:x1]))
        crop_h, crop_w = y1 - y0, x1 - x0
        points = self.point_grids[layer] * np.array([[crop_w, crop_h]], dtype=np.float64)
        device = embedding.features.device
        orig_box = [0, 0, rgb.shape[1], rgb.shape[0]]
        crop_valid = valid[y0:y1, x0:x1]
        valid_t = None if crop_valid.all() else torch.as_tensor(crop_valid, device=device)

        parts: List[Tuple[torch.Tensor, ...]] = []
        point_ids: List[np.ndarray] = []
        covered = torch.zeros((crop_h, crop_w), dtype=torch.bool, device=device) if self.skip_covered_points else None
        for start in range(0, len(points), self.points_per_batch):
            check(cancel)
            ids = np.arange(start, min(start + self.points_per_batch, len(points)))
            if covered is not None:
                ids = ids[self._uncovered(points[ids], covered)]
            if len(ids):
                result = self._process_batch(embedding, points[ids], crop_box, orig_box, valid_t)
                if result is not None:
                    masks, iou, stability, boxes, rows = result
                    parts.append((masks, iou, stability, boxes))
                    point_ids.append(ids[rows.cpu().numpy()])
                    if covered is not None:
                        covered |= masks.any(dim=0)
            counter.step(message)

        if not parts:
            return _CropResult(
                crop_box,
                torch.zeros((0, crop_h, crop_w), dtype=torch.bool, device=device),
                torch.zeros(0, device=device),
                torch.zeros(0, device=device),
                torch.zeros((0, 4), dtype=torch.int64, device=device),
                np.zeros((0, 2), dtype=np.float64),
            )
        masks, iou, stability, boxes = (torch.cat(column) for column in zip(*parts))
        ids = np.concatenate(point_ids)
        keep = M.batched_nms(boxes.float(), iou, torch.zeros(len(boxes), device=device), self.box_nms_thresh)
        return _CropResult(
            crop_box=crop_box,
            masks=masks[keep],
            iou=iou[keep],
            stability=stability[keep],
            boxes=M.uncrop_boxes_xyxy(boxes[keep], crop_box),
            points=points[ids[keep.cpu().numpy()]] + np.array([[x0, y0]], dtype=np.float64),
        )

    def _process_batch(
        self,
        embedding: Any,
        points: np.ndarray,
        crop_box: List[int],
        orig_box: List[int],
        valid: Optional[torch.Tensor],
    ) -> Optional[Tuple[torch.Tensor, ...]]:
        """Decode one batch of points (crop frame). Returns the surviving candidates as
        (masks bool (n, h, w), iou (n,), stability (n,), boxes XYXY crop frame (n, 4), point row (n,)).
        ``valid`` (h, w) marks the crop's valid pixels (None: all valid); masks never cover invalid ones."""
        model = self.predictor.model
        device = embedding.features.device
        crop_size = (crop_box[3] - crop_box[1], crop_box[2] - crop_box[0])
        coords = self.predictor.to_input_coords(points, crop_size)
        coord_dtype = torch.float32 if device.type == "mps" else torch.float64
        coords = torch.as_tensor(coords, dtype=coord_dtype, device=device)
        labels = torch.ones((len(points), 1), dtype=torch.int, device=device)
        # prompts with no candidate above the IoU threshold need no masks (the filter below drops them)
        floor = self.pred_iou_thresh if self.pred_iou_thresh > 0.0 and not self.use_m2m else None
        low_res, iou, mask_inputs = self.predictor.decode_torch(embedding, coords[:, None, :], labels,
                                                                multimask=self.multimask_output, upscale=False,
                                                                iou_floor=floor)
        k = iou.shape[1]
        iou = iou.flatten(0, 1)
        low_res = low_res.flatten(0, 1)
        rows = torch.arange(len(points), device=device).repeat_interleave(k)
        if self.use_m2m:
            low_res, iou = self._refine(embedding, coords[rows][:, None, :], labels[rows], mask_inputs.flatten(0, 1))

        # The IoU filter needs no full-resolution mask: upsample only the candidates that pass it.
        if self.pred_iou_thresh > 0.0:
            keep = iou > self.pred_iou_thresh
            iou, low_res, rows = iou[keep], low_res[keep], rows[keep]
        if len(iou) == 0:
            return None
        logits = self.predictor.upscale(low_res[:, None], embedding.input_size, embedding.original_size)[:, 0]
        if valid is not None:
            logits = logits.masked_fill(~valid, float("-inf"))
        stability = M.stability_score(logits, model.mask_threshold, self.stability_score_offset)
        if self.stability_score_thresh > 0.0:
            keep = stability >= self.stability_score_thresh
            iou, logits, rows, stability = iou[keep], logits[keep], rows[keep], stability[keep]
        if len(iou) == 0:
            return None
        masks = logits > model.mask_threshold
        del logits
        boxes = M.masks_to_boxes(masks)
        keep = ~M.is_box_near_crop_edge(boxes, crop_box, orig_box)
        if not bool(keep.all()):
            masks, iou, stability, boxes, rows = masks[keep], iou[keep], stability[keep], boxes[keep], rows[keep]
        if len(iou) == 0:
            return None
        return masks, iou, stability, boxes, rows

    def _refine(self, embedding: Any, coords: torch.Tensor, labels: torch.Tensor,
                mask_inputs: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Mask-to-mask refinement (``SAM2AutomaticMaskGenerator.refine_with_m2m``): each candidate decoded
        again from its point and its (clamped) low-resolution logits, one mask each, in batches of
        ``points_per_batch``. Returns low-resolution logits (n, low, low) and IoU (n,)."""
        parts = []
        for start in range(0, len(coords), self.points_per_batch):
            part = slice(start, start + self.points_per_batch)
            low_res, iou, _ = self.predictor.decode_torch(embedding, coords[part], labels[part],
                                                          mask_input=mask_inputs[part, None], multimask=False,
                                                          upscale=False)
            parts.append((low_res[:, 0], iou[:, 0]))
        return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])

    @staticmethod
    def _uncovered(points: np.ndarray, covered: torch.Tensor) -> np.ndarray:
        """Boolean selector of the points (x, y) of a crop outside every mask found so far (fast mode)."""
        h, w = covered.shape
        cols = torch.as_tensor(np.clip(np.floor(points[:, 0]), 0, w - 1).astype(np.int64), device=covered.device)
        rows = torch.as_tensor(np.clip(np.floor(points[:, 1]), 0, h - 1).astype(np.int64), device=covered.device)
        return ~covered[rows, cols].cpu().numpy()

    def _nms_across_crops(
        self, boxes: torch.Tensor, crop_index: np.ndarray, crop_boxes: List[List[int]]
    ) -> torch.Tensor:
        """Indices kept after NMS between crops (masks of smaller crops preferred), in the official order."""
        device = boxes.device
        if len(crop_boxes) == 1:
            return torch.arange(len(boxes), device=device)
        mask_crops = torch.tensor(crop_boxes, dtype=torch.int64)[torch.as_tensor(crop_index)].to(device)
        scores = 1 / M.box_area(mask_crops)
        return M.batched_nms(boxes.float(), scores, torch.zeros(len(boxes), device=device), self.crop_nms_thresh)

    def _records(
        self,
        masks: torch.Tensor,
        iou: torch.Tensor,
        stability: torch.Tensor,
        boxes: torch.Tensor,
        points: np.ndarray,
        crop_index: np.ndarray,
        crop_boxes: List[List[int]],
    ) -> List[Dict[str, Any]]:
        """The official record dicts, built once (no copies of masks beyond the output itself)."""
        areas = masks.flatten(1).sum(1).tolist() if len(masks) else []
        if self.output_mode == "binary_mask":
            segmentations: List[Any] = list(masks.cpu().numpy())
        else:
            segmentations = M.mask_to_rle(masks)
            if self.output_mode == "coco_rle":
                segmentations = [M.coco_encode_rle(rle) for rle in segmentations]
        bboxes = M.box_xyxy_to_xywh(boxes).tolist()
        crops_xywh = [[x0, y0, x1 - x0, y1 - y0] for x0, y0, x1, y1 in crop_boxes]
        return [
            {
                "segmentation": segmentation,
                "area": int(area),
                "bbox": bbox,
                "predicted_iou": float(p_iou),
                "point_coords": [point],
                "stability_score": float(score),
                "crop_box": list(crops_xywh[crop]),
            }
            for segmentation, area, bbox, p_iou, point, score, crop in zip(
                segmentations, areas, bboxes, iou.tolist(), points.tolist(), stability.tolist(), crop_index.tolist()
            )
        ]


class _Counter:
    """Counts batches across crops and reports them to a progress callback."""

    def __init__(self, progress: Optional[ProgressFn], total: int) -> None:
        self.progress = progress
        self.total = total
        self.done = 0

    def step(self, message: str) -> None:
        self.done += 1
        report(self.progress, self.done, self.total, message)


def _full_masks(crops: Sequence[_CropResult], keep: Sequence[int], orig_h: int, orig_w: int) -> torch.Tensor:
    """The kept masks (indices into the crops' concatenated rows), padded from their crops into the
    whole image: bool (N, H, W)."""
    if len(crops) == 1:
        return crops[0].masks[torch.as_tensor(list(keep), dtype=torch.int64, device=crops[0].masks.device)]
    device = crops[0].masks.device
    out = torch.zeros((len(keep), orig_h, orig_w), dtype=torch.bool, device=device)
    starts = np.cumsum([0] + [len(c.masks) for c in crops])
    for row, source in enumerate(keep):
        group = int(np.searchsorted(starts, source, side="right") - 1)
        x0, y0, x1, y1 = crops[group].crop_box
        out[row, y0:y1, x0:x1] = crops[group].masks[source - starts[group]]
    return out


def masks_to_labels(records: Sequence[Dict[str, Any]], shape: Optional[Tuple[int, int]] = None) -> np.ndarray:
    """A label image (int32 (H, W), 0 = background) without overlaps from mask records.

    Rule: record ``i`` gets id ``i + 1`` (record order). Masks are painted from the largest area to
    the smallest (ties in record order), so a smaller mask lying on a larger one stays visible and the
    larger one keeps the pixels around it; a mask entirely covered by smaller ones disappears.
    ``segmentation`` may be a boolean array or an RLE (uncompressed or COCO string). ``shape`` (H, W)
    is needed only when ``records`` is empty.
    """
    if not records:
        if shape is None:
            raise SamError("no masks and no image shape given: cannot build a label image")
        return np.zeros(tuple(shape), dtype=np.int32)
    first = records[0]["segmentation"]
    size = tuple(first["size"]) if isinstance(first, dict) else np.shape(first)
    if shape is not None and tuple(shape) != tuple(size):
        raise SamError(f"the masks are {size[0]}x{size[1]} pixels but the label image shape is {shape[0]}x{shape[1]}")
    labels = np.zeros(size, dtype=np.int32)
    areas = [int(r["area"]) if "area" in r else None for r in records]
    decoded = [None] * len(records)
    for i, record in enumerate(records):
        if areas[i] is None:
            decoded[i] = _as_mask(record["segmentation"])
            areas[i] = int(decoded[i].sum())
    order = sorted(range(len(records)), key=lambda i: (-areas[i], i))
    for i in order:
        mask = decoded[i] if decoded[i] is not None else _as_mask(records[i]["segmentation"])
        if mask.shape != labels.shape:
            raise SamError(f"mask {i + 1} is {mask.shape[0]}x{mask.shape[1]} pixels, expected {size[0]}x{size[1]}")
        labels[mask] = i + 1
    return labels


def _as_mask(segmentation: Any) -> np.ndarray:
    if isinstance(segmentation, dict):
        return M.rle_to_mask(segmentation)
    return np.asarray(segmentation, dtype=bool)
