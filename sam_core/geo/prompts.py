"""Prompts in map coordinates (vector files or lists) -> pixel prompts of a raster's working grid.

A *prompt group* is one object to segment: points (x, y) with labels (1 positive, 0 negative) and at most
one box (xmin, ymin, xmax, ymax), all in map coordinates of the group's CRS (default: the raster's).

Vector files (anything GDAL reads: GeoPackage, Shapefile, GeoJSON, ...): point features are points,
polygon features are boxes (their bounds, taken in the raster's pixel grid after reprojection). The
``label_field`` (default ``label``) marks points positive or negative: 1/0, true/false, positive/negative,
pos/neg, foreground/background, fg/bg (missing field or empty value: positive). Grouping:

- with a ``group_field`` (default ``group``) in the file, features with the same value form one group;
- without it, every polygon is a group together with the points inside it; every other positive point is
  a group of its own, and every other negative point joins the group of the nearest positive point.

Features in another CRS are reprojected to the raster's (a file without a CRS is taken to be in it).
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Optional, Union

import numpy as np

from sam_core.errors import SamError

PathLike = Union[str, "os.PathLike[str]"]

# Side, in working-grid pixels, of the box an exemplar point of a concept query becomes (centred on the
# point; sam_core.geo.find).
POINT_BOX_PIXELS = 32

_POSITIVE = {"1", "true", "t", "yes", "y", "positive", "pos", "foreground", "fg", "include", "+", "+1"}
_NEGATIVE = {"0", "false", "f", "no", "n", "negative", "neg", "background", "bg", "exclude", "-", "-1"}


@dataclass
class PromptGroup:
    """One object's prompts in map coordinates. ``box`` is a polygon (shapely) or (xmin, ymin, xmax, ymax)."""

    points: list = field(default_factory=list)
    labels: list = field(default_factory=list)
    box: Any = None
    name: Any = None
    crs: Any = None


@dataclass
class PixelPrompt:
    """One object's prompts in working-grid pixel coordinates (x, y), ready for the tiled predictor."""

    points: np.ndarray
    labels: np.ndarray
    box: Optional[np.ndarray]
    name: Any


def parse_label(value: Any) -> int:
    """A label attribute -> 1 (positive) or 0 (negative); None/empty is positive."""
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return 1
    if isinstance(value, (bool, np.bool_)):
        return int(bool(value))
    if isinstance(value, (int, np.integer, float, np.floating)):
        if float(value) in (1.0, 0.0, -1.0):
            return 1 if float(value) == 1.0 else 0
        raise SamError(f"label value {_plain(value)} is neither positive (1) nor negative (0)")
    text = str(value).strip().lower()
    if text == "":
        return 1
    if text in _POSITIVE:
        return 1
    if text in _NEGATIVE:
        return 0
    raise SamError(f"label value {value!r} is neither positive (1, positive, fg) nor negative (0, negative, bg)")


def _plain(value: Any) -> str:
    """A value as the user wrote it: ``7`` and ``'x'``, not ``np.int64(7)``."""
    if isinstance(value, np.generic):
        value = value.item()
    return repr(value)


def _as_group(item: Any, index: int) -> PromptGroup:
    if isinstance(item, PromptGroup):
        return item
    if isinstance(item, dict):
        name = item.get("name", index + 1)
        try:
            points = [tuple(float(v) for v in p) for p in item.get("points") or []]
        except (TypeError, ValueError):
            points = [()]
        if any(len(p) != 2 for p in points):
            raise SamError(f"prompt group {_plain(name)}: points are (x, y) pairs of numbers, got {_plain(item.get('points'))}")
        labels = item.get("labels", [1] * len(points))
        if not isinstance(labels, (list, tuple)):
            raise SamError(f"prompt group {_plain(name)}: labels are a list of 1 (positive) and 0 (negative), got {_plain(labels)}")
        return PromptGroup(points, [parse_label(v) for v in labels], item.get("box"), name, item.get("crs"))
    raise SamError(f"prompt group {index + 1} must be a dict with points/labels/box/crs, got {type(item).__name__}")


