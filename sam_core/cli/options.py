"""Options that several sub-commands share: model choice, image preparation, generator parameters."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, List, Optional, Union

import numpy as np

from sam_core.errors import SamError

if TYPE_CHECKING:
    import os

    from sam_core.pool import ModelSpec
    from sam_core.predictor import Predictor

PathLike = Union[str, "os.PathLike[str]"]


def parse_numbers(text: str, count: Optional[int], option: str, form: str) -> List[float]:
    """``"1,2.5,3"`` -> ``[1.0, 2.5, 3.0]``; a SamError naming ``option`` and ``form`` otherwise."""
    try:
        numbers = [float(part) for part in text.split(",")]
    except ValueError:
        raise SamError(f"{option} takes numbers as {form}, got {text!r}") from None
    if count is not None and len(numbers) != count:
        raise SamError(f"{option} needs {count} numbers as {form}, got {text!r}")
    if not all(np.isfinite(numbers)):
        raise SamError(f"{option} takes finite numbers, got {text!r}")
    return numbers


def add_model_args(parser: argparse.ArgumentParser, *, device: bool = True, precision: bool = False) -> None:
    """``--model``, ``--checkpoint`` and, by default, ``--device`` (and ``--precision`` when asked)."""
    parser.add_argument("--model", default=None,
                        help="model name (demo, vit_t, vit_b, vit_l, vit_h); default demo, or inferred from --checkpoint")
    parser.add_argument("--checkpoint", default=None, metavar="FILE", help="checkpoint file (official format) to use instead of the zoo's")
    if device:
        parser.add_argument("--device", default=None, help="cpu (default), cuda, cuda:N, mps or auto")
    if precision:
        parser.add_argument("--precision", default=None,
                            help="encoder precision: fp32 (default), exact, bf16, fp16 (GPU), int8 or int8-smooth "
                                 "(CPU) or auto")
        parser.add_argument("--compile", action="store_true",
                            help="compile the encoder with torch.compile: the first image takes a minute or more "
                                 "longer, later processes reuse the compiled code (kept on disk); 3x on a GPU, "
                                 "about 5%% on a CPU")
        parser.add_argument("--verbose", action="store_true",
                            help="say on stderr which model, device and encoder precision run (and what auto picked)")


def model_spec(args: argparse.Namespace, cache_dir: Optional[PathLike] = None) -> ModelSpec:
    """The :class:`sam_core.pool.ModelSpec` that :func:`add_model_args` describes (precision and compile
    when the command has them), with its embedding cache in ``cache_dir`` (None: memory only)."""
    from sam_core.pool import ModelSpec

    return ModelSpec.of(args.model, args.checkpoint, device=getattr(args, "device", None),
                        precision=getattr(args, "precision", None), compile=getattr(args, "compile", False),
                        cache_dir=cache_dir)


def load_predictor(args: argparse.Namespace, cache_dir: Optional[PathLike] = None) -> Predictor:
    """The :class:`sam_core.predictor.Predictor` of :func:`model_spec`, from this command's pool."""
    from sam_core.pool import PredictorPool

    spec = model_spec(args, cache_dir)
    predictor = PredictorPool(size=1).get(spec)
    if getattr(args, "verbose", False):
        _describe_run(spec, predictor)
    return predictor


def _describe_run(spec: ModelSpec, predictor: Predictor) -> None:
    """``--verbose``: one stderr line naming the model, its device and the encoder's precision."""
    import sys

    from sam_core.models.precision import describe_auto

    model = predictor.model
    device = next(model.parameters()).device
    precision = getattr(model, "precision", "fp32")
    if spec.precision == "auto":
        how = describe_auto(device)
    elif spec.precision is None:
        how = f"the default; {describe_auto(device)}"
    else:
        how = "as asked"
    print(f"model {spec.label} on {device}, encoder precision {precision} ({how})", file=sys.stderr)


def model_name(args: argparse.Namespace) -> Optional[str]:
    """The model's name (None: configuration read from ``--checkpoint``), as :func:`model_spec` decides."""
    return model_spec(args).name


