"""``python -m sam_core find IMAGE --text "building" [--exemplar X0,Y0,X1,Y1]... --out labels.tif|records.json``:
every instance of a concept (SAM 3), named by a phrase and/or shown by exemplar boxes.

The output is a label image (one id per instance, best score first; where instances overlap the
smaller one stays visible) or, for ``.json``, COCO-style records (RLE ``segmentation``, ``bbox`` as
x, y, width, height in pixels, ``score``, ``area``, ``class``).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from sam_core.cli.options import add_preparation_args, parse_numbers, preparation
from sam_core.errors import SamError
from sam_core.progress import TqdmProgress

LABEL_SUFFIXES = (".tif", ".tiff", ".png")
SUFFIXES = LABEL_SUFFIXES + (".json",)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "find",
        help="find every instance of a phrase or exemplar (SAM 3)",
        description="Find every instance of a concept, given as a short phrase (--text) and/or exemplar "
                    "boxes (--exemplar, --negative) in pixels, with SAM 3. Writes a label image or COCO-style records.",
    )
    parser.add_argument("image", help="image file (PNG, JPEG or TIFF, also 16-bit and multichannel)")
    parser.add_argument("--text", default=None, help="what to find: a word or short phrase, e.g. \"building\"")
    parser.add_argument("--exemplar", action="append", default=[], metavar="X0,Y0,X1,Y1",
                        help="a box in pixels around one example of what to find (repeatable)")
    parser.add_argument("--negative", action="append", default=[], metavar="X0,Y0,X1,Y1",
                        help="a box in pixels around something that is NOT meant (repeatable)")
    parser.add_argument("--threshold", type=float, default=0.5, help="minimum score in 0..1 (default 0.5)")
    parser.add_argument("--out", required=True, metavar="PATH", help="output: labels.tif, labels.png or records.json")
    parser.add_argument("--model", default=None, help="a model that finds concepts: sam3 (default)")
    parser.add_argument("--checkpoint", default=None, metavar="FILE", help="SAM 3 checkpoint file (official sam3.pt) instead of the zoo's")
    parser.add_argument("--device", default=None, help="cpu (default), cuda, cuda:N, mps or auto")
    parser.add_argument("--token", default=None, help="Hugging Face token to download the gated sam3 (default: $HF_TOKEN)")
    parser.add_argument("--cache-dir", default=None, metavar="DIR", help="checkpoint folder (default: $SAM_CORE_CHECKPOINTS or the user cache)")
    add_preparation_args(parser)
    parser.add_argument("--quiet", action="store_true", help="no progress bar (shown while sam3 downloads)")
    parser.set_defaults(func=run)


def _boxes(values: list, option: str) -> list:
    return [parse_numbers(value, 4, option, "X0,Y0,X1,Y1") for value in values]


def run(args: argparse.Namespace) -> int:
    from sam_core.automask import masks_to_labels
    from sam_core.concepts import ConceptPredictor, load_concept_model
    from sam_core.fileio import atomic_write, check_output_path
    from sam_core.io import read_image, write_label_image

    out = Path(args.out)
    suffix = out.suffix.lower()
    if suffix not in SUFFIXES:
        raise SamError(f"--out must end in {', '.join(SUFFIXES)} (label image or JSON records), got {out.name!r}")
    if not 0.0 <= args.threshold <= 1.0:
        raise SamError(f"--threshold is a score between 0 and 1, got {args.threshold:g}")
    if args.text is None and not args.exemplar and not args.negative:
        raise SamError("nothing to find: give --text \"a phrase\" and/or --exemplar X0,Y0,X1,Y1")
    exemplars, negatives = _boxes(args.exemplar, "--exemplar"), _boxes(args.negative, "--negative")
    check_output_path(out, option="--out")
    image = read_image(args.image)
    with TqdmProgress(desc="downloading sam3 (MB)", disable=args.quiet) as bar:

        def progress(done: int, total: int, message: str = "") -> None:
            bar(done // 1_000_000, total // 1_000_000, message)

        model = load_concept_model(args.model, args.checkpoint, device=args.device, cache_dir=args.cache_dir,
                                   token=args.token, progress=progress)
    predictor = ConceptPredictor(model, preparation=preparation(args))
    if args.text is not None:
        predictor.check_text(args.text)
    size = image.shape[:2]
    for box in exemplars:
        predictor.check_box(box, size)
    for box in negatives:
        predictor.check_box(box, size, "negative box")
    found = predictor.find(predictor.encode(image), text=args.text, exemplars=exemplars, negatives=negatives,
                           threshold=args.threshold)
    records = found.records(args.text if args.text is not None else "exemplar")
    if suffix == ".json":
        with atomic_write(out, mode="w") as handle:
            json.dump(records, handle)
    else:
        write_label_image(masks_to_labels(records, shape=size), out)
    print(f"{len(records)} instances -> {out}")
    return 0

