"""SAM's training losses: focal plus dice on mask logits (20:1), MSE on the predicted IoU.

Shapes: ``logits`` (N, K, H, W) raw mask logits, ``targets`` (N, 1, H, W) or (N, K, H, W) in [0, 1]
(soft targets, e.g. area-downsampled masks, are allowed; IoU counts target pixels above 0.5).
Every function returns per-mask values (N, K) so that callers can take the minimum over the K
candidates of one prompt, as SAM does for ambiguous prompts.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

FOCAL_WEIGHT = 20.0
DICE_WEIGHT = 1.0


def focal_loss(logits: torch.Tensor, targets: torch.Tensor, alpha: float = 0.25, gamma: float = 2.0) -> torch.Tensor:
    """Sigmoid focal loss averaged over pixels: (N, K)."""
    targets = targets.expand_as(logits)
    prob = logits.sigmoid()
    ce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    p_t = prob * targets + (1 - prob) * (1 - targets)
    loss = ce * (1 - p_t) ** gamma
    loss = (alpha * targets + (1 - alpha) * (1 - targets)) * loss
    return loss.flatten(2).mean(-1)


def dice_loss(logits: torch.Tensor, targets: torch.Tensor, eps: float = 1.0) -> torch.Tensor:
    """1 - soft Dice coefficient of sigmoid(logits) against targets: (N, K)."""
    targets = targets.expand_as(logits).flatten(2)
    prob = logits.sigmoid().flatten(2)
    numerator = 2 * (prob * targets).sum(-1)
    denominator = prob.sum(-1) + targets.sum(-1)
    return 1 - (numerator + eps) / (denominator + eps)


def mask_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Focal and dice, weighted 20:1 as in SAM: (N, K)."""
    return FOCAL_WEIGHT * focal_loss(logits, targets) + DICE_WEIGHT * dice_loss(logits, targets)


def bce_dice_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy plus dice, 1:1: (N, K). Converges faster than focal + dice from scratch
    (focal loss first drives an untrained model to empty masks), so the ``demo`` training uses it."""
    ce = F.binary_cross_entropy_with_logits(logits, targets.expand_as(logits), reduction="none").flatten(2).mean(-1)
    return ce + dice_loss(logits, targets)


def balanced_bce_dice_loss(logits: torch.Tensor, targets: torch.Tensor, balance: float = 1.0) -> torch.Tensor:
    """Class-balanced binary cross-entropy plus dice: (N, K).

    With ``balance`` 1 the object and background pixels of each mask weigh half each, whatever the
    object's size; 0 gives plain cross-entropy. Training from scratch starts balanced: with plain
    (or focal) cross-entropy an untrained model first settles on empty masks and learns to localise
    prompts very slowly.
    """
    targets = targets.expand_as(logits)
    positive = targets.flatten(2).mean(-1).clamp(1e-3, 1 - 1e-3)[..., None, None]
    weights = torch.where(targets > 0.5, 0.5 / positive, 0.5 / (1 - positive))
    weights = balance * weights + (1 - balance)
    ce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    return (ce * weights).flatten(2).mean(-1) + dice_loss(logits, targets)


def mask_iou(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """IoU of the thresholded masks (logits > 0) with the targets, no gradient: (N, K)."""
    with torch.no_grad():
        pred = (logits > 0).flatten(2)
        gt = targets.expand_as(logits).flatten(2) > 0.5
        inter = (pred & gt).sum(-1).float()
        union = (pred | gt).sum(-1).float()
        return torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(union))


def iou_loss(iou_predictions: torch.Tensor, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """MSE between the predicted IoU (N, K) and the true IoU of each mask: (N, K)."""
    return (iou_predictions - mask_iou(logits, targets)) ** 2
