"""Mask utilities of the automatic mask generator, equal to the official ``segment_anything.utils.amg``.

Conventions: masks are ``(..., H, W)`` tensors (row, col); boxes are XYXY pixel coordinates
``(x0, y0, x1, y1)`` with *inclusive* right/bottom edges (the official convention of
:func:`masks_to_boxes`) unless a function says XYWH; points are ``(x, y)``.
Torch functions run vectorized on the device of their input.

RLE is COCO's run-length encoding of a mask in column-major (Fortran) order, starting with the
number of 0 pixels: ``{"size": [h, w], "counts": [n0, n1, n0, ...]}`` (uncompressed) or with
``counts`` as COCO's compressed ASCII string (:func:`coco_encode_rle`, no pycocotools needed).
"""

from __future__ import annotations

import math
from itertools import product
from typing import Any, Dict, List, Sequence, Tuple, Union

import numpy as np
import torch

Rle = Dict[str, Any]


# ---------------------------------------------------------------------------------------------
# scores and boxes
# ---------------------------------------------------------------------------------------------


def stability_score(
    logits: torch.Tensor,
    mask_threshold: float = 0.0,
    offset: float = 1.0,
    chunk_size: int = 64,
) -> torch.Tensor:
    """Stability score of mask logits ``(..., H, W)``: IoU of the masks thresholded at
    ``mask_threshold + offset`` and ``mask_threshold - offset`` (the first lies inside the second).

    Pixel counts are exact integers (as the official ``calculate_stability_score``); the leading
    dimensions are processed ``chunk_size`` masks at a time to bound temporary memory. Returns a float
    tensor of shape ``(...)``. Where no pixel is above ``mask_threshold - offset`` the score is NaN
    (0 / 0, as the official function): such a mask passes no stability threshold.
    """
    shape = logits.shape[:-2]
    flat = logits.reshape(-1, *logits.shape[-2:])
    high = mask_threshold + offset
    low = mask_threshold - offset
    inter = torch.empty(flat.shape[0], dtype=torch.int32, device=flat.device)
    union = torch.empty_like(inter)
    for start in range(0, flat.shape[0], max(1, chunk_size)):
        part = flat[start : start + chunk_size]
        inter[start : start + part.shape[0]] = (part > high).flatten(1).sum(1, dtype=torch.int32)
        union[start : start + part.shape[0]] = (part > low).flatten(1).sum(1, dtype=torch.int32)
    return (inter / union).reshape(shape)


def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over union of two boolean masks of one shape (``(H, W)``, or a stack
    ``(Z, Y, X)`` as one 3D object): ``|a & b| / |a | b|``.

    Two empty masks are the same mask: their IoU is 1.0. The one mask IoU of sam_core (volumes, quality
    measures, tests).
    """
    a = np.asarray(a, dtype=bool)
    b = np.asarray(b, dtype=bool)
    if a.shape != b.shape:
        raise ValueError(f"masks of different shapes {a.shape} and {b.shape} have no IoU")
    union = int(np.count_nonzero(a | b))
    return float(np.count_nonzero(a & b) / union) if union else 1.0


def masks_to_boxes(masks: torch.Tensor) -> torch.Tensor:
    """Boxes XYXY (inclusive pixel edges, int64) around boolean masks ``(..., H, W)``; ``[0, 0, 0, 0]``
    for an empty mask. Returns ``(..., 4)`` on the masks' device."""
    lead = masks.shape[:-2]
    h, w = masks.shape[-2:]
    if masks.numel() == 0:
        return torch.zeros(*lead, 4, dtype=torch.int64, device=masks.device)
    flat = masks.reshape(-1, h, w)
    rows = flat.any(dim=-1).to(torch.uint8)  # (N, H)
    cols = flat.any(dim=-2).to(torch.uint8)  # (N, W)
    top = rows.argmax(dim=-1)
    bottom = (h - 1) - rows.flip(-1).argmax(dim=-1)
    left = cols.argmax(dim=-1)
    right = (w - 1) - cols.flip(-1).argmax(dim=-1)
    boxes = torch.stack([left, top, right, bottom], dim=-1)
    boxes = boxes * rows.any(dim=-1, keepdim=True)
    return boxes.reshape(*lead, 4)


def box_xyxy_to_xywh(boxes: Union[torch.Tensor, np.ndarray]) -> Union[torch.Tensor, np.ndarray]:
    """Boxes ``(..., 4)`` from XYXY to XYWH (a new array; the input is not modified)."""
    out = boxes.clone() if isinstance(boxes, torch.Tensor) else np.array(boxes, copy=True)
    out[..., 2] = boxes[..., 2] - boxes[..., 0]
    out[..., 3] = boxes[..., 3] - boxes[..., 1]
    return out


