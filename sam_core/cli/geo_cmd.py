"""``python -m sam_core geo automask|segment|encode ...``: georeferenced rasters to polygons.

    geo automask RASTER OUT [--bands 4,3,2] [--tile-size 1024] [--overlap 128] [--resolution M]
                 [--extent XMIN,YMIN,XMAX,YMAX] [--model NAME] [--checkpoint FILE] [generator parameters]
                 [--min-area M2] [--simplify M] [--workers N | --scheduler ADDRESS] [--no-resume]
    geo segment RASTER PROMPTS OUT [--label-field label] [--group-field group] ...
    geo encode RASTER --cache-dir DIR ...

OUT's extension picks the format (.gpkg, .geojson, .fgb, .shp). An interrupted ``geo automask`` resumes
where it stopped when run again with the same arguments.
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

from sam_core.cli.options import add_generator_args, add_model_args, generator_params, model_name, parse_numbers
from sam_core.errors import SamError
from sam_core.progress import TqdmProgress

if TYPE_CHECKING:
    from sam_core.geo.settings import TilingSettings


def add_tile_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--bands", default=None, metavar="B[,G,R]", help="1 or 3 band numbers, e.g. 4,3,2 (default: RGB)")
    parser.add_argument("--tile-size", type=int, default=1024, help="tile side in pixels (default 1024)")
    parser.add_argument("--overlap", type=int, default=128, help="overlap of neighbouring tiles in pixels (default 128)")


def add_parallel_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--workers", type=int, default=None, metavar="N", help="run tiles on a local Dask cluster of N processes")
    group.add_argument("--scheduler", default=None, metavar="ADDRESS", help="run tiles on an existing Dask cluster (tcp://host:8786)")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "geo",
        help="georeferenced rasters to polygons (automask, prompts, encode)",
        description="Segment georeferenced rasters of any size tile by tile into polygons with the raster's CRS.",
    )
    sub = parser.add_subparsers(dest="geo_command", metavar="ACTION")

    auto = sub.add_parser("automask", help="segment everything into polygons", description=__doc__,
                          formatter_class=argparse.RawDescriptionHelpFormatter)
    auto.add_argument("raster", metavar="RASTER", help="GeoTIFF or any raster GDAL reads")
    auto.add_argument("output", metavar="OUT", help="output vector file: .gpkg, .geojson, .fgb or .shp")
    add_tile_args(auto)
    auto.add_argument("--resolution", type=float, default=None, help="resample to this pixel size in CRS units")
    auto.add_argument("--extent", default=None, metavar="XMIN,YMIN,XMAX,YMAX", help="area to segment, in the raster's CRS")
    add_model_args(auto)
    add_generator_args(auto)
    auto.add_argument("--min-area", type=float, default=0.0, help="drop polygons smaller than this (CRS units squared)")
    auto.add_argument("--simplify", type=float, default=0.0, help="simplification tolerance in CRS units (default 0: off)")
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
    add_tile_args(seg)
    add_model_args(seg)
    seg.add_argument("--min-area", type=float, default=0.0, help="drop polygons smaller than this (CRS units squared)")
    seg.add_argument("--simplify", type=float, default=0.0, help="simplification tolerance in CRS units")
    seg.add_argument("--quiet", action="store_true", help="no progress bar")
    seg.set_defaults(func=run_segment)

    enc = sub.add_parser("encode", help="precompute the embeddings of every tile into a cache folder")
    enc.add_argument("raster", metavar="RASTER")
    enc.add_argument("--cache-dir", required=True, metavar="DIR", help="embedding cache folder")
    add_tile_args(enc)
    add_model_args(enc)
    enc.add_argument("--quiet", action="store_true", help="no progress bar")
    enc.set_defaults(func=run_encode)

    parser.set_defaults(func=lambda args: (parser.print_help(), 2)[1])


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


def _tiling(args: argparse.Namespace, **more: Any) -> TilingSettings:
    """The :class:`~sam_core.geo.settings.TilingSettings` of the options every geo command shares."""
    from sam_core.geo.settings import TilingSettings

    return TilingSettings(bands=args.bands, tile_size=args.tile_size, overlap=args.overlap, **more)


def run_automask(args: argparse.Namespace) -> int:
    from sam_core.geo import automask_raster
    from sam_core.geo.pipeline import TileStore
    from sam_core.geo.settings import GeneratorSpec, OutputSettings

    folder = TileStore.folder_for(Path(args.output).expanduser())
    extent = parse_numbers(args.extent, 4, "--extent", "XMIN,YMIN,XMAX,YMAX") if args.extent else None
    with TqdmProgress(desc="tiles", disable=args.quiet) as progress, resume_note(folder, "tiles"):
        result = automask_raster(
            args.raster,
            args.output,
            tiling=_tiling(args, resolution=args.resolution, extent=extent),
            generator=GeneratorSpec.create(model_name(args), args.checkpoint, args.device, generator_params(args)),
            polygons=OutputSettings(min_area=args.min_area, simplify=args.simplify),
            workers=args.workers,
            scheduler=args.scheduler,
            resume=not args.no_resume,
            progress=progress,
        )
    resumed = f" ({result.tiles_resumed} resumed)" if result.tiles_resumed else ""
    print(f"{result.count} polygons from {result.tiles_total} tiles{resumed} -> {result.output}")
    return 0


def run_segment(args: argparse.Namespace) -> int:
    from sam_core.geo import segment_prompts
    from sam_core.geo.settings import OutputSettings

    with TqdmProgress(desc="objects", disable=args.quiet) as progress:
        result = segment_prompts(
            args.raster,
            args.prompts,
            args.output,
            label_field=args.label_field,
            group_field=args.group_field,
            tiling=_tiling(args),
            model=model_name(args),
            checkpoint=args.checkpoint,
            device=args.device,
            polygons=OutputSettings(min_area=args.min_area, simplify=args.simplify),
            progress=progress,
        )
    print(f"{result.count} polygons -> {result.output}")
    return 0


def run_encode(args: argparse.Namespace) -> int:
    from sam_core.geo import encode_raster

    with TqdmProgress(desc="tiles", disable=args.quiet) as progress:
        count = encode_raster(
            args.raster,
            tiling=_tiling(args),
            model=model_name(args),
            checkpoint=args.checkpoint,
            device=args.device,
            cache_dir=args.cache_dir,
            progress=progress,
        )
    print(f"{count} tiles encoded into {args.cache_dir}")
    return 0
