"""Automatic masks end to end (encode + grid decoding + filtering + records): sam_core vs the official
package, same run, same random-weight checkpoint, same image and parameters (official defaults unless
told otherwise). Prints both times (wall and process CPU), the ratio, and whether the masks agree;
``--check`` exits with status 1 when they do not (same count, every pair at IoU >= ``--min-iou``).

    python benchmarks/bench_automask.py                       # vit_b, 32x32 grid (slow on a CPU)
    python benchmarks/bench_automask.py --model vit_t --points-per-side 16
    python benchmarks/bench_automask.py --pred-iou-thresh 0 --stability-thresh 0 --box-nms-thresh 1 --check
                                                              # every mask kept
    python benchmarks/bench_automask.py --demo 10 --check     # demo on generated scenes: exact vs default

Random weights predict low IoU everywhere: at the official thresholds (0.88 / 0.95) no mask survives, so
"the same masks" are two empty lists and nearly every prompt skips the upscaling. With both thresholds
at 0 and ``--box-nms-thresh 1`` every mask is kept (up to 3 per point), so RLE encoding and records are timed
too; at the default NMS threshold (0.7) random weights' masks overlap and few are left.
``--demo N`` runs the project's trained ``demo`` model on N generated scenes (seed 1000) at its own
thresholds (0.5 / 0.8), where real masks survive, ours in ``exact`` (the official operations) against
ours in the default precision; the official package cannot load ``demo`` (its encoder is ours).
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


def _point(record: dict) -> tuple:
    return tuple(tuple(float(v) for v in point) for point in record["point_coords"])


def agreement(ours: list, official: list) -> tuple[bool, str, float]:
    """Whether two mask lists hold the same masks (a sentence saying how, and the lowest IoU).

    Masks are paired by their prompt point and the closest predicted IoU, not by their place in the
    list: two masks whose scores differ only by float rounding can come out in either order.
    """
    if len(ours) != len(official):
        return False, f"different counts ({len(ours)} vs {len(official)})", 0.0
    by_point: dict[tuple, list[int]] = {}
    for index, record in enumerate(official):
        by_point.setdefault(_point(record), []).append(index)
    worst, worst_pair, identical, moved, gap = 1.0, "", 0, 0, 0.0
    for index, a in enumerate(ours):
        candidates = by_point.get(_point(a))
        if not candidates:
            return False, f"mask {index}'s point {_point(a)} has no official mask", 0.0
        match = min(candidates, key=lambda j: abs(official[j]["predicted_iou"] - a["predicted_iou"]))
        candidates.remove(match)
        b = official[match]
        if match != index:
            moved += 1
            gap = max(gap, abs(float(official[index]["predicted_iou"]) - float(a["predicted_iou"])))
        ma, mb = a["segmentation"], b["segmentation"]
        union = (ma | mb).sum()
        iou = float((ma & mb).sum() / union) if union else 1.0
        if iou < worst:
            worst, worst_pair = iou, (f" (mask {index}: {int(ma.sum())} px against {int(mb.sum())} px, "
                                      f"{int((ma ^ mb).sum())} px differ)")
        identical += int(np.array_equal(ma, mb))
    order = (f"; {moved} at another place in the list (neighbours whose scores differ by at most {gap:.1e})"
             if moved else "; same order")
    return True, f"same count ({len(ours)}), {identical} identical, lowest IoU {worst:.4f}{worst_pair}{order}", worst


def _timed(fn):
    """(result, wall seconds, process CPU seconds: user + system of all threads)."""
    wall, cpu = time.perf_counter(), time.process_time()
    result = fn()
    return result, time.perf_counter() - wall, time.process_time() - cpu


def run_demo(args: argparse.Namespace) -> bool:
    """``demo`` on generated scenes, ours in ``exact`` against ours in the default precision."""
    from sam_core.automask import AutomaticMaskGenerator
    from sam_core.predictor import Predictor
    from sam_core.train.synthetic import generate_scenes
    from sam_core.zoo import automask_defaults

    params = dict(automask_defaults("demo"), points_per_batch=args.points_per_batch)
    if args.points_per_side != 32:
        params["points_per_side"] = args.points_per_side
    scenes = generate_scenes(args.demo, seed=1000)
    sides = {"exact": Predictor("demo", precision="exact"), "default": Predictor("demo")}
    totals = {name: [0.0, 0.0, 0] for name in sides}
    ok, worst = True, 1.0
    for scene in scenes:
        results = {}
        for name, predictor in sides.items():
            masks, wall, cpu = _timed(lambda: AutomaticMaskGenerator(predictor, **params).generate(scene.image))
            results[name] = masks
            totals[name][0] += wall
            totals[name][1] += cpu
            totals[name][2] += len(masks)
        same, _, iou = agreement(results["default"], results["exact"])
        ok, worst = ok and same and iou >= args.min_iou, min(worst, iou if same else 0.0)
    print(f"machine: {machine()}")
    print(f"automatic masks, demo, {len(scenes)} generated scenes of 256x256 (seed 1000), "
          f"{params['points_per_side']}x{params['points_per_side']} grid, pred_iou_thresh "
          f"{params['pred_iou_thresh']}, stability_thresh {params['stability_score_thresh']}")
    for name, (wall, cpu, count) in totals.items():
        print(f"  sam_core {name:8s}: {wall:8.2f} s wall, {cpu:8.2f} s CPU  ({count} masks)")
    print(f"  speed-up : {totals['exact'][0] / totals['default'][0]:.2f}x wall, "
          f"{totals['exact'][1] / totals['default'][1]:.2f}x CPU")
    print(f"  masks    : {'the same' if ok else 'DIFFERENT'} on every scene (lowest IoU {worst:.4f})")
    return ok


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="vit_b", choices=["vit_b", "vit_l", "vit_h", "vit_t"])
    parser.add_argument("--points-per-side", type=int, default=32)
    parser.add_argument("--points-per-batch", type=int, default=64)
    parser.add_argument("--pred-iou-thresh", type=float, default=0.88)
    parser.add_argument("--stability-thresh", type=float, default=0.95)
    parser.add_argument("--box-nms-thresh", type=float, default=0.7,
                        help="box IoU above which NMS drops a mask (default 0.7; 1 keeps every mask)")
    parser.add_argument("--size", default="768x1024", help="image size HxW (default 768x1024)")
    parser.add_argument("--precision", default=None, help="sam_core encoder precision (default: the model's, fp32)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--checkpoints", default=None, help="folder for the random checkpoints (default: a temp folder)")
    parser.add_argument("--demo", type=int, default=0, metavar="N",
                        help="instead: demo on N generated scenes, sam_core exact against the default precision")
    parser.add_argument("--check", action="store_true", help="exit with status 1 when the masks differ")
    parser.add_argument("--min-iou", type=float, default=0.99,
                        help="lowest IoU of a mask pair that counts as the same mask (default 0.99)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.demo:
        ok = run_demo(args)
        raise SystemExit(1 if args.check and not ok else 0)

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
        box_nms_thresh=args.box_nms_thresh,
    )

    reference = mobile_sam() if args.model == "vit_t" else segment_anything()
    official_gen = reference.SamAutomaticMaskGenerator(official_model(args.model, path), **params)
    official, official_s, official_cpu = _timed(lambda: official_gen.generate(image))
    del official_gen

    model = load_checkpoint(build_sam(get_config(args.model)), path)
    predictor = Predictor(model, precision=args.precision)  # a fresh cache: the encoder runs in the timing
    ours_gen = AutomaticMaskGenerator(predictor, **params)
    ours, ours_s, ours_cpu = _timed(lambda: ours_gen.generate(image))
    same, how, iou = agreement(ours, official)

    print(f"machine: {machine()}")
    print(f"automatic masks, {args.model} (random weights), {h}x{w} image, {args.points_per_side}x"
          f"{args.points_per_side} grid, pred_iou_thresh {args.pred_iou_thresh}, stability_thresh {args.stability_thresh}, "
          f"box_nms_thresh {args.box_nms_thresh}")
    print(f"  official : {official_s:8.2f} s wall, {official_cpu:8.2f} s CPU  ({len(official)} masks)")
    print(f"  sam_core : {ours_s:8.2f} s wall, {ours_cpu:8.2f} s CPU  ({len(ours)} masks, precision "
          f"{getattr(model, 'precision', 'fp32')})")
    print(f"  speed-up : {official_s / ours_s:8.2f}x wall, {official_cpu / ours_cpu:.2f}x CPU")
    print(f"  masks    : {how}")
    if args.check and not (same and iou >= args.min_iou):
        raise SystemExit(1)


if __name__ == "__main__":
    main()
