"""Tiled segmentation of georeferenced rasters into polygons with the raster's CRS.

- :func:`automask_raster`: automatic masks tile by tile, joined across seams (``sam_core.tiling``), as
  polygons. Runs in this process or with tiles as tasks on Dask (``workers``/``scheduler``); the merge is
  the same. Resumable: each finished tile is kept in a sidecar folder ``.<output name>.tiles`` next to the
  output, reused by a rerun with the same raster and settings, and removed on success.
- :func:`segment_prompts`: one polygon per prompt group (vector file or list, any CRS).
- :func:`encode_raster`: fill the embedding cache with every tile, so that later clicks are instant.
- :func:`segment_at` and :class:`RasterSession`: interactive clicks/boxes in map coordinates -> polygons
  (for the QGIS engine). Open rasters belong to the run or session that opened them (context managers);
  nothing is kept in module state.

Outputs are written atomically (nothing is left behind by a failure or a cancel); attributes are listed in
:func:`sam_core.geo.vectorize.pieces_to_features`.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import numpy as np

from sam_core.fileio import atomic_write
from sam_core.geo.prompts import load_prompts, to_pixel_prompts
from sam_core.geo.raster import RasterSpec, RasterView, open_raster, reopen
from sam_core.geo.settings import GeneratorSpec, OutputSettings, TilingSettings
from sam_core.geo.vectorize import pieces_to_features
from sam_core.geo.writer import check_output, write_features
from sam_core.progress import CancelToken, ProgressFn, check, report
from sam_core.tiling import (
    MaskPiece,
    Tile,
    TiledPredictor,
    TileGrid,
    WindowDecoder,
    merge_tile_masks,
    records_to_pieces,
    remove_overlaps,
    repair_cut_objects,
)

PathLike = Union[str, "os.PathLike[str]"]


@dataclass
class GeoResult:
    """What a geo run wrote: the output path, feature count, CRS (WKT) and tiles done (of ``tiles_total``)."""

    output: Optional[str]
    count: int
    crs_wkt: str
    tiles_done: int
    tiles_total: int = 0
    tiles_resumed: int = 0


# ----------------------------------------------------------------------------------- per-tile results


TILE_FORMAT = 2  # boxes of saved pieces as (x0, y0, x1, y1); stores of another format start afresh


class TileStore:
    """Finished tiles of one run, one ``.npz`` per tile in a folder beside the output (for resume).

    The folder is tied to a fingerprint of the raster and settings; a different fingerprint starts afresh.
    """

    def __init__(self, output: Path, fingerprint: dict, fresh: bool = False) -> None:
        self.folder = self.folder_for(output)
        self.fingerprint = json.dumps(fingerprint, sort_keys=True, default=str)
        manifest = self.folder / "manifest.json"
        if fresh:
            shutil.rmtree(self.folder, ignore_errors=True)
        if self.folder.exists():
            try:
                same = manifest.read_text() == self.fingerprint
            except OSError:
                same = False
            if not same:
                shutil.rmtree(self.folder, ignore_errors=True)
        self.folder.mkdir(parents=True, exist_ok=True)
        if not manifest.exists():
            with atomic_write(manifest, "w") as handle:
                handle.write(self.fingerprint)

    @staticmethod
    def folder_for(output: Path) -> Path:
        """The folder that keeps the finished tiles of a run writing ``output``."""
        return output.parent / f".{output.name}.tiles"

    def _path(self, index: int) -> Path:
        return self.folder / f"tile_{index:06d}.npz"

    def load(self, index: int) -> Optional[list[MaskPiece]]:
        path = self._path(index)
        if not path.exists():
            return None
        try:
            with np.load(path, allow_pickle=False) as data:
                return _unpack(data)
        except Exception:  # a damaged entry is recomputed, never trusted
            path.unlink(missing_ok=True)
            return None

    def save(self, index: int, pieces: Sequence[MaskPiece]) -> None:
        with atomic_write(self._path(index), "wb") as handle:
            np.savez(handle, **_pack(pieces))

    def remove(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


def _pack(pieces: Sequence[MaskPiece]) -> dict:
    boxes = np.array([[p.x0, p.y0, p.x1, p.y1] for p in pieces], dtype=np.int64).reshape(-1, 4)  # (x0, y0, x1, y1)
    bits = [np.packbits(p.mask.ravel()) for p in pieces]
    return {
        "boxes": boxes,
        "scores": np.array([[p.predicted_iou, p.stability_score] for p in pieces], dtype=np.float64).reshape(-1, 2),
        "tiles": np.array([p.tiles[0] if p.tiles else -1 for p in pieces], dtype=np.int64),
        "points": np.array([p.point_coords[0] if p.point_coords else [np.nan, np.nan] for p in pieces], dtype=np.float64).reshape(-1, 2),
        "offsets": np.cumsum([0] + [b.size for b in bits]).astype(np.int64),
        "bits": np.concatenate(bits) if bits else np.zeros(0, np.uint8),
    }


def _unpack(data: Any) -> list[MaskPiece]:
    pieces = []
    for i, (x0, y0, x1, y1) in enumerate(data["boxes"]):
        h, w = y1 - y0, x1 - x0
        raw = data["bits"][data["offsets"][i] : data["offsets"][i + 1]]
        mask = np.unpackbits(raw, count=int(h * w)).astype(bool).reshape(int(h), int(w))
        point = data["points"][i]
        pieces.append(
            MaskPiece(
                int(y0), int(x0), mask, float(data["scores"][i, 0]), float(data["scores"][i, 1]),
                (int(data["tiles"][i]),), [] if np.isnan(point).any() else [point.tolist()],
            )
        )
    return pieces


# ----------------------------------------------------------------------------------------- automask


def tile_pieces(view: RasterView, tile: Tile, generator: Any, cancel: Optional[CancelToken] = None) -> list[MaskPiece]:
    """Automatic masks of one tile as pieces of the working grid; nodata never yields a mask.

    ``generator.generate(rgb, cancel=cancel)`` returns records in the official format (``cancel`` stops
    inside a long tile), as :class:`sam_core.automask.AutomaticMaskGenerator` does."""
    rgb, valid = view.read(tile.y0, tile.x0, tile.y1, tile.x1)
    if not valid.any():
        return []
    records = generator.generate(rgb, cancel=cancel)
    return records_to_pieces(tile, records, None if valid.all() else valid)


def _worker_tile(tile: Tile, spec: RasterSpec, generator: Any) -> list[MaskPiece]:
    """Dask task: open the raster's working grid (``spec`` keeps its stretch) and segment one tile."""
    from sam_core.distributed import worker_generator

    with reopen(spec) as view:
        return tile_pieces(view, tile, worker_generator(generator))


