"""New image -> first mask, the wait after a user opens an image and clicks once: encoding included, the
model already loaded. sam_core's ``Predictor`` (``encode`` + ``predict``) next to the official package's
predictor (``set_image`` + ``predict``: ``SamPredictor`` for vit_b, MobileSAM's for vit_t,
``SAM2ImagePredictor`` for SAM 2.1), same run, same random-weight checkpoint, same images and click.

    python benchmarks/bench_first_mask.py                                  # vit_t, vit_b, sam2.1_hiera_tiny
    python benchmarks/bench_first_mask.py --quick            # vit_t, small image, 1 repeat: a check that it runs

Each side runs in its own fresh process. Every timed call gets an image it has not seen (no embedding
cache hit): one positive click at (0.4, 0.6) of the image, three candidates, the best returned at the
image's size. sam_core runs at its default precision (fp32). Times are the median of ``--repeats``
after one warm-up, with the process CPU time (user + system, all threads) per call; peak MB is the
process's peak resident memory during the timed calls above what it held before them (the loaded model).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import common

SAM2_MODELS = ("sam2.1_hiera_tiny", "sam2.1_hiera_small")


def _images(count: int, height: int, width: int):
    import numpy as np

    return [np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8) for seed in range(count)]


def _worker(side: str, name: str, path: str, height: int, width: int, repeats: int) -> dict:
    import numpy as np
    import torch

    point = np.array([[width * 0.4, height * 0.6]])
    images = iter(_images(repeats + 1, height, width))
    if side == "official":
        if name in SAM2_MODELS:
            from helpers.sam2_checkpoints import load_official_sam2, official_image_predictor
            from sam_core.models.sam2 import SAM2_CONFIGS

            predictor = official_image_predictor(load_official_sam2(SAM2_CONFIGS[name], path))
        else:
            from helpers.official import mobile_sam, segment_anything

            package = mobile_sam() if name == "vit_t" else segment_anything()
            predictor = package.SamPredictor(common.official_model(name, Path(path)))

        def first_mask():
            predictor.set_image(next(images))
            masks, scores, _ = predictor.predict(point_coords=point, point_labels=np.array([1]),
                                                 multimask_output=True)
            return masks[int(np.argmax(scores))]
    else:
        from sam_core.predictor import Predictor

        predictor = Predictor(name, checkpoint=path)

        def first_mask():
            embedding = predictor.encode(next(images))
            return predictor.predict(embedding, points=point, labels=[1]).masks[0]

    with torch.no_grad():
        before = common.rss_mb()
        common.reset_peak_rss()
        row = common.timed(first_mask, repeats)
        peak = common.window_peak_rss_mb() - before
    return {"side": side, "model": name, "first mask": row, "peak_above_loaded_mb": peak,
            "loaded_mb": before, "machine": common.machine()}


def _checkpoint(name: str, folder: Path) -> Path:
    if name in SAM2_MODELS:
        from helpers.sam2_checkpoints import write_official_sam2_checkpoint
        from sam_core.models.sam2 import SAM2_CONFIGS

        return write_official_sam2_checkpoint(SAM2_CONFIGS[name], folder / f"{name}.pt")
    return common.checkpoint(name, folder)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="vit_t,vit_b,sam2.1_hiera_tiny",
                        help="comma-separated: vit_t, vit_b, vit_l, vit_h, sam2.1_hiera_tiny, sam2.1_hiera_small")
    parser.add_argument("--size", default="768x1024", help="image size HxW (default 768x1024)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="vit_t only, a 128 x 160 image, 1 repeat")
    parser.add_argument("--json", default=None, help="also write the results to this file")
    parser.add_argument("--worker", nargs=5, metavar=("SIDE", "MODEL", "PATH", "SIZE", "REPEATS"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        side, name, path, size, repeats = args.worker
        height, width = (int(v) for v in size.split("x"))
        print(json.dumps(_worker(side, name, path, height, width, int(repeats))))
        return 0
    if args.quick:
        args.models, args.size, args.repeats = "vit_t", "128x160", 1

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models.split(","):
            path = _checkpoint(name, Path(tmp))
            for side in ("official", "sam_core"):
                rows.append(common.run_worker(Path(__file__), [side, name, str(path), args.size, str(args.repeats)]))
    print(rows[0]["machine"], f"image {args.size}, median of {args.repeats} after a warm-up")
    print(f"{'model':20}{'side':10}{'wall s':>9}{'CPU s':>9}{'peak MB':>9}")
    for row in rows:
        timing = row["first mask"]
        print(f"{row['model']:20}{row['side']:10}{timing['median_s']:9.2f}{common.cpu_s(timing):9.2f}"
              f"{row['peak_above_loaded_mb']:9.0f}")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
