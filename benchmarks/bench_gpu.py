"""Issue 7's table on a CUDA GPU: the official package in fp32 next to sam_core's precisions (exact,
fp32, bf16, fp16, and bf16 with ``torch.compile``), same process, same random-weight checkpoint, same
inputs.

    python benchmarks/bench_gpu.py                        # vit_b and vit_t, then vit_b automatic masks
    python benchmarks/bench_gpu.py --models vit_t --no-automask --json results.json

For each model: the encoder per 1024 x 1024 image, the one-prompt decode (cached embedding, three
candidates upsampled to 1024 x 1024 and thresholded), 64 single-point prompts in one batch, the GPU
memory the encoder needs above the loaded model, and the embedding's cosine similarity with the
official fp32 embedding. Times are medians after warm-up, each ended by ``torch.cuda.synchronize``.
Automatic masks run end to end (encoder included) on a 768 x 1024 scene, with the official defaults
and with a 16 x 16 grid and no thresholds, official fp32 against sam_core in
exact and fp32 (same masks expected) and in the automatic precision. Every
measurement is guarded: one that fails prints its error and the others still run.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import traceback
from functools import partial
from pathlib import Path
from typing import Callable

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402

PRECISIONS = "exact,fp32,bf16,fp16,bf16+compile"
DEVICE = "cuda"  # --device cpu: a quick dry run of this script on a machine without a GPU


def _sync() -> None:
    if DEVICE == "cuda":
        torch.cuda.synchronize()


def _empty_cache() -> None:
    if DEVICE == "cuda":
        torch.cuda.empty_cache()


def _timed(fn: Callable[[], object], repeats: int, warmup: int = 2) -> float:
    """Median seconds of ``fn`` on the GPU (each run synchronized)."""

    def run() -> None:
        fn()
        _sync()

    return common.timed(run, repeats, warmup)["median_s"]


def _guard(results: dict, key: str, fn: Callable[[], object]) -> None:
    started = time.perf_counter()
    try:
        results[key] = fn()
    except Exception as error:  # a benchmark table keeps going past one broken cell
        traceback.print_exc()
        results[key] = {"error": f"{type(error).__name__}: {error}"[:300]}
    print(f"[{time.perf_counter() - started:6.1f} s] {key}: {json.dumps(results[key])[:300]}", flush=True)


def _measure(model, image: torch.Tensor, reference: torch.Tensor | None, repeats: int) -> dict:
    """Encoder / decoder figures of a model (official or sam_core) already on the GPU."""
    size = model.image_encoder.img_size
    x = model.preprocess(image)
    with torch.no_grad():
        _sync()
        started = time.perf_counter()
        embedding = model.image_encoder(x)
        _sync()
        first = time.perf_counter() - started
        peak_mb = 0.0
        if DEVICE == "cuda":
            torch.cuda.empty_cache()
            base = torch.cuda.memory_allocated()
            torch.cuda.reset_peak_memory_stats()
            model.image_encoder(x)
            torch.cuda.synchronize()
            peak_mb = (torch.cuda.max_memory_allocated() - base) / 2**20
        encoder = _timed(lambda: model.image_encoder(x), repeats)
        embedding = embedding.float()
        one, grid = common.prompt_points(size, DEVICE)

        result = {
            "first_encode_s": first,
            "encoder_s": encoder,
            "encoder_peak_mb": peak_mb,
            "decode_one_s": _timed(lambda: common.decode_points(model, embedding, one), 3 * repeats),
            "decode_64_s": _timed(lambda: common.decode_points(model, embedding, grid), repeats),
        }
        if reference is not None:
            result["cosine"] = float(torch.nn.functional.cosine_similarity(
                embedding.flatten(), reference.flatten(), dim=0))
            # the same decoder on the official embedding: isolates the encoder's difference
            result["mask_iou_one"] = _iou(common.decode_points(model, embedding, one),
                                          common.decode_points(model, reference, one))
    return result


def _iou(a: torch.Tensor, b: torch.Tensor) -> float:
    union = (a | b).sum().item()
    return float((a & b).sum().item() / union) if union else 1.0


def _ours(name: str, path: Path, precision: str, cache_dir: Path):
    from sam_core.models import build_sam, get_config, load_checkpoint

    compiled = precision.endswith("+compile")
    model = load_checkpoint(build_sam(get_config(name)), path).to(DEVICE).eval()
    model.set_precision(precision.split("+")[0])
    if compiled:
        model.compile_encoder(cache_dir)
    return model


def _models(names: list[str], precisions: list[str], folder: Path, repeats: int, results: dict) -> None:
    generator = torch.Generator().manual_seed(0)
    image = (torch.rand((1, 3, 1024, 1024), generator=generator) * 255).round().to(DEVICE)
    for name in names:
        path = common.checkpoint(name, folder)
        table = results.setdefault(name, {})
        official = common.official_model(name, path).to(DEVICE).eval()
        with torch.no_grad():
            reference = official.image_encoder(official.preprocess(image)).float()
        _guard(table, "official fp32", partial(_measure, official, image, None, repeats))
        del official
        _empty_cache()
        for precision in precisions:
            def run(precision: str = precision) -> dict:
                model = _ours(name, path, precision, folder / "inductor")
                try:
                    return _measure(model, image, reference, repeats)
                finally:
                    del model
                    _empty_cache()

            _guard(table, precision, run)


AUTOMASK_SETTINGS = {
    "official defaults": {},
    "16 x 16 points, thresholds 0": dict(points_per_side=16, pred_iou_thresh=0.0,
                                                              stability_score_thresh=0.0),
}


def _automask(name: str, folder: Path, results: dict) -> None:
    from bench_automask import agreement, scene
    from helpers.official import mobile_sam, segment_anything
    from sam_core.automask import AutomaticMaskGenerator
    from sam_core.predictor import Predictor

    path = common.checkpoint(name, folder)
    image = scene(768, 1024, 25, seed=0)
    reference = mobile_sam() if name == "vit_t" else segment_anything()
    for label, params in AUTOMASK_SETTINGS.items():
        table = results.setdefault(f"automask {name}, {label}", {})
        official_masks: list = []

        def official(params: dict = params) -> dict:
            generator = reference.SamAutomaticMaskGenerator(common.official_model(name, path).to(DEVICE), **params)
            generator.generate(image)  # warm-up (CUDA context, kernels)
            _sync()
            started = time.perf_counter()
            official_masks[:] = generator.generate(image)
            _sync()
            return {"seconds": time.perf_counter() - started, "masks": len(official_masks)}

        def ours(precision: str, params: dict = params) -> dict:
            predictor = Predictor(_ours(name, path, "fp32", folder), precision=precision)
            AutomaticMaskGenerator(predictor, **params).generate(image)  # warm-up
            predictor = Predictor(predictor.model)  # a fresh cache: the encoder runs in the timing
            _sync()
            started = time.perf_counter()
            masks = AutomaticMaskGenerator(predictor, **params).generate(image)
            _sync()
            return {"seconds": time.perf_counter() - started, "masks": len(masks),
                    "precision": predictor.model.precision, "agreement": agreement(masks, official_masks)}

        _guard(table, "official fp32", official)
        for precision in ("exact", "fp32", "auto"):
            _guard(table, precision, lambda precision=precision: ours(precision))


def _print_table(results: dict) -> None:
    print(f"\nmachine: {results['machine']}")
    for name in (key for key in results if key.startswith("vit_")):
        table = results[name]
        official = table.get("official fp32", {})
        print(f"\n{name}: {'':14} {'encoder s':>10} {'x':>6} {'decode 1 ms':>12} {'x':>6} {'64 prompts s':>13} "
              f"{'x':>6} {'enc peak MB':>12} {'cosine':>9} {'IoU':>7}")
        for key, row in table.items():
            if "error" in row:
                print(f"  {key:20} error: {row['error']}")
                continue

            def ratio(part: str) -> str:
                return f"{official[part] / row[part]:5.2f}x" if part in official else ""

            print(f"  {key:20} {row['encoder_s']:10.4f} {ratio('encoder_s'):>6} {row['decode_one_s'] * 1e3:12.2f} "
                  f"{ratio('decode_one_s'):>6} {row['decode_64_s']:13.4f} {ratio('decode_64_s'):>6} "
                  f"{row['encoder_peak_mb']:12.0f} {row.get('cosine', 1.0):9.6f} {row.get('mask_iou_one', 1.0):7.4f}"
                  + (f"   (first encode, compiling: {row['first_encode_s']:.1f} s)" if "compile" in key else ""))
    for title in (key for key in results if key.startswith("automask ")):
        print(f"\n{title}, 768 x 1024 scene, end to end (encoder included):")
        official = results[title].get("official fp32", {})
        for key, row in results[title].items():
            if "error" in row:
                print(f"  {key:14} error: {row['error']}")
                continue
            speed = f"{official['seconds'] / row['seconds']:5.2f}x" if "seconds" in official else ""
            print(f"  {key:14} {row['seconds']:8.3f} s {speed:>7}  {row['masks']} masks  {row.get('agreement', '')}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="vit_b,vit_t", help="comma-separated: vit_b, vit_l, vit_h, vit_t")
    parser.add_argument("--precisions", default=PRECISIONS,
                        help=f"comma-separated sam_core precisions, '+compile' to compile (default {PRECISIONS})")
    parser.add_argument("--repeats", type=int, default=10, help="timed runs after two warm-ups")
    parser.add_argument("--automask-model", default="vit_b", help="model of the automatic-mask comparison")
    parser.add_argument("--no-automask", action="store_true", help="skip the automatic-mask comparison")
    parser.add_argument("--json", type=Path, default=None, help="also write the results to this file")
    parser.add_argument("--device", default="cuda", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    global DEVICE
    DEVICE = args.device
    if DEVICE == "cuda" and not torch.cuda.is_available():
        raise SystemExit("bench_gpu.py needs a CUDA GPU; on a CPU run bench_engine.py")
    torch.backends.cuda.matmul.allow_tf32 = False  # fp32 means fp32 on both sides
    torch.backends.cudnn.allow_tf32 = False
    gpu = torch.cuda.get_device_name() if DEVICE == "cuda" else "no GPU (dry run)"
    results: dict = {"machine": f"{gpu}, {common.machine()}"}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        _models(args.models.split(","), args.precisions.split(","), folder, args.repeats, results)
        if not args.no_automask:
            _automask(args.automask_model, folder, results)
    if args.json:
        from sam_core.fileio import atomic_write

        with atomic_write(args.json, "w") as handle:
            handle.write(json.dumps(results, indent=1))
    _print_table(results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
