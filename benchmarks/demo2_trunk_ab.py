"""Why ``demo2`` does not learn to localise a click: the same click-training loop on three networks.

    python benchmarks/demo2_trunk_ab.py --net demo2 --steps 800     # Hiera trunk + SAM 2 heads (demo2's size)
    python benchmarks/demo2_trunk_ab.py --net demo --steps 800      # SAM 1 `demo`'s architecture (TinyViT)
    python benchmarks/demo2_trunk_ab.py --net hybrid --steps 800    # SAM 2 heads on `demo`'s TinyViT encoder
    python benchmarks/demo2_trunk_ab.py --net demo2 --skip-scale 0 --steps 2500   # demo2 without its high-res skips

Every step draws two fresh scenes from :mod:`sam_core.train.synthetic` (seed (7, step, i), 256 px)
and prompts up to six objects of each with one positive click at a random pixel inside it; the
network gives three candidates (multimask) and the best one's class-balanced cross-entropy + Dice
counts (SAM's rule for an ambiguous prompt). Random initialisation (seed 0), AdamW at ``--lr``, one
torch thread. Printed every 25 steps: the mean IoU of the best candidate over the last 25 steps
(64 x 64 pixels). ``hybrid`` is SAM 2's prompt encoder and mask decoder at width 96 on a 32 x 32 grid
(``demo2``'s configuration at 512 px, clicks scaled to it) fed by ``demo``'s TinyViT encoder and neck,
its high-resolution skips zero; ``--skip-scale 0`` gives ``demo2`` the same zero skips on its own Hiera
trunk, which separates the trunk from the skips. Results are in
``benchmarks/RESULTS.md`` ("Why demo2 does not localise a click").
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import numpy as np
import torch
import torch.nn.functional as F

from sam_core.models.build import build_sam
from sam_core.models.config import CONFIGS
from sam_core.models.sam2 import SAM2_CONFIGS, build_sam2
from sam_core.train.interactive import decode
from sam_core.train.losses import balanced_bce_dice_loss, mask_iou
from sam_core.train.prompts import random_point_inside
from sam_core.train.synthetic import generate_scene

SIZE = 256
LOSS_SIZE = 64


def _network(name: str, skip_scale: float = 1.0):
    """(parameters to train, decode(images, clicks per image) -> [(low-res logits (K, 3, l, l))]).

    ``skip_scale`` multiplies ``demo2``'s high-resolution skips (its stride-4 and stride-8 levels after
    ``conv_s0`` / ``conv_s1``) before the decoder: 0 leaves them out, as the ``hybrid`` does."""
    if name == "demo":
        sam = build_sam(CONFIGS["demo"]).train()

        def run(x, clicks):
            embedding = sam.image_encoder(sam.preprocess(x))
            return [decode(sam, embedding[b: b + 1].expand(len(c), -1, -1, -1), c, torch.ones(len(c), 1, dtype=torch.int32),
                           None, None, True)[0] for b, c in enumerate(clicks)]
        return list(sam.parameters()), run
    if name == "demo2":
        model = build_sam2(SAM2_CONFIGS["demo2"]).train()

        def run(x, clicks):
            levels = model.backbone(model.preprocess(x))
            embed = levels[-1] + model.no_mem_embed.view(1, -1, 1, 1)
            return [model.forward_heads(embed[b: b + 1].expand(len(c), -1, -1, -1),
                                        tuple(skip_scale * h[b: b + 1].expand(len(c), -1, -1, -1) for h in levels[:2]),
                                        c, torch.ones(len(c), 1, dtype=torch.int32), None, multimask=True).decoded
                    for b, c in enumerate(clicks)]
        return list(model.parameters()), run
    if name == "hybrid":
        sam = build_sam(CONFIGS["demo"]).train()
        heads = build_sam2(dataclasses.replace(SAM2_CONFIGS["demo2"], d_model=96, image_size=2 * SIZE, decoder_num_heads=8,
                                               decoder_mlp_dim=512, iou_head_hidden_dim=128)).train()

        def run(x, clicks):
            embedding = sam.image_encoder(sam.preprocess(x)) + heads.no_mem_embed.view(1, -1, 1, 1)
            out = []
            for b, c in enumerate(clicks):
                k = len(c)
                skips = (torch.zeros(k, 12, 8 * SIZE // 16, 8 * SIZE // 16), torch.zeros(k, 24, 4 * SIZE // 16, 4 * SIZE // 16))
                out.append(heads.forward_heads(embedding[b: b + 1].expand(k, -1, -1, -1), skips, 2 * c,
                                               torch.ones(k, 1, dtype=torch.int32), None, multimask=True).decoded)
            return out
        params = list(sam.image_encoder.parameters())
        params += [p for n, p in heads.named_parameters() if not n.startswith("image_encoder")]
        return params, run
    raise ValueError(f"unknown --net {name!r}: demo2, demo or hybrid")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--net", default="demo2", choices=("demo2", "demo", "hybrid"))
    parser.add_argument("--steps", type=int, default=800)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--skip-scale", type=float, default=1.0,
                        help="demo2 only: factor on the decoder's high-resolution skips (0 leaves them out)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    params, run = _network(args.net, args.skip_scale)
    optimizer = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.01)
    history, started = [], time.process_time()
    for step in range(args.steps):
        rng = np.random.default_rng(step)
        scenes = [generate_scene((7, step, i), size=SIZE) for i in range(2)]
        x = torch.from_numpy(np.stack([s.image for s in scenes])).permute(0, 3, 1, 2)
        clicks, targets = [], []
        for scene in scenes:
            ids = rng.permutation(np.arange(1, scene.labels.max() + 1))[:6]
            masks = np.stack([scene.labels == i for i in ids])
            clicks.append(torch.tensor([random_point_inside(rng, m) for m in masks], dtype=torch.float32)[:, None])
            targets.append(F.interpolate(torch.from_numpy(masks).float()[:, None], (LOSS_SIZE, LOSS_SIZE), mode="area"))
        loss, ious = 0.0, []
        for logits, target in zip(run(x, clicks), targets):
            up = F.interpolate(logits, (LOSS_SIZE, LOSS_SIZE), mode="bilinear", align_corners=False)
            loss = loss + balanced_bce_dice_loss(up, target).min(dim=1).values.mean()
            ious.append(mask_iou(up, target).max(dim=1).values.mean().item())
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        history.append(float(np.mean(ious)))
        if (step + 1) % 25 == 0:
            print(f"{args.net} step {step + 1}: best-candidate IoU {np.mean(history[-25:]):.3f} "
                  f"(CPU {time.process_time() - started:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