def read_prompt_file(path: PathLike, label_field: str = "label", group_field: str = "group") -> list[PromptGroup]:
    """Prompt groups from a vector file (see the module docstring for the grouping rule)."""
    import pyogrio
    import shapely
    from rasterio.crs import CRS

    file = Path(path).expanduser()
    if not file.exists():
        raise SamError(f"prompt file {file} does not exist")
    try:
        meta, _, geometry, values = pyogrio.raw.read(str(file))
    except Exception as error:
        raise SamError(f"cannot read {file} as a vector file: {str(error).splitlines()[0]}") from error
    crs = CRS.from_user_input(meta["crs"]) if meta.get("crs") else None
    fields = [str(f) for f in meta["fields"]]
    lower = {f.lower(): i for i, f in enumerate(fields)}
    label_column = values[lower[label_field.lower()]] if label_field and label_field.lower() in lower else None
    group_column = values[lower[group_field.lower()]] if group_field and group_field.lower() in lower else None
    if label_field and label_column is None and label_field != "label":
        raise SamError(f"{file} has no field {label_field!r} (its fields: {', '.join(fields) or 'none'})")
    geoms = shapely.from_wkb(geometry) if len(geometry) else []
    points, labels, point_groups, boxes, box_groups = [], [], [], [], []
    for i, geom in enumerate(geoms):
        if geom is None or geom.is_empty:
            continue
        group = None if group_column is None else group_column[i]
        kind = geom.geom_type
        if kind in ("Point", "MultiPoint"):
            label = parse_label(None if label_column is None else label_column[i])
            for p in getattr(geom, "geoms", [geom]):
                points.append((p.x, p.y))
                labels.append(label)
                point_groups.append(group)
        elif kind in ("Polygon", "MultiPolygon"):
            boxes.append(geom)
            box_groups.append(group)
        else:
            raise SamError(f"feature {i + 1} of {file} is a {kind}: prompts must be points or polygons (boxes)")
    if not points and not boxes:
        raise SamError(f"{file} holds no point or polygon features to use as prompts")
    if group_column is not None:
        groups: dict = {}
        for p, lab, g in zip(points, labels, point_groups):
            groups.setdefault(g, PromptGroup(name=g, crs=crs)).points.append(p)
            groups[g].labels.append(lab)
        for b, g in zip(boxes, box_groups):
            group = groups.setdefault(g, PromptGroup(name=g, crs=crs))
            if group.box is not None:
                raise SamError(f"group {g!r} of {file} has more than one polygon; one box per group")
            group.box = b
        return [groups[k] for k in groups]
    return _group_by_position(points, labels, boxes, crs)


def _group_by_position(points, labels, boxes, crs) -> list[PromptGroup]:
    groups = [PromptGroup(box=b, name=i + 1, crs=crs) for i, b in enumerate(boxes)]
    free = []
    for p, lab in zip(points, labels):
        owner = next((g for g in groups[: len(boxes)] if g.box.covers(_point(p))), None)
        if owner is not None:
            owner.points.append(p)
            owner.labels.append(lab)
        else:
            free.append((p, lab))
    singles = []
    for p, lab in free:
        if lab == 1:
            singles.append(PromptGroup(points=[p], labels=[1], name=len(groups) + len(singles) + 1, crs=crs))
    for p, lab in free:
        if lab == 0:
            if not singles:
                raise SamError("a negative point needs a positive point or a box to belong to")
            nearest = min(singles, key=lambda g: (g.points[0][0] - p[0]) ** 2 + (g.points[0][1] - p[1]) ** 2)
            nearest.points.append(p)
            nearest.labels.append(0)
    return groups + singles


def _point(p):
    import shapely

    return shapely.Point(p)


def load_prompts(prompts: Any, label_field: str = "label", group_field: str = "group") -> list[PromptGroup]:
    """A vector file path or a list of groups (dicts or :class:`PromptGroup`) -> prompt groups."""
    if isinstance(prompts, (str, os.PathLike)):
        return read_prompt_file(prompts, label_field, group_field)
    groups = [_as_group(item, i) for i, item in enumerate(prompts)]
    if not groups:
        raise SamError("no prompts given")
    return groups


