"""Objects cut at tile borders, before and after seam repair (issue 14, item 6).

    python benchmarks/seams.py [--raster tests/data/RGB.byte.tif] [--tile-size 256] [--overlap 128]
                               [--model demo] [--scenes 3]

Runs ``sam_core.geo.automask_raster`` twice on the same raster, without and with ``repair_seams``, and
reads the polygons back. For each run it prints the share of polygons whose outline runs straight along a
tile border inside the raster for at least 4 pixels (``sam_core.tiling.border_edges``, measured on the
polygons rasterised back onto the pixel grid), and the same share on *control lines*: the border lines
moved by half a tile stride, where no tile ends, so that the count of straight edges that fall on a line by
chance is known.

Then generated rasters (a textured background with coloured ellipses and rectangles, the kind of scene
``demo`` was trained on; 512 x 512 pixels) whose objects are placed across the seams of the tile grid: for
each object the IoU of the best polygon with the truth, the share found whole (IoU >= 0.8), and the
share of polygons with an edge on a tile border. No timings: these are quality numbers.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import machine  # noqa: E402


def polygon_masks(path: Path, view) -> list:
    """The polygons of an output file as pixel masks of the working grid (MaskPiece each)."""
    import pyogrio.raw
    import shapely
    from rasterio.features import rasterize

    from sam_core.tiling import MaskPiece

    _, _, wkb, _ = pyogrio.raw.read(str(path))
    pieces = []
    for geometry in shapely.from_wkb(wkb):
        mask = rasterize([(geometry, 1)], out_shape=(view.height, view.width), transform=view.transform,
                         dtype=np.uint8).astype(bool)
        piece = MaskPiece(0, 0, mask).trimmed()
        if piece is not None:
            pieces.append(piece)
    return pieces


def control_grid(grid):
    """A grid whose tile borders lie half a stride away from ``grid``'s (same tile size, same image)."""
    from dataclasses import replace

    from sam_core.tiling import TileGrid

    shifted = TileGrid(grid.height, grid.width, grid.tile_size, grid.overlap)
    shift = max((grid.tile_size - grid.overlap) // 2, 1)
    tiles = []
    for tile in grid.tiles:
        def move(value: int, limit: int) -> int:
            return value if value in (0, limit) else min(value + shift, limit - 1)

        tiles.append(replace(tile, x0=move(tile.x0, grid.width), x1=move(tile.x1, grid.width),
                             y0=move(tile.y0, grid.height), y1=move(tile.y1, grid.height)))
    shifted.tiles = tuple(tiles)
    return shifted


def measure(pieces, grid) -> tuple[int, int, int]:
    """(polygons, with an edge on a tile border, with an edge on a control line)."""
    from sam_core.tiling import has_cut

    control = control_grid(grid)
    return len(pieces), sum(has_cut(p, grid) for p in pieces), sum(has_cut(p, control) for p in pieces)


def run(raster: Path, out: Path, repair: bool, args) -> list:
    from sam_core.geo import GeneratorSpec, TilingSettings, automask_raster, open_raster

    automask_raster(raster, out, tiling=TilingSettings(tile_size=args.tile_size, overlap=args.overlap, repair_seams=repair),
                    generator=GeneratorSpec.create(args.model), resume=False)
    with open_raster(raster) as view:
        return polygon_masks(out, view)


def seam_scene(path: Path, seed: int, tile_size: int, overlap: int) -> list[np.ndarray]:
    """A 512 x 512 GeoTIFF with objects centred on the tile grid's seams; returns the true masks."""
    import rasterio
    from affine import Affine
    from scipy import ndimage
    from skimage.draw import ellipse, polygon

    from sam_core.tiling import TileGrid

    size = 512
    rng = np.random.default_rng(seed)
    image = (rng.normal(118, 6, size=(size, size, 1)) + np.zeros((1, 1, 3))).clip(0, 255)
    grid = TileGrid(size, size, tile_size, overlap)
    lines = sorted({t.x1 for t in grid.tiles if t.x1 < size} | {t.x0 for t in grid.tiles if t.x0 > 0})
    truth = []
    taken = np.zeros((size, size), bool)
    centres = [(y, x) for x in lines for y in range(48, size - 47, 104)] + [
        (x, y) for x in lines for y in range(100, size - 99, 156)]
    for cy, cx in centres:
        cy += int(rng.integers(-12, 13))
        cx += int(rng.integers(-12, 13))
        mask = np.zeros((size, size), bool)
        if rng.random() < 0.5:
            rr, cc = ellipse(cy, cx, int(rng.integers(16, 34)), int(rng.integers(16, 34)), shape=(size, size))
        else:
            h, w = (int(v) for v in rng.integers(26, 60, size=2))
            rr, cc = polygon([cy - h // 2, cy - h // 2, cy + h // 2, cy + h // 2],
                             [cx - w // 2, cx + w // 2, cx + w // 2, cx - w // 2], shape=(size, size))
        mask[rr, cc] = True
        if (taken & mask).any():
            continue
        taken |= ndimage.binary_dilation(mask, iterations=8)
        colour = rng.integers(30, 240, size=3)
        image[mask] = colour + rng.normal(0, 4, size=(int(mask.sum()), 3))
        truth.append(mask)
    data = np.moveaxis(image.clip(0, 255).astype(np.uint8), -1, 0)
    profile = dict(driver="GTiff", height=size, width=size, count=3, dtype="uint8", crs="EPSG:32633",
                   transform=Affine(1.0, 0, 400000.0, 0, -1.0, 5600000.0))
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)
    return truth


def truth_scores(pieces, truth) -> list[float]:
    """For each true object, the best IoU of a polygon."""
    best = []
    for mask in truth:
        ious = []
        for piece in pieces:
            window = piece.window(0, 0, *mask.shape)
            union = np.count_nonzero(window | mask)
            ious.append(np.count_nonzero(window & mask) / union if union else 0.0)
        best.append(max(ious, default=0.0))
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--raster", default=str(ROOT / "tests" / "data" / "RGB.byte.tif"))
    parser.add_argument("--tile-size", type=int, default=256)
    parser.add_argument("--overlap", type=int, default=128, help="tile overlap in pixels (QGIS's default 128)")
    parser.add_argument("--model", default="demo")
    parser.add_argument("--scenes", type=int, default=3, help="generated rasters (0: none)")
    args = parser.parse_args()
    from sam_core.tiling import TileGrid

    print(machine())
    print(f"model {args.model}, tile size {args.tile_size}, overlap {args.overlap}")
    with tempfile.TemporaryDirectory() as tmp:
        raster = Path(args.raster)
        from sam_core.geo import open_raster

        with open_raster(raster) as view:
            grid = TileGrid(view.height, view.width, args.tile_size, args.overlap)
        print(f"\n{raster.name} ({grid.width} x {grid.height} pixels, {len(grid)} tiles)")
        print("| run | polygons | edge on a tile border | edge on a control line |")
        print("|---|---:|---:|---:|")
        for repair in (False, True):
            pieces = run(raster, Path(tmp) / f"real_{repair}.gpkg", repair, args)
            n, on_border, on_control = measure(pieces, grid)
            print(f"| {'repaired' if repair else 'before'} | {n} | {on_border} ({100 * on_border / max(n, 1):.1f}%) "
                  f"| {on_control} ({100 * on_control / max(n, 1):.1f}%) |")
        if args.scenes:
            print(f"\ngenerated 512 x 512 rasters, objects across seams ({args.scenes} scenes)")
            print("| run | objects | mean best IoU | found whole (IoU >= 0.8) | polygons | edge on a tile border |")
            print("|---|---:|---:|---:|---:|---:|")
            results = {False: [[], 0, 0], True: [[], 0, 0]}
            for seed in range(args.scenes):
                path = Path(tmp) / f"scene{seed}.tif"
                truth = seam_scene(path, seed, args.tile_size, args.overlap)
                scene_grid = TileGrid(512, 512, args.tile_size, args.overlap)
                for repair in (False, True):
                    pieces = run(path, Path(tmp) / f"scene{seed}_{repair}.gpkg", repair, args)
                    n, on_border, _ = measure(pieces, scene_grid)
                    results[repair][0].extend(truth_scores(pieces, truth))
                    results[repair][1] += n
                    results[repair][2] += on_border
            for repair, (ious, n, on_border) in results.items():
                whole = sum(i >= 0.8 for i in ious)
                print(f"| {'repaired' if repair else 'before'} | {len(ious)} | {np.mean(ious):.3f} | "
                      f"{whole} ({100 * whole / max(len(ious), 1):.0f}%) | {n} | {on_border} "
                      f"({100 * on_border / max(n, 1):.1f}%) |")


if __name__ == "__main__":
    main()