def _fingerprint(view: RasterView, **settings: Any) -> dict:
    stat = os.stat(view.path)
    return {"raster": view.path, "size": stat.st_size, "mtime": stat.st_mtime_ns, "spec": asdict(view.spec),
            "format": TILE_FORMAT, **settings}


def _generator_id(generator: Any, spec: Any) -> str:
    if generator is None:
        return json.dumps(asdict(spec), sort_keys=True)
    kind = type(generator)
    params = {k: v for k, v in sorted(vars(generator).items()) if isinstance(v, (int, float, str, bool, type(None)))}
    params["model"] = getattr(getattr(generator, "predictor", None), "model_id", None)
    return f"{kind.__module__}.{kind.__qualname__}:{json.dumps(params, sort_keys=True)}"


def automask_raster(
    raster: PathLike,
    output: PathLike,
    *,
    tiling: TilingSettings = TilingSettings(),
    generator: Any = None,
    polygons: OutputSettings = OutputSettings(),
    predictor: Any = None,
    workers: Optional[int] = None,
    scheduler: Optional[str] = None,
    resume: bool = True,
    progress: Optional[ProgressFn] = None,
    cancel: Optional[CancelToken] = None,
) -> GeoResult:
    """Segment everything in a raster into polygons (GeoPackage, GeoJSON, FlatGeobuf or Shapefile).

    ``tiling`` (:class:`~sam_core.geo.settings.TilingSettings`): bands, tiles, resolution, extent and the
    seam join; ``polygons`` (:class:`~sam_core.geo.settings.OutputSettings`): minimum area and
    simplification. ``generator``: a :class:`~sam_core.distributed.GeneratorSpec` (model and parameters;
    default the ``demo`` model with its recommended parameters), or any object with
    ``generate(rgb_uint8) -> records`` (official format). ``workers`` N runs tiles on a local Dask cluster
    of N processes, ``scheduler`` on an existing one. Overlapping masks are resolved as
    :func:`sam_core.tiling.remove_overlaps` does, so polygons do not overlap.

    ``tiling.repair_seams``: an object cut at a tile border, with no partner in the neighbouring tile, is
    decoded again whole in a window centred on it (:mod:`sam_core.tiling.repair`) by ``predictor``
    (default: the generator's, for an :class:`~sam_core.automask.AutomaticMaskGenerator` or a
    :class:`~sam_core.distributed.GeneratorSpec`; other generators without ``predictor`` keep such objects
    as they are).
    """
    spec: Optional[GeneratorSpec] = None
    if generator is None or isinstance(generator, GeneratorSpec):
        spec, generator = generator or GeneratorSpec.create("demo"), None
    target = Path(output).expanduser()
    with open_raster(raster, tiling.bands, tiling.resolution, tiling.extent) as view:
        check_output(target, view.crs)
        grid = TileGrid(view.height, view.width, tiling.tile_size, tiling.overlap)
        fingerprint = _fingerprint(view, tile_size=tiling.tile_size, overlap=tiling.overlap,
                                   generator=_generator_id(generator, spec))
        store = TileStore(target, fingerprint, fresh=not resume)
        per_tile: dict[int, list[MaskPiece]] = {}
        for tile in grid:
            loaded = store.load(tile.index)
            if loaded is not None:
                per_tile[tile.index] = loaded
        resumed = len(per_tile)
        todo = [t for t in grid if t.index not in per_tile]
        total = len(grid)
        report(progress, len(per_tile), total, f"{resumed} tiles from a previous run" if resumed else "segmenting tiles")

        def finished(tile: Tile, pieces: list[MaskPiece]) -> None:
            store.save(tile.index, pieces)
            per_tile[tile.index] = pieces
            report(progress, len(per_tile), total, f"tile {tile.index + 1}/{total}")

        if todo and (workers is not None or scheduler is not None):
            from sam_core.distributed import cluster, run_tasks

            with cluster(workers, scheduler) as client:
                shared = generator if generator is not None else spec
                for tile, pieces in run_tasks(client, _worker_tile, todo, view.spec, broadcast=shared, cancel=cancel):
                    finished(tile, pieces)
        elif todo:
            local = generator if generator is not None else spec.build()
            generator = local
            for tile in todo:
                check(cancel)
                finished(tile, tile_pieces(view, tile, local, cancel))
        check(cancel)
        objects = merge_tile_masks(grid, per_tile, seam_iou=tiling.seam_iou)
        if tiling.repair_seams:
            objects = _repair(view, grid, objects, _RepairPredictor(predictor, generator, spec), progress, cancel)
        objects = remove_overlaps(objects)
        features = pieces_to_features(objects, view.transform, view.crs, simplify=polygons.simplify,
                                      min_area=polygons.min_area)
        check(cancel)
        write_features(target, features, view.crs)
        store.remove()
        return GeoResult(str(target), len(features), view.crs_wkt, len(per_tile), total, resumed)


