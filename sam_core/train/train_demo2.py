"""Train the bundled ``demo2`` model (SAM 2.1 at a small size) from scratch on generated clips (seeded).

    python -m sam_core.train.train_demo2 --out demo2.pt                       # the CPU recipe
    python -m sam_core.train.train_demo2 --init demo2.pt --out longer.pt --image-steps 0 --steps 4000 \
        --lr 2.5e-4 --seed 1                                                  # a continuation

The defaults are the CPU recipe (seed 0, one torch thread): 3000 steps of the image stage, then 3000
of the full recipe, about 45 minutes on the project's idle 2-core machine (0.24 s an image step, 0.66 s
a full step). The shipped weights come from the longer recipe: the CPU recipe, then three
continuations of the full stage with ``--init`` (4000, 3000 and 2000 steps, seeds 1, 2, 3; commands and
figures in ``benchmarks/RESULTS.md``). They still miss issue 17's held-out targets
(``benchmarks/quality_demo2.py``).

The network is ``SAM2_CONFIGS["demo2"]`` built by :func:`sam_core.models.sam2.build_sam2` (the same
code as the official models): a Hiera trunk of width 32 (stages 1, 2, 3, 1) at 256 px input (a 16 x 16
embedding), neck and heads of width 64, memories of width 32, two memory-attention layers.

Every step draws ``--clips`` clips of ``--frames`` frames from :mod:`sam_core.train.sequences`
(moving, deforming, touching, entering and leaving objects; slices through 3D blobs) and ``--scenes``
still scenes from :mod:`sam_core.train.synthetic`, with seeds (``--seed``, step, i), in a worker
process, so step ``n`` sees the same data whether or not the run was resumed.

Two stages, each with its own warm-up and cosine decay:

1. ``--image-steps`` steps of the image path alone, on still scenes, with the mask decoder's
   high-resolution skips (``conv_s0`` / ``conv_s1``) held at zero. Trained from scratch with them,
   the decoder takes their appearance shortcut and never learns to follow a click
   (``benchmarks/demo2_trunk_ab.py --skip-scale``).
2. ``--steps`` steps of the full recipe, the skips trained from zero (once clicks are followed they
   sharpen the masks' edges):

   * Image path (frame 0 of each clip and the still scenes): each object is prompted with a point
     inside it, its jittered box, or both (SAM's simulation, :mod:`sam_core.train.prompts`); a single
     point gives three candidates and the best one's loss counts; then one corrective click in the
     error region, with the previous logits as ``mask_input``.
   * Memory path (frames 1.. of each clip): the objects prompted on frame 0 are tracked with the
     official tracking step (:mod:`sam_core.models.sam2.tracking`: memory attention to the prompted
     frame's and the previous frames' memories and object pointers, memory encoder on each
     prediction). Mask loss where the object is present; the object score is trained on every frame
     to say whether the object is there (binary cross-entropy, absent frames weighted
     :data:`ABSENT_WEIGHT` times), so an object that leaves is reported absent.

Mask loss: class-balanced cross-entropy + dice (``balanced_bce_dice_loss``; the balance fades out
by ``balance_until`` of the first stage), plus MSE on the predicted IoU. AdamW; ``--stop-after`` ends
the run earlier (steps count over both stages). The weights are written atomically every
``--save-every`` steps as ``{"model": state_dict}`` (the official format); ``OUT.state`` holds the
optimizer and the step for ``--resume``.
"""

from __future__ import annotations

import argparse
import time
from functools import partial
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from sam_core.models.build import load_checkpoint, read_state_dict
from sam_core.models.sam2 import SAM2_CONFIGS, Sam2, build_sam2
from sam_core.models.sam2.tracking import FrameFeatures, FrameState, condition_on_memory, frame_features
from sam_core.train.losses import balanced_bce_dice_loss, iou_loss, mask_iou
from sam_core.train.prompts import corrective_click, jittered_box, random_point_inside
from sam_core.train.run import (add_run_args, balance_at, check_run_args, last_step, resume_run, save_run,
                                 stage_learning_rate, state_path_for)
