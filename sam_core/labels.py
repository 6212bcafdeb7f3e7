"""Instance labels (0 background, one positive id per object): building, editing and measuring them.

Arrays are (..., row, col); points are (x, y) = (col, row) pixels and boxes (x0, y0, x1, y1) pixels of
the image plane, as everywhere in sam_core. Editing functions return new arrays (inputs are never
changed), so a caller can diff them for undo.
"""

from __future__ import annotations

from typing import Any, Dict, Mapping, Optional, Sequence

import numpy as np

from sam_core.errors import SamError
from sam_core.types import Embedding

__all__ = ["decode_each", "paint", "merge", "delete", "split", "replace_object", "measure", "write_csv", "write_labels"]


def decode_each(predictor: Any, embedding: Embedding, points: Optional[np.ndarray] = None,
                boxes: Optional[np.ndarray] = None) -> np.ndarray:
    """One mask per prompt: every point (N, 2) and every box (M, 4) is its own object.

    Points are decoded together in one batched call, boxes in another (``Predictor.predict_batch``);
    a point alone takes the best of SAM's three candidates (as ``Predictor.predict`` does for one
    point), a box its single mask. Returns (N + M, H, W) bool, points first, in the given order.
    """
    height, width = embedding.original_size
    out = []
    if points is not None and len(points):
        coords = np.asarray(points, dtype=float).reshape(-1, 1, 2)
        prediction = predictor.predict_batch(embedding, points=coords, labels=np.ones(coords.shape[:2], np.int64),
                                             multimask=True)
        out.append(prediction.masks[:, 0])
    if boxes is not None and len(boxes):
        prediction = predictor.predict_batch(embedding, boxes=np.asarray(boxes, dtype=float).reshape(-1, 4))
        out.append(prediction.masks[:, 0])
    if not out:
        return np.zeros((0, height, width), bool)
    return np.concatenate(out).astype(bool)


def paint(masks: np.ndarray, start_id: int = 1, free: Optional[np.ndarray] = None) -> np.ndarray:
    """Masks (N, ...) as labels: mask ``i`` gets id ``start_id + i`` where no earlier mask is (first wins),
    and only where ``free`` (bool, optional) is True. Returns int32 labels of one mask's shape."""
    masks = np.asarray(masks, bool)
    labels = np.zeros(masks.shape[1:], np.int32)
    for i, mask in enumerate(masks):
        where = mask & (labels == 0)
        if free is not None:
            where &= free
        labels[where] = start_id + i
    return labels


def _check_ids(labels: np.ndarray, ids: Sequence[int]) -> list:
    ids = [int(i) for i in ids]
    present = set(np.unique(labels).tolist())
    missing = [i for i in ids if i <= 0 or i not in present]
    if missing:
        raise SamError(f"object id(s) {missing} are not in the labels: choose ids of existing objects")
    return ids


def merge(labels: np.ndarray, ids: Sequence[int]) -> np.ndarray:
    """The objects ``ids`` (two or more) joined under the smallest of them."""
    ids = _check_ids(labels, ids)
    if len(set(ids)) < 2:
        raise SamError("merging needs two different objects")
    out = np.array(labels, copy=True)
    out[np.isin(out, ids)] = min(ids)
    return out


def delete(labels: np.ndarray, ids: Sequence[int]) -> np.ndarray:
    """The labels without the objects ``ids`` (their pixels become background)."""
    ids = _check_ids(labels, ids)
    out = np.array(labels, copy=True)
    out[np.isin(out, ids)] = 0
    return out


def split(labels: np.ndarray, mask: np.ndarray) -> tuple:
    """Split off the part of one object inside ``mask`` (bool, labels' shape) as a new object.

    The object split is the one ``mask`` overlaps most. Returns ``(new labels, object id, new id)``;
    the new id is the labels' maximum + 1.
    """
    labels = np.asarray(labels)
    mask = np.asarray(mask, bool)
    ids, counts = np.unique(labels[mask & (labels > 0)], return_counts=True)
    if not len(ids):
        raise SamError("the new mask lies on no object: click inside the object to split")
    object_id = int(ids[np.argmax(counts)])
    part = mask & (labels == object_id)
    if part.sum() == (labels == object_id).sum():
        raise SamError(f"the new mask covers all of object {object_id}: click on one part of it only")
    new_id = int(labels.max()) + 1
    out = np.array(labels, copy=True)
    out[part] = new_id
    return out, object_id, new_id


def replace_object(labels: np.ndarray, object_id: int, mask: np.ndarray, overwrite: bool = False) -> np.ndarray:
    """Object ``object_id`` redrawn as ``mask`` (bool, labels' shape): its pixels outside become
    background; inside, it takes free pixels (and other objects' pixels when ``overwrite``)."""
    object_id = _check_ids(labels, [object_id])[0]
    mask = np.asarray(mask, bool)
    out = np.array(labels, copy=True)
    out[(out == object_id) & ~mask] = 0
    take = mask if overwrite else mask & (out == 0)
    out[take] = object_id
    return out


