"""QGIS ``sam:automask_raster`` tiles per minute, where a GIS analyst waits: the request the Processing
algorithm sends, through the engine process the plugin starts (``qgis_sam.engine_client.EngineClient``
running ``python -m sam_core engine``), on a generated 4096 x 4096 GeoTIFF; beside the official
``SamAutomaticMaskGenerator`` (MobileSAM's for vit_t) run on the same tile windows read with rasterio,
same run, same random-weight checkpoint.

    python benchmarks/bench_qgis_tiles.py                   # vit_t and vit_b, 3 tiles of 1024 px each
    python benchmarks/bench_qgis_tiles.py --quick           # vit_t, 2 tiles of 512 px, 4 x 4 points: seconds

The plugin's defaults: tiles of 1024 px with 128 px overlap, the model's automatic-mask defaults
(32 x 32 points, thresholds 0.88 / 0.95: with random weights almost no mask survives them, so the
figures are mostly encoder and prompt decoding). ``--tiles`` tiles along the top row of the raster are
segmented (``EXTENT`` of the request; every tile costs the same, so the rate holds for the whole
raster). Each side starts fresh: the engine loads the model on the request, the official side in its
worker; "tiles/min" is the whole request (model loading included), "steady tiles/min" the rate between
the first and the last tile finished. CPU is the process CPU time of the engine or the official worker
(user + system, all threads). Peak MB is that process's peak resident memory during the run above what
it held before it.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import common
from bench_geo import synthetic_raster


def _windows(tile_size: int, overlap: int, tiles: int) -> list[tuple[int, int]]:
    """(column, row) offsets of the first ``tiles`` tiles of the top row."""
    return [(i * (tile_size - overlap), 0) for i in range(tiles)]


def _extent(raster: Path, tile_size: int, overlap: int, tiles: int) -> list[float]:
    """(xmin, ymin, xmax, ymax) in the raster's CRS covering those tiles."""
    import rasterio

    with rasterio.open(raster) as src:
        t = src.transform
        width = tile_size + (tiles - 1) * (tile_size - overlap)
        x0, y0 = t * (0, 0)
        x1, y1 = t * (width, tile_size)
    return [min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1)]


def _proc_cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _proc_mb(pid: int, key: str) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {key} for process {pid}")


def engine_run(raster: Path, output: Path, name: str, path: Path, tile_size: int, overlap: int, tiles: int,
               generator_params: dict) -> dict:
    """One ``automask_raster`` request through a fresh engine, as the Processing algorithm sends it."""
    from qgis_sam.engine_client import EngineClient

    client = EngineClient(python=sys.executable)
    try:
        client.request("hello")  # starts the engine (imports), not the model
        pid = client.pid
        before, cpu0 = _proc_mb(pid, "VmRSS"), _proc_cpu_s(pid)
        Path(f"/proc/{pid}/clear_refs").write_text("5")
        finished = []

        def progress(done: int, total: int, message: str) -> None:
            if message.startswith("tile "):
                finished.append(time.perf_counter())

        params = {"raster": str(raster), "output": str(output), "resolution": None,
                  "extent": _extent(raster, tile_size, overlap, tiles), "generator_params": generator_params,
                  "min_area": 0.0, "simplify": 0.0, "tile_size": tile_size, "overlap": overlap,
                  "model": name, "checkpoint": str(path)}
        t0 = time.perf_counter()
        result = client.request("automask_raster", params, lane="processing", progress=progress, poll_s=0.01)
        wall = time.perf_counter() - t0
        cpu, peak = _proc_cpu_s(pid) - cpu0, _proc_mb(pid, "VmHWM") - before
    finally:
        client.stop()
    return {"side": "sam_core engine", "model": name, "tiles": result["tiles_done"], "polygons": result["count"],
            "wall_s": wall, "cpu_s": cpu, "tile_times": [t - t0 for t in finished], "peak_above_mb": peak}


def _official_worker(raster: str, name: str, path: str, tile_size: int, overlap: int, tiles: int,
                     generator_params: dict) -> dict:
    import numpy as np
    import rasterio
    from rasterio.windows import Window

    from helpers.official import mobile_sam, segment_anything

    def run() -> dict:
        t0 = time.perf_counter()
        package = mobile_sam() if name == "vit_t" else segment_anything()
        generator = package.SamAutomaticMaskGenerator(common.official_model(name, Path(path)), **generator_params)
        finished, masks = [], 0
        with rasterio.open(raster) as src:
            for col, row in _windows(tile_size, overlap, tiles):
                tile = np.moveaxis(src.read((1, 2, 3), window=Window(col, row, tile_size, tile_size)), 0, -1)
                masks += len(generator.generate(np.ascontiguousarray(tile)))
                finished.append(time.perf_counter() - t0)
        return {"tile_times": finished, "polygons": masks}

    row = common.measured(run)
    return {"side": "official generator", "model": name, "tiles": tiles, "peak_above_mb": row["peak_above_loaded_mb"],
            **row, "machine": common.machine()}


def _per_minute(row: dict) -> tuple[float, float]:
    times = row["tile_times"]
    steady = 60 * (len(times) - 1) / (times[-1] - times[0]) if len(times) > 1 else float("nan")
    return 60 * row["tiles"] / row["wall_s"], steady


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="vit_t,vit_b")
    parser.add_argument("--size", type=int, default=4096, help="raster side in pixels (default 4096)")
    parser.add_argument("--tile-size", type=int, default=1024)
    parser.add_argument("--overlap", type=int, default=128)
    parser.add_argument("--tiles", type=int, default=3, help="tiles of the top row to segment (default 3)")
    parser.add_argument("--points-per-side", type=int, default=None, help="prompt grid per tile (default: the model's, 32)")
    parser.add_argument("--quick", action="store_true", help="vit_t, a 1024 px raster, 2 tiles of 512 px, 4 x 4 points")
    parser.add_argument("--json", default=None, help="also write the results to this file")
    parser.add_argument("--worker", nargs=7, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        raster, name, path, tile_size, overlap, tiles, params = args.worker
        print(json.dumps(_official_worker(raster, name, path, int(tile_size), int(overlap), int(tiles),
                                          json.loads(params))))
        return 0
    if args.quick:
        args.models, args.size, args.tile_size, args.overlap, args.tiles = "vit_t", 1024, 512, 64, 2
        args.points_per_side = 4
    params = {} if args.points_per_side is None else {"points_per_side": args.points_per_side}

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        raster = synthetic_raster(Path(tmp) / "raster.tif", args.size)
        for name in args.models.split(","):
            path = common.checkpoint(name, Path(tmp))
            rows.append(common.run_worker(Path(__file__), [str(raster), name, str(path), str(args.tile_size),
                                                           str(args.overlap), str(args.tiles), json.dumps(params)]))
            rows.append(engine_run(raster, Path(tmp) / f"{name}.fgb", name, path, args.tile_size, args.overlap,
                                   args.tiles, params))
    print(rows[0]["machine"], f"raster {args.size} px, tiles {args.tile_size} px, overlap {args.overlap}")
    print(f"{'model':7}{'side':20}{'tiles':>6}{'tiles/min':>10}{'steady/min':>11}{'wall s':>8}{'CPU s':>8}"
          f"{'peak MB':>9}{'masks':>7}")
    for row in rows:
        rate, steady = _per_minute(row)
        print(f"{row['model']:7}{row['side']:20}{row['tiles']:6d}{rate:10.2f}{steady:11.2f}{row['wall_s']:8.1f}"
              f"{row['cpu_s']:8.1f}{row['peak_above_mb']:9.0f}{row['polygons']:7d}")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