def add_preparation_args(parser: argparse.ArgumentParser) -> None:
    """How an image becomes the model's RGB input (see :mod:`sam_core.imaging`)."""
    parser.add_argument("--channels", default=None, metavar="C[,C,C]",
                        help="1 or 3 channel indices of a multichannel image, e.g. 2,1,0")
    parser.add_argument("--range", dest="value_range", default=None, metavar="LO,HI",
                        help="fixed value range mapped to 0..255 (default: uint8 as is, else 0.5-99.5 percentiles)")
    parser.add_argument("--nodata", type=float, default=None, help="value marking missing pixels")


def preparation(args: argparse.Namespace):
    """The :class:`sam_core.imaging.Preparation` that :func:`add_preparation_args` describes."""
    from sam_core.imaging import Preparation

    channels = None
    if args.channels:
        channels = tuple(int(v) for v in parse_numbers(args.channels, None, "--channels", "C or C,C,C"))
    value_range = parse_numbers(args.value_range, 2, "--range", "LO,HI") if args.value_range else None
    return Preparation(channels=channels, value_range=value_range, nodata=args.nodata)


def add_generator_args(parser: argparse.ArgumentParser) -> None:
    """The automatic mask generator's parameters, with the official defaults (the model's for the first three)."""
    gen = parser.add_argument_group("generator parameters (official names and defaults)")
    gen.add_argument("--points-per-side", type=int, default=None,
                     help="grid points per image or tile side (default: the model's, 32; demo 16)")
    gen.add_argument("--points-per-batch", type=int, default=64, help="points decoded at once (default 64)")
    gen.add_argument("--pred-iou-thresh", type=float, default=None,
                     help="minimum predicted IoU (default: the model's, 0.88; demo 0.5)")
    gen.add_argument("--stability-thresh", type=float, default=None,
                     help="minimum stability score (default: the model's, 0.95; demo 0.8)")
    gen.add_argument("--stability-offset", type=float, default=1.0, help="logit offset of the stability score (default 1.0)")
    gen.add_argument("--box-nms-thresh", type=float, default=0.7, help="box IoU above which duplicates are dropped (default 0.7)")
    gen.add_argument("--crop-n-layers", type=int, default=0, help="layers of image crops (default 0)")
    gen.add_argument("--crop-nms-thresh", type=float, default=0.7, help="box NMS threshold between crops (default 0.7)")
    gen.add_argument("--crop-overlap-ratio", type=float, default=512 / 1500,
                     help="crop overlap, fraction of the short side (default 512/1500)")
    gen.add_argument("--crop-points-downscale", type=int, default=1, help="grid downscale factor per crop layer (default 1)")
    gen.add_argument("--min-region-area", type=int, default=0,
                     help="remove islands and holes smaller than this many pixels (default 0: off)")
    gen.add_argument("--skip-covered-points", action="store_true",
                     help="fast mode, not the official algorithm: skip grid points inside masks already found")
    gen.add_argument("--m2m", action="store_true",
                     help="SAM 2.1's mask-to-mask refinement (SAM2AutomaticMaskGenerator's use_m2m): every candidate "
                          "is decoded again from its own mask before the filters")


def generator_params(args: argparse.Namespace) -> dict:
    """Keyword arguments of :class:`sam_core.automask.AutomaticMaskGenerator` from the parsed options;
    the options left out are the model's recommended ones (:func:`sam_core.zoo.automask_defaults`)."""
    from sam_core.zoo import automask_defaults

    recommended = automask_defaults(model_name(args))
    chosen = {
        "points_per_side": args.points_per_side,
        "points_per_batch": args.points_per_batch,
        "pred_iou_thresh": args.pred_iou_thresh,
        "stability_score_thresh": args.stability_thresh,
        "stability_score_offset": args.stability_offset,
        "box_nms_thresh": args.box_nms_thresh,
        "crop_n_layers": args.crop_n_layers,
        "crop_nms_thresh": args.crop_nms_thresh,
        "crop_overlap_ratio": args.crop_overlap_ratio,
        "crop_n_points_downscale_factor": args.crop_points_downscale,
        "min_mask_region_area": args.min_region_area,
        "skip_covered_points": args.skip_covered_points,
        "use_m2m": args.m2m,
    }
    return {**chosen, **{key: value for key, value in recommended.items() if chosen[key] is None}}
