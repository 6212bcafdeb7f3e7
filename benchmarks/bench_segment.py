"""A whole ``segment`` job as users run it, sam_core's command line next to the official package's
equivalent script, same run, same random-weight checkpoint, same image and click. Each side runs in a
fresh Python process: start-up, imports, loading the checkpoint, reading the PNG, encoding, decoding one
positive click (three candidates, the best kept) and writing the mask PNG. Prints both wall times,
their ratio and the agreement of the two masks.

    python benchmarks/bench_segment.py                 # vit_b, 768 x 1024 image, 3 runs each
    python benchmarks/bench_segment.py --model vit_t --runs 5
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import ROOT, machine, segment_inputs  # noqa: E402

# The official package's job: what its README shows for one click, plus reading and writing the files.
OFFICIAL_SCRIPT = """
import sys
sys.path.insert(0, {tests!r})
import numpy as np
from PIL import Image
from helpers.official import {package}
sam = {package}().sam_model_registry[{name!r}](checkpoint={checkpoint!r}).to({device!r})
predictor = {package}().SamPredictor(sam)
predictor.set_image(np.asarray(Image.open({image!r}).convert("RGB")))
masks, scores, _ = predictor.predict(point_coords=np.array([[{x}, {y}]]), point_labels=np.array([1]),
                                     multimask_output=True)
Image.fromarray((masks[int(np.argmax(scores))] * 255).astype(np.uint8)).save({out!r})
"""


def _run(command: list[str]) -> float:
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, cwd=str(ROOT))
    elapsed = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"{command[:3]} failed:\n{done.stderr[-3000:]}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="vit_b", choices=["vit_b", "vit_l", "vit_h", "vit_t"])
    parser.add_argument("--size", default="768x1024", help="image size HxW (default 768x1024)")
    parser.add_argument("--runs", type=int, default=3, help="runs of each side, alternating (median reported)")
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda, for both sides")
    parser.add_argument("--checkpoints", default=None, help="folder for the random checkpoints (default: a temp folder)")
    args = parser.parse_args()
    from PIL import Image

    with tempfile.TemporaryDirectory() as tmp:
        weights, image, height, width = segment_inputs(args.model, args.size, Path(tmp), args.checkpoints)
        x, y = width * 0.4, height * 0.6
        package = "mobile_sam" if args.model == "vit_t" else "segment_anything"
        official_out, ours_out = Path(tmp) / "official.png", Path(tmp) / "ours.png"
        script = OFFICIAL_SCRIPT.format(tests=str(ROOT / "tests"), package=package, name=args.model,
                                        checkpoint=str(weights), image=str(image), x=x, y=y, out=str(official_out),
                                        device=args.device)
        official_cmd = [sys.executable, "-c", script]
        ours_cmd = [sys.executable, "-m", "sam_core", "segment", str(image), "--point", f"{x},{y}",
                    "--model", args.model, "--checkpoint", str(weights), "--out", str(ours_out),
                    "--device", args.device]
        times: dict[str, list[float]] = {"official": [], "sam_core": []}
        for _ in range(args.runs):
            times["official"].append(_run(official_cmd))
            times["sam_core"].append(_run(ours_cmd))
        official, ours = (statistics.median(times[k]) for k in ("official", "sam_core"))
        a = np.asarray(Image.open(official_out)) > 0
        b = np.asarray(Image.open(ours_out)) > 0
        print(f"machine: {machine()}")
        print(f"segment, {args.model} on {args.device}, {height}x{width} image, one click, "
              f"{args.runs} runs each (median wall time)")
        print(f"  official script : {official:8.2f} s  {[round(t, 2) for t in times['official']]}")
        print(f"  sam_core segment: {ours:8.2f} s  {[round(t, 2) for t in times['sam_core']]}")
        print(f"  speed-up        : {official / ours:8.2f}x")
        print(f"  masks           : {np.mean(a == b):.5f} of pixels agree")


if __name__ == "__main__":
    main()
