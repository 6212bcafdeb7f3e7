"""``python -m sam_core geo automask|segment|encode ...``: georeferenced rasters to polygons.

    geo automask RASTER OUT [--bands 4,3,2] [--tile-size 1024] [--overlap 128] [--resolution M]
                 [--extent XMIN,YMIN,XMAX,YMAX] [--seam-iou 0.5] [--no-repair-seams]
                 [--model NAME] [--checkpoint FILE] [generator parameters]
                 [--min-area M2] [--simplify M] [--workers N | --scheduler ADDRESS] [--no-resume]
    geo segment RASTER PROMPTS OUT [--label-field label] [--group-field group] ...
    geo encode RASTER --cache-dir DIR ...
    geo find RASTER OUT --text "building" [--exemplar XMIN,YMIN,XMAX,YMAX]... [--exemplars FILE]
             [--threshold 0.5] [tiling options] [--model sam3] [--checkpoint FILE]

OUT's extension picks the format (.gpkg, .geojson, .fgb, .shp). An interrupted ``geo automask`` or
``geo find`` resumes where it stopped when run again with the same arguments.
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence

from sam_core.cli.options import add_generator_args, add_model_args, generator_params, model_name, parse_numbers
from sam_core.errors import SamError
from sam_core.geo.settings import FIND_TILING, SHARED_TILING, OutputSettings, TilingSettings, option_fields
from sam_core.progress import TqdmProgress

def add_settings_args(parser: argparse.ArgumentParser, cls: type, names: Optional[Sequence[str]] = None) -> None:
    """One option per field of a settings class (:mod:`sam_core.geo.settings`; ``names`` only, when given):
    ``--tile-size`` for ``tile_size``; a setting on by default gets ``--no-NAME``."""
    for f in option_fields(cls, names):
        flag = "--" + f.name.replace("_", "-")
        kind, help_text = f.metadata["kind"], f.metadata["help"]
        if kind == "switch":
            parser.add_argument("--no-" + flag[2:], dest=f.name, action="store_false", default=f.default,
                                help=f"turn off (on by default): {help_text}")
        else:
            parser.add_argument(flag, dest=f.name, default=f.default, metavar=f.metadata["metavar"], help=help_text,
                                type={"whole": int, "number": float}.get(kind, str))


def settings_from_args(cls: type, args: argparse.Namespace) -> Any:
    """The settings object of the options :func:`add_settings_args` added (the others keep their default)."""
    values = {}
    for f in option_fields(cls):
        if not hasattr(args, f.name):
            continue
        value, flag = getattr(args, f.name), "--" + f.name.replace("_", "-")
        if isinstance(value, str) and f.metadata["kind"] == "box":
            value = parse_numbers(value, 4, flag, "XMIN,YMIN,XMAX,YMAX")
        elif isinstance(value, str) and f.metadata["kind"] == "size":
            numbers = parse_numbers(value, None, flag, "SIZE or XSIZE,YSIZE")
            if len(numbers) not in (1, 2):
                raise SamError(f"{flag} takes one pixel size or two (x, y), got {value!r}")
            value = numbers[0] if len(numbers) == 1 else numbers
        values[f.name] = value
    return cls(**values)


def add_parallel_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--workers", type=int, default=None, metavar="N", help="run tiles on a local Dask cluster of N processes")
    group.add_argument("--scheduler", default=None, metavar="ADDRESS", help="run tiles on an existing Dask cluster (tcp://host:8786)")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "geo",
        help="georeferenced rasters to polygons (automask, prompts, encode, find)",
        description="Segment georeferenced rasters of any size tile by tile into polygons with the raster's CRS.",
    )
    sub = parser.add_subparsers(dest="geo_command", metavar="ACTION")

    auto = sub.add_parser("automask", help="segment everything into polygons", description=__doc__,
                          formatter_class=argparse.RawDescriptionHelpFormatter)
    auto.add_argument("raster", metavar="RASTER", help="GeoTIFF or any raster GDAL reads")
    auto.add_argument("output", metavar="OUT", help="output vector file: .gpkg, .geojson, .fgb or .shp")
    add_settings_args(auto, TilingSettings)
    add_model_args(auto)
    add_generator_args(auto)
    add_settings_args(auto, OutputSettings)
    add_parallel_args(auto)
    auto.add_argument("--no-resume", action="store_true", help="start afresh instead of reusing finished tiles")
    auto.add_argument("--quiet", action="store_true", help="no progress bar")
    auto.set_defaults(func=run_automask)

    seg = sub.add_parser("segment", help="one polygon per prompt group of a vector file")
    seg.add_argument("raster", metavar="RASTER")
    seg.add_argument("prompts", metavar="PROMPTS", help="vector file of points (label field) and/or polygons (boxes), any CRS")
    seg.add_argument("output", metavar="OUT", help="output vector file: .gpkg, .geojson, .fgb or .shp")
    seg.add_argument("--label-field", default="label", help="field marking points positive/negative (default: label)")
    seg.add_argument("--group-field", default="group", help="field grouping prompts into objects (default: group)")
    add_settings_args(seg, TilingSettings, SHARED_TILING)
    add_model_args(seg)
    add_settings_args(seg, OutputSettings)
    seg.add_argument("--quiet", action="store_true", help="no progress bar")
    seg.set_defaults(func=run_segment)

    enc = sub.add_parser("encode", help="precompute the embeddings of every tile into a cache folder")
    enc.add_argument("raster", metavar="RASTER")
    enc.add_argument("--cache-dir", required=True, metavar="DIR", help="embedding cache folder")
    add_settings_args(enc, TilingSettings, SHARED_TILING)
    add_model_args(enc)
    enc.add_argument("--quiet", action="store_true", help="no progress bar")
    enc.set_defaults(func=run_encode)

    register_find(sub)
    parser.set_defaults(func=lambda args: (parser.print_help(), 2)[1])


FIND_HELP = """Find every instance of a concept in a raster with SAM 3, tile by tile (each tile is encoded once);
instances cut by tile seams are joined, polygons carry class (the text), score and area, in the
raster's CRS.

