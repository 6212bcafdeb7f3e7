"""The map tool: click and drag on the canvas, see the object's polygon, Enter to keep it.

Gestures: left click adds a positive point, right click a negative point, a left drag draws a box;
Enter commits the previewed polygon into the output layer (layer ``sam_segments`` of a GeoPackage, saved at
once: the one chosen in the settings, else ``segment_anything.gpkg`` in the project's folder or the home
folder; the first commit says where), Esc clears the prompts, Backspace removes
the last point or box. Clicks arrive in the canvas (project) CRS and are sent to the engine in the
raster's CRS; the engine answers polygons in the raster's CRS, shown on the canvas after a transform.

The first request for a raster runs in a ``QgsTask`` (with progress) because it encodes the tile under
the click (and exports non-file rasters); the following ones go to the engine asynchronously and only
run the mask decoder. Answers to outdated prompts are dropped.

"Find all" (the tool's :class:`FindAllPanel`, shown in a dock while the tool is active): type what to find
(e.g. building) and press the button or Enter; SAM 3 (the ``concept_model`` setting, or the
``concept_checkpoint`` file) searches the raster's visible extent tile by tile in a ``QgsTask``
(engine request ``find_raster``), and every instance found is added to the output layer like a commit,
with its ``class`` (the text) and its score as ``predicted_iou``.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from typing import Any, Callable, Optional

from qgis.core import (
    Qgis,
    QgsApplication,
    QgsCoordinateReferenceSystem,
    QgsCoordinateTransform,
    QgsFeature,
    QgsField,
    QgsGeometry,
    QgsPointXY,
    QgsProject,
    QgsRasterLayer,
    QgsRectangle,
    QgsTask,
    QgsVectorFileWriter,
    QgsVectorLayer,
    QgsWkbTypes,
)
from qgis.gui import QgsMapCanvas, QgsMapTool, QgsRubberBand, QgsVertexMarker
from qgis.PyQt.QtCore import QMetaType, QPoint, Qt, QVariant, pyqtSignal
from qgis.PyQt.QtGui import QColor
from qgis.PyQt.QtWidgets import QDoubleSpinBox, QHBoxLayout, QLineEdit, QPushButton, QWidget

from . import settings
from .engine_client import EngineClient, EngineError
from .export import ExportError, RasterExport, local_raster_path

LANE = "interactive"
OUTPUT_PROPERTY = "qgis_sam/output"
OUTPUT_LAYER = "sam_segments"
DEFAULT_GPKG = "segment_anything.gpkg"
DRAG_PIXELS = 5


if Qgis.QGIS_VERSION_INT >= 33800:  # QgsField takes QMetaType.Type (QGIS 4's PyQt6 has no QVariant.Type)
    _INT, _DOUBLE, _STRING = QMetaType.Type.Int, QMetaType.Type.Double, QMetaType.Type.QString
else:
    _INT, _DOUBLE, _STRING = QVariant.Type.Int, QVariant.Type.Double, QVariant.Type.String


def output_fields() -> list[QgsField]:
    return [
        QgsField("id", _INT),
        QgsField("predicted_iou", _DOUBLE),
        QgsField("area", _DOUBLE),
        QgsField("points", _INT),
        QgsField("box", _INT),
        QgsField("model", _STRING),
        QgsField("raster", _STRING),
        QgsField("class", _STRING),
    ]


def default_output_gpkg() -> str:
    """Where committed polygons go when no GeoPackage is chosen: ``segment_anything.gpkg`` in the project's
    folder, or in the user's home folder while the project is not saved."""
    folder = QgsProject.instance().homePath() or os.path.expanduser("~")
    return os.path.join(folder, DEFAULT_GPKG)


