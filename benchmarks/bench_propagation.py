"""Propagation seconds per frame (slice) and peak memory, on the same frames, same run:

- SAM 2.1 memory propagation: ``sam_core.VideoSession`` (frames read lazily, image features in an LRU
  with a byte budget) next to Meta's ``SAM2VideoPredictor`` (``init_state``, which loads every frame
  into memory first, ``add_new_points_or_box``, ``propagate_in_video``), one click on frame 0,
  propagated forward through every frame;
- SAM 1 slice propagation: ``sam_core.propagate`` (each slice encoded, then decoded from the previous
  slice's mask: its box, an interior point and its logits) next to the official ``SamPredictor`` doing
  the same work slice by slice (``set_image`` + ``predict`` with the same box, point and logits).

    python benchmarks/bench_propagation.py                       # sam2.1_hiera_tiny at 512 px, 100 frames; vit_t, 10 slices
    python benchmarks/bench_propagation.py --image-size 1024 --frames 20
    python benchmarks/bench_propagation.py --quick               # small random configs: a check that it runs
    python benchmarks/bench_propagation.py --image-size 256 --budget-mb 6 --sides sam_core --threads 1

The frames are a bright disc moving across a textured background, written as a folder of JPEG files
(the only input Meta's video predictor reads); both sides read that folder. Random-weight checkpoints
in official format (SAM 2.1: the object-score head spread so that the object is present on some
frames, as in the parity tests). ``--image-size`` sets the SAM 2.1 model's input side (the official
models use 1024; a smaller side keeps the official side's 100 frames within minutes on 2 CPU cores and
shrinks its preloaded frames from 12 MiB to 3 MiB each at 512). SAM 1 propagation stops only where a
mask comes out empty (the IoU, stability and overlap stops are off), so that random weights run every
slice. Each side runs in its own fresh process; "per frame" is the whole run (frame loading, the
prompt, propagation, collecting the masks) divided by the frames it processed; the process CPU time
(user + system, all threads) is given beside the wall time; peak MB is the process's peak resident
memory during the run above what it held before (the loaded model). ``--threads`` sets torch's
threads in each side's process (default: torch's own choice); ``--sides`` runs one side only (e.g.
``sam_core`` with several ``--budget-mb``: its feature cache reports how many frames it held at most).
Each row also gives the 1-minute load average before and after its run (the machine may be shared).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path

import common

DISC_RADIUS = 0.12  # of the frame height


def write_frames(folder: Path, count: int, height: int, width: int) -> Path:
    """``count`` JPEG frames 0.jpg ... of a bright disc moving right on a textured background."""
    import numpy as np
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    background = rng.integers(0, 120, size=(height, width, 3)).astype(np.uint8)
    yy, xx = np.mgrid[:height, :width]
    for t in range(count):
        frame = background.copy()
        cx, cy = _disc_centre(t, count, height, width)
        frame[(yy - cy) ** 2 + (xx - cx) ** 2 < (DISC_RADIUS * height) ** 2] = (230, 200, 60)
        Image.fromarray(frame).save(folder / f"{t}.jpg", quality=90)
    return folder


def _disc_centre(t: int, count: int, height: int, width: int) -> tuple[float, float]:
    """(x, y) pixels of the disc on frame ``t``: from 1/4 to 3/4 of the width, at mid-height."""
    return width * (0.25 + 0.5 * t / max(count - 1, 1)), height * 0.5


def _sam2_config(name: str, image_size: int):
    if name == "small_sam2":
        from helpers.sam2_checkpoints import SMALL_SAM2

        return SMALL_SAM2
    from sam_core.models.sam2 import SAM2_CONFIGS

    config = SAM2_CONFIGS[name]
    return config if image_size == config.image_size else dataclasses.replace(config, image_size=image_size)


def _sam2_worker(side: str, name: str, image_size: int, path: str, folder: str, budget_mb: float) -> dict:
    import warnings

    import numpy as np
    import torch

    from sam_core.frames import open_frames

    config = _sam2_config(name, image_size)
    frames = open_frames(folder)
    x, y = _disc_centre(0, frames.count, frames.height, frames.width)
    if side == "official":
        from helpers.sam2_checkpoints import official_video_predictor

        predictor = official_video_predictor(config, path)

        def run():
            masks = []
            with warnings.catch_warnings(), torch.inference_mode():
                warnings.simplefilter("ignore")  # hole filling skipped without the CUDA extension
                t0 = time.perf_counter()
                state = predictor.init_state(folder)
                loading = time.perf_counter() - t0
                predictor.add_new_points_or_box(state, frame_idx=0, obj_id=1, points=np.array([[x, y]], np.float32),
                                                labels=np.array([1], np.int32))
                for _, _, logits in predictor.propagate_in_video(state):
                    masks.append((logits[0, 0] > 0).numpy())
            return {"frames": len(masks), "init_state_s": loading, "present": int(sum(m.any() for m in masks))}
    else:
        from sam_core.models.build import load_checkpoint
        from sam_core.models.sam2 import build_sam2
        from sam_core.propagation import VideoSession

        model = load_checkpoint(build_sam2(config), path)

        def run():
            session = VideoSession(model, open_frames(folder), feature_budget=int(budget_mb * 2**20))
            session.add_prompt(0, 1, points=[[x, y]], labels=[1])
            masks = [result.masks[0] for result in session.propagate("forward")]
            cache = session.cache
            return {"frames": len(masks), "present": int(sum(m.any() for m in masks)),
                    "features_computed": cache.computed, "peak_cached_frames": cache.peak_entries,
                    "peak_cached_mb": cache.peak_bytes / 2**20, "budget_mb": budget_mb,
                    "stored_mb": session.stored_nbytes / 2**20}

    return {"side": side, "family": "sam2", "model": config.name, "image_size": config.image_size,
            **_loaded(run), "machine": common.machine()}


def _sam1_worker(side: str, name: str, path: str, folder: str, slices: int) -> dict:
    import numpy as np

    from sam_core.frames import open_frames
    from sam_core.volume import prompts_from_mask

    frames = open_frames(folder)
    volume = np.stack([frames.read(i) for i in range(slices)])
    x, y = _disc_centre(0, frames.count, frames.height, frames.width)
    yy, xx = np.mgrid[:frames.height, :frames.width]
    start = (yy - y) ** 2 + (xx - x) ** 2 < (DISC_RADIUS * frames.height) ** 2
    if side == "official":
        from helpers.official import mobile_sam, segment_anything

        package = mobile_sam() if name == "vit_t" else segment_anything()
        predictor = package.SamPredictor(common.official_model(name, Path(path)))

        def run():
            previous, logits, done = start, None, 0
            for index in range(1, slices):
                predictor.set_image(volume[index])
                points, labels, box = prompts_from_mask(previous, 0.1)
                masks, _, low_res = predictor.predict(
                    point_coords=np.asarray(points, float), point_labels=np.asarray(labels), box=np.asarray(box, float),
                    mask_input=None if logits is None else logits[None], multimask_output=False)
                done += 1
                if not masks[0].any():
                    break
                previous, logits = masks[0], low_res[0]
            return {"frames": done}
    else:
        from sam_core.predictor import Predictor
        from sam_core.volume import propagate

        predictor = Predictor(name, checkpoint=path)

        def run():
            # every stop off but the empty mask, as on the official side (random weights predict IoUs
            # below -1); frames = the slices decoded, from the progress messages
            messages = []
            propagate(predictor, volume, 0, start, direction="forward", stop_iou=-math.inf, stop_stability=-math.inf,
                      min_overlap=0.0, progress=lambda n, total, message="": messages.append(message))
            return {"frames": sum(message.startswith("slice") for message in messages)}

    return {"side": side, "family": "sam1", "model": name, **_loaded(run), "machine": common.machine()}


def _loaded(run) -> dict:
    """``common.measured(run)`` with the machine's 1-minute load average before and after the run."""
    before = os.getloadavg()[0]
    row = common.measured(run)
    return {**row, "load_before": before, "load_after": os.getloadavg()[0]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="sam2.1_hiera_tiny", help="SAM 2.1 model (default sam2.1_hiera_tiny)")
    parser.add_argument("--image-size", type=int, default=512, help="SAM 2.1 model input side (official: 1024)")
    parser.add_argument("--frames", type=int, default=100, help="frames for SAM 2.1 (default 100)")
    parser.add_argument("--frame-size", default="256x320", help="frame size HxW (default 256x320)")
    parser.add_argument("--budget-mb", type=float, default=2048, help="sam_core's feature budget (default 2048)")
    parser.add_argument("--sam1-model", default="vit_t", help="SAM 1 model for slice propagation, or 'none'")
    parser.add_argument("--sam1-slices", type=int, default=10, help="slices for SAM 1 (default 10)")
    parser.add_argument("--sides", default="official,sam_core", help="sides to run (default official,sam_core)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads per side (default: torch's)")
    parser.add_argument("--quick", action="store_true", help="small random SAM 2.1 config, 6 frames, no SAM 1")
    parser.add_argument("--json", default=None, help="also write the results to this file")
    parser.add_argument("--worker", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        if args.threads:
            import torch

            torch.set_num_threads(args.threads)
        family, side, *rest = args.worker
        if family == "sam2":
            name, size, path, folder, budget = rest
            row = _sam2_worker(side, name, int(size), path, folder, float(budget))
        else:
            name, path, folder, slices = rest
            row = _sam1_worker(side, name, path, folder, int(slices))
        print(json.dumps(row))
        return 0
    if args.quick:
        args.model, args.frames, args.frame_size, args.sam1_model = "small_sam2", 6, "48x64", "none"

    from helpers.sam2_checkpoints import spread_object_scores, write_official_sam2_checkpoint

    sides = [side.strip() for side in args.sides.split(",")]
    if not sides or any(side not in ("official", "sam_core") for side in sides):
        parser.error(f"--sides takes official, sam_core or both, got {args.sides!r}")
    threads = ["--threads", str(args.threads)] if args.threads else []
    height, width = (int(v) for v in args.frame_size.split("x"))
    script = Path(__file__)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = write_frames(Path(tmp) / "frames", max(args.frames, args.sam1_slices), height, width)
        config = _sam2_config(args.model, args.image_size)
        path = spread_object_scores(write_official_sam2_checkpoint(config, Path(tmp) / "sam2.pt", seed=5))
        sam2_folder = folder
        if args.frames < max(args.frames, args.sam1_slices):
            sam2_folder = Path(tmp) / "sam2_frames"
            write_frames(sam2_folder, args.frames, height, width)
        for side in sides:
            rows.append(common.run_worker(script, ["sam2", side, args.model, str(config.image_size), str(path),
                                                   str(sam2_folder), str(args.budget_mb), *threads]))
        if args.sam1_model != "none":
            sam1_path = common.checkpoint(args.sam1_model, Path(tmp))
            for side in sides:
                rows.append(common.run_worker(script, ["sam1", side, args.sam1_model, str(sam1_path), str(folder),
                                                       str(args.sam1_slices), *threads]))
    print(rows[0]["machine"], f"frames {height}x{width}")
    print(f"{'propagation':38}{'side':10}{'frames':>7}{'wall s/frame':>13}{'CPU s/frame':>12}{'peak MB':>9}"
          f"{'load':>11}")
    for row in rows:
        label = (f"SAM 2.1 {row['model']} at {row['image_size']} px" if row["family"] == "sam2"
                 else f"SAM 1 {row['model']} slices")
        n = max(row["frames"], 1)
        print(f"{label:38}{row['side']:10}{row['frames']:7d}{row['wall_s'] / n:13.3f}{row['cpu_s'] / n:12.3f}"
              f"{row['peak_above_loaded_mb']:9.0f}{row['load_before']:6.1f}-{row['load_after']:.1f}")
    for row in rows:
        if row["family"] == "sam2" and row["side"] == "sam_core":
            print(f"sam_core feature cache: {row['features_computed']} frames encoded, at most "
                  f"{row['peak_cached_frames']} held ({row['peak_cached_mb']:.1f} MB of a {row['budget_mb']:g} MB budget); "
                  f"kept of the {row['frames']} frames (memories, pointers, logits): {row['stored_mb']:.1f} MB")
        if row["family"] == "sam2" and row["side"] == "official":
            print(f"official init_state (every frame loaded first): {row['init_state_s']:.2f} s")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
