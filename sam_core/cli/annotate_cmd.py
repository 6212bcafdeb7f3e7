"""``python -m sam_core annotate IMAGE_DIR --out annotations.json``: COCO instances for a folder of images.

Automatic masks for every image (tiled when larger than a tile), written as COCO instance annotations
with RLE masks and SAM's scores. Unreadable images are reported and skipped. A rerun after an
interruption reuses the images already done. ``--workers N`` / ``--scheduler ADDRESS`` run images on Dask.
"""

from __future__ import annotations

import argparse
import sys

from sam_core.cli.geo_cmd import add_parallel_args, resume_note
from sam_core.cli.options import add_generator_args, add_model_args, generator_params, model_name
from sam_core.progress import TqdmProgress


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "annotate",
        help="COCO annotations (RLE masks) for every image of a folder",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("image_dir", metavar="IMAGE_DIR", help="folder of PNG, JPEG or TIFF images")
    parser.add_argument("--out", required=True, metavar="FILE", help="output COCO JSON, e.g. annotations.json")
    parser.add_argument("--tile-size", type=int, default=1024, help="tile side for large images, pixels (default 1024)")
    parser.add_argument("--overlap", type=int, default=128, help="overlap of neighbouring tiles, pixels (default 128)")
    add_model_args(parser)
    add_generator_args(parser)
    add_parallel_args(parser)
    parser.add_argument("--no-resume", action="store_true", help="start afresh instead of reusing finished images")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from sam_core.annotate import annotate_images, parts_folder

    with TqdmProgress(desc="images", disable=args.quiet) as progress, resume_note(parts_folder(args.out), "images"):
        result = annotate_images(
            args.image_dir,
            args.out,
            model=model_name(args),
            checkpoint=args.checkpoint,
            device=args.device,
            generator_params=generator_params(args),
            tile_size=args.tile_size,
            overlap=args.overlap,
            workers=args.workers,
            scheduler=args.scheduler,
            resume=not args.no_resume,
            progress=progress,
        )
    for name, reason in result.skipped:
        print(f"skipped {name}: {reason}", file=sys.stderr)
    resumed = f" ({result.resumed} resumed from a previous run)" if result.resumed else ""
    print(f"{result.annotations} annotations on {result.images} images{resumed} -> {result.output}")
    return 0
