"""sam:find_objects through processing.run in real QGIS with the engine process, and the map tool's
"Find all" field driven through its widgets, with a small random-weight SAM 3 checkpoint: the polygons
equal sam_core's find_raster on the same raster and settings."""

from __future__ import annotations

import json

import pytest
from conftest import run_engine_python, same_crs, virtual_raster, wait_until
from qgis.core import (
    QgsCoordinateReferenceSystem,
    QgsCoordinateTransform,
    QgsFeature,
    QgsGeometry,
    QgsPointXY,
    QgsProcessingException,
    QgsProject,
    QgsRasterLayer,
    QgsRectangle,
    QgsVectorLayer,
)
from qgis.PyQt.QtCore import Qt
from qgis.PyQt.QtTest import QTest
from test_algorithms import algorithm, run, vector
from test_map_tool import canvas_on_scene, project_folder  # noqa: F401 (fixtures)

from qgis_sam import settings
from qgis_sam.map_tool import SamMapTool

TILES = {"TILE_SIZE": 160, "OVERLAP": 64}  # 4 tiles of the 256 x 256 scene


@pytest.fixture(scope="module")
def sam3_checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("sam3") / "sam3.pt"
    run_engine_python(f"""
        from helpers.official_sam3 import SMALL_SAM3, write_sam3_checkpoint
        write_sam3_checkpoint(SMALL_SAM3, {str(path)!r}, seed=1)
    """)
    return path


def reference(raster, checkpoint, out, **options) -> list[dict]:
    """sam_core's find_raster in the engine's Python: the polygons (WKT) and scores it writes."""
    code = f"""
        import json
        from helpers.georasters import read_output
        from sam_core.geo.find import find_raster
        from sam_core.geo.settings import TilingSettings
        options = json.loads({json.dumps(json.dumps(options))})
        find_raster({str(raster)!r}, {str(out)!r}, checkpoint={str(checkpoint)!r},
                    tiling=TilingSettings(tile_size=160, overlap=64, extent=options.pop("extent", None)), **options)
        geoms, attrs, _ = read_output({str(out)!r})
        print(json.dumps([{{"wkt": g.wkt, "score": float(s), "class": c}}
                          for g, s, c in zip(geoms, attrs["score"], attrs["class"])]))
    """
    return json.loads(run_engine_python(code).strip().splitlines()[-1])


def assert_same_polygons(features: list[QgsFeature], wanted: list[dict], score_tolerance: float = 1e-6) -> None:
    assert len(features) == len(wanted) > 0
    for item in wanted:
        geometry = QgsGeometry.fromWkt(item["wkt"])
        match = [f for f in features if f.geometry().equals(geometry) or
                 f.geometry().symDifference(geometry).area() < 1e-6 * max(geometry.area(), 1.0)]
        assert match, item
        assert match[0]["score"] == pytest.approx(item["score"], abs=score_tolerance)
        assert match[0]["class"] == item["class"]


def test_find_objects_equals_sam_core_in_the_raster_crs(processing, sam3_checkpoint, scene, tmp_path):
    path, _ = scene
    result = run("sam:find_objects", {"INPUT": str(path), "TEXT": "yellow rectangle", "THRESHOLD": 0.2, **TILES,
                                      "MODEL": 0, "CHECKPOINT": str(sam3_checkpoint),
                                      "OUTPUT": str(tmp_path / "found.gpkg")})
    layer = vector(result["OUTPUT"])
    assert same_crs(layer.crs(), QgsRasterLayer(str(path), "scene").crs())
    assert [f.name() for f in layer.fields() if f.name() != "fid"] == ["id", "class", "score", "area", "area_m2",
                                                                       "tile", "n_tiles"]
    wanted = reference(path, sam3_checkpoint, tmp_path / "reference.gpkg", text="yellow rectangle", threshold=0.2)
    assert_same_polygons(list(layer.getFeatures()), wanted)


def exemplar_layer(kind: str, crs: str, items: list) -> QgsVectorLayer:
    layer = QgsVectorLayer(kind, "exemplars", "memory")
    layer.setCrs(QgsCoordinateReferenceSystem(crs))
    features = []
    for geometry in items:
        feature = QgsFeature()
        feature.setGeometry(geometry)
        features.append(feature)
    layer.dataProvider().addFeatures(features)
    return layer


