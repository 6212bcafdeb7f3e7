"""Memory: peak resident memory above the loaded model while encoding, sam_core next to the official
package (same run, same random-weight checkpoint, same image); embedding size on disk; and a
300-slice volume encoded through the embedding cache.

    python benchmarks/bench_memory.py                           # vit_b: official, sam_core fp32/auto/int8
    python benchmarks/bench_memory.py --sides official,fp32,onnx,onnx-int8   # with the ONNX backend
    python benchmarks/bench_memory.py --volume-model vit_t --slices 300 --budget-mb 256

Every figure comes from a fresh process (the allocator's state and the peak counter are per process).
In each, the model is loaded and the predictor built, then the kernel's peak-RSS counter is reset
(``/proc/self/clear_refs``) and one 1024 x 1024 RGB image is encoded twice as users do it (the
official ``SamPredictor.set_image``, sam_core's ``Predictor.encode``); the figure is the peak RSS
minus the RSS before encoding. ``fp32+keep`` is fp32 after ``sam_core.runtime.keep_freed_memory()``
(the setting that keeps freed memory in the process for speed). Linux only.

The volume part encodes every slice of a (slices, 256, 256) stack with ``--volume-model`` through an
``EmbeddingCache`` with a memory budget of ``--budget-mb`` and a disk folder (as the napari plugin
does), and reports the most bytes the cache held, the most embeddings alive at once, and the RSS growth.
"""

from __future__ import annotations

import argparse
import gc
import json
import re
import sys
import tempfile
import weakref
from pathlib import Path

import common

SIDES = ("official", "fp32", "fp32+keep", "auto", "int8", "onnx", "onnx-int8")


def _status_mb(field: str) -> float:
    with open("/proc/self/status") as handle:
        return int(re.search(rf"{field}:\s+(\d+)", handle.read()).group(1)) / 1024


def _reset_peak() -> None:
    with open("/proc/self/clear_refs", "w") as handle:
        handle.write("5")


def _image(size: int = 1024):
    import numpy as np

    return np.random.default_rng(0).integers(0, 256, (size, size, 3), dtype=np.uint8)


def _encode_worker(side: str, name: str, checkpoint: str, onnx_dir: str, threads: int) -> dict:
    import torch

    if threads:
        torch.set_num_threads(threads)
    image = _image()
    if side == "official":
        from helpers.official import mobile_sam, segment_anything

        package = mobile_sam() if name == "vit_t" else segment_anything()
        predictor = package.SamPredictor(common.official_model(name, Path(checkpoint)))
        encode = predictor.set_image
        precision = "fp32"
    elif side.startswith("onnx"):
        from sam_core.onnx_backend import OnnxPredictor

        predictor = OnnxPredictor(onnx_dir, int8=side == "onnx-int8", threads=threads or None)
        encode = predictor.encode
        precision = predictor.model.precision
    else:
        from sam_core.cache import EmbeddingCache
        from sam_core.predictor import Predictor
        from sam_core.runtime import keep_freed_memory
        from sam_core.zoo import load_model

        if side == "fp32+keep":
            keep_freed_memory()
        model = load_model(name, checkpoint)
        predictor = Predictor(model, precision=side.replace("+keep", ""), cache=EmbeddingCache(memory_bytes=0))
        encode = predictor.encode
        precision = predictor.model.precision
    gc.collect()
    before = _status_mb("VmRSS")
    _reset_peak()
    for _ in range(2):
        encode(image)
    return {
        "side": side,
        "precision": precision,
        "rss_model_mb": before,
        "peak_above_model_mb": _status_mb("VmHWM") - before,
    }


def _export_worker(name: str, checkpoint: str, folder: str, int8: bool) -> dict:
    from sam_core.export import export_onnx

    files = export_onnx(name, folder, checkpoint=checkpoint, quantize_encoder=int8)
    return {"folder": str(files.folder)}


def _volume_worker(name: str, checkpoint: str, slices: int, budget_mb: int, threads: int) -> dict:
    import numpy as np
    import torch

    from sam_core.cache import EmbeddingCache
    from sam_core.predictor import Embedding, Predictor

    if threads:
        torch.set_num_threads(threads)
    rng = np.random.default_rng(0)
    volume = rng.integers(0, 256, (slices, 256, 256), dtype=np.uint8)
    with tempfile.TemporaryDirectory() as folder:
        cache = EmbeddingCache(memory_bytes=budget_mb << 20, directory=folder)
        predictor = Predictor(name, checkpoint=checkpoint, cache=cache)
        alive: "list[weakref.ref[Embedding]]" = []  # embeddings are unhashable dataclasses: no WeakSet
        first = predictor.encode(volume[0])
        embedding_mb = first.features.nelement() * first.features.element_size() / 2**20
        alive.append(weakref.ref(first))
        del first
        gc.collect()
        rss_start = _status_mb("VmRSS")
        most_bytes = most_alive = 0
        for z in range(1, slices):
            alive.append(weakref.ref(predictor.encode(volume[z])))
            alive = [ref for ref in alive if ref() is not None]
            most_bytes = max(most_bytes, cache.memory_used)
            most_alive = max(most_alive, len(alive))
        rss_end = _status_mb("VmRSS")
        files = sorted(Path(folder).glob("*.samemb"))
        return {
            "slices": slices,
            "encoder_runs": predictor.encoder_runs,
            "budget_mb": budget_mb,
            "embedding_mb": embedding_mb,
            "most_cache_mb": most_bytes / 2**20,
            "most_alive": most_alive,
            "rss_growth_mb": rss_end - rss_start,
            "disk_files": len(files),
            "disk_mb": sum(f.stat().st_size for f in files) / 2**20,
        }