def to_pixel_prompts(groups: Iterable[PromptGroup], view: Any, what: str = "prompt group",
                     items: str = "prompts") -> list[PixelPrompt]:
    """Reproject each group to the raster's CRS and convert to working-grid pixels (x, y).

    Raises SamError naming the groups that fall outside the raster (``what``: their name in the message, ``items``: the inputs' name).
    """
    import shapely
    from rasterio.warp import transform as warp_points
    from rasterio.warp import transform_geom

    out, outside = [], []
    for index, group in enumerate(groups):
        name = group.name if group.name is not None else index + 1
        src = _crs(group.crs, name) if group.crs is not None else view.crs
        same = src == view.crs
        pts = np.asarray(group.points, dtype=np.float64).reshape(-1, 2)
        if len(pts) != len(group.labels):
            raise SamError(f"prompt group {name}: {len(pts)} points but {len(group.labels)} labels")
        if not np.isfinite(pts).all():
            raise SamError(f"prompt group {name}: point coordinates must be finite numbers")
        if len(pts) and not same:
            with _reprojecting(name, src, view.crs):
                xs, ys = warp_points(src, view.crs, pts[:, 0].tolist(), pts[:, 1].tolist())
            pts = np.stack([xs, ys], axis=1)
            if not np.isfinite(pts).all():
                raise SamError(_reprojection_message(name, src, view.crs, "some points have no position there"))
        pixel_points = view.map_to_pixel(pts) if len(pts) else np.zeros((0, 2))
        box = None
        if group.box is not None:
            geom = group.box if hasattr(group.box, "geom_type") else _box(group.box, name)
            if geom.area <= 0:
                raise SamError(f"prompt group {name}: its polygon has no area (all its corners lie on one line or "
                               "point); draw a box with a width and a height")
            if not same:
                with _reprojecting(name, src, view.crs):
                    geom = shapely.geometry.shape(transform_geom(src, view.crs, shapely.geometry.mapping(geom), precision=-1))
            ring = np.asarray(shapely.get_coordinates(geom), dtype=np.float64)
            if not len(ring) or not np.isfinite(ring).all():
                raise SamError(_reprojection_message(name, src, view.crs, "the box has no position there"))
            px = view.map_to_pixel(ring)
            box = np.array([px[:, 0].min(), px[:, 1].min(), px[:, 0].max(), px[:, 1].max()])
        if not len(pixel_points) and box is None:
            raise SamError(f"prompt group {name} has neither points nor a box")
        inside_pts = (
            (pixel_points[:, 0] >= 0) & (pixel_points[:, 0] < view.width) & (pixel_points[:, 1] >= 0) & (pixel_points[:, 1] < view.height)
        )
        box_ok = box is None or (box[0] < view.width and box[2] > 0 and box[1] < view.height and box[3] > 0)
        if not inside_pts.all() or not box_ok:
            outside.append(str(name))
            continue
        out.append(PixelPrompt(pixel_points, np.asarray(group.labels, dtype=np.int64), box, name))
    if outside:
        raise SamError(
            f"{what}(s) {', '.join(outside[:10])}{' ...' if len(outside) > 10 else ''} lie outside the raster "
            f"(check the {items}' CRS and extent)"
        )
    return out


def _crs(value: Any, name: Any) -> Any:
    from rasterio.crs import CRS

    try:
        return CRS.from_user_input(value)
    except Exception as error:
        reason = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise SamError(f"prompt group {name}: {_plain(value)} is not a coordinate reference system ({reason}); "
                       "give one such as 'EPSG:4326'") from None


def _box(values: Any, name: Any) -> Any:
    import shapely

    try:
        numbers = [float(v) for v in values]
    except (TypeError, ValueError):
        numbers = []
    if len(numbers) != 4 or not np.isfinite(numbers).all():
        raise SamError(f"prompt group {name}: a box is four finite numbers (xmin, ymin, xmax, ymax), got {_plain(values)}")
    return shapely.box(*numbers)


def _reprojection_message(name: Any, src: Any, dst: Any, reason: str) -> str:
    return (f"prompt group {name}: cannot reproject its coordinates from {_crs_name(src)} to the raster's "
            f"{_crs_name(dst)} ({reason}); check that the prompts' CRS matches their coordinates "
            "(for example UTM metres labelled as EPSG:4326 degrees)")


def _crs_name(crs: Any) -> str:
    code = crs.to_epsg() if hasattr(crs, "to_epsg") else None
    return f"EPSG:{code}" if code else "its CRS"


@contextlib.contextmanager
def _reprojecting(name: Any, src: Any, dst: Any) -> Iterator[None]:
    """Turn PROJ's failures (``utm: Invalid latitude``) into one SamError naming the group and the CRSs."""
    try:
        yield
    except SamError:
        raise
    except Exception as error:
        reason = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise SamError(_reprojection_message(name, src, dst, reason)) from None
