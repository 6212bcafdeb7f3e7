"""DETR-style set losses for SAM 3's concept queries: Hungarian matching of the queries to the
instances, then classification and presence cross-entropy, box L1 + generalized IoU and a mask loss
for the matched queries.

Boxes are normalized (cx, cy, w, h) in [0, 1]; ``*_xyxy`` boxes are corners (x0, y0, x1, y1).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment

from sam_core.models.sam3.decoder import cxcywh_to_xyxy
from sam_core.models.sam3.model import ConceptOutput
from sam_core.train.losses import bce_dice_loss

# weights of the matching cost and of the loss, as DETR's (class 2, L1 5, GIoU 2) plus the masks
CLASS_WEIGHT, L1_WEIGHT, GIOU_WEIGHT, MASK_WEIGHT, PRESENCE_WEIGHT = 2.0, 5.0, 2.0, 2.0, 1.0
SEMANTIC_WEIGHT = 2.0  # the semantic map (every pixel of every instance meant), a dense text-grounding signal


def box_area(xyxy: torch.Tensor) -> torch.Tensor:
    return (xyxy[..., 2] - xyxy[..., 0]).clamp(min=0) * (xyxy[..., 3] - xyxy[..., 1]).clamp(min=0)


def generalized_box_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Pairwise generalized IoU (N, M) of corner boxes a (N, 4) and b (M, 4)."""
    top_left = torch.max(a[:, None, :2], b[None, :, :2])
    bottom_right = torch.min(a[:, None, 2:], b[None, :, 2:])
    inter = (bottom_right - top_left).clamp(min=0).prod(-1)
    union = box_area(a)[:, None] + box_area(b)[None, :] - inter
    iou = inter / union.clamp(min=1e-7)
    hull = (torch.max(a[:, None, 2:], b[None, :, 2:]) - torch.min(a[:, None, :2], b[None, :, :2])).clamp(min=0).prod(-1)
    return iou - (hull - union) / hull.clamp(min=1e-7)


def _dice_cost(mask_logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Pairwise 1 - Dice (Q, N) of predicted masks (Q, h, w) and target masks (N, h, w)."""
    prob = mask_logits.sigmoid().flatten(1)
    t = targets.flatten(1)
    numerator = 2 * prob @ t.T
    return 1 - (numerator + 1) / (prob.sum(-1)[:, None] + t.sum(-1)[None, :] + 1)


@torch.no_grad()
def match(out: ConceptOutput, boxes: torch.Tensor, masks: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """(query indexes, instance indexes) of the cheapest one-to-one assignment of the queries to the
    instances (``boxes`` (N, 4) cxcywh, ``masks`` (N, h, w) on the mask grid)."""
    if len(boxes) == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    cost = (-CLASS_WEIGHT * out.logits.sigmoid()[:, None]
            + L1_WEIGHT * torch.cdist(out.boxes, boxes, p=1)
            - GIOU_WEIGHT * generalized_box_iou(cxcywh_to_xyxy(out.boxes), cxcywh_to_xyxy(boxes))
            + MASK_WEIGHT * _dice_cost(out.mask_logits, masks))
    queries, instances = linear_sum_assignment(cost.float().cpu().numpy())
    return queries.astype(np.int64), instances.astype(np.int64)


@dataclass
class SetLoss:
    """The loss of one query (``total``) and its parts (floats, for the log)."""

    total: torch.Tensor
    parts: dict[str, float]


def set_loss(out: ConceptOutput, boxes: torch.Tensor, masks: torch.Tensor) -> SetLoss:
    """The loss of one concept query on one image: ``boxes`` (N, 4) cxcywh and ``masks`` (N, h, w) in
    [0, 1] (on the model's mask grid) of the N instances meant (N may be 0: the concept is absent).

    Classification: cross-entropy of every query (1 for the matched ones), summed and divided by
    max(N, 1); presence: cross-entropy of the presence logit (1 when N > 0); for matched queries box
    L1 + GIoU and cross-entropy + Dice on the masks, averaged over the instances; cross-entropy + Dice of
    the semantic map (when the output has one) against all the instances' pixels (none for an absent
    concept)."""
    queries, instances = match(out, boxes, masks)
    count = max(len(boxes), 1)
    labels = torch.zeros_like(out.logits)
    labels[torch.from_numpy(queries)] = 1.0
    classification = F.binary_cross_entropy_with_logits(out.logits, labels, reduction="sum") / count
    presence = F.binary_cross_entropy_with_logits(out.presence_logit, out.presence_logit.new_tensor(float(len(boxes) > 0)))
    total = CLASS_WEIGHT * classification + PRESENCE_WEIGHT * presence
    parts = {"class": classification.item(), "presence": presence.item()}
    if out.semantic_logits is not None:
        union = masks.sum(0).clamp(max=1) if len(masks) else out.semantic_logits.new_zeros(out.semantic_logits.shape)
        semantic = bce_dice_loss(out.semantic_logits[None, None], union[None, None]).mean()
        total = total + SEMANTIC_WEIGHT * semantic
        parts["semantic"] = semantic.item()
    if len(queries):
        q, i = torch.from_numpy(queries), torch.from_numpy(instances)
        predicted, target = out.boxes[q], boxes[i]
        l1 = (predicted - target).abs().sum(-1).mean()
        giou = (1 - torch.diagonal(generalized_box_iou(cxcywh_to_xyxy(predicted), cxcywh_to_xyxy(target)))).mean()
        mask = bce_dice_loss(out.mask_logits[q][:, None], masks[i][:, None]).mean()
        total = total + L1_WEIGHT * l1 + GIOU_WEIGHT * giou + MASK_WEIGHT * mask
        parts.update(l1=l1.item(), giou=giou.item(), mask=mask.item())
    return SetLoss(total, parts)