class _RepairPredictor:
    """The predictor that decodes cut objects again, loaded only when one is found."""

    def __init__(self, predictor: Any, generator: Any, spec: Any) -> None:
        from sam_core.automask import AutomaticMaskGenerator

        self._predictor = predictor
        if predictor is None and isinstance(generator, AutomaticMaskGenerator):
            self._predictor = generator.predictor
        self._spec = spec if predictor is None and generator is None else None

    @property
    def available(self) -> bool:
        return self._predictor is not None or self._spec is not None

    def get(self) -> Any:
        if self._predictor is None:
            self._predictor = self._spec.build().predictor
        return self._predictor


def _repair(view: RasterView, grid: TileGrid, objects: list[MaskPiece], predictor: _RepairPredictor,
            progress: Optional[ProgressFn], cancel: Optional[CancelToken]) -> list[MaskPiece]:
    """Objects cut at a tile border decoded again whole (see :mod:`sam_core.tiling.repair`)."""
    if not predictor.available:
        return objects

    def read(tile: Tile):
        return view.read(tile.y0, tile.x0, tile.y1, tile.x1)

    def decode(window, points, labels, box):
        return WindowDecoder(predictor.get(), read)(window, points, labels, box)

    def repairing(done: int, total: int, message: str) -> None:
        report(progress, len(grid), len(grid), message)

    return repair_cut_objects(grid, objects, decode, progress=repairing, cancel=cancel)


