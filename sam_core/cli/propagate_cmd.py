"""``python -m sam_core propagate FRAMES --frame K (--point X,Y[,L] | --box X0,Y0,X1,Y1)... --out LABELS.tif``.

Tracks objects through a movie or a volume with SAM 2.1's memory and writes a multi-page label TIFF
(frames x height x width; 0 background, each object its id). FRAMES: a folder of frames sorted by
name (JPEG folders are read as Meta's video predictor reads them), or a multi-page TIFF.
``--frame K`` says on which frame (0-based) the prompts after it are; ``--object ID`` starts another
object (default id 1). Points and boxes are (x, y) pixels of the frame: x across, y down. Frames are
read one at a time; their image features are kept within ``--feature-budget`` gigabytes.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from sam_core.cli.options import add_preparation_args, parse_numbers, preparation
from sam_core.errors import SamError

DEFAULT_MODEL = "sam2.1_hiera_tiny"


class _Ordered(argparse.Action):
    """Keeps --frame, --object, --point and --box in the order given (each applies to what follows)."""

    def __call__(self, parser, namespace, values, option_string=None):
        items = list(getattr(namespace, "prompts", None) or [])
        items.append((self.dest, values))
        setattr(namespace, "prompts", items)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "propagate",
        help="track objects through a movie or a volume with SAM 2.1's memory",
        description=__doc__.split("\n\n", 1)[1],
    )
    parser.add_argument("frames", help="folder of frames (sorted by name) or multi-page TIFF")
    parser.add_argument("--frame", dest="frame", action=_Ordered, metavar="K",
                        help="frame (0-based) of the prompts that follow; repeatable")
    parser.add_argument("--object", dest="object", action=_Ordered, metavar="ID",
                        help="start another object with this id (1, 2, ...); default 1")
    parser.add_argument("--point", dest="point", action=_Ordered, metavar="X,Y[,LABEL]",
                        help="a point in pixels; LABEL 1 = object (default), 0 = background; repeatable")
    parser.add_argument("--box", dest="box", action=_Ordered, metavar="X0,Y0,X1,Y1", help="a box in pixels")
    parser.add_argument("--out", required=True, help="output label stack (.tif)")
    parser.add_argument("--direction", choices=("both", "forward", "backward"), default="both",
                        help="from the first prompted frame: to the end, to the start, or both (default)")
    parser.add_argument("--model", default=None,
                        help=f"SAM 2.1 model name (default {DEFAULT_MODEL}, or inferred from --checkpoint)")
    parser.add_argument("--checkpoint", default=None, metavar="FILE",
                        help="SAM 2.1 checkpoint file (official format) to use instead of the zoo's")
    parser.add_argument("--device", default=None, help="cpu (default), cuda, cuda:N, mps or auto")
    parser.add_argument("--feature-budget", type=float, default=2.0, metavar="GB",
                        help="gigabytes of frame features kept in memory at most (default 2)")
    add_preparation_args(parser)
    parser.set_defaults(func=run, prompts=[])


@dataclass
class _Prompt:
    points: List[List[float]] = field(default_factory=list)
    labels: List[int] = field(default_factory=list)
    box: Optional[List[float]] = None


def parse_prompts(items: List[Tuple[str, str]]) -> Dict[Tuple[int, int], _Prompt]:
    """The ordered options -> {(object id, frame): prompt}."""
    prompts: Dict[Tuple[int, int], _Prompt] = {}
    frame: Optional[int] = None
    obj = 1
    for kind, text in items:
        if kind in ("frame", "object"):
            value = parse_numbers(text, 1, f"--{kind}", "a whole number")[0]
            if value != int(value) or value < (0 if kind == "frame" else 1):
                raise SamError(f"--{kind} takes a whole number {'0 or more' if kind == 'frame' else '1 or more'}, "
                               f"got {text!r}")
            if kind == "frame":
                frame = int(value)
            else:
                obj = int(value)
            continue
        if frame is None:
            raise SamError(f"give --frame K before --{kind} {text}: the frame (0-based) the prompt is on")
        prompt = prompts.setdefault((obj, frame), _Prompt())
        if kind == "box":
            if prompt.box is not None:
                raise SamError(f"object {obj} has two boxes on frame {frame}; give one box per object and frame")
            prompt.box = parse_numbers(text, 4, "--box", "X0,Y0,X1,Y1")
        else:
            numbers = parse_numbers(text, None, "--point", "X,Y[,LABEL]")
            if len(numbers) not in (2, 3) or (len(numbers) == 3 and numbers[2] not in (0.0, 1.0)):
                raise SamError(f"--point takes X,Y or X,Y,LABEL with LABEL 1 (object) or 0 (background), got {text!r}")
            prompt.points.append(numbers[:2])
            prompt.labels.append(int(numbers[2]) if len(numbers) == 3 else 1)
    if not prompts:
        raise SamError("give at least one prompt: --frame K then --point X,Y[,LABEL] or --box X0,Y0,X1,Y1")
    return prompts


def _check_prompts(prompts: Dict[Tuple[int, int], _Prompt], frames) -> None:
    for (obj, frame), prompt in prompts.items():
        frames.check_index(frame)
        corners = prompt.points + ([prompt.box[:2], prompt.box[2:]] if prompt.box else [])
        for x, y in corners:
            if not (0 <= x <= frames.width and 0 <= y <= frames.height):
                raise SamError(f"the prompt ({x:g}, {y:g}) of object {obj} on frame {frame} is outside the frame, "
                               f"which is {frames.width}x{frames.height} pixels")


def _load_model(args: argparse.Namespace):
    from sam_core.propagation import propagation_models_message
    from sam_core.zoo import load_model, model_info

    name = args.model if args.model or args.checkpoint else DEFAULT_MODEL
    if name is not None and model_info(name).family != "sam2":
        raise SamError(f"{name} cannot propagate: {propagation_models_message()}")
    model = load_model(name, args.checkpoint, device=args.device)
    if getattr(model, "family", "sam") != "sam2":
        raise SamError(f"{args.checkpoint} is not a SAM 2.1 checkpoint: {propagation_models_message()}")
    return model


def run(args: argparse.Namespace) -> int:
    import numpy as np
    import tifffile

    from sam_core.fileio import atomic_path, check_output_path
    from sam_core.frames import open_frames
    from sam_core.progress import TqdmProgress
    from sam_core.propagation import VideoSession

    out = Path(args.out)
    if out.suffix.lower() not in (".tif", ".tiff"):
        raise SamError(f"--out must name a .tif file (a multi-page label stack), got {args.out!r}")
    if not args.feature_budget > 0:
        raise SamError(f"--feature-budget takes a positive number of gigabytes, got {args.feature_budget}")
    prompts = parse_prompts(args.prompts)
    frames = open_frames(args.frames)
    if frames.jpeg_files is not None and (args.channels or args.value_range or args.nodata is not None):
        raise SamError("a folder of JPEG frames is read as Meta's video predictor reads it (RGB, 0..255): "
                       "--channels, --range and --nodata apply to TIFF stacks and other image files; leave them out")
    _check_prompts(prompts, frames)
    check_output_path(out, option="--out")
    model = _load_model(args)
    session = VideoSession(model, frames, preparation=preparation(args),
                           feature_budget=int(args.feature_budget * 1024 ** 3))
    for (obj, frame), prompt in sorted(prompts.items(), key=lambda item: (item[0][1], item[0][0])):
        session.add_prompt(frame, obj, points=prompt.points or None, labels=prompt.labels or None, box=prompt.box)
    progress = TqdmProgress("propagating")
    try:
        tracked, present = set(), {obj: set() for obj in session.object_ids}
        for result in session.propagate(args.direction, progress=progress):
            tracked.add(result.frame)
            for obj, here in zip(result.object_ids, result.present):
                (present[obj].add if here else present[obj].discard)(result.frame)
    finally:
        progress.close()
    dtype = np.uint16 if max(session.object_ids) < 65536 else np.uint32
    with atomic_path(out) as temporary:
        tifffile.imwrite(temporary, data=(session.labels(t) for t in range(frames.count)),
                         shape=(frames.count, frames.height, frames.width), dtype=dtype,
                         compression="zlib", photometric="minisblack")
    for obj, frames_present in present.items():
        print(f"object {obj}: present on {len(frames_present)} of the {len(tracked)} frames tracked")
    print(f"{out}: {frames.count} frames of {frames.width}x{frames.height} pixels")
    return 0