def output_layer(crs: QgsCoordinateReferenceSystem, gpkg: str) -> QgsVectorLayer:
    """The layer committed polygons go to: layer ``sam_segments`` of GeoPackage ``gpkg`` (created when
    missing), saved on disk with every commit. An output layer already in the project is reused.
    """
    project = QgsProject.instance()
    key = f"{crs.toWkt()}|{gpkg}"
    for layer in project.mapLayers().values():
        if isinstance(layer, QgsVectorLayer) and layer.customProperty(OUTPUT_PROPERTY) == key and layer.isValid():
            return layer
    uri = f"{gpkg}|layername={OUTPUT_LAYER}"
    layer = QgsVectorLayer(uri, "Segment Anything", "ogr")
    if not layer.isValid():
        options = QgsVectorFileWriter.SaveVectorOptions()
        options.driverName = "GPKG"
        options.layerName = OUTPUT_LAYER
        if os.path.exists(gpkg):
            options.actionOnExistingFile = QgsVectorFileWriter.ActionOnExistingFile.CreateOrOverwriteLayer
        fields = QgsVectorLayer("MultiPolygon", "tmp", "memory").fields()
        for field in output_fields():
            fields.append(field)
        writer = QgsVectorFileWriter.create(gpkg, fields, QgsWkbTypes.Type.MultiPolygon, crs,
                                            project.transformContext(), options)
        if writer.hasError() != QgsVectorFileWriter.WriterError.NoError:
            raise EngineError(f"could not create the output GeoPackage {gpkg}: {writer.errorMessage()}; "
                              "choose another one in Segment Anything ▸ Engine settings")
        del writer
        layer = QgsVectorLayer(uri, "Segment Anything", "ogr")
    layer.setCustomProperty(OUTPUT_PROPERTY, key)
    symbol = layer.renderer().symbol() if layer.renderer() is not None else None
    if symbol is not None:
        symbol.setColor(QColor(255, 170, 0, 90))
    project.addMapLayer(layer)
    return layer


class SegmentTask(QgsTask):
    """Runs one engine request ``cmd`` (and the export of a non-file raster) in QGIS's task manager."""

    def __init__(self, description: str, client: EngineClient, params: dict,
                 prepare: Optional[Callable[[], None]] = None, cmd: str = "segment_at") -> None:
        super().__init__(description, QgsTask.Flag.CanCancel)
        self.client = client
        self.params = params
        self.prepare = prepare
        self.cmd = cmd
        self.result_value: Any = None
        self.error: Optional[str] = None
        self.on_finished: Optional[Callable[["SegmentTask"], None]] = None

    def run(self) -> bool:
        try:
            if self.prepare is not None:
                self.prepare()
            self.result_value = self.client.request(
                self.cmd, self.params, lane=LANE, is_cancelled=self.isCanceled,
                progress=lambda done, total, message: self.setProgress(100.0 * done / total) if total else None)
            return True
        except (EngineError, ExportError) as error:
            self.error = str(error)
            return False

    def finished(self, ok: bool) -> None:
        if not ok and self.error is None:
            self.error = "cancelled"
        if self.on_finished is not None:
            self.on_finished(self)


class FindAllPanel(QWidget):
    """The map tool's panel: a text field, the least score and a "Find all" button (Enter in the field
    presses it)."""

    def __init__(self, tool: "SamMapTool") -> None:
        super().__init__()
        self.setObjectName("SamFindAllPanel")
        self.tool = tool
        self.text = QLineEdit()
        self.text.setObjectName("find_text")
        self.text.setPlaceholderText("what to find, e.g. building")
        self.text.setToolTip("Find every instance of a word or short phrase in the visible extent of the raster "
                             "(SAM 3); the polygons are added to the output layer")
        self.threshold = QDoubleSpinBox()
        self.threshold.setObjectName("find_threshold")
        self.threshold.setRange(0.0, 1.0)
        self.threshold.setSingleStep(0.05)
        self.threshold.setValue(0.5)
        self.threshold.setPrefix("score ≥ ")
        self.threshold.setToolTip("The least score (0 to 1) an object needs to be kept")
        self.button = QPushButton("Find all")
        self.button.setObjectName("find_all")
        self.button.clicked.connect(self.find)
        self.text.returnPressed.connect(self.find)
        layout = QHBoxLayout(self)
        layout.addWidget(self.text)
        layout.addWidget(self.threshold)
        layout.addWidget(self.button)
        tool.findFinished.connect(lambda count: self.button.setEnabled(True))

    def find(self) -> None:
        if self.tool.find_all(self.text.text(), self.threshold.value()):
            self.button.setEnabled(False)


