"""Write polygon features with their CRS, atomically; the file extension picks the format.

``.gpkg`` GeoPackage, ``.geojson``/``.json`` GeoJSON, ``.fgb`` FlatGeobuf, ``.shp`` Shapefile. The CRS is
written as the raster's WKT, so CRSs without an EPSG code survive in GeoPackage, FlatGeobuf and Shapefile.
GeoJSON can only name a CRS by its EPSG code: a CRS without one is refused there (use .gpkg). Shapefile
field names are limited to 10 characters: ``predicted_iou`` becomes ``pred_iou`` and ``stability_score``
``stability``. Files are written beside the output under a temporary name and renamed when complete, so a
failed or cancelled run leaves no output (and an existing output untouched). The output path is checked
before any work (:func:`sam_core.fileio.check_output_path`); a write that still fails (a disk filled
meanwhile) raises SamError naming the output.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import numpy as np

from sam_core.errors import SamError
from sam_core.fileio import atomic_path, check_output_path, free_space_if_short

PathLike = Union[str, "os.PathLike[str]"]

DRIVERS = {".gpkg": "GPKG", ".geojson": "GeoJSON", ".json": "GeoJSON", ".fgb": "FlatGeobuf", ".shp": "ESRI Shapefile"}
SHAPEFILE_NAMES = {"predicted_iou": "pred_iou", "stability_score": "stability"}
SHAPEFILE_PARTS = (".shp", ".shx", ".dbf", ".prj", ".cpg")


def driver_for(path: PathLike) -> str:
    """The OGR driver for an output path, from its extension (SamError for unknown ones)."""
    suffix = Path(path).suffix.lower()
    if suffix not in DRIVERS:
        raise SamError(
            f"cannot tell the vector format of {path}: use one of the extensions {', '.join(sorted(DRIVERS))}"
        )
    return DRIVERS[suffix]


def check_output(path: PathLike, crs: Any) -> str:
    """Check an output path before any work is done; returns its driver."""
    driver = driver_for(path)
    if driver == "GeoJSON" and crs is not None and crs.to_epsg() is None:
        raise SamError(
            f"GeoJSON cannot store this raster's CRS (it has no EPSG code); write {Path(path).with_suffix('.gpkg').name} "
            "(GeoPackage), .fgb or .shp instead"
        )
    check_output_path(path)
    return driver


def _columns(features: Sequence[Any], driver: str) -> tuple[list[str], list[np.ndarray]]:
    names: list[str] = []
    for feature in features:
        for name in feature.attributes:
            if name not in names:
                names.append(name)
    columns = []
    for name in names:
        values = [f.attributes.get(name) for f in features]
        present = [v for v in values if v is not None]
        if present and all(isinstance(v, (bool, int, np.integer)) for v in present) and len(present) == len(values):
            columns.append(np.asarray(values, dtype=np.int64))
        elif present and all(isinstance(v, (int, float, np.number)) for v in present):
            columns.append(np.asarray([np.nan if v is None else float(v) for v in values], dtype=np.float64))
        elif not present:
            columns.append(np.full(len(values), np.nan, dtype=np.float64))
        else:
            columns.append(np.asarray(["" if v is None else str(v) for v in values], dtype=object))
    if driver == "ESRI Shapefile":
        names = [SHAPEFILE_NAMES.get(n, n)[:10] for n in names]
    return names, columns


def write_features(path: PathLike, features: Sequence[Any], crs: Any, layer: str = "segments",
                   empty_schema: Optional[dict] = None) -> Path:
    """Write ``features`` (``.geometry`` shapely (Multi)Polygon, ``.attributes`` dict) to ``path``.

    ``crs`` is a rasterio CRS (or None). An existing file at ``path`` is replaced only on success.
    ``empty_schema``: the fields (name -> NumPy dtype) of a file without features (default: ``id`` only).
    """
    import pyogrio.raw
    import shapely

    target = Path(path).expanduser()
    driver = check_output(target, crs)
    geometries = [
        g if g.geom_type == "MultiPolygon" else shapely.MultiPolygon([g]) for g in (f.geometry for f in features)
    ]
    wkb = np.asarray(shapely.to_wkb(np.asarray(geometries, dtype=object)) if geometries else [], dtype=object)
    names, columns = _columns(features, driver)
    if not names:
        schema = empty_schema or {"id": np.int64}
        names, columns = list(schema), [np.zeros(0, dtype=dtype) for dtype in schema.values()]
        if driver == "ESRI Shapefile":
            names = [SHAPEFILE_NAMES.get(n, n)[:10] for n in names]
    options = dict(
        driver=driver,
        geometry_type="MultiPolygon",
        crs=None if crs is None else crs.to_wkt(),
        nan_as_null=True,
    )
    if driver in ("GPKG", "FlatGeobuf"):
        options["layer"] = layer
    try:
        if driver == "ESRI Shapefile":
            _write_shapefile(target, wkb, columns, names, options)
        else:
            with atomic_path(target) as tmp:
                pyogrio.raw.write(str(tmp), wkb, columns, names, **options)
    except SamError:
        raise
    except Exception as error:  # GDAL's own errors (a full disk shows as SQLite or I/O errors)
        raise _write_failed(target, error) from error
    return target


def _write_failed(target: Path, error: Exception) -> SamError:
    """A one-line SamError for a failed GDAL write of ``target``, naming a full disk when it is one."""
    reason = (str(error).strip().splitlines() or [type(error).__name__])[0]
    free = free_space_if_short(target.parent)
    if free is not None:
        return SamError(f"cannot write {target}: the disk is full ({free // 1024} KB free; GDAL said: {reason}); "
                        "free some space or choose another output folder")
    return SamError(f"cannot write {target}: {reason}")


def _write_shapefile(target: Path, wkb, columns, names, options) -> None:
    import pyogrio.raw

    folder = Path(tempfile.mkdtemp(prefix=f".{target.stem}.", suffix=".part", dir=target.parent))
    try:
        tmp = folder / target.name
        pyogrio.raw.write(str(tmp), wkb, columns, names, encoding="UTF-8", **options)
        parts = [p for p in folder.iterdir() if p.suffix.lower() in SHAPEFILE_PARTS]
        for stale in SHAPEFILE_PARTS:  # drop parts of an older output that this one does not have
            old = target.with_suffix(stale)
            if old.exists() and not (folder / old.name).exists():
                old.unlink()
        for part in sorted(parts, key=lambda p: p.suffix.lower() == ".shp"):  # the .shp last
            os.replace(part, target.parent / part.name)
    finally:
        with contextlib.suppress(FileNotFoundError):
            shutil.rmtree(folder)
