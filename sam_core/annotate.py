"""Dataset generation (SAM's data engine): automatic masks for every image of a folder, as COCO instances.

Each image is read (``sam_core.io.read_image``), prepared once for the whole image
(``sam_core.imaging.prepare_image``: 8-bit RGB unchanged, other kinds one percentile stretch), segmented
tile by tile with seam merging when larger than a tile (``sam_core.tiling.automask_tiled``), and written
as COCO annotations: compressed RLE ``segmentation``, ``area``, ``bbox`` (XYWH pixels), ``iscrowd`` 0,
plus SAM's ``predicted_iou``, ``stability_score`` and ``point_coords`` ((x, y) pixels); one category,
"object". An image that cannot be read or prepared is reported (``info.skipped`` in the file) and
skipped; the batch goes on. Resumable: finished images are kept in a sidecar folder
``.<output name>.parts`` beside the output and reused by a rerun with the same settings; the folder is
removed when the output is written. Parallel: ``workers``/``scheduler`` run images as Dask tasks.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np

from sam_core.errors import SamError
from sam_core.fileio import atomic_write, check_output_path
from sam_core.progress import CancelToken, ProgressFn, check, report

PathLike = Union[str, "os.PathLike[str]"]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
CATEGORY = {"id": 1, "name": "object", "supercategory": "object"}


@dataclass
class AnnotateResult:
    """The COCO file written, and how many images and annotations it holds; ``skipped``: (file, reason)."""

    output: str
    images: int
    annotations: int
    skipped: list = field(default_factory=list)
    resumed: int = 0


def list_images(image_dir: PathLike) -> list[Path]:
    """Image files directly inside ``image_dir`` (by extension), sorted by name."""
    folder = Path(image_dir).expanduser()
    if not folder.is_dir():
        raise SamError(f"image folder {folder} does not exist or is not a folder")
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise SamError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {folder}")
    return files


def annotate_image(path: PathLike, generator: Any, tile_size: int = 1024, overlap: int = 128) -> dict:
    """One image -> ``{"file_name", "width", "height", "annotations": [...]}`` (without ids), or
    ``{"file_name", "error"}`` when the image cannot be used."""
    from sam_core.imaging import prepare_image
    from sam_core.io import read_image
    from sam_core.tiling import automask_tiled

    file = Path(path)
    try:
        rgb, valid = prepare_image(read_image(file))
    except SamError as error:
        return {"file_name": file.name, "error": str(error)}
    pieces = automask_tiled(rgb, generator, tile_size=tile_size, overlap=overlap)
    h, w = rgb.shape[:2]
    annotations = []
    for piece in pieces:
        mask = piece.window(0, 0, h, w) & valid
        area = int(mask.sum())
        if area == 0:
            continue
        x, y, bw, bh = _bbox(mask)
        annotations.append(
            {
                "segmentation": coco_rle(mask),
                "area": area,
                "bbox": [x, y, bw, bh],
                "iscrowd": 0,
                "predicted_iou": float(piece.predicted_iou),
                "stability_score": float(piece.stability_score),
                "point_coords": [list(map(float, p)) for p in piece.point_coords],
            }
        )
    return {"file_name": file.name, "width": int(w), "height": int(h), "annotations": annotations}


def coco_rle(mask: np.ndarray) -> dict:
    """COCO compressed RLE ``{"size": [h, w], "counts": str}`` of a (rows, cols) bool mask."""
    import torch

    from sam_core.masks import coco_encode_rle, mask_to_rle

    return coco_encode_rle(mask_to_rle(torch.from_numpy(np.ascontiguousarray(mask))[None])[0])


def _bbox(mask: np.ndarray) -> list[int]:
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    return [int(cols[0]), int(rows[0]), int(cols[-1] - cols[0] + 1), int(rows[-1] - rows[0] + 1)]


def _worker_image(path: str, tile_size: int, overlap: int, generator: Any) -> dict:
    """Dask task: one image, with the worker's generator (built once per worker)."""
    from sam_core.distributed import worker_generator

    return annotate_image(path, worker_generator(generator), tile_size, overlap)


def parts_folder(output: PathLike) -> Path:
    """The folder that keeps the finished images of a run writing ``output`` (for resume)."""
    target = Path(output).expanduser()
    return target.parent / f".{target.name}.parts"


