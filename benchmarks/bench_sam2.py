"""SAM 2.1 image path: encoder time per image and one click of sam_core next to Meta's sam2 package
(``SAM2ImagePredictor``), same run, same random-weight checkpoint, same image.

    python benchmarks/bench_sam2.py --model sam2.1_hiera_tiny --repeats 3
    python benchmarks/bench_sam2.py --model sam2.1_hiera_small --device cuda

Each side runs in its own fresh process. "encode" is ``set_image`` / ``Predictor.encode`` (resize to
1024 x 1024, the Hiera trunk, the neck, the high-resolution projections) on one 800 x 600 image;
"click" is one point with three candidates upscaled to the image (``predict`` on the set image / on the
embedding). Times are the median of ``--repeats`` after one warm-up; peak MB is the process's peak
resident memory above the loaded model (CPU) or the peak CUDA memory allocated while encoding (GPU).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import common


def _worker(side: str, name: str, path: str, device: str, repeats: int) -> dict:
    import numpy as np
    import torch

    from helpers.sam2_checkpoints import load_official_sam2, official_image_predictor
    from sam_core.cache import EmbeddingCache
    from sam_core.models.build import load_checkpoint
    from sam_core.models.sam2 import SAM2_CONFIGS, build_sam2
    from sam_core.predictor import Predictor

    config = SAM2_CONFIGS[name]
    image = np.random.default_rng(0).integers(0, 256, (600, 800, 3), dtype=np.uint8)
    point = np.array([[400.0, 300.0]])
    if side == "official":
        predictor = official_image_predictor(load_official_sam2(config, path).to(device))

        def encode():
            predictor.set_image(image)

        def click():
            predictor.predict(point_coords=point, point_labels=np.array([1]), multimask_output=True)
    else:
        predictor = Predictor(load_checkpoint(build_sam2(config), path), device=device,
                              cache=EmbeddingCache(memory_bytes=0))
        holder = {}

        def encode():
            holder["embedding"] = predictor.encode(image)

        def click():
            predictor.predict(holder["embedding"], points=point, labels=[1])

    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    rss = common.peak_rss_mb()
    with torch.no_grad():
        encode_time = common.timed(encode, repeats)
        click_time = common.timed(click, repeats)
    peak = (torch.cuda.max_memory_allocated() / 2**20 if device.startswith("cuda") else common.peak_rss_mb() - rss)
    return {"side": side, "machine": common.machine(), "encode": encode_time, "click": click_time,
            "peak_above_loaded_mb": peak}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="sam2.1_hiera_tiny",
                        choices=["sam2.1_hiera_tiny", "sam2.1_hiera_small", "sam2.1_hiera_base_plus", "sam2.1_hiera_large"])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", default=None, help="also write the results to this file")
    parser.add_argument("--worker", nargs=5, metavar=("SIDE", "MODEL", "PATH", "DEVICE", "REPEATS"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        side, name, path, device, repeats = args.worker
        print(json.dumps(_worker(side, name, path, device, int(repeats))))
        return 0
    from helpers.sam2_checkpoints import write_official_sam2_checkpoint
    from sam_core.models.sam2 import SAM2_CONFIGS

    with tempfile.TemporaryDirectory() as folder:
        path = write_official_sam2_checkpoint(SAM2_CONFIGS[args.model], Path(folder) / f"{args.model}.pt")
        rows = [common.run_worker(Path(__file__), [side, args.model, str(path), args.device, str(args.repeats)])
                for side in ("official", "sam_core")]
    print(rows[0]["machine"], f"{args.model}, device {args.device}")
    print(f"{'':14}{'official':>12}{'sam_core':>12}")
    for key in ("encode", "click"):
        print(f"{key + ' (s)':14}{rows[0][key]['median_s']:12.3f}{rows[1][key]['median_s']:12.3f}")
    print(f"{'peak MB':14}{rows[0]['peak_above_loaded_mb']:12.0f}{rows[1]['peak_above_loaded_mb']:12.0f}")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