class SamMapTool(QgsMapTool):
    """Click/box prompts on one raster layer; preview and commit of the segmented polygon; "Find all"."""

    resultReady = pyqtSignal(int, object)
    requestFailed = pyqtSignal(int, str)
    previewChanged = pyqtSignal()
    committed = pyqtSignal(object)
    findFinished = pyqtSignal(int)  # polygons added by "Find all" (-1: failed or cancelled)

    def __init__(self, canvas: QgsMapCanvas, layer: QgsRasterLayer, client: Optional[EngineClient] = None,
                 message: Optional[Callable[[str, int], None]] = None) -> None:
        super().__init__(canvas)
        self.layer = layer
        self.client = client or settings.client()
        self.message = message or (lambda text, level: settings.log(text, level))
        self.points: list[tuple[float, float, int]] = []  # (x, y, label) in the raster's CRS
        self.box: Optional[tuple[float, float, float, float]] = None  # (x0, y0, x1, y1) in the raster's CRS
        self.history: list[str] = []  # "point" or "box", for Backspace
        self.polygons: list[dict] = []  # the engine's answer for the current prompts
        self.geometry: Optional[QgsGeometry] = None  # preview in the raster's CRS
        self.busy = False
        self.task: Optional[SegmentTask] = None
        self._sequence = 0
        self._ready = False  # the tile under the prompts was encoded once (later requests go direct)
        self._raster_path: Optional[str] = local_raster_path(layer)
        self._exported: Optional[str] = None
        self._exported_extent: Optional[QgsRectangle] = None
        self._press: Optional[QPoint] = None
        self._press_button = Qt.MouseButton.NoButton
        self._markers: list[QgsVertexMarker] = []
        self._told: set[str] = set()  # GeoPackages the user was told about (first commit into each)
        self._preview = QgsRubberBand(canvas, QgsWkbTypes.GeometryType.PolygonGeometry)
        self._preview.setColor(QColor(255, 170, 0, 200))
        self._preview.setFillColor(QColor(255, 170, 0, 70))
        self._preview.setWidth(2)
        self._box_band = QgsRubberBand(canvas, QgsWkbTypes.GeometryType.PolygonGeometry)
        self._box_band.setColor(QColor(30, 110, 255, 220))
        self._box_band.setFillColor(QColor(30, 110, 255, 0))
        self._box_band.setWidth(2)
        self.resultReady.connect(self._on_result)
        self.requestFailed.connect(self._on_failure)
        self.setCursor(Qt.CursorShape.CrossCursor)
        self.find_task: Optional[SegmentTask] = None
        self.panel = FindAllPanel(self)

    # -- coordinates --------------------------------------------------------------------------------
    def _to_raster(self) -> QgsCoordinateTransform:
        return QgsCoordinateTransform(self.canvas().mapSettings().destinationCrs(), self.layer.crs(),
                                      QgsProject.instance())

    def _to_canvas(self) -> QgsCoordinateTransform:
        return QgsCoordinateTransform(self.layer.crs(), self.canvas().mapSettings().destinationCrs(),
                                      QgsProject.instance())

    def raster_point(self, pixel: QPoint) -> QgsPointXY:
        """The raster-CRS map coordinates (x, y) of a canvas pixel."""
        canvas_point = self.toMapCoordinates(pixel)
        return self._to_raster().transform(canvas_point)

    # -- mouse and keys -----------------------------------------------------------------------------
    def canvasPressEvent(self, event) -> None:
        self._press = event.pos()
        self._press_button = event.button()

    def canvasMoveEvent(self, event) -> None:
        if self._press is None or self._press_button != Qt.MouseButton.LeftButton:
            return
        if (event.pos() - self._press).manhattanLength() >= DRAG_PIXELS:
            start = self.toMapCoordinates(self._press)
            end = self.toMapCoordinates(event.pos())
            self._box_band.setToGeometry(QgsGeometry.fromRect(QgsRectangle(start, end)), None)

    def canvasReleaseEvent(self, event) -> None:
        if self._press is None:
            return
        press, button = self._press, self._press_button
        self._press, self._press_button = None, Qt.MouseButton.NoButton
        if button == Qt.MouseButton.LeftButton and (event.pos() - press).manhattanLength() >= DRAG_PIXELS:
            self.add_box(press, event.pos())
        elif button in (Qt.MouseButton.LeftButton, Qt.MouseButton.RightButton):
            self.add_point(event.pos(), 1 if button == Qt.MouseButton.LeftButton else 0)

    def keyPressEvent(self, event) -> None:
        key = event.key()
        if key in (Qt.Key.Key_Return, Qt.Key.Key_Enter):
            self.commit()
        elif key == Qt.Key.Key_Escape:
            self.clear()
        elif key == Qt.Key.Key_Backspace:
            self.remove_last()
        else:
            event.ignore()
            return
        event.accept()

    # -- prompts ------------------------------------------------------------------------------------
    def add_point(self, pixel: QPoint, label: int) -> None:
        """Add a point at canvas pixel ``pixel`` (label 1 positive, 0 negative) and segment."""
        point = self.raster_point(pixel)
        self.points.append((point.x(), point.y(), int(label)))
        self.history.append("point")
        marker = QgsVertexMarker(self.canvas())
        marker.setCenter(self.toMapCoordinates(pixel))
        marker.setColor(QColor(0, 170, 0) if label else QColor(220, 0, 0))
        marker.setIconType(QgsVertexMarker.IconType.ICON_CIRCLE if label else QgsVertexMarker.IconType.ICON_X)
        marker.setIconSize(12)
        marker.setPenWidth(3)
        self._markers.append(marker)
        self.segment()

    def add_box(self, start: QPoint, end: QPoint) -> None:
        """Set the box spanned by two canvas pixels (replaces an earlier box) and segment."""
        canvas_rect = QgsRectangle(self.toMapCoordinates(start), self.toMapCoordinates(end))
        rect = self._to_raster().transformBoundingBox(canvas_rect)
        self.box = (rect.xMinimum(), rect.yMinimum(), rect.xMaximum(), rect.yMaximum())
        self.history = [item for item in self.history if item != "box"] + ["box"]
        self._box_band.setToGeometry(QgsGeometry.fromRect(canvas_rect), None)
        self.segment()

    def remove_last(self) -> None:
        """Remove the last point or box (Backspace)."""
        if not self.history:
            return
        if self.history.pop() == "box":
            self.box = None
            self._box_band.reset(QgsWkbTypes.GeometryType.PolygonGeometry)
        else:
            self.points.pop()
            self.canvas().scene().removeItem(self._markers.pop())
        if self.points or self.box is not None:
            self.segment()
        else:
            self._set_preview([])

    def clear(self) -> None:
        """Forget all prompts and the preview (Esc)."""
        self._sequence += 1
        self.points, self.box, self.history = [], None, []
        for marker in self._markers:
            self.canvas().scene().removeItem(marker)
        self._markers = []
        self._box_band.reset(QgsWkbTypes.GeometryType.PolygonGeometry)
        self._set_preview([])

    # -- engine -------------------------------------------------------------------------------------
    def _params(self) -> dict:
        return {
            "raster": self._raster_path or self._exported,
            "points": [[x, y] for x, y, _ in self.points],
            "labels": [label for _, _, label in self.points],
            "box": list(self.box) if self.box is not None else None,
            "model": settings.value("model") or None,  # with a checkpoint, the engine's ModelSpec decides
            "checkpoint": settings.value("checkpoint") or None,
            "device": settings.device(),
            "tile_size": settings.value("tile_size"),
            "overlap": settings.value("overlap"),
        }

    def _prompt_extent(self) -> QgsRectangle:
        xs = [x for x, _, _ in self.points] + ([self.box[0], self.box[2]] if self.box else [])
        ys = [y for _, y, _ in self.points] + ([self.box[1], self.box[3]] if self.box else [])
        return QgsRectangle(min(xs), min(ys), max(xs), max(ys))

    def _needs_export(self) -> bool:
        if self._raster_path is not None:
            return False
        return self._exported_extent is None or not self._exported_extent.contains(self._prompt_extent())

    def _visible_export(self) -> RasterExport:
        """The export of the visible extent of a non-file raster (prepared here, written in the task)."""
        extent = self._to_raster().transformBoundingBox(self.canvas().extent())
        resolution = settings.value("export_resolution") or extent.width() / max(self.canvas().width(), 1)
        return RasterExport(self.layer, extent, resolution, QgsProject.instance().transformContext())

    def segment(self) -> None:
        """Ask the engine for the object under the current prompts (never blocks the GUI thread)."""
        if not self.points and self.box is None:
            self._set_preview([])
            return
        self._sequence += 1
        sequence = self._sequence
        needs_export = self._needs_export()
        if self._ready and not needs_export:
            self.busy = True
            self.client.submit(
                "segment_at", self._params(), lane=LANE,
                on_done=lambda job: (self.requestFailed.emit(sequence, str(job.error)) if job.error is not None
                                     else self.resultReady.emit(sequence, job.result)))
            return
        if self.task is not None:
            return  # the task in flight decodes the newest prompts when it ends
        params = self._params()
        prepare = None
        if needs_export:
            try:
                export = self._visible_export()
            except ExportError as error:
                self.message(str(error), Qgis.MessageLevel.Warning)
                return

            def prepare() -> None:
                path = export.write()
                if self._exported and os.path.exists(self._exported):
                    os.unlink(self._exported)
                self._exported, self._exported_extent = path, export.extent
                params["raster"] = path

        self.busy = True
        self.task = SegmentTask(f"Segment Anything: encoding '{self.layer.name()}'", self.client, params, prepare)
        self.task.on_finished = lambda task, sequence=sequence: self._on_task_finished(task, sequence)
        QgsApplication.taskManager().addTask(self.task)

    def _on_task_finished(self, task: SegmentTask, sequence: int) -> None:
        self.task = None
        if task.error is not None:
            self._on_failure(sequence, task.error)
            return
        self._ready = True
        if sequence == self._sequence:
            self._on_result(sequence, task.result_value)
        elif self.points or self.box is not None:
            self.segment()  # prompts changed while encoding: decode the newest ones (now fast)

    def _on_result(self, sequence: int, result: Any) -> None:
        if sequence != self._sequence:
            return  # an answer to prompts that have changed since
        self.busy = False
        self._set_preview((result or {}).get("polygons", []))

    def _on_failure(self, sequence: int, message: str) -> None:
        self._ready = False  # e.g. the engine restarted: the next request encodes again, in a task
        if sequence == self._sequence:
            self.busy = False
        if message != "cancelled":
            self.message(message, Qgis.MessageLevel.Critical)

    def _set_preview(self, polygons: list[dict]) -> None:
        self.polygons = list(polygons)
        parts = [QgsGeometry.fromWkt(item["wkt"]) for item in self.polygons if item.get("wkt")]
        parts = [part for part in parts if not part.isNull() and not part.isEmpty()]
        self.geometry = QgsGeometry.unaryUnion(parts) if parts else None
        if self.geometry is None:
            self._preview.reset(QgsWkbTypes.GeometryType.PolygonGeometry)
        else:
            shown = QgsGeometry(self.geometry)
            shown.transform(self._to_canvas())
            self._preview.setToGeometry(shown, None)
        self.previewChanged.emit()

    # -- find all -----------------------------------------------------------------------------------
    def _visible_extent(self) -> QgsRectangle:
        """The canvas's visible extent in the raster's CRS, cut to the raster."""
        return self._to_raster().transformBoundingBox(self.canvas().extent()).intersect(self.layer.extent())

    def find_all(self, text: str, threshold: float = 0.5) -> bool:
        """Find every instance of ``text`` scoring at least ``threshold`` in the visible extent with SAM 3 (in a
        QgsTask) and add them to the output layer when done (:attr:`findFinished` then gives their number).
        False when nothing started."""
        phrase = (text or "").strip()
        if not phrase:
            self.message("Type what to find (a word or a short phrase, e.g. building), then press Find all.",
                         Qgis.MessageLevel.Warning)
            return False
        if self.find_task is not None:
            self.message("Segment Anything is still finding objects; wait for it to end.", Qgis.MessageLevel.Info)
            return False
        extent = self._visible_extent()
        if extent.isEmpty():
            self.message(f"The raster '{self.layer.name()}' is not in view: pan or zoom to it, then press Find all.",
                         Qgis.MessageLevel.Warning)
            return False
        folder = tempfile.mkdtemp(prefix="sam_find_")
        params = {
            "raster": self._raster_path,
            "output": os.path.join(folder, "found.gpkg"),
            "text": phrase,
            "threshold": float(threshold),
            "extent": [extent.xMinimum(), extent.yMinimum(), extent.xMaximum(), extent.yMaximum()],
            "model": settings.value("concept_model") or None,
            "checkpoint": settings.value("concept_checkpoint") or None,
            "device": settings.device(),
            "tile_size": settings.value("tile_size"),
            "overlap": settings.value("overlap"),
        }
        prepare = None
        if self._raster_path is None:
            try:
                export = self._visible_export()
            except ExportError as error:
                self.message(str(error), Qgis.MessageLevel.Warning)
                shutil.rmtree(folder, ignore_errors=True)
                return False

            def prepare() -> None:
                params["raster"] = export.write()
                params.pop("extent")

        self.find_task = SegmentTask(f"Segment Anything: finding '{phrase}' in '{self.layer.name()}'", self.client,
                                     params, prepare, cmd="find_raster")
        self.find_task.on_finished = lambda task: self._on_found(task, phrase, folder)
        QgsApplication.taskManager().addTask(self.find_task)
        return True

    def _on_found(self, task: SegmentTask, phrase: str, folder: str) -> None:
        self.find_task = None
        exported = task.params["raster"] if self._raster_path is None else None
        try:
            if task.error is not None:
                if task.error != "cancelled":
                    self.message(task.error, Qgis.MessageLevel.Critical)
                self.findFinished.emit(-1)
                return
            found = QgsVectorLayer(task.params["output"], "found", "ogr")
            features = list(found.getFeatures()) if found.isValid() else []
            del found
            count = self._add_found(features, phrase)
            self.findFinished.emit(count)
        finally:
            shutil.rmtree(folder, ignore_errors=True)
            if exported and os.path.exists(exported):
                os.unlink(exported)

    def _add_found(self, found: list, phrase: str) -> int:
        """Add the engine's polygons (raster CRS) to the output layer; returns how many."""
        if not found:
            self.message(f"Found no '{phrase}' in the visible extent of '{self.layer.name()}'.", Qgis.MessageLevel.Info)
            return 0
        gpkg = settings.value("output_gpkg") or default_output_gpkg()
        try:
            layer = output_layer(self.layer.crs(), gpkg)
        except EngineError as error:
            self.message(str(error), Qgis.MessageLevel.Critical)
            return 0
        if layer.fields().indexOf("class") < 0:  # an output layer made before "Find all" existed
            layer.dataProvider().addAttributes([QgsField("class", _STRING)])
            layer.updateFields()
        first = self._next_id(layer)
        features = []
        for offset, item in enumerate(found):
            geometry = QgsGeometry(item.geometry())
            geometry.convertToMultiType()
            values = {"id": first + offset, "predicted_iou": item["score"], "area": geometry.area(), "points": 0,
                      "box": 0, "model": settings.value("concept_model") or "sam3", "raster": self.layer.name(),
                      "class": phrase}
            features.append(self._output_feature(layer, geometry, values))
        layer.dataProvider().addFeatures(features)
        layer.updateExtents()
        layer.triggerRepaint()
        self.message(f"Found {len(features)} '{phrase}' in the visible extent; kept as polygons {first} to "
                     f"{first + len(features) - 1} in layer '{OUTPUT_LAYER}' of {gpkg}.", Qgis.MessageLevel.Info)
        return len(features)

    @staticmethod
    def _next_id(layer: QgsVectorLayer) -> int:
        current = layer.maximumValue(layer.fields().indexOf("id")) if layer.featureCount() else None
        return int(current) + 1 if isinstance(current, (int, float)) else 1

    @staticmethod
    def _output_feature(layer: QgsVectorLayer, geometry: QgsGeometry, values: dict) -> QgsFeature:
        feature = QgsFeature(layer.fields())
        feature.setGeometry(geometry)
        for name, value in values.items():
            if layer.fields().indexOf(name) >= 0:
                feature[name] = value
        return feature

    # -- commit -------------------------------------------------------------------------------------
    def commit(self) -> Optional[QgsFeature]:
        """Write the previewed polygon into the output layer and clear the prompts (Enter)."""
        if self.geometry is None or self.busy:
            if self.busy:
                self.message("Segment Anything is still computing; press Enter again when the preview shows.",
                             Qgis.MessageLevel.Info)
            return None
        gpkg = settings.value("output_gpkg") or default_output_gpkg()
        try:
            layer = output_layer(self.layer.crs(), gpkg)
        except EngineError as error:
            self.message(str(error), Qgis.MessageLevel.Critical)
            return None
        geometry = QgsGeometry(self.geometry)
        geometry.convertToMultiType()
        next_id = self._next_id(layer)
        scores = [float(item.get("predicted_iou", 0.0)) for item in self.polygons]
        values = {
            "id": next_id,
            "predicted_iou": max(scores) if scores else None,
            "area": geometry.area(),
            "points": len(self.points),
            "box": 1 if self.box is not None else 0,
            "model": settings.value("model") or "demo",
            "raster": self.layer.name(),
        }
        feature = self._output_feature(layer, geometry, values)
        layer.dataProvider().addFeatures([feature])
        layer.updateExtents()
        layer.triggerRepaint()
        if gpkg not in self._told:
            self._told.add(gpkg)
            self.message(f"Kept polygon {next_id} in layer '{OUTPUT_LAYER}' of {gpkg} (saved with every Enter; "
                         "choose another GeoPackage in Segment Anything ▸ Engine settings).", Qgis.MessageLevel.Info)
        self.committed.emit(feature)
        self.clear()
        return feature

    # -- lifetime -----------------------------------------------------------------------------------
    def deactivate(self) -> None:
        """Another tool was chosen: drop the prompts and the preview (committed polygons stay)."""
        self.clear()
        super().deactivate()

    def cleanup(self) -> None:
        """Remove everything this tool drew on the canvas and its temporary export (plugin unload)."""
        self.clear()
        for band in (self._preview, self._box_band):
            self.canvas().scene().removeItem(band)
        for task in (self.task, self.find_task):
            if task is not None:
                task.cancel()
        if self._exported and os.path.exists(self._exported):
            os.unlink(self._exported)
            self._exported = None