def box_area(boxes: torch.Tensor) -> torch.Tensor:
    """Area ``(x1 - x0) * (y1 - y0)`` of XYXY boxes ``(N, 4)``."""
    return (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])


def box_iou(boxes1: torch.Tensor, boxes2: torch.Tensor) -> torch.Tensor:
    """Pairwise IoU ``(N, M)`` of XYXY boxes, computed as torchvision does."""
    area1 = box_area(boxes1)
    area2 = box_area(boxes2)
    lt = torch.max(boxes1[:, None, :2], boxes2[None, :, :2])
    rb = torch.min(boxes1[:, None, 2:], boxes2[None, :, 2:])
    wh = (rb - lt).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    return inter / (area1[:, None] + area2[None, :] - inter)


def nms(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """Greedy non-maximum suppression with torchvision's semantics.

    Boxes are visited by decreasing score (ties keep their input order); a box is dropped when its IoU
    with an already kept box is *greater than* ``iou_threshold``. Returns the int64 indices of the kept
    boxes, by decreasing score.
    """
    if boxes.numel() == 0:
        return torch.empty((0,), dtype=torch.int64, device=boxes.device)
    order = torch.argsort(scores, descending=True, stable=True)
    sorted_boxes = boxes[order].float()
    over = (box_iou(sorted_boxes, sorted_boxes) > iou_threshold).triu_(diagonal=1).cpu().numpy()
    n = over.shape[0]
    suppressed = np.zeros(n, dtype=bool)
    keep = []
    for i in range(n):
        if suppressed[i]:
            continue
        keep.append(i)
        suppressed |= over[i]
    return order[torch.as_tensor(keep, dtype=torch.int64, device=order.device)]


def batched_nms(
    boxes: torch.Tensor, scores: torch.Tensor, idxs: torch.Tensor, iou_threshold: float
) -> torch.Tensor:
    """NMS done independently per category ``idxs`` (torchvision's offset trick: boxes of different
    categories are shifted apart so that they never overlap). Returns kept indices by decreasing score."""
    if boxes.numel() == 0:
        return torch.empty((0,), dtype=torch.int64, device=boxes.device)
    max_coordinate = boxes.max()
    offsets = idxs.to(boxes) * (max_coordinate + torch.tensor(1).to(boxes))
    return nms(boxes + offsets[:, None], scores, iou_threshold)


# ---------------------------------------------------------------------------------------------
# point grids and crops
# ---------------------------------------------------------------------------------------------


def build_point_grid(n_per_side: int) -> np.ndarray:
    """``n_per_side**2`` points ``(x, y)`` evenly spaced in [0, 1]², cell centres, x varying fastest."""
    offset = 1 / (2 * n_per_side)
    side = np.linspace(offset, 1 - offset, n_per_side)
    xs = np.tile(side[None, :], (n_per_side, 1))
    ys = np.tile(side[:, None], (1, n_per_side))
    return np.stack([xs, ys], axis=-1).reshape(-1, 2)


def build_all_layer_point_grids(n_per_side: int, n_layers: int, scale_per_layer: int) -> List[np.ndarray]:
    """Point grids for crop layers ``0..n_layers``; layer ``i`` has ``int(n_per_side / scale**i)`` per side."""
    return [build_point_grid(int(n_per_side / (scale_per_layer**i))) for i in range(n_layers + 1)]


def generate_crop_boxes(
    im_size: Tuple[int, int], n_layers: int, overlap_ratio: float
) -> Tuple[List[List[int]], List[int]]:
    """Crop boxes XYXY (exclusive right/bottom) of the image ``im_size = (h, w)`` and their layer index.

    Layer 0 is the whole image; layer ``i >= 1`` has ``(2**i)**2`` overlapping crops, the overlap being
    ``overlap_ratio`` of the short side in layer 1 and halved with each further layer.
    """
    im_h, im_w = im_size
    short_side = min(im_h, im_w)
    crop_boxes: List[List[int]] = [[0, 0, im_w, im_h]]
    layer_idxs = [0]

    def crop_len(orig_len: int, n_crops: int, overlap: int) -> int:
        return int(math.ceil((overlap * (n_crops - 1) + orig_len) / n_crops))

    for i_layer in range(n_layers):
        n_crops_per_side = 2 ** (i_layer + 1)
        overlap = int(overlap_ratio * short_side * (2 / n_crops_per_side))
        crop_w = crop_len(im_w, n_crops_per_side, overlap)
        crop_h = crop_len(im_h, n_crops_per_side, overlap)
        x0s = [int((crop_w - overlap) * i) for i in range(n_crops_per_side)]
        y0s = [int((crop_h - overlap) * i) for i in range(n_crops_per_side)]
        for x0, y0 in product(x0s, y0s):
            crop_boxes.append([x0, y0, min(x0 + crop_w, im_w), min(y0 + crop_h, im_h)])
            layer_idxs.append(i_layer + 1)
    return crop_boxes, layer_idxs


def uncrop_boxes_xyxy(boxes: torch.Tensor, crop_box: Sequence[int]) -> torch.Tensor:
    """Boxes XYXY ``(..., 4)`` from the crop's frame to the image's frame."""
    x0, y0 = crop_box[0], crop_box[1]
    return boxes + torch.tensor([x0, y0, x0, y0], device=boxes.device)


def uncrop_points(points: torch.Tensor, crop_box: Sequence[int]) -> torch.Tensor:
    """Points ``(..., 2)`` (x, y) from the crop's frame to the image's frame."""
    return points + torch.tensor([crop_box[0], crop_box[1]], device=points.device)


def uncrop_masks(masks: torch.Tensor, crop_box: Sequence[int], orig_h: int, orig_w: int) -> torch.Tensor:
    """Masks ``(..., h, w)`` of a crop, zero-padded into the image of size ``(orig_h, orig_w)``."""
    x0, y0, x1, y1 = crop_box
    if x0 == 0 and y0 == 0 and x1 == orig_w and y1 == orig_h:
        return masks
    pad_x, pad_y = orig_w - (x1 - x0), orig_h - (y1 - y0)
    return torch.nn.functional.pad(masks, (x0, pad_x - x0, y0, pad_y - y0), value=0)


def is_box_near_crop_edge(
    boxes: torch.Tensor, crop_box: Sequence[int], orig_box: Sequence[int], atol: float = 20.0
) -> torch.Tensor:
    """True for boxes (crop frame, XYXY) within ``atol`` pixels of a crop edge that is not an image edge."""
    crop = torch.as_tensor(crop_box, dtype=torch.float, device=boxes.device)
    orig = torch.as_tensor(orig_box, dtype=torch.float, device=boxes.device)
    boxes = uncrop_boxes_xyxy(boxes, crop_box).float()
    near_crop = torch.isclose(boxes, crop[None, :], atol=atol, rtol=0)
    near_image = torch.isclose(boxes, orig[None, :], atol=atol, rtol=0)
    return torch.any(near_crop & ~near_image, dim=1)


# ---------------------------------------------------------------------------------------------
# run-length encoding (COCO)
# ---------------------------------------------------------------------------------------------


def mask_to_rle(masks: torch.Tensor) -> List[Rle]:
    """Uncompressed COCO RLE of each boolean mask of ``(B, H, W)`` (the official ``mask_to_rle_pytorch``
    output, computed for the whole batch at once)."""
    b, h, w = masks.shape
    if b == 0:
        return []
    flat = masks.permute(0, 2, 1).reshape(b, h * w)
    change = (flat[:, 1:] ^ flat[:, :-1]).nonzero()
    per_mask = torch.bincount(change[:, 0], minlength=b).cpu().tolist()
    positions = (change[:, 1] + 1).cpu().numpy()
    starts_with_one = flat[:, 0].cpu().tolist()
    out: List[Rle] = []
    offset = 0
    for i in range(b):
        idx = positions[offset : offset + per_mask[i]]
        offset += per_mask[i]
        bounds = np.concatenate(([0], idx, [h * w]))
        counts = [0] if starts_with_one[i] else []
        counts.extend(np.diff(bounds).tolist())
        out.append({"size": [h, w], "counts": counts})
    return out


def rle_to_mask(rle: Rle) -> np.ndarray:
    """Boolean mask ``(H, W)`` from an RLE, uncompressed or COCO-compressed."""
    h, w = rle["size"]
    counts = rle["counts"]
    if isinstance(counts, (str, bytes)):
        counts = coco_string_to_counts(counts)
    counts = np.asarray(counts, dtype=np.int64)
    values = np.arange(len(counts)) % 2 == 1
    flat = np.repeat(values, counts)
    if flat.size != h * w:
        raise ValueError(f"RLE counts sum to {flat.size}, expected {h * w} pixels for size {h}x{w}")
    return flat.reshape(w, h).transpose()


def area_from_rle(rle: Rle) -> int:
    """Number of foreground pixels of an RLE, uncompressed or COCO-compressed."""
    counts = rle["counts"]
    if isinstance(counts, (str, bytes)):
        counts = coco_string_to_counts(counts)
    return int(sum(counts[1::2]))


def coco_encode_rle(rle: Rle) -> Rle:
    """Compress an uncompressed RLE into COCO's ASCII string (as pycocotools ``frPyObjects``, without it)."""
    h, w = rle["size"]
    return {"size": [h, w], "counts": counts_to_coco_string(rle["counts"])}


def counts_to_coco_string(counts: Sequence[int]) -> str:
    """COCO's compressed RLE string (pycocotools ``rleToString``): each count, minus the count two
    places before it from the fourth on, in 5-bit groups with a continuation bit, offset by 48."""
    out = []
    for i, count in enumerate(counts):
        x = int(count)
        if i > 2:
            x -= int(counts[i - 2])
        more = True
        while more:
            c = x & 0x1F
            x >>= 5
            more = (x != -1) if (c & 0x10) else (x != 0)
            if more:
                c |= 0x20
            out.append(chr(c + 48))
    return "".join(out)


def coco_string_to_counts(string: Union[str, bytes]) -> List[int]:
    """Counts of a COCO compressed RLE string (pycocotools ``rleFrString``)."""
    data = string.encode("ascii") if isinstance(string, str) else string
    counts: List[int] = []
    p = 0
    n = len(data)
    while p < n:
        x = 0
        k = 0
        more = True
        while more:
            c = data[p] - 48
            x |= (c & 0x1F) << (5 * k)
            more = bool(c & 0x20)
            p += 1
            k += 1
            if not more and (c & 0x10):
                x |= -1 << (5 * k)
        if len(counts) > 2:
            x += counts[-2]
        counts.append(x & 0xFFFFFFFF)
    return counts


# ---------------------------------------------------------------------------------------------
# small regions
# ---------------------------------------------------------------------------------------------

_EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)


