"""``python -m sam_core automask IMAGE --out labels.tif|labels.png|records.json``: segment everything.

A label image (TIFF or PNG; 0 = background, ids 1..N in record order, larger masks painted first so
smaller ones on top stay visible) or, for ``.json``, the official mask records with COCO RLE
segmentations (the list that the official ``scripts/amg.py`` writes). The output is written to a
temporary file and renamed: a failed or cancelled run leaves no file behind.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from sam_core.cli.options import (
    add_generator_args,
    add_model_args,
    add_preparation_args,
    generator_params,
    load_predictor,
    preparation,
)
from sam_core.errors import SamError
from sam_core.progress import TqdmProgress

LABEL_SUFFIXES = (".tif", ".tiff", ".png")
SUFFIXES = LABEL_SUFFIXES + (".json",)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "automask",
        help="segment everything in an image (label image or COCO RLE records)",
        description="Segment everything in an image with SAM's automatic mask generator (the official "
        "algorithm and defaults) and write a label image (.tif, .png) or the mask records with COCO RLE "
        "segmentations (.json).",
    )
    parser.add_argument("image", metavar="IMAGE", help="PNG, JPEG or TIFF image (also 16-bit, multichannel)")
    parser.add_argument("--out", required=True, metavar="PATH", help="output: labels.tif, labels.png or records.json")
    add_model_args(parser, precision=True)
    add_preparation_args(parser)
    add_generator_args(parser)
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from sam_core.automask import AutomaticMaskGenerator, masks_to_labels
    from sam_core.fileio import atomic_write, check_output_path
    from sam_core.io import read_image, write_label_image

    out = Path(args.out)
    suffix = out.suffix.lower()
    if suffix not in SUFFIXES:
        raise SamError(f"--out must end in {', '.join(SUFFIXES)} (label image or JSON records), got {out.name!r}")
    check_output_path(out, option="--out")
    image = read_image(args.image)
    output_mode = "coco_rle" if suffix == ".json" else "uncompressed_rle"
    predictor = load_predictor(args)
    generator = AutomaticMaskGenerator(predictor, output_mode=output_mode, **generator_params(args))
    with TqdmProgress(desc="automask", disable=args.quiet) as progress:
        records = generator.generate(image, preparation=preparation(args), progress=progress)
    if suffix == ".json":
        with atomic_write(out, mode="w") as handle:
            json.dump(records, handle)
    else:
        labels = masks_to_labels(records, shape=image.shape[:2])
        write_label_image(labels, out)
    print(f"{len(records)} masks -> {out}")
    return 0