def _disk_sizes() -> tuple[int, int]:
    """Bytes of one vit_b-sized embedding (1, 256, 64, 64) on disk: the default cache, and float32."""
    import torch

    from sam_core.cache import EmbeddingCache
    from sam_core.imaging import Preparation
    from sam_core.predictor import Embedding

    embedding = Embedding(torch.randn(1, 256, 64, 64), (1024, 1024), (1024, 1024), "m", Preparation(), "k")
    sizes = []
    with tempfile.TemporaryDirectory() as folder:
        for cache in (EmbeddingCache(directory=Path(folder) / "default"),
                      EmbeddingCache(directory=Path(folder) / "f32", dtype="float32")):
            cache.put("k", embedding)
            sizes.append(cache.path_for("k").stat().st_size)
    return sizes[0], sizes[1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="vit_b", help="comma-separated: vit_b, vit_l, vit_h, vit_t")
    parser.add_argument("--sides", default="official,fp32,fp32+keep,auto,int8",
                        help=f"comma-separated, of: {', '.join(SIDES)} (empty: only the disk and volume parts)")
    parser.add_argument("--threads", type=int, default=0, help="torch / onnxruntime threads (0: default)")
    parser.add_argument("--volume-model", default="vit_t", help="model for the volume part ('none' skips it)")
    parser.add_argument("--slices", type=int, default=300, help="slices of the volume")
    parser.add_argument("--budget-mb", type=int, default=256, help="memory budget of the embedding cache")
    parser.add_argument("--checkpoints", type=Path, default=None,
                        help="folder for the random-weight checkpoints (default: a temporary folder)")
    parser.add_argument("--worker", nargs="+", metavar="ARG", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.worker:
        kind, *rest = args.worker
        if kind == "encode":
            side, name, path, onnx_dir, threads = rest
            result = _encode_worker(side, name, path, onnx_dir, int(threads))
        elif kind == "export":
            name, path, folder, int8 = rest
            result = _export_worker(name, path, folder, int8 == "1")
        else:
            name, path, slices, budget, threads = rest
            result = _volume_worker(name, path, int(slices), int(budget), int(threads))
        print(json.dumps(result))
        return 0

    sides = [side for side in args.sides.split(",") if side]
    unknown = sorted(set(sides) - set(SIDES))
    if unknown:
        parser.error(f"unknown sides {unknown}; choose from {', '.join(SIDES)}")
    script = Path(__file__).resolve()
    lines = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = args.checkpoints or Path(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        for name in args.models.split(",") if sides else []:
            path = common.checkpoint(name, folder)
            onnx_dir = Path(tmp) / f"onnx_{name}"
            if any(s.startswith("onnx") for s in sides):
                common.run_worker(script, ["export", name, str(path), str(onnx_dir), "1" if "onnx-int8" in sides else "0"])
            official = None
            for side in sides:
                result = common.run_worker(script, ["encode", side, name, str(path), str(onnx_dir), str(args.threads)])
                if side == "official":
                    official = result["peak_above_model_mb"]
                ratio = f"{official / result['peak_above_model_mb']:6.2f}x less" if official and side != "official" else ""
                lines.append(f"{name:6} {side:10} {result['precision']:>9} {result['rss_model_mb']:12.0f} "
                             f"{result['peak_above_model_mb']:14.0f}  {ratio}")
        print(common.machine())
        if lines:
            print("Peak RSS while encoding one 1024 x 1024 image (twice), in MB:")
            print(f"{'model':6} {'side':10} {'precision':>9} {'RSS of model':>12} {'peak above it':>14}")
            print("\n".join(lines))

        default, f32 = _disk_sizes()
        print(f"\nOne vit_b embedding on disk: {default / 2**20:.2f} MB with the default cache "
              f"({'float16' if default < 0.6 * f32 else 'float32'}), {f32 / 2**20:.2f} MB as float32")

        if args.volume_model != "none":
            path = common.checkpoint(args.volume_model, folder)
            v = common.run_worker(script, ["volume", args.volume_model, str(path), str(args.slices),
                                           str(args.budget_mb), str(args.threads)])
            print(f"\nVolume of {v['slices']} slices with {args.volume_model} "
                  f"(embedding {v['embedding_mb']:.1f} MB in memory, {v['slices'] * v['embedding_mb']:.0f} MB for all), "
                  f"cache budget {v['budget_mb']} MB:")
            print(f"  encoder runs {v['encoder_runs']}; most held by the memory cache {v['most_cache_mb']:.1f} MB; "
                  f"most embeddings alive at once {v['most_alive']}; RSS growth over the run {v['rss_growth_mb']:.0f} MB; "
                  f"on disk {v['disk_files']} files, {v['disk_mb']:.0f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