# ------------------------------------------------------------------------------------------ prompts


def _predictor(predictor: Any, model: Optional[str], checkpoint: Optional[PathLike], device: Optional[str], cache_dir=None) -> Any:
    if predictor is not None:
        return predictor
    from sam_core.pool import ModelSpec

    return ModelSpec.of(model, checkpoint, device=device, cache_dir=cache_dir).build()


def _open(raster: PathLike, tiling: TilingSettings) -> RasterView:
    return open_raster(raster, tiling.bands, tiling.resolution, tiling.extent)


def _tiled(view: RasterView, predictor: Any, tiling: TilingSettings) -> TiledPredictor:
    def read(tile: Tile):
        return view.read(tile.y0, tile.x0, tile.y1, tile.x1)

    return TiledPredictor(predictor, read, shape=(view.height, view.width), tile_size=tiling.tile_size,
                          overlap=tiling.overlap)


def _clear_nodata(view: RasterView, piece: MaskPiece) -> Optional[MaskPiece]:
    if piece.mask.size == 0:
        return None
    _, valid = view.read(piece.y0, piece.x0, piece.y1, piece.x1)
    return MaskPiece(piece.y0, piece.x0, piece.mask & valid, piece.predicted_iou, piece.stability_score, piece.tiles).trimmed()


def segment_prompts(
    raster: PathLike,
    prompts: Any,
    output: PathLike,
    *,
    label_field: str = "label",
    group_field: str = "group",
    tiling: TilingSettings = TilingSettings(),
    model: Optional[str] = "demo",
    checkpoint: Optional[PathLike] = None,
    device: Optional[str] = None,
    predictor: Any = None,
    polygons: OutputSettings = OutputSettings(),
    progress: Optional[ProgressFn] = None,
    cancel: Optional[CancelToken] = None,
) -> GeoResult:
    """One polygon per prompt group (see :mod:`sam_core.geo.prompts` for files, labels and grouping).

    ``prompts``: a vector file path, or a list of groups ``{"points": [(x, y), ...], "labels": [1, 0, ...],
    "box": (xmin, ymin, xmax, ymax), "crs": "EPSG:4326"}`` in map coordinates (default: the raster's CRS).
    Attributes: those of automask plus ``group``. ``tiling`` and ``polygons`` as for :func:`automask_raster`
    (the seam settings are not used: each prompt is decoded over the tiles it covers).
    """
    target = Path(output).expanduser()
    groups = load_prompts(prompts, label_field, group_field)
    with _open(raster, tiling) as view:
        check_output(target, view.crs)
        pixel = to_pixel_prompts(groups, view)
        tiled = _tiled(view, _predictor(predictor, model, checkpoint, device), tiling)
        pieces, extra = [], []
        for done, prompt in enumerate(pixel, start=1):
            check(cancel)
            result = tiled.predict(prompt.points, prompt.labels, prompt.box)
            piece = _clear_nodata(view, result.piece)
            if piece is not None:
                pieces.append(piece)
                extra.append({"group": str(prompt.name)})
            report(progress, done, len(pixel), f"object {done}/{len(pixel)}")
        features = pieces_to_features(pieces, view.transform, view.crs, simplify=polygons.simplify,
                                      min_area=polygons.min_area, extra=extra)
        check(cancel)
        write_features(target, features, view.crs)
        return GeoResult(str(target), len(features), view.crs_wkt, len(tiled.tiles_used), len(tiled.grid))