Exemplars are in MAP coordinates of the raster's CRS (--exemplar XMIN,YMIN,XMAX,YMAX), or a vector file
of polygons (their bounds) and points in any CRS (--exemplars FILE; a point becomes a box of %d x %d
pixels). SAM 3 reads an exemplar from the pixels under it, so an exemplar is used in every tile that
holds it whole; other tiles are searched with the text alone, and without --text only the tiles holding
an exemplar are searched."""


def register_find(sub: argparse._SubParsersAction) -> None:
    from sam_core.geo.prompts import POINT_BOX_PIXELS

    find = sub.add_parser("find", help="find every instance of a phrase or exemplar (SAM 3) as polygons",
                          description=FIND_HELP % (POINT_BOX_PIXELS, POINT_BOX_PIXELS),
                          formatter_class=argparse.RawDescriptionHelpFormatter)
    find.add_argument("raster", metavar="RASTER", help="GeoTIFF or any raster GDAL reads")
    find.add_argument("output", metavar="OUT", help="output vector file: .gpkg, .geojson, .fgb or .shp")
    find.add_argument("--text", default=None, help="what to find: a word or short phrase, e.g. \"building\"")
    exemplars = find.add_mutually_exclusive_group()
    exemplars.add_argument("--exemplar", action="append", default=[], metavar="XMIN,YMIN,XMAX,YMAX",
                           help="a box around one example, in map coordinates of the raster's CRS (repeatable)")
    exemplars.add_argument("--exemplars", default=None, metavar="FILE",
                           help="vector file of example polygons and/or points, any CRS")
    find.add_argument("--threshold", type=float, default=0.5, help="minimum score in 0..1 (default 0.5)")
    add_settings_args(find, TilingSettings, FIND_TILING)
    find.add_argument("--model", default=None, help="a model that finds concepts: sam3 (default)")
    find.add_argument("--checkpoint", default=None, metavar="FILE",
                      help="SAM 3 checkpoint file (official sam3.pt) instead of the zoo's")
    find.add_argument("--device", default=None, help="cpu (default), cuda, cuda:N, mps or auto")
    add_settings_args(find, OutputSettings)
    find.add_argument("--no-resume", action="store_true", help="start afresh instead of reusing finished tiles")
    find.add_argument("--quiet", action="store_true", help="no progress bar")
    find.set_defaults(func=run_find)


@contextlib.contextmanager
def resume_note(folder: Path, units: str) -> Iterator[None]:
    """On a failure (a SamError), add a word about the resume ``folder`` when it keeps finished work, and
    remove it when it keeps none."""
    try:
        yield
    except SamError as error:
        kept = [p for p in folder.iterdir() if p.name != "manifest.json"] if folder.is_dir() else []
        if not kept:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        raise SamError(f"{error} [{len(kept)} finished {units} are kept in {folder}: run the same command again "
                       "to resume, or delete that folder]") from error


def run_automask(args: argparse.Namespace) -> int:
    from sam_core.geo import automask_raster
    from sam_core.geo.pipeline import TileStore
    from sam_core.geo.settings import GeneratorSpec

    folder = TileStore.folder_for(Path(args.output).expanduser())
    with TqdmProgress(desc="tiles", disable=args.quiet) as progress, resume_note(folder, "tiles"):
        result = automask_raster(
            args.raster,
            args.output,
            tiling=settings_from_args(TilingSettings, args),
            generator=GeneratorSpec.create(model_name(args), args.checkpoint, args.device, generator_params(args)),
            polygons=settings_from_args(OutputSettings, args),
            workers=args.workers,
            scheduler=args.scheduler,
            resume=not args.no_resume,
            progress=progress,
        )
    resumed = f" ({result.tiles_resumed} resumed)" if result.tiles_resumed else ""
    print(f"{result.count} polygons from {result.tiles_total} tiles{resumed} -> {result.output}")
    return 0


def run_find(args: argparse.Namespace) -> int:
    from sam_core.geo.find import find_raster
    from sam_core.geo.pipeline import TileStore

    if args.text is None and not args.exemplar and args.exemplars is None:
        raise SamError("nothing to find: give --text \"a phrase\" and/or --exemplar XMIN,YMIN,XMAX,YMAX")
    boxes = [parse_numbers(box, 4, "--exemplar", "XMIN,YMIN,XMAX,YMAX") for box in args.exemplar]
    folder = TileStore.folder_for(Path(args.output).expanduser())
    with TqdmProgress(desc="tiles", disable=args.quiet) as progress, resume_note(folder, "tiles"):
        result = find_raster(
            args.raster,
            args.output,
            text=args.text,
            exemplars=args.exemplars if args.exemplars is not None else boxes,
            threshold=args.threshold,
            tiling=settings_from_args(TilingSettings, args),
            polygons=settings_from_args(OutputSettings, args),
            model=args.model,
            checkpoint=args.checkpoint,
            device=args.device,
            resume=not args.no_resume,
            progress=progress,
        )
    resumed = f" ({result.tiles_resumed} resumed)" if result.tiles_resumed else ""
    searched = "" if result.tiles_searched == result.tiles_total else \
        f"; {result.tiles_searched} of them hold an exemplar and were searched (add --text to search every tile)"
    print(f"{result.count} polygons from {result.tiles_total} tiles{resumed}{searched} -> {result.output}")
    return 0


def run_segment(args: argparse.Namespace) -> int:
    from sam_core.geo import segment_prompts

    with TqdmProgress(desc="objects", disable=args.quiet) as progress:
        result = segment_prompts(
            args.raster,
            args.prompts,
            args.output,
            label_field=args.label_field,
            group_field=args.group_field,
            tiling=settings_from_args(TilingSettings, args),
            model=model_name(args),
            checkpoint=args.checkpoint,
            device=args.device,
            polygons=settings_from_args(OutputSettings, args),
            progress=progress,
        )
    print(f"{result.count} polygons -> {result.output}")
    return 0


def run_encode(args: argparse.Namespace) -> int:
    from sam_core.geo import encode_raster

    with TqdmProgress(desc="tiles", disable=args.quiet) as progress:
        count = encode_raster(
            args.raster,
            tiling=settings_from_args(TilingSettings, args),
            model=model_name(args),
            checkpoint=args.checkpoint,
            device=args.device,
            cache_dir=args.cache_dir,
            progress=progress,
        )
    print(f"{count} tiles encoded into {args.cache_dir}")
    return 0
