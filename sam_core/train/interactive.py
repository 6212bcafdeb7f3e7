"""One training step of SAM's interactive simulation, shared by the ``demo`` training and fine-tuning.

Given image embeddings and the target masks of some objects, prompts are simulated as in SAM's
training: each object starts from one point inside it (three candidate masks, the loss of the best
one counts), from its jittered box, or from the box and a point; then ``rounds`` corrective clicks
are placed in the error region of the previous prediction, with the previous low-resolution logits
as ``mask_input``. Every decode adds focal + dice (20:1) on the masks and MSE on the predicted IoU.

Coordinates are pixels (x, y) of the model input (the resized, unpadded image inside the square of
``image_size``); targets are (M, S, S) boolean masks in that frame, S = ``image_size``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from sam_core.train.losses import iou_loss, mask_iou, mask_loss
from sam_core.train.prompts import corrective_click, interior_point, jittered_box, random_point_inside

START_TYPES = ("point", "box", "box+point")


@dataclass
class StepResult:
    """The loss to back-propagate and, per start type, the IoU of each round's chosen mask."""

    loss: torch.Tensor
    iou: dict[str, list[float]] = field(default_factory=dict)


def decode(
    sam: torch.nn.Module,
    embeddings: torch.Tensor,
    points: torch.Tensor | None,
    labels: torch.Tensor | None,
    boxes: torch.Tensor | None,
    mask_input: torch.Tensor | None,
    multimask: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Decode N prompts, each with its own embedding (N, C, h, w): low-res logits (N, K, 4h, 4w), IoU (N, K)."""
    sparse, dense = sam.prompt_encoder(
        points=(points, labels) if points is not None else None, boxes=boxes, masks=mask_input
    )
    return sam.mask_decoder(embeddings, sam.prompt_encoder.get_dense_pe(), sparse, dense, multimask)


def _upscale(low_res: torch.Tensor, size: int) -> torch.Tensor:
    if low_res.shape[-1] == size:
        return low_res
    return F.interpolate(low_res, (size, size), mode="bilinear", align_corners=False)


def simulate(
    sam: torch.nn.Module,
    embeddings: torch.Tensor,
    image_index: np.ndarray,
    targets: np.ndarray,
    rng: np.random.Generator,
    rounds: int = 1,
    start: np.ndarray | None = None,
    background: np.ndarray | None = None,
    centre_clicks: bool = False,
    iou_weight: float = 1.0,
    loss_size: int | None = None,
    box_noise: float = 0.1,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = mask_loss,
) -> StepResult:
    """Simulate prompting of M objects and return the mean loss per decode (see the module docstring).

    ``embeddings`` (B, C, h, w); ``image_index`` (M,) says which embedding each object belongs to;
    ``targets`` (M, S, S) bool. ``start`` (M,) indexes :data:`START_TYPES` (random when None).
    ``background`` (B, S, S) bool, optional: the background of each image; one positive click on it
    per image is trained to give an empty mask with predicted IoU 0, so that the automatic mask
    generator's IoU threshold drops masks of grid points that fall on the background.
    With ``centre_clicks`` every point is the interior point of the object or of the largest error
    (deterministic, as in evaluation) instead of a random one. Losses are computed on logits
    resized to ``loss_size`` pixels per side (default: the model input size) against area-averaged
    targets; clicks are placed on the masks at the model input size. Box corners move by Gaussian
    noise of ``box_noise`` times the box side (0: the tight box). ``loss_fn(logits, targets) -> (N, K)``
    is the mask loss (default SAM's focal + dice, 20:1).
    """
    device = embeddings.device
    m = len(targets)
    size = targets.shape[-1]
    loss_size = loss_size or size
    if start is None:
        start = rng.integers(0, len(START_TYPES), m)
    target_t = torch.from_numpy(targets).to(device).float()[:, None]
    if loss_size != size:
        target_t = F.interpolate(target_t, (loss_size, loss_size), mode="area")
    total = embeddings.new_zeros(())
    count = 0
    result = StepResult(total)
    if background is not None:
        keep = np.flatnonzero(background.reshape(len(background), -1).any(axis=1))
        if len(keep):
            pts = [[random_point_inside(rng, background[i])] for i in keep]
            points_t = torch.tensor(pts, dtype=torch.float32, device=device)
            labels_t = torch.ones(len(keep), 1, dtype=torch.int64, device=device)
            low, iou_pred = decode(sam, embeddings[torch.from_numpy(keep).to(device)], points_t, labels_t,
                                   None, None, True)
            logits = _upscale(low, loss_size)
            empty = torch.zeros_like(logits[:, :1])
            total = total + loss_fn(logits, empty).min(dim=1).values.sum() + iou_weight * (iou_pred**2).mean(1).sum()
            count += len(keep)
    for kind_index, kind in enumerate(START_TYPES):
        members = np.flatnonzero(start == kind_index)
        if len(members) == 0:
            continue
        emb = embeddings[torch.from_numpy(image_index[members]).to(device)]
        goal = targets[members]
        goal_t = target_t[members]
        pts: list[list[tuple[float, float]]] = [[] for _ in members]
        lbl: list[list[int]] = [[] for _ in members]
        boxes = None
        if kind != "point":
            boxes = torch.tensor([jittered_box(rng, g, noise=box_noise) for g in goal], dtype=torch.float32, device=device)
        if kind != "box":
            for j, g in enumerate(goal):
                pts[j].append(interior_point(g) if centre_clicks else random_point_inside(rng, g))
                lbl[j].append(1)
        mask_input = None
        ious: list[float] = []
        for r in range(rounds + 1):
            multimask = kind == "point" and r == 0
            points_t = labels_t = None
            if pts[0]:
                points_t = torch.tensor(pts, dtype=torch.float32, device=device)
                labels_t = torch.tensor(lbl, dtype=torch.int64, device=device)
            low, iou_pred = decode(sam, emb, points_t, labels_t, boxes, mask_input, multimask)
            logits = _upscale(low, loss_size)
            best_loss = loss_fn(logits, goal_t).min(dim=1).values
            total = total + best_loss.sum() + iou_weight * iou_loss(iou_pred, logits, goal_t).mean(dim=1).sum()
            count += len(members)
            chosen = iou_pred.detach().argmax(dim=1)
            rows = torch.arange(len(members), device=device)
            mask_input = low.detach()[rows, chosen][:, None]
            chosen_logits = logits.detach()[rows, chosen][:, None]
            ious.append(float(mask_iou(chosen_logits, goal_t).mean()))
            if r == rounds:
                break
            predicted = (_upscale(mask_input, size)[:, 0] > 0).cpu().numpy()
            for j in range(len(members)):
                (x, y), label = corrective_click(rng, predicted[j], goal[j], centre=centre_clicks)
                pts[j].append((x, y))
                lbl[j].append(label)
        result.iou[kind] = ious
    result.loss = total / max(count, 1)
    return result