def test_exemplars_in_another_crs_are_reprojected(processing, sam3_checkpoint, scene, tmp_path):
    path, objects = scene
    raster_crs = QgsRasterLayer(str(path), "scene").crs()
    wgs84 = QgsCoordinateReferenceSystem("EPSG:4326")
    to_wgs84 = QgsCoordinateTransform(raster_crs, wgs84, QgsProject.instance())
    box = objects[2]["box"]  # the yellow rectangle, whole in one tile
    polygon = QgsGeometry.fromRect(QgsRectangle(*box))
    polygon.transform(to_wgs84)
    result = run("sam:find_objects", {"INPUT": str(path), "TEXT": "", "EXEMPLARS": exemplar_layer("Polygon", "EPSG:4326", [polygon]),
                                      "THRESHOLD": 0.0, **TILES, "MODEL": "sam3", "CHECKPOINT": str(sam3_checkpoint),
                                      "OUTPUT": str(tmp_path / "exemplar.gpkg")})
    wanted = reference(path, sam3_checkpoint, tmp_path / "reference.gpkg", exemplars=[box], threshold=0.0)
    # the box comes back from degrees within a fraction of a pixel: the same instances, scores within 2e-3
    found = list(vector(result["OUTPUT"]).getFeatures())
    assert len(found) == len(wanted) > 0 and {f["class"] for f in found} == {"exemplar"}
    assert sorted(f["score"] for f in found) == pytest.approx(sorted(w["score"] for w in wanted), abs=2e-3)

    # a point stands for a 32 x 32 pixel box around it (the scene's pixels are 2 m)
    x, y = objects[2]["center"]
    point = QgsGeometry.fromPointXY(QgsPointXY(x, y))
    result = run("sam:find_objects", {"INPUT": str(path), "TEXT": "rectangle",
                                      "EXEMPLARS": exemplar_layer("Point", raster_crs.authid(), [point]),
                                      "THRESHOLD": 0.0, **TILES, "MODEL": "sam3", "CHECKPOINT": str(sam3_checkpoint),
                                      "OUTPUT": str(tmp_path / "point.gpkg")})
    wanted = reference(path, sam3_checkpoint, tmp_path / "reference_point.gpkg", text="rectangle",
                       exemplars=[[x - 32, y - 32, x + 32, y + 32]], threshold=0.0)
    assert_same_polygons(list(vector(result["OUTPUT"]).getFeatures()), wanted, score_tolerance=1e-4)


def test_user_errors_say_what_to_do(processing, sam3_checkpoint, scene, tmp_path):
    path, _ = scene
    common = {"INPUT": str(path), **TILES, "CHECKPOINT": str(sam3_checkpoint), "OUTPUT": str(tmp_path / "x.gpkg")}
    far = exemplar_layer("Point", "EPSG:32633", [QgsGeometry.fromPointXY(QgsPointXY(600000.0, 4100000.0))])
    for params, message in (
        ({"TEXT": ""}, "Text (TEXT) is empty"),
        ({"TEXT": "nucleus " * 20}, "the text is too long: 40 tokens, SAM 3 reads at most 30"),
        ({"TEXT": "building", "MODEL": "vit_b"}, "'vit_b' cannot find objects by name (only SAM 3 models can). "
                                                 "Give one of the names or numbers 0 = sam3"),
        ({"TEXT": "building", "EXEMPLARS": far}, r"exemplar(s) 1 lie outside the raster (check the exemplars' CRS"),
    ):
        with pytest.raises(QgsProcessingException) as error:
            run("sam:find_objects", {**common, **params})
        assert message in str(error.value), str(error.value)
    assert not (tmp_path / "x.gpkg").exists()


def test_the_model_list_is_the_engines_concept_models(processing):
    names = settings.client().request("concept_models", {})
    assert set(algorithm("sam:find_objects").parameterDefinition("MODEL").options()) == set(names)
    assert set(settings.CONCEPT_MODEL_NAMES) == set(names)
    from qgis_sam.algorithms.find_objects import POINT_BOX_PIXELS

    out = run_engine_python("from sam_core.geo.prompts import POINT_BOX_PIXELS; print(POINT_BOX_PIXELS)")
    assert int(out.strip()) == POINT_BOX_PIXELS