from sam_core.train.sequences import generate_sequence, prompted_objects
from sam_core.train.synthetic import generate_scene

TRAIN_SEED = 0
DEFAULT_IMAGE_STEPS = 3000
DEFAULT_IMAGE_LR = 1e-3
DEFAULT_STEPS = 3000
DEFAULT_LR = 5e-4
DEFAULT_WARMUP = 50
# about 4% of the tracked frames of the training clips show their object gone; unweighted, the object
# score learnt to say "present" everywhere (0% of the held-out absent frames reported)
ABSENT_WEIGHT = 8.0
CONFIG_NAME = "demo2"


# ------------------------------------------------------------------------------------------- data


def _batch(seed: int, step: int, clips: int, scenes: int, frames: int, size: int) -> dict:
    """Step ``step``'s data: ``clips`` (C, T, H, W, 3) uint8 with labels (C, T, H, W), still
    ``scenes`` (S, H, W, 3) with labels (S, H, W)."""
    rng = np.random.default_rng((seed, step, 3_000_000))
    sequences = []
    for c in range(clips):
        exits = bool(rng.random() < 0.3)
        sequences.append(generate_sequence((seed, step, c), frames=frames, size=size,
                                           kind="movie" if exits else None, exits=exits))
    stills = [generate_scene((seed, step, 100 + s), size=size) for s in range(scenes)]
    return {
        "clips": np.stack([s.frames for s in sequences]) if clips else None,
        "clip_labels": np.stack([s.labels for s in sequences]) if clips else None,
        "exits": [s.kind == "movie" and not s.present(1).all() for s in sequences],
        "scenes": np.stack([s.image for s in stills]) if scenes else None,
        "scene_labels": np.stack([s.labels for s in stills]) if scenes else None,
    }


class _Batches(torch.utils.data.Dataset):
    """Step ``n``'s data, drawn in a worker process while the model trains on the previous step; no
    clips before step ``clips_from`` (the image stage)."""

    def __init__(self, seed: int, clips: int, scenes: int, frames: int, size: int, clips_from: int = 0) -> None:
        self.args = (seed, clips, scenes, frames, size)
        self.clips_from = clips_from

    def __getitem__(self, step: int) -> dict:
        seed, clips, scenes, frames, size = self.args
        return _batch(seed, step, clips if step >= self.clips_from else 0, scenes, frames, size)


def _as_is(batch):
    return batch


# ------------------------------------------------------------------------------------------- steps


class _Loss:
    """Sums the loss terms of a step and keeps the IoU of the chosen masks per kind, for the log."""

    def __init__(self, loss_size: int, balance: float) -> None:
        self.loss_size = loss_size
        self.mask_loss = partial(balanced_bce_dice_loss, balance=balance)
        self.total: torch.Tensor | float = 0.0
        self.count = 0
        self.ious: dict[str, list[float]] = {}

    def targets(self, masks: np.ndarray, device: str) -> torch.Tensor:
        """(N, S, S) bool -> (N, 1, L, L) area-averaged float targets."""
        t = torch.from_numpy(masks).to(device).float()[:, None]
        return F.interpolate(t, (self.loss_size, self.loss_size), mode="area")

    def add_masks(self, kind: str, logits: torch.Tensor, ious: torch.Tensor, best: torch.Tensor,
                  targets: torch.Tensor, weight: Optional[torch.Tensor] = None) -> None:
        """Mask loss of the best of K candidates (N, K, l, l) and MSE on the predicted IoU (N, K);
        ``weight`` (N,) 0/1 leaves out absent objects. ``best`` (N,) indexes the chosen candidate."""
        up = F.interpolate(logits, (self.loss_size, self.loss_size), mode="bilinear", align_corners=False)
        per = self.mask_loss(up, targets).min(dim=1).values + iou_loss(ious, up, targets).mean(dim=1)
        weight = torch.ones_like(per) if weight is None else weight
        self.total = self.total + (per * weight).sum()
        self.count += int(weight.sum().item())
        rows = torch.arange(len(best), device=logits.device)
        chosen = mask_iou(up.detach()[rows, best][:, None], targets)[:, 0]
        keep = weight > 0
        if keep.any():
            self.ious.setdefault(kind, []).append(float(chosen[keep].mean()))

    def add_presence(self, kind: str, scores: torch.Tensor, present: torch.Tensor) -> None:
        """Binary cross-entropy of object-score logits (N, 1) against presence (N,) 0/1, an absent
        object's frame weighing :data:`ABSENT_WEIGHT` times a present one's."""
        weight = 1.0 + (ABSENT_WEIGHT - 1.0) * (1.0 - present)
        self.total = self.total + F.binary_cross_entropy_with_logits(scores[:, 0], present, weight, reduction="sum")
        self.count += len(present)
        self.ious.setdefault(kind, []).append(float(((scores[:, 0] > 0).float() == present).float().mean()))


