"""The map tool driven by synthetic mouse and key events on a real QgsMapCanvas, with the engine."""

from __future__ import annotations

import os

import pytest
from conftest import iou, needs_demo, virtual_raster, wait_until
from qgis.core import (
    QgsApplication,
    QgsCoordinateReferenceSystem,
    QgsCoordinateTransform,
    QgsGeometry,
    QgsPointXY,
    QgsProject,
    QgsRasterLayer,
    QgsVectorLayer,
)
from qgis.PyQt.QtCore import QPoint, Qt
from qgis.PyQt.QtTest import QTest

from qgis_sam import settings
from qgis_sam.map_tool import SamMapTool

WGS84 = QgsCoordinateReferenceSystem("EPSG:4326")


@pytest.fixture
def canvas_on_scene(qgis_canvas, scene):
    """The canvas in EPSG:4326 (not the raster's CRS) showing the generated scene."""
    path, objects = scene
    layer = QgsRasterLayer(str(path), "scene")
    QgsProject.instance().addMapLayer(layer)
    window = qgis_canvas.window()
    window.resize(500, 500)
    window.show()
    wait_until(lambda: qgis_canvas.viewport().width() > 300, 10)
    qgis_canvas.setDestinationCrs(WGS84)
    qgis_canvas.setLayers([layer])
    to_canvas = QgsCoordinateTransform(layer.crs(), WGS84, QgsProject.instance())
    qgis_canvas.setExtent(to_canvas.transformBoundingBox(layer.extent()))
    qgis_canvas.refresh()
    yield qgis_canvas, layer, objects, to_canvas
    qgis_canvas.unsetMapTool(qgis_canvas.mapTool())
    # no layer is removed while the canvas renders it or a task reads it (QGIS would crash, not fail)
    qgis_canvas.stopRendering()
    assert wait_until(lambda: not qgis_canvas.isDrawing()
                      and QgsApplication.taskManager().countActiveTasks() == 0, 60)
    qgis_canvas.setLayers([])
    qgis_canvas.stopRendering()
    for item in list(QgsProject.instance().mapLayers().values()):
        QgsProject.instance().removeMapLayer(item)


def pixel_of(canvas, to_canvas, x: float, y: float) -> QPoint:
    """Canvas pixel of raster-CRS map coordinates (x, y)."""
    point = canvas.getCoordinateTransform().transform(to_canvas.transform(QgsPointXY(x, y)))
    return QPoint(round(point.x()), round(point.y()))


def idle(tool: SamMapTool, timeout: float = 120) -> bool:
    return wait_until(lambda: not tool.busy and tool.task is None, timeout)


def use_model(checkpoint=None, tile_size: int = 256) -> None:
    settings.set_value("model", "demo")
    settings.set_value("checkpoint", str(checkpoint) if checkpoint else "")
    settings.set_value("tile_size", tile_size)
    settings.set_value("overlap", 32)
    settings.set_value("output_gpkg", "")


@pytest.fixture(autouse=True)
def project_folder(tmp_path):
    """The project's home folder (where commits go by default) is this test's folder."""
    project = QgsProject.instance()
    previous = project.presetHomePath()
    project.setPresetHomePath(str(tmp_path))
    yield tmp_path
    project.setPresetHomePath(previous)