def measure(labels: np.ndarray, intensity: Optional[np.ndarray] = None, scale: Optional[Sequence[float]] = None,
            classes: Optional[Mapping[int, str]] = None, tracks: Optional[Mapping[int, int]] = None) -> Dict[str, np.ndarray]:
    """Per-object measurements in physical units (scikit-image ``regionprops_table``), one row per id.

    ``labels``: (..., row, col) int; ``intensity``: the same shape, or with a last channel axis (C);
    ``scale``: physical size of a pixel along each labels axis (default 1). Columns: ``label``,
    ``area`` (2D) or ``volume`` (3D and more; units of scale to the ndim power), ``centroid-<axis>``
    and ``bbox-min-<axis>`` / ``bbox-max-<axis>`` (physical, axis 0 first; bbox max exclusive), per
    channel ``mean_intensity[-c]`` and ``integrated_intensity[-c]`` (mean times the physical size), and
    ``class`` / ``track_id`` when given ("" / 0 for ids without one).
    """
    from skimage.measure import regionprops_table

    labels = np.asarray(labels)
    ndim = labels.ndim
    spacing = np.ones(ndim) if scale is None else np.asarray(scale, float).reshape(-1)
    if spacing.shape != (ndim,):
        raise SamError(f"scale needs one value per labels axis ({ndim}), got {spacing.tolist()}")
    props = ["label", "area", "centroid", "bbox"]
    image = None
    if intensity is not None:
        image = np.asarray(intensity, float)
        if image.shape[:ndim] != labels.shape or image.ndim not in (ndim, ndim + 1):
            raise SamError(f"intensity shape {image.shape} does not fit labels shape {labels.shape}")
        props.append("intensity_mean")
    table = regionprops_table(labels.astype(np.int64), intensity_image=image, properties=props, spacing=spacing)
    out: Dict[str, np.ndarray] = {"label": np.asarray(table["label"], np.int64)}
    size_name = "area" if ndim == 2 else "volume"
    size = np.asarray(table["area"], float)
    out[size_name] = size
    for axis in range(ndim):
        out[f"centroid-{axis}"] = np.asarray(table[f"centroid-{axis}"], float)
    for axis in range(ndim):
        out[f"bbox-min-{axis}"] = np.asarray(table[f"bbox-{axis}"], float) * spacing[axis]
        out[f"bbox-max-{axis}"] = np.asarray(table[f"bbox-{axis + ndim}"], float) * spacing[axis]
    if image is not None:
        keys = sorted(k for k in table if k.startswith("intensity_mean"))
        for key in keys:
            suffix = key[len("intensity_mean"):]
            mean = np.asarray(table[key], float)
            out[f"mean_intensity{suffix}"] = mean
            out[f"integrated_intensity{suffix}"] = mean * size
    if classes is not None:
        out["class"] = np.array([str(classes.get(int(i), "")) for i in out["label"]], dtype=object)
    if tracks is not None:
        out["track_id"] = np.array([int(tracks.get(int(i), 0)) for i in out["label"]], np.int64)
    return out


def write_csv(table: Mapping[str, Sequence[Any]], path: Any) -> None:
    """Write ``table`` (column name -> values, all of one length, e.g. from :func:`measure`) as CSV with a
    header row; atomically (a temporary file renamed), so ``path`` is never left half written."""
    import csv
    import io

    from sam_core.fileio import atomic_write

    columns = list(table)
    lengths = {len(table[c]) for c in columns}
    if len(lengths) > 1:
        raise SamError(f"the table's columns differ in length: {sorted(lengths)}")
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(columns)
    for row in zip(*(table[c] for c in columns)):
        writer.writerow([v.item() if isinstance(v, np.generic) else v for v in row])
    with atomic_write(path, "w") as handle:
        handle.write(text.getvalue())


def write_labels(labels: np.ndarray, path: Any, classes: Optional[Mapping[int, str]] = None) -> Optional[str]:
    """Write ``labels`` as a TIFF at ``path`` and, with ``classes`` (id -> class name), a CSV ``id,class``
    beside it (``<name>.classes.csv``, one row per object id present, "" without a class). Both are
    written atomically. Returns the CSV's path (None without classes)."""
    import io
    from pathlib import Path

    import tifffile

    from sam_core.fileio import atomic_write

    labels = np.asarray(labels)
    if not np.issubdtype(labels.dtype, np.integer):
        raise SamError(f"labels must be integers, got {labels.dtype}")
    target = Path(path)
    buffer = io.BytesIO()
    tifffile.imwrite(buffer, labels)
    with atomic_write(target, "wb") as handle:
        handle.write(buffer.getvalue())
    if classes is None:
        return None
    ids = [int(i) for i in np.unique(labels) if i > 0]
    csv_path = target.with_name(target.name.split(".")[0] + ".classes.csv")
    write_csv({"id": ids, "class": [str(classes.get(i, "")) for i in ids]}, csv_path)
    return str(csv_path)
