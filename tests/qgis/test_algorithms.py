"""processing.run of the three Segment Anything algorithms in real QGIS, with the engine process."""

from __future__ import annotations

import os
import signal

import pytest
from conftest import SHARED_DATA, iou, needs_demo, same_crs
from qgis.core import (
    QgsCoordinateReferenceSystem,
    QgsFeature,
    QgsField,
    QgsGeometry,
    QgsPointXY,
    QgsProcessingException,
    QgsProcessingFeedback,
    QgsProject,
    QgsRasterLayer,
    QgsVectorLayer,
)
from qgis.PyQt.QtCore import QVariant

RGB = str(SHARED_DATA / "RGB.byte.tif")
FIELDS = {"id", "predicted_iou", "stability_score", "area", "tile"}


def run(algorithm: str, params: dict, feedback=None):
    import processing

    return processing.run(algorithm, params, feedback=feedback)


def algorithm(algorithm_id: str):
    from qgis.core import QgsApplication

    return QgsApplication.processingRegistry().algorithmById(algorithm_id)


def vector(path_or_layer) -> QgsVectorLayer:
    if isinstance(path_or_layer, QgsVectorLayer):
        return path_or_layer
    layer = QgsVectorLayer(str(path_or_layer), "out", "ogr")
    assert layer.isValid(), path_or_layer
    return layer


class RecordingFeedback(QgsProcessingFeedback):
    def __init__(self) -> None:
        super().__init__()
        self.values: list[float] = []

    def setProgress(self, progress: float) -> None:  # noqa: N802
        super().setProgress(progress)
        self.values.append(progress)


@pytest.fixture
def project_in_wgs84():
    """The project CRS differs from every raster's."""
    project = QgsProject.instance()
    previous = project.crs()
    project.setCrs(QgsCoordinateReferenceSystem("EPSG:4326"))
    yield project
    project.setCrs(previous)


def test_automask_on_landsat_gives_polygons_in_the_raster_crs(processing, small_checkpoint, tmp_path,
                                                              project_in_wgs84):
    out = tmp_path / "auto.gpkg"
    feedback = RecordingFeedback()
    result = run("sam:automask_raster", {
        "INPUT": RGB, "TILE_SIZE": 512, "OVERLAP": 64, "CHECKPOINT": str(small_checkpoint),
        "POINTS_PER_SIDE": 4, "PRED_IOU_THRESH": 0.0, "STABILITY_THRESH": 0.0, "OUTPUT": str(out)}, feedback)
    # progress reached the feedback tile by tile (4 tiles)
    assert [round(p) for p in feedback.values if p > 0][:4] == [25, 50, 75, 100]
    layer = vector(result["OUTPUT"])
    assert layer.crs() == QgsRasterLayer(RGB, "rgb").crs()
    assert FIELDS <= set(layer.fields().names())
    # the help describes every attribute the output has
    help_text = algorithm("sam:automask_raster").shortHelpString()
    assert [name for name in layer.fields().names() if name != "fid" and f"<i>{name}</i>" not in help_text] == []
    # nodata frame: no polygon reaches outside the raster's data
    extent = QgsRasterLayer(RGB, "rgb").extent()
    for feature in layer.getFeatures():
        assert extent.contains(feature.geometry().boundingBox())


def test_encode_raster_counts_tiles(processing, small_checkpoint):
    result = run("sam:encode_raster", {"INPUT": RGB, "TILE_SIZE": 512, "OVERLAP": 64,
                                       "CHECKPOINT": str(small_checkpoint)})
    assert result["TILES"] == 4


def prompt_layer(points_crs: str, points: list[tuple[float, float, int]]) -> QgsVectorLayer:
    layer = QgsVectorLayer(f"Point?crs={points_crs}", "prompts", "memory")
    layer.dataProvider().addAttributes([QgsField("positive", QVariant.Int)])
    layer.updateFields()
    features = []
    for x, y, label in points:
        feature = QgsFeature(layer.fields())
        feature.setGeometry(QgsGeometry.fromPointXY(QgsPointXY(x, y)))
        feature["positive"] = label
        features.append(feature)
    layer.dataProvider().addFeatures(features)
    return layer


