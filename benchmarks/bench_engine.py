"""Encoder and one-prompt decoder time of sam_core next to the official package's, same run, same
random-weight checkpoint, same input.

    python benchmarks/bench_engine.py                       # vit_b and vit_t, precision auto
    python benchmarks/bench_engine.py --models vit_t --precision fp32,int8 --repeats 3

Each side runs in its own fresh process: the official package as users run it (fp32, default
allocator), sam_core with ``keep_freed_memory()`` and the chosen precision. Decoding is one positive
point, three candidates, upsampled to the 1024 x 1024 image and thresholded (model level: prompt
encoder + mask decoder + postprocess_masks); "one click" is the same prompt through the predictor users
call (the official ``SamPredictor.predict`` on the cached embedding, ``sam_core.Predictor.predict``);
"64 prompts" decodes 64 single-point prompts on an 8 x 8 grid in one batch at model level. Times are
the median of ``--repeats`` after one warm-up (decoding: at least 10).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import common


def _worker(side: str, name: str, path: str, precision: str, repeats: int, threads: int) -> dict:
    import torch

    if threads:
        torch.set_num_threads(threads)
    if side == "official":
        model = common.official_model(name, Path(path))
    else:
        from sam_core.models import build_sam, get_config, load_checkpoint
        from sam_core.runtime import keep_freed_memory

        if precision != "fp32-default-malloc":
            keep_freed_memory()
        else:
            precision = "fp32"
        model = load_checkpoint(build_sam(get_config(name)), path).set_precision(precision)
        precision = model.precision
    size = model.image_encoder.img_size
    generator = torch.Generator().manual_seed(0)
    image = (torch.rand((1, 3, size, size), generator=generator) * 255).round()
    rss_loaded = common.rss_mb()

    with torch.no_grad():
        encoder = common.timed(lambda: model.image_encoder(model.preprocess(image)), repeats)
        embedding = model.image_encoder(model.preprocess(image))
        one, grid = common.prompt_points(size)
        decoder = common.timed(lambda: common.decode_points(model, embedding, one), max(repeats, 10))
        click = common.timed(common.one_click(side, name, model, embedding), max(repeats, 10))
        decoder64 = common.timed(lambda: common.decode_points(model, embedding, grid), repeats)
    return {
        "side": side,
        "precision": precision,
        "encoder": encoder,
        "decoder": decoder,
        "one click": click,
        "64 prompts": decoder64,
        "rss_loaded_mb": rss_loaded,
        "peak_rss_mb": common.peak_rss_mb(),
        "machine": common.machine(),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="vit_b,vit_t", help="comma-separated: vit_b, vit_l, vit_h, vit_t")
    parser.add_argument("--precision", default="auto",
                        help="comma-separated sam_core precisions: auto, fp32, bf16, fp16, int8, "
                             "and fp32-default-malloc (fp32 without keep_freed_memory)")
    parser.add_argument("--repeats", type=int, default=3, help="timed encoder runs after one warm-up")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--checkpoints", type=Path, default=None,
                        help="folder for the random-weight checkpoints (default: a temporary folder)")
    parser.add_argument("--worker", nargs=6, metavar="ARG", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.worker:
        side, name, path, precision, repeats, threads = args.worker
        print(json.dumps(_worker(side, name, path, precision, int(repeats), int(threads))))
        return 0

    script = Path(__file__).resolve()
    with tempfile.TemporaryDirectory() as tmp:
        folder = args.checkpoints or Path(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        header = f"{'model':6} {'part':10} {'official s':>11} {'precision':>20} {'sam_core s':>11} {'speed-up':>9}"
        lines = []
        machine = None
        for name in args.models.split(","):
            path = common.checkpoint(name, folder)
            common_args = [str(path), "fp32", str(args.repeats), str(args.threads)]
            official = common.run_worker(script, ["official", name, *common_args])
            machine = official["machine"]
            for precision in args.precision.split(","):
                ours = common.run_worker(script, ["ours", name, str(path), precision, str(args.repeats), str(args.threads)])
                label = f"{precision}->{ours['precision']}" if precision == "auto" else precision
                for part in ("encoder", "decoder", "one click", "64 prompts"):
                    o, s = official[part]["median_s"], ours[part]["median_s"]
                    lines.append(f"{name:6} {part:10} {o:11.3f} {label:>20} {s:11.3f} {o / s:8.2f}x")
                lines.append(
                    f"{name:6} {'peak MB':10} {official['peak_rss_mb'] - official['rss_loaded_mb']:11.0f} {label:>20} "
                    f"{ours['peak_rss_mb'] - ours['rss_loaded_mb']:11.0f}   (peak RSS above the loaded model, 64-prompt "
                    "decode included; the encoder alone: bench_memory.py)"
                )
        print(machine)
        print(header)
        print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
