"""Automatic masks end to end (encode + grid decoding + filtering + records): sam_core vs the official
package, same run, same random-weight checkpoint, same image and parameters (official defaults unless
told otherwise). Prints both times, the ratio, and whether the masks agree.

    python benchmarks/bench_automask.py                       # vit_b, 32x32 grid (slow on a CPU)
    python benchmarks/bench_automask.py --model vit_t --points-per-side 16
    python benchmarks/bench_automask.py --pred-iou-thresh 0 --stability-thresh 0   # many masks survive

Random weights give few confident masks at the default thresholds; lower thresholds make many masks
survive, which is where the official package also spends time on RLE and record copies.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import checkpoint, machine, official_model  # noqa: E402


def scene(h: int, w: int, n: int, seed: int) -> np.ndarray:
    """An RGB uint8 image of ``n`` flat-coloured discs on a noisy background."""
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 40, (h, w, 3), dtype=np.uint8) + rng.integers(0, 200, 3, dtype=np.uint8)
    yy, xx = np.mgrid[:h, :w]
    for _ in range(n):
        cy, cx = rng.uniform(0, h), rng.uniform(0, w)
        r = rng.uniform(0.03, 0.15) * min(h, w)
        image[(yy - cy) ** 2 + (xx - cx) ** 2 < r * r] = rng.integers(0, 255, 3)
    return image


def agreement(ours: list, official: list) -> str:
    if len(ours) != len(official):
        return f"different counts ({len(ours)} vs {len(official)})"
    worst = 1.0
    for a, b in zip(ours, official):
        ma, mb = a["segmentation"], b["segmentation"]
        union = (ma | mb).sum()
        worst = min(worst, float((ma & mb).sum() / union) if union else 1.0)
    return f"same count, lowest IoU {worst:.4f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="vit_b", choices=["vit_b", "vit_l", "vit_h", "vit_t"])
    parser.add_argument("--points-per-side", type=int, default=32)
    parser.add_argument("--points-per-batch", type=int, default=64)
    parser.add_argument("--pred-iou-thresh", type=float, default=0.88)
    parser.add_argument("--stability-thresh", type=float, default=0.95)
    parser.add_argument("--size", default="768x1024", help="image size HxW (default 768x1024)")
    parser.add_argument("--precision", default=None, help="sam_core encoder precision (default: the model's, fp32)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--checkpoints", default=None, help="folder for the random checkpoints (default: a temp folder)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    from helpers.official import mobile_sam, segment_anything
    from sam_core.automask import AutomaticMaskGenerator
    from sam_core.models import get_config, build_sam, load_checkpoint
    from sam_core.predictor import Predictor

    folder = Path(args.checkpoints or tempfile.mkdtemp(prefix="sam_bench_"))
    folder.mkdir(parents=True, exist_ok=True)
    path = checkpoint(args.model, folder)
    h, w = (int(v) for v in args.size.lower().split("x"))
    image = scene(h, w, 25, seed=0)
    params = dict(
        points_per_side=args.points_per_side,
        points_per_batch=args.points_per_batch,
        pred_iou_thresh=args.pred_iou_thresh,
        stability_score_thresh=args.stability_thresh,
    )

    reference = mobile_sam() if args.model == "vit_t" else segment_anything()
    official_gen = reference.SamAutomaticMaskGenerator(official_model(args.model, path), **params)
    start = time.perf_counter()
    official = official_gen.generate(image)
    official_s = time.perf_counter() - start
    del official_gen

    model = load_checkpoint(build_sam(get_config(args.model)), path)
    predictor = Predictor(model, precision=args.precision)  # a fresh cache: the encoder runs in the timing
    ours_gen = AutomaticMaskGenerator(predictor, **params)
    start = time.perf_counter()
    ours = ours_gen.generate(image)
    ours_s = time.perf_counter() - start

    print(f"machine: {machine()}")
    print(f"automatic masks, {args.model}, {h}x{w} image, {args.points_per_side}x{args.points_per_side} grid, "
          f"pred_iou_thresh {args.pred_iou_thresh}, stability_thresh {args.stability_thresh}")
    print(f"  official : {official_s:8.2f} s  ({len(official)} masks)")
    print(f"  sam_core : {ours_s:8.2f} s  ({len(ours)} masks, precision {getattr(model, 'precision', 'fp32')})")
    print(f"  speed-up : {official_s / ours_s:8.2f}x")
    print(f"  masks    : {agreement(ours, official)}")


if __name__ == "__main__":
    main()
