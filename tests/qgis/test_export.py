"""Rasters that are not local files are exported to GeoTIFF for the engine, in place and in their CRS."""

from __future__ import annotations

from urllib.parse import quote

import pytest
from conftest import SHARED_DATA
from qgis.core import QgsRasterLayer, QgsRectangle
from qgis.PyQt.QtGui import QColor, QImage

from qgis_sam.export import ExportError, export_raster, local_raster_path, native_resolution

RGB = str(SHARED_DATA / "RGB.byte.tif")


def virtual_layer(source: QgsRasterLayer) -> QgsRasterLayer:
    e = source.extent()
    uri = (f"?crs={source.crs().authid()}&extent={e.xMinimum()},{e.yMinimum()},{e.xMaximum()},{e.yMaximum()}"
           f"&width={source.width()}&height={source.height()}&formula={quote(chr(34) + 'r@1' + chr(34) + ' * 1')}"
           f"&r:uri={quote(source.source())}&r:provider=gdal")
    layer = QgsRasterLayer(uri, "virtual", "virtualraster")
    assert layer.isValid()
    return layer


def test_local_files_go_by_path():
    layer = QgsRasterLayer(RGB, "rgb")
    assert local_raster_path(layer) == RGB
    assert native_resolution(layer) == pytest.approx(300.0379, abs=1e-3)


def test_virtual_raster_is_exported_in_place(tmp_path):
    source = QgsRasterLayer(RGB, "rgb")
    layer = virtual_layer(source)
    assert local_raster_path(layer) is None
    e = source.extent()
    area = QgsRectangle(e.xMinimum() + 30000, e.yMinimum() + 30000, e.xMinimum() + 90000, e.yMinimum() + 60000)
    path = export_raster(layer, area, 600.0, str(tmp_path / "out.tif"))
    out = QgsRasterLayer(path, "out")
    assert out.crs() == source.crs()
    assert (out.width(), out.height()) == (100, 50)
    assert out.extent().toString(3) == area.toString(3)
    # the exported pixel equals the source pixel at the same map position
    point = area.center()
    a = source.dataProvider().identify(point, 1).results()[1]  # QgsRaster.IdentifyFormatValue
    b = out.dataProvider().identify(point, 1).results()[1]
    assert a == b


def test_xyz_tiles_are_exported_as_rendered_rgba(tmp_path):
    tiles = tmp_path / "tiles" / "0" / "0"
    tiles.mkdir(parents=True)
    image = QImage(256, 256, QImage.Format_ARGB32)
    image.fill(QColor(0, 0, 255))
    for x in range(128, 192):
        for y in range(64, 128):
            image.setPixelColor(x, y, QColor(255, 0, 0))
    image.save(str(tiles / "0.png"))
    url = quote(f"file://{tmp_path}/tiles/{{z}}/{{x}}/{{y}}.png", safe=":/")
    layer = QgsRasterLayer(f"type=xyz&url={url}&zmax=0&zmin=0", "xyz", "wms")
    assert layer.isValid()
    assert local_raster_path(layer) is None and native_resolution(layer) is None
    path = export_raster(layer, layer.extent(), layer.extent().width() / 256, str(tmp_path / "xyz.tif"))
    out = QgsRasterLayer(path, "out")
    assert out.bandCount() == 4 and (out.width(), out.height()) == (256, 256)
    assert out.crs().authid() == "EPSG:3857"
    red = out.dataProvider().block(1, out.extent(), 256, 256)
    assert red.value(100, 160) == 255 and red.value(10, 10) == 0  # (row, col): the red square is in place


def test_export_refuses_too_many_pixels_and_disjoint_areas():
    layer = virtual_layer(QgsRasterLayer(RGB, "rgb"))
    with pytest.raises(ExportError, match="coarser resolution"):
        export_raster(layer, layer.extent(), 0.5)
    with pytest.raises(ExportError, match="does not overlap"):
        export_raster(layer, QgsRectangle(0, 0, 10, 10), 1.0)
    with pytest.raises(ExportError, match="greater than 0"):
        export_raster(layer, layer.extent(), 0)
