"""Quality of the bundled ``demo-concepts`` model on held-out generated scenes (issue 18, item 7).

    python benchmarks/quality_concepts.py [--scenes 100] [--seed 2000] [--model demo-concepts] [--checkpoint FILE]

The scenes come from :mod:`sam_core.train.concept_scenes` with seed ``--seed`` (default 2000); the
training uses seed 0 with (step, i) sub-seeds, so these scenes were never trained on. Every scene
gets a text query for every word of the vocabulary (absent words too, so that false finds count
against precision) and, for every word it shows, an exemplar query with the tight box of that word's
first instance. Prints recall and precision at mask IoU 0.5 at score threshold ``--threshold``,
overall and per word.
"""

from __future__ import annotations

import argparse
import time

import torch

from sam_core.concepts import ConceptPredictor, load_concept_model
from sam_core.train.concept_scenes import VOCABULARY, generate_concept_scenes
from sam_core.train.quality import concept_quality

HELD_OUT_SEED = 2000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="demo-concepts", help="zoo model (ignored with --checkpoint)")
    parser.add_argument("--checkpoint", default=None)
    parser.add_argument("--seed", type=int, default=HELD_OUT_SEED)
    parser.add_argument("--scenes", type=int, default=100)
    parser.add_argument("--threshold", type=float, default=0.5)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    predictor = ConceptPredictor(load_concept_model(None if args.checkpoint else args.model, args.checkpoint))
    scenes = generate_concept_scenes(args.scenes, seed=args.seed, size=predictor.model.config.image_size)
    started, cpu = time.time(), time.process_time()
    quality = concept_quality(predictor, scenes, VOCABULARY, threshold=args.threshold)
    print(f"model {args.checkpoint or args.model}, {args.scenes} held-out scenes (seed {args.seed}), threshold "
          f"{args.threshold}, {time.time() - started:.0f} s wall, {time.process_time() - cpu:.0f} s CPU")
    for title, total, by_word in (("text", quality.text, quality.text_by_word),
                                  ("one exemplar box", quality.exemplar, quality.exemplar_by_word)):
        print(f"{title}: found {total.recall:.1%} of {total.instances} instances at IoU 0.5 [target >= 80%], "
              f"precision {total.precision:.1%} of {total.returned} masks"
              + (" [target >= 80%]" if title == "text" else ""))
        for word, count in by_word.items():
            print(f"    {word:9s} recall {count.recall:6.1%} of {count.instances:4d}   precision {count.precision:6.1%} of {count.returned:4d}")


if __name__ == "__main__":
    main()
