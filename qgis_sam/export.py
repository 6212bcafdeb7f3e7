"""Give the engine a file for any raster layer: local files by path, other layers exported to GeoTIFF.

The engine reads rasters with rasterio, so it needs a file. Layers of the GDAL provider backed by a
local file (GeoTIFF, JPEG2000, VRT, ...) are used in place. Every other layer (WMS, WMTS, XYZ basemaps,
QGIS virtual rasters, databases, remote files) is exported for an extent at a chosen resolution to a
temporary GeoTIFF in the layer's CRS: rendered RGB(A) for image services, raw bands for data providers.
"""

from __future__ import annotations

import math
import os
import tempfile
from typing import Optional

from qgis.core import (
    Qgis,
    QgsCoordinateTransformContext,
    QgsRasterBlockFeedback,
    QgsRasterFileWriter,
    QgsRasterLayer,
    QgsRasterPipe,
    QgsRectangle,
)

# Largest export, in pixels per side; beyond it the user must choose a coarser resolution.
MAX_EXPORT_SIDE = 20000


class ExportError(Exception):
    """The layer could not be exported; the message says why and what to change."""


def local_raster_path(layer: QgsRasterLayer) -> Optional[str]:
    """The local file behind ``layer`` if the engine can read it directly, else None."""
    if layer is None or not layer.isValid() or layer.providerType() != "gdal":
        return None
    path = layer.source().split("|")[0]
    return path if os.path.isfile(path) else None


def _is_image_service(layer: QgsRasterLayer) -> bool:
    provider = layer.dataProvider()
    return provider.dataType(1) in (Qgis.DataType.ARGB32, Qgis.DataType.ARGB32_Premultiplied)


class RasterExport:
    """An export of ``extent`` (layer CRS) of a layer at ``resolution`` (layer CRS units per pixel) to GeoTIFF.

    Created in the thread that owns the layer (it clones the provider and renderer there); :meth:`write`
    may then run in a worker thread. Image services (WMS, XYZ) are written as their rendered RGBA image,
    data providers as raw bands.
    """

    def __init__(self, layer: QgsRasterLayer, extent: QgsRectangle, resolution: float,
                 transform_context: Optional[QgsCoordinateTransformContext] = None) -> None:
        if resolution is None or not resolution > 0:
            raise ExportError("choose a resolution (map units per pixel) greater than 0 to export this raster")
        self.name = layer.name()
        self.extent = QgsRectangle(extent).intersect(layer.extent())
        if self.extent.isEmpty():
            raise ExportError(f"the area to segment does not overlap the raster layer '{self.name}'")
        self.width = max(int(math.ceil(self.extent.width() / resolution - 1e-6)), 1)
        self.height = max(int(math.ceil(self.extent.height() / resolution - 1e-6)), 1)
        if max(self.width, self.height) > MAX_EXPORT_SIDE:
            raise ExportError(
                f"exporting '{self.name}' at {resolution:g} map units per pixel gives {self.width} x {self.height} "
                f"pixels (at most {MAX_EXPORT_SIDE} per side): zoom in or choose a coarser resolution"
            )
        self.crs = layer.crs()
        self.transform_context = transform_context or QgsCoordinateTransformContext()
        self.pipe = QgsRasterPipe()
        if not self.pipe.set(layer.dataProvider().clone()):
            raise ExportError(f"the raster layer '{self.name}' cannot be read for export")
        if _is_image_service(layer) and layer.renderer() is not None:
            self.pipe.set(layer.renderer().clone())

    def write(self, path: Optional[str] = None, feedback: Optional[QgsRasterBlockFeedback] = None) -> str:
        """Write the GeoTIFF to ``path`` (a new temporary file when None) and return the path."""
        if path is None:
            handle, path = tempfile.mkstemp(prefix="sam_export_", suffix=".tif")
            os.close(handle)
        writer = QgsRasterFileWriter(path)
        writer.setOutputFormat("GTiff")
        writer.setCreateOptions(["COMPRESS=DEFLATE", "TILED=YES"])
        error = writer.writeRaster(self.pipe, self.width, self.height, self.extent, self.crs,
                                   self.transform_context, feedback)
        if error != QgsRasterFileWriter.WriterError.NoError:
            if os.path.exists(path):
                os.unlink(path)
            raise ExportError(f"exporting the raster layer '{self.name}' failed (QGIS raster writer error {int(error)})")
        return path


def export_raster(layer: QgsRasterLayer, extent: QgsRectangle, resolution: float, path: Optional[str] = None,
                  transform_context: Optional[QgsCoordinateTransformContext] = None,
                  feedback: Optional[QgsRasterBlockFeedback] = None) -> str:
    """Write ``extent`` (layer CRS) of ``layer`` at ``resolution`` (layer CRS units per pixel) to a GeoTIFF.

    Returns the path (a new temporary file when ``path`` is None).
    """
    return RasterExport(layer, extent, resolution, transform_context).write(path, feedback)


def native_resolution(layer: QgsRasterLayer) -> Optional[float]:
    """The layer's pixel size in its CRS units (the smaller side), or None for services without one."""
    if _is_image_service(layer) or layer.width() <= 0 or layer.height() <= 0:
        return None
    return min(layer.rasterUnitsPerPixelX(), layer.rasterUnitsPerPixelY())