def remove_small_regions(mask: np.ndarray, area_thresh: float, mode: str) -> Tuple[np.ndarray, bool]:
    """Fill holes (``mode="holes"``) or remove islands (``mode="islands"``) smaller than ``area_thresh``
    pixels in a boolean mask ``(H, W)``, with 8-connectivity as the official (OpenCV-based) function.

    When every island is small, the largest is kept. Returns ``(mask, changed)``.
    """
    from scipy import ndimage

    if mode not in ("holes", "islands"):
        raise ValueError(f"mode must be 'holes' or 'islands', not {mode!r}")
    correct_holes = mode == "holes"
    working = np.logical_xor(correct_holes, mask)
    regions, n_regions = ndimage.label(working, structure=_EIGHT_CONNECTED)
    sizes = np.bincount(regions.ravel(), minlength=n_regions + 1)[1:]
    small = np.flatnonzero(sizes < area_thresh) + 1
    if small.size == 0:
        return mask, False
    if correct_holes:
        fill = np.concatenate(([0], small))
    else:
        is_small = np.zeros(n_regions + 1, dtype=bool)
        is_small[0] = True
        is_small[small] = True
        fill = np.flatnonzero(~is_small)
        if fill.size == 0:
            fill = np.array([int(np.argmax(sizes)) + 1])
    lookup = np.zeros(n_regions + 1, dtype=bool)
    lookup[fill] = True
    return lookup[regions], True


def postprocess_small_regions(
    masks: torch.Tensor, min_area: int, nms_thresh: float
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Remove holes and islands smaller than ``min_area`` from boolean masks ``(N, H, W)``, then drop
    new duplicates by box NMS (unchanged masks preferred), as the official generator does.

    Returns ``(keep, new_masks, changed)``: kept indices in the NMS order, the cleaned masks for all N
    (on the input's device) and a bool tensor telling which masks changed.
    """
    cleaned = []
    changed = []
    for mask in masks.cpu().numpy():
        mask, holes_changed = remove_small_regions(mask, min_area, mode="holes")
        mask, islands_changed = remove_small_regions(mask, min_area, mode="islands")
        cleaned.append(mask)
        changed.append(holes_changed or islands_changed)
    new_masks = torch.as_tensor(np.stack(cleaned)).to(masks.device)
    changed_t = torch.as_tensor(changed, dtype=torch.bool)
    boxes = masks_to_boxes(new_masks)
    scores = (~changed_t).float().to(masks.device)
    keep = batched_nms(boxes.float(), scores, torch.zeros(len(boxes), device=masks.device), nms_thresh)
    return keep, new_masks, changed_t.to(masks.device)