def _skip_parameters(model: Sam2) -> list[torch.nn.Parameter]:
    """The mask decoder's high-resolution skips (``conv_s0`` / ``conv_s1``: they add the trunk's
    stride-4 and stride-8 features into the decoder's upscaling)."""
    return [*model.sam_mask_decoder.conv_s0.parameters(), *model.sam_mask_decoder.conv_s1.parameters()]


def start_without_skips(model: Sam2) -> None:
    """Zero the high-resolution skips and keep them out of training until :func:`train_skips`.
    Trained from scratch with them, the decoder takes their appearance shortcut and never learns to
    follow a click (``benchmarks/demo2_trunk_ab.py --skip-scale``); at zero the official code adds
    nothing through them. Once clicks are followed, the skips sharpen the masks' edges."""
    with torch.no_grad():
        for parameter in _skip_parameters(model):
            parameter.zero_()
    train_skips(model, False)


def train_skips(model: Sam2, on: bool = True) -> None:
    """Let the optimizer update the high-resolution skips (``on``) or hold them where they are."""
    for parameter in _skip_parameters(model):
        parameter.requires_grad_(on)


def _prompts(rng: np.random.Generator, masks: np.ndarray, start: np.ndarray) -> tuple[list, list]:
    """Points (x, y) and labels per object: a box as two corners (labels 2, 3) and/or a point (1)."""
    points, labels = [], []
    for mask, kind in zip(masks, start):
        p, lab = [], []
        if kind != 0:  # a box (1) or a box and a point (2)
            x0, y0, x1, y1 = jittered_box(rng, mask)
            p += [(x0, y0), (x1, y1)]
            lab += [2, 3]
        if kind != 1:
            p.append(random_point_inside(rng, mask))
            lab.append(1)
        points.append(p)
        labels.append(lab)
    return points, labels


