"""Where a whole ``segment`` job spends its time outside the encoder: process CPU time (user + system, all
threads, ``time.process_time``) of each phase, sam_core and the official package, each in a fresh
process, same random-weight checkpoint, image and click. CPU time stays comparable when other jobs
share the machine; wall time does not.

    python benchmarks/segment_breakdown.py                    # vit_b, 768 x 1024, 3 runs of each side
    python benchmarks/segment_breakdown.py --model vit_t --runs 5

Phases, ours: import (torch, sam_core), read (the checkpoint file), build (the network), load (weights
into it), image (read the PNG), encode, click (decode one point, three candidates, best kept), write.
``sam_core (random init + copy)`` builds and loads as before issue 21 (random initial values, then a copy
of every tensor), for comparison. Official: import, build + load (``sam_model_registry``), image,
encode (``set_image``), click, write.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import ROOT, machine, segment_inputs  # noqa: E402

OURS = """
import json, sys, time
marks = [("start", time.process_time())]
def mark(name): marks.append((name, time.process_time()))
import numpy as np
import torch
from sam_core import zoo
from sam_core.io import read_image, write_mask_png
from sam_core.models.build import build_sam, load_checkpoint, read_state_dict, skip_parameter_init
from sam_core.predictor import Predictor
mark("import")
state = read_state_dict({checkpoint!r})
mark("read")
config = zoo._config({model!r}, state)
if {old!r}:
    network = build_sam(config)
    mark("build")
    model = load_checkpoint(network, state)
else:
    with skip_parameter_init():
        network = build_sam(config)
    mark("build")
    model = load_checkpoint(network, state, take=True)
del state
model.eval()
model.model_id = "benchmark"
mark("load")
image = read_image({image!r})
mark("image")
predictor = Predictor(model)
embedding = predictor.encode(image)
mark("encode")
result = predictor.predict(embedding, points=np.array([[{x}, {y}]]), labels=np.array([1]))
mark("click")
write_mask_png(result.masks[0], {out!r})
mark("write")
print(json.dumps({{b[0]: b[1] - a[1] for a, b in zip(marks, marks[1:])}}))
"""

OFFICIAL = """
import json, sys, time
marks = [("start", time.process_time())]
def mark(name): marks.append((name, time.process_time()))
sys.path.insert(0, {tests!r})
import numpy as np
import torch
from PIL import Image
from helpers.official import {package}
package = {package}()
mark("import")
sam = package.sam_model_registry[{model!r}](checkpoint={checkpoint!r})
mark("build + load")
image = np.asarray(Image.open({image!r}).convert("RGB"))
mark("image")
predictor = package.SamPredictor(sam)
predictor.set_image(image)
mark("encode")
masks, scores, _ = predictor.predict(point_coords=np.array([[{x}, {y}]]), point_labels=np.array([1]),
                                     multimask_output=True)
mark("click")
Image.fromarray((masks[int(np.argmax(scores))] * 255).astype(np.uint8)).save({out!r})
mark("write")
print(json.dumps({{b[0]: b[1] - a[1] for a, b in zip(marks, marks[1:])}}))
"""


def _run(script: str) -> dict:
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=str(ROOT))
    if done.returncode != 0:
        raise SystemExit(done.stderr[-3000:])
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="vit_b", choices=["vit_b", "vit_l", "vit_h", "vit_t"])
    parser.add_argument("--size", default="768x1024", help="image size HxW (default 768x1024)")
    parser.add_argument("--runs", type=int, default=3, help="runs of each side, interleaved (median per phase)")
    parser.add_argument("--checkpoints", default=None, help="folder for the random checkpoints (default: a temp folder)")
    args = parser.parse_args()
    from PIL import Image

    with tempfile.TemporaryDirectory() as tmp:
        weights, image, height, width = segment_inputs(args.model, args.size, Path(tmp), args.checkpoints)
        common = dict(checkpoint=str(weights), image=str(image), x=width * 0.4, y=height * 0.6, model=args.model)
        scripts = {
            "official": OFFICIAL.format(tests=str(ROOT / "tests"), out=str(Path(tmp) / "official.png"),
                                        package="mobile_sam" if args.model == "vit_t" else "segment_anything",
                                        **common),
            "sam_core (random init + copy)": OURS.format(old=True, out=str(Path(tmp) / "old.png"), **common),
            "sam_core": OURS.format(old=False, out=str(Path(tmp) / "ours.png"), **common),
        }
        runs: dict[str, list[dict]] = {name: [] for name in scripts}
        for _ in range(args.runs):
            for name, script in scripts.items():
                runs[name].append(_run(script))
        masks = {name: np.asarray(Image.open(Path(tmp) / f)) for name, f in
                 (("official", "official.png"), ("old", "old.png"), ("ours", "ours.png"))}

    print(f"machine: {machine()}")
    print(f"segment, {args.model}, {height}x{width} image, one click; process CPU seconds (median of {args.runs})")
    for name, results in runs.items():
        phases = {phase: statistics.median(r[phase] for r in results) for phase in results[0]}
        total = sum(phases.values())
        outside = total - phases["encode"]
        cells = ", ".join(f"{phase} {value:.2f}" for phase, value in phases.items())
        print(f"  {name:30s} total {total:6.2f}  outside the encoder {outside:5.2f}  ({cells})")
    print(f"  masks: ours = official on {np.mean(masks['ours'] == masks['official']):.4%} of pixels, "
          f"ours = before on {np.mean(masks['ours'] == masks['old']):.4%}")


if __name__ == "__main__":
    main()
