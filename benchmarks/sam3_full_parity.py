"""One-off check at the official size (840 M parameters, random weights): sam_core's SAM 3 against
Meta's ``Sam3Processor`` for a text query on one image. Not part of the test suite: on a 2-core CPU it
takes 10 minutes or more and about 8 GB of memory.

    python benchmarks/sam3_full_parity.py            # --small: the tests' small size, seconds
"""

from __future__ import annotations

import sys
import time

import common  # noqa: F401  (puts tests/ on sys.path for the reference helpers)


def main(argv: list[str]) -> int:
    import numpy as np
    import torch
    from PIL import Image

    from helpers.official_sam3 import cpu_only, official_sam3, randomize_sam3, sam3_processor_class
    from sam_core.concepts import ConceptPredictor
    from sam_core.models.sam3.build import load_sam3
    from sam_core.models.sam3.config import SAM3

    if "--small" in argv:
        from helpers.official_sam3 import SMALL_SAM3 as SAM3
    start = time.perf_counter()
    reference = randomize_sam3(official_sam3(SAM3), seed=0)
    predictor = ConceptPredictor(load_sam3(reference.state_dict()))
    image = np.random.default_rng(0).integers(0, 255, (300, 400, 3), dtype=np.uint8)
    processor = sam3_processor_class()(reference, resolution=SAM3.image_size, device="cpu", confidence_threshold=-1.0)
    with cpu_only(), torch.inference_mode():
        state = processor.set_text_prompt("a building", processor.set_image(Image.fromarray(image)))
    embedding = predictor.encode(image)
    found = predictor.find(embedding, text="a building", threshold=-1.0)

    levels = [*embedding.high_res_features, embedding.features]
    feature_diff = max((a - b).abs().max().item() for a, b in zip(levels, state["backbone_out"]["backbone_fpn"]))
    scores = state["scores"].numpy()
    order = np.argsort(-scores, kind="stable")[:20]
    worst_box, worst_iou = 0.0, 1.0
    for box, mask, score in zip(state["boxes"].numpy()[order], state["masks"][:, 0].numpy()[order], scores[order]):
        j = int(np.argmin(np.abs(found.scores - score) + np.abs(found.boxes - box).max(axis=1)))
        worst_box = max(worst_box, float(np.abs(found.boxes[j] - box).max()))
        union = np.logical_or(found.masks[j], mask).sum()
        worst_iou = min(worst_iou, float(np.logical_and(found.masks[j], mask).sum() / union) if union else 1.0)
    print(f"backbone max |diff| {feature_diff:.3g}; top-20 score max |diff| "
          f"{np.abs(scores[order] - found.scores[:20]).max():.3g}; worst box {worst_box:.3g} px; "
          f"worst mask IoU {worst_iou:.4f}; {time.perf_counter() - start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
