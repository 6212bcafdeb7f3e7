"""Quality of the bundled ``demo`` model on held-out generated scenes (issue 3, item 3).

    python benchmarks/quality.py [--scenes 40] [--automask-scenes 20] [--model demo] [--checkpoint FILE]

The scenes come from :mod:`sam_core.train.synthetic` with seed ``--seed`` (default 1000); the
``demo`` training uses seed 0 with (step, i) sub-seeds, so these scenes were never trained on.
Prints the mean IoU of one positive click at each object's interior point farthest from its
border, of its tight box, and automatic mask generation's recall at IoU 0.5 and spurious fraction.
"""

from __future__ import annotations

import argparse
import time

import torch

from sam_core.automask import AutomaticMaskGenerator
from sam_core.predictor import Predictor
from sam_core.train.quality import automask_quality, prompt_quality
from sam_core.train.synthetic import generate_scenes

HELD_OUT_SEED = 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="demo")
    parser.add_argument("--checkpoint", default=None)
    parser.add_argument("--seed", type=int, default=HELD_OUT_SEED)
    parser.add_argument("--scenes", type=int, default=40, help="scenes for the click and box measures")
    parser.add_argument("--automask-scenes", type=int, default=20)
    parser.add_argument("--points-per-side", type=int, default=16)
    parser.add_argument("--pred-iou-thresh", type=float, default=0.88)
    parser.add_argument("--stability-score-thresh", type=float, default=0.95)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default=None, help="cpu (default) or cuda")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    predictor = Predictor(args.model, checkpoint=args.checkpoint, device=args.device)
    scenes = generate_scenes(max(args.scenes, args.automask_scenes), seed=args.seed)
    started = time.time()
    prompts = prompt_quality(predictor, scenes[: args.scenes]) if args.scenes else None
    generator = AutomaticMaskGenerator(
        predictor,
        points_per_side=args.points_per_side,
        pred_iou_thresh=args.pred_iou_thresh,
        stability_score_thresh=args.stability_score_thresh,
    )
    auto = automask_quality(generator, scenes[: args.automask_scenes])
    print(f"model {args.model}, held-out scenes (seed {args.seed}), {time.time() - started:.0f} s")
    if prompts is not None:
        print(f"one click at the interior point: mean IoU {prompts.click:.3f} over {prompts.objects} objects "
              f"({args.scenes} scenes)  [target >= 0.85]")
        print(f"tight box:                       mean IoU {prompts.box:.3f}  [target >= 0.90]")
    print(f"automatic masks ({args.points_per_side}x{args.points_per_side} points, pred_iou_thresh "
          f"{args.pred_iou_thresh}, stability_score_thresh {args.stability_score_thresh}, "
          f"{args.automask_scenes} scenes): found {auto.recall:.1%} of {auto.objects} objects at IoU 0.5 "
          f"[target >= 80%], spurious {auto.spurious:.1%} of {auto.masks} masks [target <= 20%]")


if __name__ == "__main__":
    main()
