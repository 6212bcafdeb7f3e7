"""The guarded fast encoder for CPUs without bf16 (issue 21 items 3 and 4): every quantization attempt's
embedding cosine to our fp32 and its encoder time next to the official package's, same run, same
random-weight checkpoint, same 1024 x 1024 input.

    python benchmarks/bench_fast_encoder.py --models vit_b,vit_t --repeats 3 --checkpoints /tmp/ckpt
    python benchmarks/bench_fast_encoder.py --models "" --demo-scenes 4     # demo's masks only

Each row runs in its own fresh process: the official package (fp32, as users run it), sam_core in the
precisions ``fp32``, ``int8`` and ``int8-smooth``, and the attempts that are not precisions (built
with :mod:`sam_core.models.quantize`): ``qkv+mlp`` (dynamic int8 of qkv and the MLPs without
smoothing), ``smooth+mlp`` (smoothing, then qkv and every MLP layer: ``int8-smooth`` without the
TinyViT layers it keeps in fp32) and ``smooth-all`` (smoothing, then every Linear of the blocks, the
attention output projection included). Times: median wall seconds and process CPU seconds (``os.times``, user + system,
all threads) per encoder call over ``--repeats`` after one warm-up; the speed-up is the official CPU
time over ours. The load average is printed before and after: on a shared machine compare rows of one
run only. ``--demo-scenes N`` also prints the IoU of ``demo``'s click and box masks in ``int8`` and
``int8-smooth`` against fp32's on N generated scenes (seed 1000, as test_demo_quality.py).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

import common

ATTEMPTS = ("fp32", "int8", "qkv+mlp", "int8-smooth", "smooth+mlp", "smooth-all")


def _ours(name: str, path: str, attempt: str):
    from sam_core.models import build_sam, get_config, load_checkpoint
    from sam_core.models.quantize import quantize_linears, smooth_into_norms

    model = load_checkpoint(build_sam(get_config(name)), path)
    if attempt == "qkv+mlp":
        quantize_linears(model.image_encoder, lambda n: ".mlp." in f".{n}" or n.endswith("attn.qkv"))
        return model.set_precision("fp32")
    if attempt == "smooth+mlp":
        smooth_into_norms(model.image_encoder)
        quantize_linears(model.image_encoder, lambda n: ".mlp." in f".{n}" or n.endswith("attn.qkv"))
        return model.set_precision("fp32")
    if attempt == "smooth-all":
        smooth_into_norms(model.image_encoder)
        quantize_linears(model.image_encoder, lambda n: n.startswith("blocks.") or n.startswith("layers."))
        return model.set_precision("fp32")
    return model.set_precision(attempt)


def _worker(side: str, name: str, path: str, attempt: str, repeats: int, out: str) -> dict:
    import torch

    from sam_core.runtime import keep_freed_memory

    if side == "official":
        model = common.official_model(name, Path(path))
    else:
        keep_freed_memory()
        model = _ours(name, path, attempt)
    size = model.image_encoder.img_size
    generator = torch.Generator().manual_seed(0)
    image = (torch.rand((1, 3, size, size), generator=generator) * 255).round()
    with torch.no_grad():
        x = model.preprocess(image)
        encoder = common.timed(lambda: model.image_encoder(x), repeats)
        torch.save(model.image_encoder(x).float(), out)
    return {"encoder": encoder, "machine": common.machine()}


def _cosine(a: Path, b: Path) -> float:
    import torch

    x, y = torch.load(a, weights_only=True), torch.load(b, weights_only=True)
    return torch.nn.functional.cosine_similarity(x.flatten().double(), y.flatten().double(), dim=0).item()


def _demo_masks(scenes: int) -> None:
    import numpy as np

    from sam_core import Predictor
    from sam_core.train.quality import mask_agreement
    from sam_core.train.synthetic import generate_scenes

    generated = generate_scenes(scenes, seed=1000)
    reference = Predictor("demo", precision="fp32")
    for precision in ("int8", "int8-smooth"):
        ious = mask_agreement(reference, Predictor("demo", precision=precision), generated)
        print(f"demo {precision}: {len(ious)} prompts, mask IoU to fp32 mean {np.mean(ious):.4f}, "
              f"lowest {np.min(ious):.4f}", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="vit_b,vit_t", help="comma-separated: vit_b, vit_t")
    parser.add_argument("--attempts", default=",".join(ATTEMPTS), help=f"comma-separated of {', '.join(ATTEMPTS)}")
    parser.add_argument("--repeats", type=int, default=3, help="timed encoder runs after one warm-up")
    parser.add_argument("--checkpoints", type=Path, default=None,
                        help="folder for the random-weight checkpoints (default: a temporary folder)")
    parser.add_argument("--demo-scenes", type=int, default=0,
                        help="also compare demo's masks in int8 and int8-smooth with fp32's on this many scenes")
    parser.add_argument("--worker", nargs=6, metavar="ARG", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.worker:
        side, name, path, attempt, repeats, out = args.worker
        print(json.dumps(_worker(side, name, path, attempt, int(repeats), out)))
        return 0

    script = Path(__file__).resolve()
    print(f"load average before: {' '.join(f'{v:.1f}' for v in os.getloadavg())}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        folder = args.checkpoints or Path(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        print(f"{'model':6} {'attempt':12} {'cosine':>8} {'wall s':>8} {'CPU s':>8} {'vs official':>12} {'vs fp32':>8}",
              flush=True)
        for name in filter(None, args.models.split(",")):
            path = common.checkpoint(name, folder)
            embeddings = Path(tmp) / name
            embeddings.mkdir()
            official = common.run_worker(script, ["official", name, str(path), "fp32", str(args.repeats),
                                                  str(embeddings / "official.pt")])
            official_cpu = common.cpu_s(official["encoder"])
            print(f"{name:6} {'official':12} {'':>8} {official['encoder']['median_s']:8.2f} {official_cpu:8.2f}",
                  flush=True)
            fp32_cpu = None
            for attempt in args.attempts.split(","):
                out = embeddings / f"{attempt}.pt"
                ours = common.run_worker(script, ["ours", name, str(path), attempt, str(args.repeats), str(out)])
                cpu = common.cpu_s(ours["encoder"])
                fp32_cpu = cpu if attempt == "fp32" else fp32_cpu
                cosine = _cosine(out, embeddings / "fp32.pt") if (embeddings / "fp32.pt").exists() else float("nan")
                vs_fp32 = f"{fp32_cpu / cpu:7.2f}x" if fp32_cpu else ""
                print(f"{name:6} {attempt:12} {cosine:8.5f} {ours['encoder']['median_s']:8.2f} {cpu:8.2f} "
                      f"{official_cpu / cpu:11.2f}x {vs_fp32:>8}", flush=True)
    if args.demo_scenes:
        _demo_masks(args.demo_scenes)
    print(common.machine())
    print(f"load average after: {' '.join(f'{v:.1f}' for v in os.getloadavg())}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