def test_segment_prompts_from_another_crs(processing, small_checkpoint, scene, project_in_wgs84):
    from qgis.core import QgsCoordinateTransform

    path, objects = scene
    to_wgs84 = QgsCoordinateTransform(QgsCoordinateReferenceSystem("EPSG:32633"),
                                      QgsCoordinateReferenceSystem("EPSG:4326"), QgsProject.instance())
    centre = to_wgs84.transform(QgsPointXY(*objects[0]["center"]))
    prompts = prompt_layer("EPSG:4326", [(centre.x(), centre.y(), 1)])
    result = run("sam:segment_prompts", {"INPUT": str(path), "PROMPTS": prompts, "LABEL_FIELD": "positive",
                                         "CHECKPOINT": str(small_checkpoint), "OUTPUT": "TEMPORARY_OUTPUT"})
    layer = vector(result["OUTPUT"])
    assert layer.crs() == QgsRasterLayer(str(path), "scene").crs()
    assert "group" in layer.fields().names()
    help_text = algorithm("sam:segment_prompts").shortHelpString()
    assert [name for name in layer.fields().names() if name != "fid" and f"<i>{name}</i>" not in help_text] == []


class CancelAfterFirstTile(QgsProcessingFeedback):
    def setProgress(self, progress: float) -> None:  # noqa: N802
        super().setProgress(progress)
        if progress > 0:
            self.cancel()


class KillEngineAfterFirstTile(QgsProcessingFeedback):
    def __init__(self) -> None:
        super().__init__()
        self.killed = False

    def setProgress(self, progress: float) -> None:  # noqa: N802
        super().setProgress(progress)
        from qgis_sam import settings

        pid = settings.client().pid
        if progress > 0 and not self.killed and pid is not None:
            self.killed = True
            os.kill(pid, signal.SIGKILL)


def many_tiles(checkpoint, out) -> dict:
    return {"INPUT": RGB, "TILE_SIZE": 128, "OVERLAP": 16, "CHECKPOINT": str(checkpoint), "POINTS_PER_SIDE": 2,
            "OUTPUT": str(out)}


def test_cancel_mid_run_writes_no_output(processing, small_checkpoint, tmp_path):
    out = tmp_path / "cancelled.gpkg"
    with pytest.raises(QgsProcessingException, match="Cancelled"):
        run("sam:automask_raster", many_tiles(small_checkpoint, out), CancelAfterFirstTile())
    assert not out.exists()


def test_engine_killed_mid_run_is_reported_and_the_next_run_works(processing, small_checkpoint, tmp_path):
    out = tmp_path / "killed.gpkg"
    feedback = KillEngineAfterFirstTile()
    with pytest.raises(QgsProcessingException, match="stopped unexpectedly") as error:
        run("sam:automask_raster", many_tiles(small_checkpoint, out), feedback)
    assert feedback.killed and "restarts with the next request" in str(error.value)
    assert not out.exists()
    result = run("sam:encode_raster", {"INPUT": RGB, "TILE_SIZE": 512, "OVERLAP": 64,
                                       "CHECKPOINT": str(small_checkpoint)})
    assert result["TILES"] == 4


def test_user_errors_are_processing_errors(processing, small_checkpoint, tmp_path):
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(QgsProcessingException) as error:
        run("sam:encode_raster", {"INPUT": RGB, "CHECKPOINT": str(bad)})
    assert "bad.pth" in str(error.value)


@needs_demo
@pytest.mark.parametrize("which", ["scene", "custom_crs_scene"])
def test_demo_segments_known_objects_in_place(processing, which, request, tmp_path, project_in_wgs84):
    path, objects = request.getfixturevalue(which)
    raster = QgsRasterLayer(str(path), "scene")
    # one object per run, prompted by a positive point at its centre (in the raster's CRS)
    for index, item in enumerate(objects):
        prompts = QgsVectorLayer("Point", "prompts", "memory")
        prompts.setCrs(raster.crs())
        prompts.dataProvider().addAttributes([QgsField("label", QVariant.Int)])
        prompts.updateFields()
        feature = QgsFeature(prompts.fields())
        feature.setGeometry(QgsGeometry.fromPointXY(QgsPointXY(*item["center"])))
        feature["label"] = 1
        prompts.dataProvider().addFeatures([feature])
        result = run("sam:segment_prompts", {"INPUT": str(path), "PROMPTS": prompts, "LABEL_FIELD": "label",
                                             "MODEL": "demo", "OUTPUT": str(tmp_path / f"{which}_{index}.gpkg")})
        layer = vector(result["OUTPUT"])
        assert same_crs(layer.crs(), raster.crs())
        geometry = QgsGeometry.unaryUnion([f.geometry() for f in layer.getFeatures()])
        assert iou(geometry, QgsGeometry.fromWkt(item["wkt"])) >= 0.8, (index, iou(geometry, QgsGeometry.fromWkt(item["wkt"])))

    # automatic masks with the grid and thresholds left empty: the engine uses demo's (16 points, 0.5, 0.8)
    result = run("sam:automask_raster", {"INPUT": str(path), "MODEL": "demo",
                                         "OUTPUT": str(tmp_path / f"{which}_auto.gpkg")})
    layer = vector(result["OUTPUT"])
    assert same_crs(layer.crs(), raster.crs())
    found = [f.geometry() for f in layer.getFeatures()]
    best = [max((iou(QgsGeometry.fromWkt(item["wkt"]), g) for g in found), default=0.0) for item in objects]
    assert min(best) >= 0.8, best