class _Parts:
    """Finished images of one run, one JSON per image beside the output (for resume)."""

    def __init__(self, output: Path, fingerprint: str, fresh: bool) -> None:
        self.folder = parts_folder(output)
        manifest = self.folder / "manifest.json"
        if fresh or (self.folder.exists() and not (manifest.exists() and manifest.read_text() == fingerprint)):
            shutil.rmtree(self.folder, ignore_errors=True)
        self.folder.mkdir(parents=True, exist_ok=True)
        if not manifest.exists():
            with atomic_write(manifest, "w") as handle:
                handle.write(fingerprint)

    def _path(self, image: Path) -> Path:
        stat = image.stat()
        key = hashlib.sha1(f"{image.name}|{stat.st_size}|{stat.st_mtime_ns}".encode()).hexdigest()[:20]
        return self.folder / f"{key}.json"

    def load(self, image: Path) -> Optional[dict]:
        path = self._path(image)
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError):
            return None

    def save(self, image: Path, result: dict) -> None:
        with atomic_write(self._path(image), "w") as handle:
            json.dump(result, handle)

    def remove(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


def annotate_images(
    image_dir: PathLike,
    output: PathLike,
    *,
    model: Optional[str] = "demo",
    checkpoint: Optional[PathLike] = None,
    device: Optional[str] = None,
    generator: Any = None,
    generator_params: Optional[dict] = None,
    tile_size: int = 1024,
    overlap: int = 128,
    workers: Optional[int] = None,
    scheduler: Optional[str] = None,
    resume: bool = True,
    progress: Optional[ProgressFn] = None,
    cancel: Optional[CancelToken] = None,
) -> AnnotateResult:
    """Automatic masks for every image in ``image_dir`` -> a COCO instances JSON at ``output``.

    ``generator``: any object with ``generate(rgb_uint8) -> records``; default an
    :class:`~sam_core.automask.AutomaticMaskGenerator` on ``model``/``checkpoint`` with ``generator_params``.
    """
    from sam_core.distributed import GeneratorSpec
    from sam_core.tiling import TileGrid

    if generator is not None and generator_params:
        raise SamError("give either a generator object or generator parameters, not both")
    target = Path(output).expanduser()
    if target.suffix.lower() != ".json":
        raise SamError(f"the output must be a .json file (COCO instances), got {target.name!r}")
    check_output_path(target, option="the output")
    TileGrid(16, 16, tile_size, overlap)  # checks tile size and overlap before any work
    files = list_images(image_dir)
    spec = GeneratorSpec.create(model, checkpoint, device, generator_params)
    kind = type(generator)
    fingerprint = json.dumps(
        {
            "generator": repr(spec) if generator is None else f"{kind.__module__}.{kind.__qualname__}",
            "tile_size": tile_size,
            "overlap": overlap,
        },
        sort_keys=True,
    )
    parts = _Parts(target, fingerprint, fresh=not resume)
    results: dict[Path, dict] = {}
    for file in files:
        done = parts.load(file)
        if done is not None:
            results[file] = done
    resumed = len(results)
    todo = [f for f in files if f not in results]
    report(progress, len(results), len(files), f"{resumed} images from a previous run" if resumed else "images")

    def finished(file: Path, result: dict) -> None:
        if "error" not in result:
            parts.save(file, result)
        results[file] = result
        report(progress, len(results), len(files), file.name)

    if todo and (workers is not None or scheduler is not None):
        from sam_core.distributed import cluster, run_tasks

        with cluster(workers, scheduler) as client:
            shared = generator if generator is not None else spec
            by_name = {str(f): f for f in todo}
            for name, result in run_tasks(client, _worker_image, list(by_name), tile_size, overlap, broadcast=shared, cancel=cancel):
                finished(by_name[name], result)
    elif todo:
        local = generator if generator is not None else spec.build()
        for file in todo:
            check(cancel)
            finished(file, annotate_image(file, local, tile_size, overlap))
    check(cancel)
    coco, skipped = _coco([results[f] for f in files], spec if generator is None else generator)
    with atomic_write(target, "w") as handle:
        json.dump(coco, handle)
    parts.remove()
    return AnnotateResult(str(target), len(coco["images"]), len(coco["annotations"]), skipped, resumed)


def _coco(results: list[dict], source: Any) -> tuple[dict, list]:
    images, annotations, skipped = [], [], []
    for result in results:
        if "error" in result:
            skipped.append((result["file_name"], result["error"]))
            continue
        image_id = len(images) + 1
        images.append({"id": image_id, "file_name": result["file_name"], "width": result["width"], "height": result["height"]})
        for ann in result["annotations"]:
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": CATEGORY["id"], **ann})
    info = {
        "description": "automatic masks by sam_core (Segment Anything)",
        "generator": repr(source) if not hasattr(source, "generate") else type(source).__name__,
        "skipped": [{"file_name": name, "reason": reason} for name, reason in skipped],
    }
    return {"info": info, "images": images, "annotations": annotations, "categories": [CATEGORY]}, skipped
