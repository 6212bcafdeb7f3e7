"""Train the bundled ``demo`` model from scratch on generated scenes (seeded and reproducible).

    python -m sam_core.train.train_demo --out demo.pt                  # 2 CPU cores, 33 minutes
    python -m sam_core.train.train_demo --out demo.pt --device cuda --batch 16 --workers 7 \
        --steps 1700 --stop-after 1400                                  # the shipped weights (GPU)

The network is ``CONFIGS["demo"]`` built by :func:`sam_core.models.build.build_sam` (the same code as
the official models): MobileSAM's TinyViT encoder at 256 px input with three stages (a 32 x 32
embedding) and SAM's prompt encoder and mask decoder at width 96. Every step draws ``--batch`` scenes
from :mod:`sam_core.train.synthetic` with seeds (``--seed``, step, i) in worker processes, so step ``n``
sees the same data whether or not the run was resumed; prompts follow SAM's training simulation
(:mod:`sam_core.train.interactive`), with class-balanced cross-entropy + dice on the masks (SAM's focal
loss leaves a model trained from scratch stuck on empty masks). The whole model trains end to end with
AdamW, linear warm-up and cosine decay over ``--steps``; ``--stop-after`` ends the run earlier on that
schedule. The weights are written atomically every ``--save-every`` steps in the official format (a
plain state dict); a sidecar ``OUT.state`` holds the optimizer state and the step for ``--resume``. At
the end the BatchNorm statistics are re-estimated (:func:`recalibrate_batchnorm`).

The default run (1000 steps of 4 scenes) took 33 minutes on the project's 2-core CPU (31 training, 2
recalibrating), within the 45 allowed. The shipped weights come from the GPU command above (16 scenes a
step), run on an NVIDIA H200 lent to the project: 1400 steps took 6.5 minutes. The GPU recipe gives the
better model (held-out click IoU 0.87 against 0.70); see ``benchmarks/quality.py`` and
``benchmarks/RESULTS.md``.
"""

from __future__ import annotations

import argparse
import time
from functools import partial
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch

from sam_core.models.build import build_sam, load_checkpoint, read_state_dict
from sam_core.models.config import CONFIGS
from sam_core.train.interactive import simulate
from sam_core.train.losses import balanced_bce_dice_loss
from sam_core.train.run import (add_run_args, balance_at, check_run_args, last_step, learning_rate, resume_run,
                                 save_run, state_path_for)
from sam_core.train.synthetic import generate_scene

TRAIN_SEED = 0
DEFAULT_STEPS = 1000
RECALIBRATION_STEP = 10**6  # scene seeds (seed, RECALIBRATION_STEP + i, j): beyond any training step


def _batch(seed: int, step: int, batch: int, objects: int, size: int, rng: np.random.Generator):
    """Images (B, H, W, 3) uint8, object targets (M, H, W) bool, their image index (M,), backgrounds."""
    images, targets, index, backgrounds = [], [], [], []
    for b in range(batch):
        scene = generate_scene((seed, step, b), size=size)
        images.append(scene.image)
        ids = np.arange(1, scene.num_objects + 1)
        for obj in rng.permutation(ids)[:objects]:
            targets.append(scene.labels == obj)
            index.append(b)
        backgrounds.append(scene.labels == 0)
    return np.stack(images), np.stack(targets), np.asarray(index), np.stack(backgrounds)


class _Batches(torch.utils.data.Dataset):
    """Step ``n``'s scenes, drawn in a worker process while the model trains on the previous step."""

    def __init__(self, seed: int, batch: int, objects: int, size: int) -> None:
        self.seed, self.batch, self.objects, self.size = seed, batch, objects, size

    def __getitem__(self, step: int):
        rng = np.random.default_rng((self.seed, step, 1_000_000))
        return _batch(self.seed, step, self.batch, self.objects, self.size, rng)


def _as_is(batch):
    return batch


def _encode(model: torch.nn.Module, images: np.ndarray, device: str) -> torch.Tensor:
    """Image embeddings of (B, H, W, 3) uint8 scenes."""
    x = torch.from_numpy(images).to(device).permute(0, 3, 1, 2).float()
    return model.image_encoder(model.preprocess(x))