def test_find_all_on_the_map_tool_panel_adds_the_polygons_to_the_output_layer(canvas_on_scene, sam3_checkpoint,
                                                                              tmp_path):
    canvas, layer, _, _ = canvas_on_scene
    settings.set_value("concept_model", "sam3")
    settings.set_value("concept_checkpoint", str(sam3_checkpoint))
    settings.set_value("tile_size", 160)
    settings.set_value("overlap", 64)
    settings.set_value("output_gpkg", "")
    messages, counts = [], []
    tool = SamMapTool(canvas, layer, settings.client(), lambda text, level: messages.append(text))
    tool.findFinished.connect(counts.append)
    canvas.setMapTool(tool)
    panel = tool.panel
    panel.show()
    try:
        QTest.mouseClick(panel.button, Qt.LeftButton)  # nothing typed: told what to do, nothing runs
        assert tool.find_task is None and "Type what to find" in messages[-1]
        QTest.keyClicks(panel.text, "yellow rectangle")
        panel.threshold.setValue(0.2)
        QTest.mouseClick(panel.button, Qt.LeftButton)
        assert not panel.button.isEnabled()
        assert wait_until(lambda: counts, 300), messages
        assert panel.button.isEnabled()
        extent = tool._visible_extent()
        wanted = reference(layer.source(), sam3_checkpoint, tmp_path / "reference.gpkg", text="yellow rectangle",
                           threshold=0.2,
                           extent=[extent.xMinimum(), extent.yMinimum(), extent.xMaximum(), extent.yMaximum()])
        assert counts == [len(wanted)] and len(wanted) > 0
        saved = QgsVectorLayer(f"{tmp_path / 'segment_anything.gpkg'}|layername=sam_segments", "saved", "ogr")
        assert saved.isValid() and same_crs(saved.crs(), layer.crs())
        found = list(saved.getFeatures())
        assert {f["class"] for f in found} == {"yellow rectangle"} and [f["id"] for f in found] == list(
            range(1, len(wanted) + 1))
        assert sorted(f["predicted_iou"] for f in found) == pytest.approx(sorted(w["score"] for w in wanted), abs=1e-6)
        assert f"Found {len(wanted)} 'yellow rectangle'" in messages[-1]
        del saved
    finally:
        tool.cleanup()
        settings.set_value("concept_checkpoint", "")


def test_the_plugin_docks_the_find_all_panel_while_the_tool_runs(qgis_iface, scene, without_provider):
    import qgis_sam
    from qgis.PyQt.QtWidgets import QLineEdit, QPushButton

    plugin = qgis_sam.classFactory(qgis_iface)
    plugin.initGui()
    try:
        raster = QgsRasterLayer(str(scene[0]), "scene")
        QgsProject.instance().addMapLayer(raster)
        qgis_iface.setActiveLayer(raster)
        tool = plugin.start_map_tool(True)
        dock = plugin.dock
        assert dock is not None and dock.widget() is tool.panel
        assert dock.findChild(QLineEdit, "find_text") is tool.panel.text
        assert dock.findChild(QPushButton, "find_all").text() == "Find all"
    finally:
        plugin.unload()
        QgsProject.instance().removeAllMapLayers()
    assert plugin.dock is None


def test_find_all_on_a_raster_that_is_not_a_file_searches_its_export(canvas_on_scene, sam3_checkpoint, tmp_path):
    import os

    canvas, layer, _, _ = canvas_on_scene
    virtual = virtual_raster(layer)
    settings.set_value("concept_checkpoint", str(sam3_checkpoint))
    settings.set_value("tile_size", 256)
    settings.set_value("overlap", 32)
    messages, counts = [], []
    tool = SamMapTool(canvas, virtual, settings.client(), lambda text, level: messages.append(text))
    tool.findFinished.connect(counts.append)
    try:
        QTest.keyClicks(tool.panel.text, "square")
        tool.panel.threshold.setValue(0.0)
        QTest.keyClick(tool.panel.text, Qt.Key_Return)  # Enter in the field presses Find all
        task = tool.find_task
        assert task is not None and task.params["raster"] is None  # exported in the task
        assert wait_until(lambda: counts, 300), messages
        assert counts[0] > 0, messages
        exported = task.params["raster"]
        assert exported and not os.path.exists(exported)  # the temporary export is gone
        saved = QgsVectorLayer(f"{tmp_path / 'segment_anything.gpkg'}|layername=sam_segments", "saved", "ogr")
        assert saved.featureCount() == counts[0] and same_crs(saved.crs(), layer.crs())
        assert all(layer.extent().buffered(1.0).contains(f.geometry().boundingBox()) for f in saved.getFeatures())
        del saved
    finally:
        tool.cleanup()
        settings.set_value("concept_checkpoint", "")
