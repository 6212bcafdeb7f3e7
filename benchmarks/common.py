"""Shared pieces of the benchmarks: random-weight official checkpoints built on the fly, the reference
packages (through the tests' torchvision/timm shims), timing and memory helpers.

Benchmarks print the project's figure next to the official package's, measured in the same run on
the same inputs. Run them from the repository root, e.g. ``python benchmarks/bench_engine.py``.
"""

from __future__ import annotations

import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # helpers.official / helpers.checkpoints (test-only shims)


def checkpoint(name: str, folder: Path, seed: int = 0) -> Path:
    """A random-weight checkpoint of the official model ``name`` in ``folder`` (built once, reused)."""
    from helpers.checkpoints import write_official_checkpoint
    from sam_core.models import get_config

    path = Path(folder) / f"{name}_seed{seed}.pth"
    if not path.exists():
        tmp = path.with_suffix(".part")
        write_official_checkpoint(get_config(name), tmp, seed=seed)
        tmp.replace(path)
    return path


def segment_inputs(name: str, size: str, tmp: Path, checkpoints: "str | None" = None) -> tuple[Path, Path, int, int]:
    """(random-weight checkpoint of ``name``, a random RGB PNG of ``size`` "HxW" in ``tmp``, height, width):
    the inputs of a whole ``segment`` job; checkpoints go to ``checkpoints`` (default ``tmp``)."""
    import numpy as np
    from PIL import Image

    height, width = (int(v) for v in size.split("x"))
    folder = Path(checkpoints or tmp)
    folder.mkdir(parents=True, exist_ok=True)
    weights = checkpoint(name, folder)
    image = Path(tmp) / "image.png"
    rng = np.random.default_rng(0)
    Image.fromarray((rng.random((height, width, 3)) * 255).astype(np.uint8)).save(image)
    return weights, image, height, width


def official_model(name: str, path: Path):
    """The reference model (segment_anything / mobile_sam) for ``name`` with the weights of ``path``."""
    from helpers.checkpoints import load_official
    from sam_core.models import get_config

    return load_official(get_config(name), path)


def one_click(side: str, name: str, model, embedding):
    """A function that predicts the masks of one positive click through the predictor users call, on
    an already encoded ``size`` x ``size`` image (the official ``SamPredictor.predict``, three
    candidates at full size, thresholded; or ``sam_core.Predictor.predict``, which also sorts them)."""
    import numpy as np

    size = model.image_encoder.img_size
    point = np.array([[size * 0.4, size * 0.6]])
    if side == "official":
        from helpers.official import mobile_sam, segment_anything

        from sam_core.models import get_config

        package = segment_anything() if get_config(name).encoder == "vit" else mobile_sam()
        predictor = package.SamPredictor(model)
        # what set_image leaves behind, with the embedding computed outside
        predictor.features, predictor.is_image_set = embedding, True
        predictor.original_size = predictor.input_size = (size, size)
        return lambda: predictor.predict(point_coords=point, point_labels=np.array([1]), multimask_output=True)
    from sam_core.imaging import Preparation
    from sam_core.predictor import Embedding, Predictor

    predictor = Predictor(model)
    encoded = Embedding(features=embedding, original_size=(size, size), input_size=(size, size),
                        model_id=predictor.model_id, preparation=Preparation(), key="benchmark")
    return lambda: predictor.predict(encoded, points=point, labels=np.array([1]), multimask=True)


def prompt_points(size: int, device: str = "cpu"):
    """The benchmarks' prompts in the model-input frame of a ``size`` x ``size`` image: one positive point
    (1, 1, 2) at (0.4, 0.6) of the image, and 64 single points (64, 1, 2) on an 8 x 8 grid."""
    import torch

    one = torch.tensor([[[size * 0.4, size * 0.6]]], device=device)
    grid = (torch.stack(torch.meshgrid(torch.arange(8), torch.arange(8), indexing="xy"), -1).reshape(64, 1, 2)
            + 0.5) * (size / 8)
    return one, grid.to(device)


def decode_points(model, embedding, points):
    """Masks (B, 3, S, S) of positive points (B, 1, 2) in the model-input frame: prompt encoder, mask
    decoder (three candidates), upsampled to the input size S and thresholded. Works for the official
    models and ours alike."""
    import torch

    size = model.image_encoder.img_size
    labels = torch.ones(points.shape[:2], dtype=torch.int64, device=points.device)
    sparse, dense = model.prompt_encoder(points=(points, labels), boxes=None, masks=None)
    low_res, _ = model.mask_decoder(
        image_embeddings=embedding, image_pe=model.prompt_encoder.get_dense_pe(),
        sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense, multimask_output=True,
    )
    return model.postprocess_masks(low_res, (size, size), (size, size)) > model.mask_threshold


def timed(fn: Callable[[], object], repeats: int, warmup: int = 1) -> dict[str, float]:
    """Run ``fn`` warmup + repeats times; seconds of the median and best repeat, and the CPU time split."""
    for _ in range(warmup):
        fn()
    walls = []
    import os

    start = os.times()
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        walls.append(time.perf_counter() - t0)
    end = os.times()
    return {
        "median_s": statistics.median(walls),
        "best_s": min(walls),
        "user_s": (end.user - start.user) / repeats,
        "sys_s": (end.system - start.system) / repeats,
    }


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, in MB (Linux: ru_maxrss is in kB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def rss_mb() -> float:
    """Resident memory of this process now, in MB."""
    import os

    with open("/proc/self/statm") as handle:
        pages = int(handle.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def reset_peak_rss() -> None:
    """Start a new peak-memory window (Linux: writing 5 to /proc/self/clear_refs resets VmHWM)."""
    with open("/proc/self/clear_refs", "w") as handle:
        handle.write("5")


def window_peak_rss_mb() -> float:
    """Peak resident memory (VmHWM) since the last ``reset_peak_rss``, in MB."""
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def peak_above(fn: Callable[[], object]) -> float:
    """MB of resident memory that one call of ``fn`` needs above what the process held before it."""
    before = rss_mb()
    reset_peak_rss()
    fn()
    return window_peak_rss_mb() - before


def measured(run: Callable[[], dict]) -> dict:
    """One call of ``run`` (which returns a dict of its own figures): its wall and process CPU seconds
    (user + system, all threads) and its peak resident memory above what the process held before it."""
    import os

    before = rss_mb()
    reset_peak_rss()
    cpu0, t0 = os.times(), time.perf_counter()
    info = run()
    wall, cpu1 = time.perf_counter() - t0, os.times()
    cpu = (cpu1.user - cpu0.user) + (cpu1.system - cpu0.system)
    return {"wall_s": wall, "cpu_s": cpu, "peak_above_loaded_mb": window_peak_rss_mb() - before,
            "loaded_mb": before, **info}


def cpu_s(row: dict[str, float]) -> float:
    """Process CPU seconds (user + system, all threads) per repeat of a ``timed`` row."""
    return row["user_s"] + row["sys_s"]


def run_worker(script: Path, args: list[str]) -> dict:
    """Run ``script --worker ARGS`` in a fresh Python process (so process-wide settings such as the
    allocator's stay apart) and return the JSON object it prints on its last line."""
    out = subprocess.run([sys.executable, str(script), "--worker", *args], check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def machine() -> str:
    """A one-line description of this machine (CPU model, cores, torch version)."""
    import os
    import platform

    import torch

    cpu = platform.processor() or "cpu"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__}, {torch.get_num_threads()} threads"
