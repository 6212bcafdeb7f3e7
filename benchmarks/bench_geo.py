"""Tiled raster segmentation throughput: tiles per second in one process and on Dask with 1 and 2 workers.

    python benchmarks/bench_geo.py [--model demo | --checkpoint FILE] [--grid 3] [--tile-size 256]

A synthetic GeoTIFF of ``grid`` x ``grid`` tiles (coloured shapes on a textured background) is segmented
with ``sam_core.geo.automask_raster``. Dask clusters are started and warmed up (each worker loads the
model) on another raster of the same size before the timed run, so the figures are tiles per second of
segmentation (encoder included: no embedding comes from a cache), not of start-up. The
speed-up of 2 workers against 1 is measured on the same raster in the same run. On a machine with fewer
free cores than workers the speed-up is bounded by the cores, not by the pipeline.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import machine  # noqa: E402


def synthetic_raster(path: Path, size: int, seed: int = 0) -> Path:
    import rasterio
    from affine import Affine
    from skimage.draw import ellipse, polygon

    rng = np.random.default_rng(seed)
    image = (rng.normal(110, 12, size=(size, size, 1)) + np.zeros((1, 1, 3))).clip(0, 255)
    for _ in range(size * size // 9000):
        colour = rng.integers(20, 255, size=3)
        cy, cx = rng.integers(0, size, size=2)
        if rng.random() < 0.5:
            rr, cc = ellipse(cy, cx, rng.integers(8, 40), rng.integers(8, 40), shape=(size, size), rotation=rng.random() * 3)
        else:
            h, w = rng.integers(10, 60, size=2)
            rr, cc = polygon([cy, cy, cy + h, cy + h], [cx, cx + w, cx + w, cx], shape=(size, size))
        image[rr, cc] = colour
    data = np.moveaxis(image.astype(np.uint8), -1, 0)
    profile = dict(driver="GTiff", height=size, width=size, count=3, dtype="uint8", crs="EPSG:32633",
                   transform=Affine(1.0, 0, 400000.0, 0, -1.0, 5600000.0), tiled=True, blockxsize=256, blockysize=256)
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None)
    parser.add_argument("--checkpoint", default=None)
    parser.add_argument("--grid", type=int, default=3, help="tiles per side of the raster (default 3)")
    parser.add_argument("--tile-size", type=int, default=256)
    parser.add_argument("--overlap", type=int, default=32)
    parser.add_argument("--points-per-side", type=int, default=16)
    parser.add_argument("--workers", default="1,2", help="worker counts to time (default 1,2)")
    args = parser.parse_args()

    import torch
    from dask.distributed import Client, LocalCluster

    from sam_core.geo.settings import GeneratorSpec, TilingSettings
    from sam_core.geo import automask_raster

    torch.set_num_threads(1)
    model = args.model if args.model is not None else (None if args.checkpoint else "demo")
    params = {"points_per_side": args.points_per_side}
    stride = args.tile_size - args.overlap
    size = args.tile_size + stride * (args.grid - 1)
    with tempfile.TemporaryDirectory() as tmp:
        raster = synthetic_raster(Path(tmp) / "bench.tif", size)
        warm_raster = synthetic_raster(Path(tmp) / "warm.tif", size, seed=1)  # other pixels: no cache hits
        common = dict(tiling=TilingSettings(tile_size=args.tile_size, overlap=args.overlap), resume=False)
        print(machine())
        print(f"raster {size}x{size} px, {args.grid * args.grid} tiles of {args.tile_size} px (overlap {args.overlap}), "
              f"model {model or args.checkpoint}, {args.points_per_side}x{args.points_per_side} points per tile")

        generator = GeneratorSpec.create(model, args.checkpoint, None, params).build()
        automask_raster(warm_raster, Path(tmp) / "warm.gpkg", generator=generator, **common)
        t0 = time.perf_counter()
        result = automask_raster(raster, Path(tmp) / "one.gpkg", generator=generator, **common)
        single = time.perf_counter() - t0
        tiles = result.tiles_total
        print(f"one process (1 thread): {single:7.2f} s  {tiles / single:6.2f} tiles/s  ({result.count} polygons)")

        rates = {}
        for count in [int(w) for w in args.workers.split(",")]:
            cluster = LocalCluster(n_workers=count, threads_per_worker=1, processes=True, host="127.0.0.1",
                                   dashboard_address=None, silence_logs=40)
            client = Client(cluster)
            try:
                run = dict(generator=GeneratorSpec.create(model, args.checkpoint, None, params),
                           scheduler=cluster.scheduler_address, **common)
                automask_raster(warm_raster, Path(tmp) / "warm.gpkg", **run)  # every worker loads the model
                t0 = time.perf_counter()
                result = automask_raster(raster, Path(tmp) / f"dask{count}.gpkg", **run)
                seconds = time.perf_counter() - t0
            finally:
                client.close()
                cluster.close()
            rates[count] = tiles / seconds
            print(f"dask, {count} worker(s):   {seconds:7.2f} s  {rates[count]:6.2f} tiles/s  "
                  f"{rates[count] / count:6.2f} tiles/s per worker  ({result.count} polygons)")
        if 1 in rates and 2 in rates:
            print(f"speed-up 2 workers vs 1: {rates[2] / rates[1]:.2f}x")


if __name__ == "__main__":
    main()