def encode_raster(
    raster: PathLike,
    *,
    tiling: TilingSettings = TilingSettings(),
    model: Optional[str] = "demo",
    checkpoint: Optional[PathLike] = None,
    device: Optional[str] = None,
    cache_dir: Optional[PathLike] = None,
    predictor: Any = None,
    progress: Optional[ProgressFn] = None,
    cancel: Optional[CancelToken] = None,
) -> int:
    """Encode every tile holding data into the embedding cache (``cache_dir`` on disk, or the given
    ``predictor``'s cache); returns the number of tiles encoded. Later clicks on these tiles are instant."""
    with _open(raster, tiling) as view:
        tiled = _tiled(view, _predictor(predictor, model, checkpoint, device, cache_dir), tiling)
        return tiled.encode_all(progress=progress, cancel=cancel)


# --------------------------------------------------------------------------------------- interactive

class RasterSession:
    """A raster opened for interactive clicks with one predictor: the open raster and its tiles'
    embeddings are kept between :meth:`segment` calls until :meth:`close` (or the ``with`` block ends).

    Owned by its caller (the QGIS engine keeps one per raster and model); nothing is kept in module state.
    """

    def __init__(self, raster: PathLike, predictor: Any, *, tiling: TilingSettings = TilingSettings()) -> None:
        self.view = _open(raster, tiling)
        self.tiled = _tiled(self.view, predictor, tiling)

    def close(self) -> None:
        self.view.close()

    def __enter__(self) -> "RasterSession":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def segment(self, points: Optional[Sequence[Sequence[float]]] = None, labels: Optional[Sequence[int]] = None,
                box: Optional[Sequence[float]] = None, *, crs: Any = None, simplify: float = 0.0) -> list[dict]:
        """Points (x, y) and/or a box (xmin, ymin, xmax, ymax) in map coordinates of ``crs`` (default the
        raster's) -> polygons as dicts ``{"wkt", "predicted_iou", "area", "area_m2", "tiles", "crs_wkt"}``
        in the raster's CRS (an empty list when nothing was found)."""
        view = self.view
        pts = [] if points is None else [tuple(map(float, p)) for p in points]
        group = {"points": pts, "labels": list(labels) if labels is not None else [1] * len(pts), "box": box,
                 "crs": crs}
        (prompt,) = to_pixel_prompts(load_prompts([group]), view)
        result = self.tiled.predict(prompt.points, prompt.labels, prompt.box)
        piece = _clear_nodata(view, result.piece)
        if piece is None:
            return []
        features = pieces_to_features([piece], view.transform, view.crs, simplify=simplify)
        return [
            {
                "wkt": f.geometry.wkt,
                "predicted_iou": f.attributes["predicted_iou"],
                "area": f.attributes["area"],
                "area_m2": f.attributes["area_m2"],
                "tiles": list(piece.tiles),
                "crs_wkt": view.crs_wkt,
            }
            for f in features
        ]


def segment_at(
    raster: PathLike,
    points: Optional[Sequence[Sequence[float]]] = None,
    labels: Optional[Sequence[int]] = None,
    box: Optional[Sequence[float]] = None,
    *,
    crs: Any = None,
    tiling: TilingSettings = TilingSettings(),
    predictor: Any = None,
    model: Optional[str] = "demo",
    checkpoint: Optional[PathLike] = None,
    device: Optional[str] = None,
    simplify: float = 0.0,
) -> list[dict]:
    """Interactive segmentation in one call: points (x, y) and/or a box (xmin, ymin, xmax, ymax) in map
    coordinates of ``crs`` (default the raster's) -> polygons as :meth:`RasterSession.segment` returns.

    The raster is opened for this call only. Keep the ``predictor`` between calls (its embedding cache
    makes later clicks on an encoded tile decode only), or a :class:`RasterSession` to keep the raster
    open too. Objects larger than a tile are decoded over the tiles they cover and joined.
    """
    predictor = _predictor(predictor, model, checkpoint, device)
    with RasterSession(raster, predictor, tiling=tiling) as session:
        return session.segment(points, labels, box, crs=crs, simplify=simplify)