def test_clicks_keys_and_commit(canvas_on_scene, small_checkpoint, tmp_path):
    canvas, layer, objects, to_canvas = canvas_on_scene
    use_model(small_checkpoint)
    messages = []
    tool = SamMapTool(canvas, layer, settings.client(), lambda text, level: messages.append(text))
    canvas.setMapTool(tool)
    cx, cy = objects[0]["center"]
    pixel = pixel_of(canvas, to_canvas, cx, cy)
    QTest.mouseClick(canvas.viewport(), Qt.LeftButton, Qt.NoModifier, pixel)
    assert len(tool.points) == 1
    # the click reached the engine in the raster's CRS (within one canvas pixel)
    x, y, label = tool.points[0]
    assert label == 1
    assert abs(x - cx) < 3 and abs(y - cy) < 3
    assert idle(tool), messages
    assert not messages
    assert tool._ready  # the first request ran as a QgsTask and encoded the tile

    QTest.mouseClick(canvas.viewport(), Qt.RightButton, Qt.NoModifier, pixel + QPoint(40, 0))
    assert [p[2] for p in tool.points] == [1, 0]
    assert idle(tool)
    QTest.keyClick(canvas, Qt.Key_Backspace)
    assert [p[2] for p in tool.points] == [1]
    assert idle(tool)

    # a drag draws a box in the raster's CRS
    box = [pixel_of(canvas, to_canvas, *objects[1]["box"][:2]), pixel_of(canvas, to_canvas, *objects[1]["box"][2:])]
    QTest.mousePress(canvas.viewport(), Qt.LeftButton, Qt.NoModifier, box[0])
    QTest.mouseMove(canvas.viewport(), box[1])
    QTest.mouseRelease(canvas.viewport(), Qt.LeftButton, Qt.NoModifier, box[1])
    assert tool.box is not None and len(tool.points) == 1
    x0, y0, x1, y1 = tool.box
    bx0, by0, bx1, by1 = objects[1]["box"]
    assert max(abs(x0 - bx0), abs(y0 - by0), abs(x1 - bx1), abs(y1 - by1)) < 10
    assert idle(tool)

    QTest.keyClick(canvas, Qt.Key_Escape)
    assert tool.points == [] and tool.box is None and tool.geometry is None

    # commit: what the (random-weight, seeded) model previews is saved at once into a GeoPackage in the
    # project's folder (no unsaved scratch layer), in the raster's CRS, and the user is told where
    QTest.mouseClick(canvas.viewport(), Qt.LeftButton, Qt.NoModifier, pixel)
    assert idle(tool)
    assert tool.geometry is not None and tool._preview.numberOfVertices() > 0
    committed = []
    tool.committed.connect(committed.append)
    QTest.keyClick(canvas, Qt.Key_Return)
    assert len(committed) == 1 and tool.points == [] and tool.geometry is None
    default = tmp_path / "segment_anything.gpkg"
    (output,) = [lyr for lyr in QgsProject.instance().mapLayers().values() if lyr.name() == "Segment Anything"]
    assert output.providerType() == "ogr" and output.source().startswith(str(default))
    assert any(str(default) in text and "saved" in text for text in messages), messages
    saved = QgsVectorLayer(f"{default}|layername=sam_segments", "saved", "ogr")
    assert saved.isValid() and saved.crs() == layer.crs() and saved.featureCount() == 1
    feature = next(saved.getFeatures())
    assert feature["id"] == 1 and feature["points"] == 1 and feature["raster"] == "scene"
    assert feature.geometry().area() == pytest.approx(feature["area"])
    del saved

    # or into a chosen GeoPackage
    gpkg = tmp_path / "kept.gpkg"
    settings.set_value("output_gpkg", str(gpkg))
    QTest.mouseClick(canvas.viewport(), Qt.LeftButton, Qt.NoModifier, pixel)
    assert idle(tool) and tool.geometry is not None
    QTest.keyClick(canvas, Qt.Key_Enter)
    settings.set_value("output_gpkg", "")
    kept = QgsVectorLayer(f"{gpkg}|layername=sam_segments", "kept", "ogr")
    assert kept.isValid() and kept.featureCount() == 1 and kept.crs() == layer.crs()
    tool.cleanup()


@needs_demo
def test_click_gives_the_expected_polygon_with_demo(canvas_on_scene):
    canvas, layer, objects, to_canvas = canvas_on_scene
    use_model(tile_size=settings.DEFAULTS["tile_size"])
    tool = SamMapTool(canvas, layer, settings.client())
    canvas.setMapTool(tool)
    for index, item in enumerate(objects):
        QTest.mouseClick(canvas.viewport(), Qt.LeftButton, Qt.NoModifier, pixel_of(canvas, to_canvas, *item["center"]))
        assert idle(tool)
        assert tool.geometry is not None
        assert iou(tool.geometry, QgsGeometry.fromWkt(item["wkt"])) >= 0.8, index
        QTest.keyClick(canvas, Qt.Key_Return)
    (output,) = [lyr for lyr in QgsProject.instance().mapLayers().values() if lyr.name() == "Segment Anything"]
    assert output.featureCount() == len(objects)
    assert sorted(f["id"] for f in output.getFeatures()) == list(range(1, len(objects) + 1))
    tool.cleanup()


def test_non_file_raster_is_exported_for_the_visible_extent(canvas_on_scene, small_checkpoint):
    canvas, layer, objects, to_canvas = canvas_on_scene
    virtual = virtual_raster(layer)
    use_model(small_checkpoint)
    messages = []
    tool = SamMapTool(canvas, virtual, settings.client(), lambda text, level: messages.append(text))
    canvas.setMapTool(tool)
    QTest.mouseClick(canvas.viewport(), Qt.LeftButton, Qt.NoModifier, pixel_of(canvas, to_canvas, *objects[0]["center"]))
    assert idle(tool), messages
    assert not messages
    exported = tool._exported
    assert exported and QgsRasterLayer(exported, "x").crs() == layer.crs()
    assert tool._exported_extent.contains(QgsPointXY(*objects[0]["center"]))
    assert tool.geometry is not None
    tool.cleanup()
    assert not os.path.exists(exported)
