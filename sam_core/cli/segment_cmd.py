"""``python -m sam_core segment IMAGE --point X,Y[,LABEL] ... --box X0,Y0,X1,Y1 --out mask.png``.

Writes the best-scoring candidate as a 0/255 PNG of the image's size. As the official examples advise,
three candidates are asked for when the prompt is one point alone and one otherwise (``--multimask`` /
``--single`` override). ``--all`` writes every candidate, best first, as ``OUT_0.png``, ``OUT_1.png``,
... with their scores in ``OUT.json``. Points and boxes are (x, y) pixels: x across, y down.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import List

import numpy as np

from sam_core.cli.options import add_model_args, add_preparation_args, load_predictor, parse_numbers, preparation
from sam_core.errors import SamError


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "segment",
        help="segment one object from points and/or a box",
        description=__doc__.split("\n\n", 1)[1],
    )
    parser.add_argument("image", help="image file (PNG, JPEG or TIFF, also 16-bit and multichannel)")
    parser.add_argument(
        "--point", action="append", default=[], metavar="X,Y[,LABEL]",
        help="a point in pixels (x across, y down); LABEL 1 = object (default), 0 = background; repeatable",
    )
    parser.add_argument("--box", metavar="X0,Y0,X1,Y1", help="a box in pixels around the object")
    parser.add_argument("--out", required=True, help="output mask file (.png, 0 outside, 255 inside)")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--multimask", dest="multimask", action="store_const", const=True,
                       help="ask for three candidates and keep the best")
    group.add_argument("--single", dest="multimask", action="store_const", const=False,
                       help="ask for one candidate")
    parser.add_argument("--all", action="store_true",
                        help="write every candidate (OUT_0.png, OUT_1.png, ...) and their scores (OUT.json)")
    add_model_args(parser, precision=True)
    parser.add_argument("--cache-dir", default=None, metavar="DIR",
                        help="keep image embeddings in DIR, so that a later run on the same image skips the encoder")
    add_preparation_args(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from sam_core.fileio import check_output_path
    from sam_core.io import read_image, write_mask_png

    out = Path(args.out)
    if out.suffix.lower() != ".png":
        raise SamError(f"--out must name a .png file, got {args.out!r}")
    points, labels = _parse_points(args.point)
    box = parse_numbers(args.box, 4, "--box", "X0,Y0,X1,Y1") if args.box else None
    if points is None and box is None:
        raise SamError("give at least one --point X,Y[,LABEL] or a --box X0,Y0,X1,Y1")
    check_output_path(out, option="--out")
    image = read_image(args.image)
    predictor = load_predictor(args, cache_dir=args.cache_dir)
    embedding = predictor.encode(image, preparation(args))
    result = predictor.predict(embedding, points=points, labels=labels, box=box, multimask=args.multimask)

    if not args.all:
        _write_all([(out, result.masks[0])], write_mask_png)
        print(f"{out}: score {result.scores[0]:.4f}, {int(result.masks[0].sum())} pixels")
        return 0
    files = [out.with_name(f"{out.stem}_{index}{out.suffix}") for index in range(len(result.scores))]
    records = [
        {"file": file.name, "score": float(score), "pixels": int(mask.sum())}
        for file, score, mask in zip(files, result.scores, result.masks)
    ]
    scores_file = out.with_suffix(".json")
    _write_all(list(zip(files, result.masks)) + [(scores_file, records)], write_mask_png)
    for record in records:
        print(f"{out.parent / record['file']}: score {record['score']:.4f}, {record['pixels']} pixels")
    print(f"scores: {scores_file}")
    return 0


def _write_all(items: list, write_mask_png) -> None:
    """Write every (path, mask-or-json) item atomically; on any failure remove the ones already written."""
    from sam_core.fileio import atomic_write

    done: List[Path] = []
    try:
        for path, content in items:
            if isinstance(content, np.ndarray):
                write_mask_png(content, path)
            else:
                with atomic_write(path, "w") as handle:
                    json.dump(content, handle, indent=2)
            done.append(path)
    except BaseException:
        for path in done:
            path.unlink(missing_ok=True)
        raise


def _parse_points(values: List[str]):
    if not values:
        return None, None
    points, labels = [], []
    for text in values:
        numbers = parse_numbers(text, None, "--point", "X,Y[,LABEL]")
        if len(numbers) not in (2, 3):
            raise SamError(f"--point takes X,Y or X,Y,LABEL, got {text!r}")
        label = numbers[2] if len(numbers) == 3 else 1.0
        if label not in (0.0, 1.0):
            raise SamError(f"a point's label is 1 (object) or 0 (background), got {text!r}")
        points.append(numbers[:2])
        labels.append(int(label))
    return np.array(points, dtype=float), np.array(labels, dtype=np.int64)
