"""SAM 3: image encoder time and peak memory of sam_core next to Meta's sam3 package, same run, same
random-weight checkpoint, same image; and the time of one more concept query on cached features.

    python benchmarks/bench_sam3.py --size small            # seconds; a check that the script runs
    python benchmarks/bench_sam3.py --size full --device cuda   # 840 M parameters (CPU: minutes per side)

Each side runs in its own fresh process. "encode" is the vision backbone on one 800 x 600 image,
resized to the model's input (``Sam3Processor.set_image`` / ``ConceptPredictor.encode``); "new phrase" is one query with a phrase not
seen before (text encoder + grounding, image features reused); "same phrase" repeats a query whose
text features are known (sam_core keeps them; the official processor encodes the text again). Peak
memory is the process's peak resident memory above the loaded model (CPU) or the peak CUDA memory
allocated during encoding (GPU). Times are the median of ``--repeats`` after one warm-up.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import common


def _config(size: str):
    from helpers.official_sam3 import SMALL_SAM3

    from sam_core.models.sam3.config import SAM3

    return SMALL_SAM3 if size == "small" else SAM3


def _worker(side: str, size: str, path: str, device: str, repeats: int) -> dict:
    import numpy as np
    import torch
    from PIL import Image

    from helpers.official_sam3 import cpu_only, official_sam3, sam3_processor_class

    config = _config(size)
    encodes = {"n": 0}  # image encodes while querying (sam_core side: must stay 0)
    image = np.random.default_rng(0).integers(0, 256, (600, 800, 3), dtype=np.uint8)
    state = torch.load(path, map_location="cpu", weights_only=True)
    if side == "official":
        Sam3Processor = sam3_processor_class()
        model = official_sam3(config)
        model.load_state_dict(state)
        model.to(device).eval()
        processor = Sam3Processor(model, resolution=config.image_size, device=device, confidence_threshold=0.5)
        pil = Image.fromarray(image)

        def encode():
            with cpu_only():
                return processor.set_image(pil)

        cached = encode()

        def query(phrase):
            with cpu_only():
                return processor.set_text_prompt(phrase, dict(cached))
    else:
        from sam_core.concepts import ConceptPredictor
        from sam_core.models.sam3.build import load_sam3
        from sam_core.runtime import keep_freed_memory

        keep_freed_memory()
        predictor = ConceptPredictor(load_sam3(state, config=config, device=device))
        del state

        def encode():
            predictor.cache.clear()
            return predictor.encode(image)

        cached = encode()
        encode_image = predictor.model.encode_image

        def counted(*args, **kwargs):
            encodes["n"] += 1
            return encode_image(*args, **kwargs)

        predictor.model.encode_image = counted

        def query(phrase):
            return predictor.find(cached, text=phrase)

    loaded = _memory_mb(device)
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    else:
        common.reset_peak_rss()  # the peak while encoding, not the one of loading the checkpoint
    encoder = common.timed(encode, repeats)
    peak = (torch.cuda.max_memory_allocated() / 2**20) if device.startswith("cuda") else common.window_peak_rss_mb()
    encodes["n"] = 0
    words = iter(f"object number {i}" for i in range(10_000))
    new_phrase = common.timed(lambda: query(next(words)), repeats)
    same_phrase = common.timed(lambda: query("building"), repeats)
    query_peak = None if device.startswith("cuda") else common.peak_above(lambda: query(next(words)))
    return {"side": side, "encode": encoder, "new phrase": new_phrase, "same phrase": same_phrase,
            "peak_above_loaded_mb": peak - loaded, "query_peak_mb": query_peak,
            "encodes_during_queries": encodes["n"] if side == "ours" else None, "machine": common.machine()}


def _memory_mb(device: str) -> float:
    import torch

    if device.startswith("cuda"):
        return torch.cuda.memory_allocated() / 2**20
    return common.rss_mb()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=("small", "full"), default="small")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", default=None, help="also write the results to this file")
    parser.add_argument("--worker", nargs=5, metavar=("SIDE", "SIZE", "PATH", "DEVICE", "REPEATS"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        side, size, path, device, repeats = args.worker
        print(json.dumps(_worker(side, size, path, device, int(repeats))))
        return 0

    import torch

    from helpers.official_sam3 import official_sam3, randomize_sam3

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "sam3.pt"
        torch.save(randomize_sam3(official_sam3(_config(args.size)), seed=0).state_dict(), path)
        rows = [common.run_worker(Path(__file__), [side, args.size, str(path), args.device, str(args.repeats)])
                for side in ("official", "ours")]
    print(rows[0]["machine"], f"SAM 3 {args.size}, device {args.device}")
    print(f"{'':18}{'official':>12}{'sam_core':>12}{'official CPU':>14}{'sam_core CPU':>14}")
    for key in ("encode", "new phrase", "same phrase"):
        print(f"{key + ' (s)':18}{rows[0][key]['median_s']:12.3f}{rows[1][key]['median_s']:12.3f}"
              f"{common.cpu_s(rows[0][key]):14.3f}{common.cpu_s(rows[1][key]):14.3f}")
    print(f"{'peak MB':18}{rows[0]['peak_above_loaded_mb']:12.0f}{rows[1]['peak_above_loaded_mb']:12.0f}"
          "   (above the loaded model, during encoding)")
    if rows[0]["query_peak_mb"] is not None:
        print(f"{'query peak MB':18}{rows[0]['query_peak_mb']:12.0f}{rows[1]['query_peak_mb']:12.0f}"
              "   (above the process before one new-phrase query on cached features)")
    print(f"image encodes during the {2 * args.repeats + 3} sam_core queries: {rows[1]['encodes_during_queries']}")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