def train(
    out: Path,
    steps: int = DEFAULT_STEPS,
    batch: int = 4,
    objects: int = 8,
    lr: float = 1.5e-3,
    warmup: int = 50,
    seed: int = TRAIN_SEED,
    save_every: int = 25,
    resume: bool = False,
    device: str = "cpu",
    log_every: int = 10,
    state_path: Optional[Path] = None,
    rounds: Sequence[int] = (0, 1, 1),
    loss_size: int = 128,
    balance_until: float = 0.6,
    workers: int = 1,
    stop_after: Optional[int] = None,
    init: Optional[Path] = None,
) -> torch.nn.Module:
    """Train ``demo`` and write it to ``out``; returns the trained model (train mode).

    ``state_path`` (default ``OUT.state``) holds the optimizer and step for ``resume``; ``rounds``
    lists the numbers of corrective-click rounds drawn from for each step; losses are computed at
    ``loss_size`` pixels per side; ``workers`` processes draw the scenes ahead of the training;
    ``stop_after`` ends the run at that step of the ``steps``-long learning-rate schedule.
    The cross-entropy is class-balanced at first, fading linearly to
    plain cross-entropy at ``balance_until`` of the steps (see ``balanced_bce_dice_loss``). ``init``
    starts from the weights of that file (a longer recipe continuing the default one, without the class
    balance).
    """
    last = last_step(steps, stop_after)
    torch.manual_seed(seed)
    config = CONFIGS["demo"]
    model = build_sam(config).to(device).train()
    if init is not None:
        load_checkpoint(model, read_state_dict(init))
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.05)
    state_path = state_path_for(out, state_path)
    first = resume_run(model, optimizer, out, state_path, device) if resume else 0
    size = config.image_size
    started = time.time()
    window: list[float] = []
    ious: dict[str, list[float]] = {}
    batches = torch.utils.data.DataLoader(
        _Batches(seed, batch, objects, size), batch_size=None, num_workers=workers,
        sampler=range(first, last), collate_fn=_as_is, prefetch_factor=4 if workers else None,
    )
    for step, (images, targets, index, backgrounds) in zip(range(first, last), batches):
        rng = np.random.default_rng((seed, step, 2_000_000))
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step, steps, lr, warmup)
        embeddings = _encode(model, images, device)
        result = simulate(model, embeddings, index, targets, rng, rounds=int(rng.choice(rounds)),
                          background=backgrounds, loss_size=loss_size, loss_fn=partial(balanced_bce_dice_loss,
                          balance=balance_at(step, balance_until * steps, continuing=init is not None)))
        optimizer.zero_grad(set_to_none=True)
        result.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        window.append(result.loss.item())
        for kind, values in result.iou.items():
            ious.setdefault(kind, []).append(values[0])
            ious.setdefault(kind + "+click", []).append(values[-1])
        if (step + 1) % log_every == 0:
            elapsed = time.time() - started
            summary = " ".join(f"{k}={np.mean(v):.3f}" for k, v in sorted(ious.items()))
            print(f"step {step + 1}/{last} loss={np.mean(window):.4f} {summary} "
                  f"lr={optimizer.param_groups[0]['lr']:.2e} elapsed={elapsed / 60:.1f}min", flush=True)
            window, ious = [], {}
        if (step + 1) % save_every == 0 and step + 1 < last:
            save_run(model, optimizer, step + 1, out, state_path)
    recalibrate_batchnorm(model, seed, size, device)
    save_run(model, optimizer, last, out, state_path)
    return model


def recalibrate_batchnorm(model: torch.nn.Module, seed: int, size: int, device: str = "cpu",
                          batches: int = 25, batch: int = 32) -> None:
    """Re-estimate every BatchNorm layer's statistics over ``batches`` x ``batch`` training scenes.

    The TinyViT encoder normalises each step by the statistics of its few scenes; the running averages
    kept during training follow the last steps only. Averaging over 800 scenes with the final weights
    (in large batches) gives the statistics inference should use: for an earlier demo trained on 4
    scenes a step, it raised the held-out click IoU from 0.69 to 0.72. Only the BatchNorm buffers change.
    """
    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return
    momenta = [norm.momentum for norm in norms]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # cumulative average
    was_training = model.training
    model.train()
    with torch.no_grad():
        for i in range(batches):
            _encode(model, np.stack([generate_scene((seed, RECALIBRATION_STEP + i, j), size=size).image
                                     for j in range(batch)]), device)
    for norm, momentum in zip(norms, momenta):
        norm.momentum = momentum
    model.train(was_training)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_run_args(parser, out="sam_core/data/demo.pt", steps=DEFAULT_STEPS, lr=1.5e-3, warmup=50,
                 seed=TRAIN_SEED, save_every=25, threads=2)
    parser.add_argument("--batch", type=int, default=4, help="scenes per step")
    parser.add_argument("--objects", type=int, default=8, help="objects prompted per scene")
    args = parser.parse_args(argv)
    check_run_args(parser, args)
    train(args.out, steps=args.steps, batch=args.batch, objects=args.objects, lr=args.lr, warmup=args.warmup,
          seed=args.seed, save_every=args.save_every, resume=args.resume, device=args.device,
          log_every=args.log_every, state_path=args.state, workers=args.workers, stop_after=args.stop_after,
          init=args.init)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
