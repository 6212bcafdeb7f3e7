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
from typing import Optional, Tuple

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
    parser.add_argument("--model", default=None, help="model name (default: demo, or inferred from --checkpoint)")
    parser.add_argument("--checkpoint", default=None, metavar="PATH", help="checkpoint file (official format)")
    parser.add_argument("--device", default=None, help="cpu (default), cuda, cuda:N, mps or auto")
    parser.add_argument("--precision", default=None,
                        help="encoder precision: fp32 (default), exact, bf16, fp16 (GPU), int8 (CPU) or auto")
    parser.add_argument("--channels", default=None, metavar="I[,J,K]", help="channel indices of a multichannel image (1 or 3)")
    parser.add_argument("--range", default=None, metavar="LO,HI", help="fixed value range mapped to 0..255 (default: percentile stretch)")
    parser.add_argument("--nodata", type=float, default=None, help="value marking missing pixels")
    gen = parser.add_argument_group("generator parameters (official names and defaults)")
    gen.add_argument("--points-per-side", type=int, default=32, help="grid points per image side (default 32)")
    gen.add_argument("--points-per-batch", type=int, default=64, help="points decoded at once (default 64)")
    gen.add_argument("--pred-iou-thresh", type=float, default=0.88, help="minimum predicted IoU (default 0.88)")
    gen.add_argument("--stability-thresh", type=float, default=0.95, help="minimum stability score (default 0.95)")
    gen.add_argument("--stability-offset", type=float, default=1.0, help="logit offset of the stability score (default 1.0)")
    gen.add_argument("--box-nms-thresh", type=float, default=0.7, help="box IoU above which duplicates are dropped (default 0.7)")
    gen.add_argument("--crop-n-layers", type=int, default=0, help="layers of image crops (default 0)")
    gen.add_argument("--crop-nms-thresh", type=float, default=0.7, help="box NMS threshold between crops (default 0.7)")
    gen.add_argument("--crop-overlap-ratio", type=float, default=512 / 1500, help="crop overlap, fraction of the short side (default 512/1500)")
    gen.add_argument("--crop-points-downscale", type=int, default=1, help="grid downscale factor per crop layer (default 1)")
    gen.add_argument("--min-area", type=int, default=0, help="remove islands and holes smaller than this many pixels (default 0: off)")
    gen.add_argument("--skip-covered-points", action="store_true", help="fast mode, not the official algorithm: skip grid points inside masks already found")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(func=run)


def _parse_channels(text: Optional[str]) -> Optional[Tuple[int, ...]]:
    if text is None:
        return None
    try:
        return tuple(int(part) for part in text.split(","))
    except ValueError:
        raise SamError(f"--channels must be 1 or 3 integers separated by commas, got {text!r}") from None


def _parse_range(text: Optional[str]) -> Optional[Tuple[float, float]]:
    if text is None:
        return None
    try:
        lo, hi = (float(part) for part in text.split(","))
    except ValueError:
        raise SamError(f"--range must be two numbers LO,HI, got {text!r}") from None
    return lo, hi


def run(args: argparse.Namespace) -> int:
    from sam_core.automask import AutomaticMaskGenerator, masks_to_labels
    from sam_core.fileio import atomic_write
    from sam_core.imaging import Preparation
    from sam_core.io import read_image, write_label_image
    from sam_core.predictor import Predictor

    out = Path(args.out)
    suffix = out.suffix.lower()
    if suffix not in SUFFIXES:
        raise SamError(f"--out must end in {', '.join(SUFFIXES)} (label image or JSON records), got {out.name!r}")
    if out.is_dir():
        raise SamError(f"--out {out} is a folder: give a file name such as {out / 'labels.tif'}")
    preparation = Preparation(
        channels=_parse_channels(args.channels), value_range=_parse_range(args.range), nodata=args.nodata
    )
    image = read_image(args.image)
    output_mode = "coco_rle" if suffix == ".json" else "uncompressed_rle"
    model = args.model if args.model is not None else (None if args.checkpoint else "demo")
    predictor = Predictor(model, checkpoint=args.checkpoint, device=args.device, precision=args.precision)
    generator = AutomaticMaskGenerator(
        predictor,
        points_per_side=args.points_per_side,
        points_per_batch=args.points_per_batch,
        pred_iou_thresh=args.pred_iou_thresh,
        stability_score_thresh=args.stability_thresh,
        stability_score_offset=args.stability_offset,
        box_nms_thresh=args.box_nms_thresh,
        crop_n_layers=args.crop_n_layers,
        crop_nms_thresh=args.crop_nms_thresh,
        crop_overlap_ratio=args.crop_overlap_ratio,
        crop_n_points_downscale_factor=args.crop_points_downscale,
        min_mask_region_area=args.min_area,
        output_mode=output_mode,
        skip_covered_points=args.skip_covered_points,
    )
    with TqdmProgress(desc="automask", disable=args.quiet) as progress:
        records = generator.generate(image, preparation=preparation, progress=progress)
    if suffix == ".json":
        with atomic_write(out, mode="w") as handle:
            json.dump(records, handle)
    else:
        labels = masks_to_labels(records, shape=image.shape[:2])
        write_label_image(labels, out)
    print(f"{len(records)} masks -> {out}")
    return 0