def _prompted(model: Sam2, features: FrameFeatures, masks: np.ndarray, rng: np.random.Generator, losses: _Loss,
              kind: str, corrections: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Prompt N objects (masks (N, S, S)) on one frame whose features have batch N: the image path with
    ``corrections`` corrective clicks. Returns the final low-resolution logits (N, 1, l, l), the object
    score logits, the object pointers and the (N, 1, L, L) targets."""
    device = features.pix_feat.device
    n = len(masks)
    targets = losses.targets(masks, device)
    embed = features.pix_feat + model.no_mem_embed.view(1, -1, 1, 1)
    # a single point gives three candidates; prompts with a box one
    start = np.where(rng.random(n) < 0.5, 0, rng.integers(1, 3, n))
    points, labels = _prompts(rng, masks, start)
    previous = None
    low = torch.zeros(n, 1, model.low_res_size, model.low_res_size, device=device)
    scores = torch.zeros(n, 1, device=device)
    pointers = torch.zeros(n, model.config.d_model, device=device)
    for r in range(corrections + 1):
        for group in (np.flatnonzero(start == 0), np.flatnonzero(start != 0)) if r == 0 else (np.arange(n),):
            if len(group) == 0:
                continue
            width = max(len(points[i]) for i in group)
            coords = torch.zeros(len(group), width, 2)
            codes = -torch.ones(len(group), width, dtype=torch.int32)
            for j, i in enumerate(group):
                coords[j, : len(points[i])] = torch.tensor(points[i], dtype=torch.float32)
                codes[j, : len(labels[i])] = torch.tensor(labels[i], dtype=torch.int32)
            index = torch.from_numpy(group).to(device)
            mask_input = None if previous is None else previous[index]
            multimask = r == 0 and width == 1
            heads = model.forward_heads(embed[index], tuple(h[index] for h in features.high_res), coords.to(device),
                                        codes.to(device), mask_input, multimask=multimask)
            best = heads.ious.argmax(dim=1) if multimask else torch.zeros(len(group), dtype=torch.long, device=device)
            losses.add_masks(f"{kind}:{'click' if r == 0 else 'fix'}", heads.decoded, heads.ious, best, targets[index])
            losses.add_presence("score", heads.object_score_logits, torch.ones(len(group), device=device))
            rows = torch.arange(len(group), device=device)
            low = low.index_copy(0, index, heads.decoded[rows, best][:, None])
            scores = scores.index_copy(0, index, heads.object_score_logits)
            pointers = pointers.index_copy(0, index, heads.object_pointer)
        previous = low.detach()
        if r == corrections:
            break
        predicted = (F.interpolate(previous, masks.shape[-2:], mode="bilinear", align_corners=False)[:, 0] > 0)
        predicted = predicted.cpu().numpy()
        for i in range(n):
            (x, y), label = corrective_click(rng, predicted[i], masks[i])
            points[i].append((x, y))
            labels[i].append(label)
    return low, scores, pointers, targets


def _select(features: FrameFeatures, index: int, n: int) -> FrameFeatures:
    """Frame ``index`` of a batch of frame features, repeated for ``n`` objects."""
    return FrameFeatures(high_res=tuple(h[index: index + 1].expand(n, -1, -1, -1) for h in features.high_res),
                         pix_feat=features.pix_feat[index: index + 1].expand(n, -1, -1, -1), pos=features.pos)


def _clip_step(model: Sam2, frames: np.ndarray, labels: np.ndarray, exits: bool, rng: np.random.Generator,
               losses: _Loss, max_objects: int, device: str, max_prompted: int = 0) -> None:
    """Prompt up to ``max(max_objects, max_prompted)`` objects on frame 0 (the image path) and track
    ``max_objects`` of them through the clip (see the module docstring)."""
    size = model.image_size
    count = len(frames)
    ids = prompted_objects(labels[0])
    if not ids:
        return
    ids = [int(i) for i in rng.permutation(ids)]
    if exits and 1 in ids:  # the object that leaves is among the tracked ones
        ids.remove(1)
        ids.insert(0, 1)
    ids = ids[:max(max_objects, max_prompted)]
    x = torch.from_numpy(frames).to(device).permute(0, 3, 1, 2)
    features = frame_features(model, model.preprocess(x))
    prompted = np.stack([labels[0] == i for i in ids])
    low, scores, pointers, _ = _prompted(model, _select(features, 0, len(ids)), prompted, rng, losses, "clip",
                                         corrections=int(rng.random() < 0.5))
    n = min(max_objects, len(ids))
    low, scores, pointers = low[:n], scores[:n], pointers[:n]
    masks = np.stack([labels == i for i in ids[:n]], axis=1)  # (T, N, S, S)
    first = _select(features, 0, n)
    full = F.interpolate(low, (size, size), mode="bilinear", align_corners=False)
    memory, memory_pos = model.encode_memory(first.pix_feat, full, scores, binarize=True)
    cond = {0: FrameState(low, None, pointers, scores, memory, memory_pos)}
    tracked: dict[int, FrameState] = {}
    for t in range(1, count):
        current = _select(features, t, n)
        pix = condition_on_memory(model, t, current, cond, tracked, count)
        heads = model.forward_heads(pix, current.high_res, multimask=True)
        present = torch.from_numpy(masks[t].reshape(n, -1).any(axis=1)).float().to(device)
        best = heads.ious.argmax(dim=1)
        losses.add_masks("track", heads.decoded, heads.ious, best, losses.targets(masks[t], device), weight=present)
        kind = "absent" if (present == 0).any() else "present"
        losses.add_presence(kind, heads.object_score_logits, present)
        full = F.interpolate(heads.best, (size, size), mode="bilinear", align_corners=False)
        memory, memory_pos = model.encode_memory(current.pix_feat, full, heads.object_score_logits)
        tracked[t] = FrameState(heads.best, None, heads.object_pointer, heads.object_score_logits, memory, memory_pos)


def _scene_step(model: Sam2, images: np.ndarray, labels: np.ndarray, rng: np.random.Generator, losses: _Loss,
                max_objects: int, device: str) -> None:
    """The image path on still scenes: up to ``max_objects`` objects of each, prompted and corrected."""
    x = torch.from_numpy(images).to(device).permute(0, 3, 1, 2)
    features = frame_features(model, model.preprocess(x))
    for b in range(len(images)):
        ids = [int(i) for i in rng.permutation(np.arange(1, int(labels[b].max()) + 1))[:max_objects]]
        if not ids:
            continue
        masks = np.stack([labels[b] == i for i in ids])
        _prompted(model, _select(features, b, len(ids)), masks, rng, losses, "scene", corrections=1)


def train(
    out: Path,
    steps: int = DEFAULT_STEPS,
    image_steps: int = DEFAULT_IMAGE_STEPS,
    clips: int = 1,
    scenes: int = 2,
    frames: int = 4,
    objects: int = 3,
    prompted: int = 10,
    lr: float = DEFAULT_LR,
    image_lr: float = DEFAULT_IMAGE_LR,
    warmup: int = DEFAULT_WARMUP,
    seed: int = TRAIN_SEED,
    save_every: int = 25,
    resume: bool = False,
    device: str = "cpu",
    log_every: int = 10,
    state_path: Optional[Path] = None,
    loss_size: int = 64,
    balance_until: float = 0.5,
    workers: int = 1,
    stop_after: Optional[int] = None,
    config_name: str = CONFIG_NAME,
    init: Optional[Path] = None,
) -> Sam2:
    """Train ``demo2`` and write it to ``out``; returns the trained model (train mode).

    Two stages, each with its own warm-up and cosine schedule: ``image_steps`` steps of the image
    path alone on still scenes (peak ``image_lr``), then ``steps`` steps of the full recipe (peak
    ``lr``). ``clips`` clips of ``frames`` frames and ``scenes`` still scenes a step; up to
    ``prompted`` objects prompted on frame 0 of a clip and on each scene, ``objects`` of a clip's
    tracked; losses at ``loss_size`` pixels per side, class-balanced at first (fading out over
    ``balance_until`` of the first stage); ``workers`` processes draw the data ahead; ``stop_after``
    ends the run at that step (counted over both stages); ``state_path`` (default ``OUT.state``) holds
    the optimizer and step for ``resume``. The decoder's high-resolution skips start at zero and join
    the training in the second stage (:func:`start_without_skips`). ``init`` starts from the weights
    of that file instead (a longer recipe continuing the default one, without the class balance).
    """
    last = last_step(image_steps + steps, stop_after, "image_steps + steps")
    torch.manual_seed(seed)
    config = SAM2_CONFIGS[config_name]
    model = build_sam2(config).to(device).train()
    start_without_skips(model)
    if init is not None:
        load_checkpoint(model, read_state_dict(init))
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.05)
    state_path = state_path_for(out, state_path)
    first = resume_run(model, optimizer, out, state_path, device, key='model') if resume else 0
    started = time.time()
    window: list[float] = []
    ious: dict[str, list[float]] = {}
    batches = torch.utils.data.DataLoader(
        _Batches(seed, clips, scenes, frames, config.image_size, clips_from=image_steps), batch_size=None,
        num_workers=workers,
        sampler=range(first, last), collate_fn=_as_is, prefetch_factor=2 if workers else None,
    )
    fade = balance_until * (image_steps or steps)
    for step, batch in zip(range(first, last), batches):
        rng = np.random.default_rng((seed, step, 4_000_000))
        for group in optimizer.param_groups:
            group["lr"] = stage_learning_rate(step, image_steps, image_lr, steps, lr, warmup)
        losses = _Loss(loss_size, balance=balance_at(step, fade, continuing=init is not None))
        train_skips(model, step >= image_steps)
        for c in range(0 if batch["clips"] is None else len(batch["clips"])):  # none in the image stage
            _clip_step(model, batch["clips"][c], batch["clip_labels"][c], batch["exits"][c], rng, losses, objects,
                       device, prompted)
        if scenes:
            _scene_step(model, batch["scenes"], batch["scene_labels"], rng, losses, max(objects, prompted), device)
        if losses.count == 0:
            continue
        loss = losses.total / losses.count
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        window.append(loss.item())
        for kind, values in losses.ious.items():
            ious.setdefault(kind, []).extend(values)
        if (step + 1) % log_every == 0:
            summary = " ".join(f"{k}={np.mean(v):.3f}" for k, v in sorted(ious.items()))
            print(f"step {step + 1}/{last} loss={np.mean(window):.4f} {summary} "
                  f"lr={optimizer.param_groups[0]['lr']:.2e} elapsed={(time.time() - started) / 60:.1f}min "
                  f"cpu={time.process_time() / 60:.1f}min", flush=True)
            window, ious = [], {}
        if (step + 1) % save_every == 0 and step + 1 < last:
            save_run(model, optimizer, step + 1, out, state_path, key='model')
    save_run(model, optimizer, last, out, state_path, key='model')
    return model


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_run_args(parser, out="sam_core/data/demo2.pt", steps=DEFAULT_STEPS, lr=DEFAULT_LR, warmup=DEFAULT_WARMUP,
                 seed=TRAIN_SEED, save_every=50, threads=1)
    parser.add_argument("--image-steps", type=int, default=DEFAULT_IMAGE_STEPS,
                        help="steps of the first stage, the image path alone on still scenes (then --steps of the full recipe)")
    parser.add_argument("--image-lr", type=float, default=DEFAULT_IMAGE_LR, help="peak learning rate of the first stage")
    parser.add_argument("--clips", type=int, default=1, help="clips per step")
    parser.add_argument("--scenes", type=int, default=2, help="still scenes per step (synthetic.py's scenes)")
    parser.add_argument("--frames", type=int, default=4, help="frames per clip")
    parser.add_argument("--objects", type=int, default=3, help="objects tracked per clip")
    parser.add_argument("--prompted", type=int, default=10, help="objects prompted on frame 0 and on each scene")
    parser.add_argument("--loss-size", type=int, default=64, help="pixels per side at which losses are computed")
    args = parser.parse_args(argv)
    check_run_args(parser, args, total=args.image_steps + args.steps, what="--image-steps + --steps")
    train(args.out, steps=args.steps, image_steps=args.image_steps, image_lr=args.image_lr, clips=args.clips,
          scenes=args.scenes, frames=args.frames, objects=args.objects, prompted=args.prompted,
          loss_size=args.loss_size, lr=args.lr, warmup=args.warmup, seed=args.seed, save_every=args.save_every,
          resume=args.resume, device=args.device, log_every=args.log_every, state_path=args.state,
          workers=args.workers, stop_after=args.stop_after, init=args.init)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