@pytest.mark.parametrize("algorithm_id", ["sam:automask_raster", "sam:segment_prompts", "sam:encode_raster",
                                          "sam:find_objects"])
def test_help_in_the_dialog_names_parameters_by_their_labels(processing, qgis_iface, monkeypatch, algorithm_id):
    import re

    import processing as qgis_processing
    from qgis.gui import QgsBrowserGuiModel
    from qgis.PyQt.QtWidgets import QLabel, QTextBrowser

    browser = QgsBrowserGuiModel()  # pytest-qgis's iface has none; the dialog's file widgets need one
    monkeypatch.setattr(qgis_iface, "browserModel", lambda: browser, raising=False)
    alg = algorithm(algorithm_id)
    dialog = qgis_processing.createAlgorithmDialog(algorithm_id)
    try:
        shown = " ".join(w.toPlainText() for w in dialog.findChildren(QTextBrowser))
        labels = [w.text() for w in dialog.findChildren(QLabel)]
        help_text = alg.shortHelpString()
        plain = re.sub("<[^>]+>", "", help_text)
        assert plain.split(".")[0] in shown  # the dialog shows this help
        ids = [p.name() for p in alg.parameterDefinitions()]
        assert [name for name in ids if re.search(rf"\b{name}\b", plain)] == []
        named = re.findall(r"<b>(.*?)</b>", help_text)
        assert named, help_text
        for name in named:  # each parameter the help names is a label of the dialog
            assert any(label.startswith(name) for label in labels), (name, labels)
    finally:
        dialog.close()
        dialog.deleteLater()


def test_model_by_index_or_name_and_a_clear_message_for_an_unknown_one(processing, scene):
    path, _ = scene
    common = {"INPUT": str(path), "TILE_SIZE": 256, "OVERLAP": 32}
    assert run("sam:encode_raster", {**common, "MODEL": 0})["TILES"] == 1  # 0 = demo, as scripts pass enums
    assert run("sam:encode_raster", {**common, "MODEL": "demo"})["TILES"] == 1
    from qgis_sam.settings import MODEL_NAMES

    for wrong in ("vit_x", len(MODEL_NAMES)):  # one past the last index
        with pytest.raises(QgsProcessingException) as error:
            run("sam:encode_raster", {**common, "MODEL": wrong})
        message = str(error.value)
        assert "Incorrect parameter value" not in message
        assert repr(wrong) in message and "0 = demo" in message and "4 = vit_h" in message
        assert "5 = sam2.1_hiera_tiny" in message and "8 = sam2.1_hiera_large" in message
        assert f"{len(MODEL_NAMES) - 1} = {MODEL_NAMES[-1]}" in message


def test_model_list_offers_sam2_1(processing):
    """The MODEL list of the Processing algorithms offers the four SAM 2.1 models after SAM's (image mode)."""
    names = ["sam2.1_hiera_tiny", "sam2.1_hiera_small", "sam2.1_hiera_base_plus", "sam2.1_hiera_large"]
    for algorithm_id in ("sam:encode_raster", "sam:automask_raster", "sam:segment_prompts"):
        assert algorithm(algorithm_id).parameterDefinition("MODEL").options()[5:9] == names
    from qgis_sam.algorithms.base import model_name

    assert model_name(5) == "sam2.1_hiera_tiny" and model_name("sam2.1_hiera_large") == "sam2.1_hiera_large"
