"""What the three Segment Anything algorithms share: model parameters, the raster file, engine calls."""

from __future__ import annotations

import os
from typing import Any, Optional

from qgis.core import (
    QgsFeature,
    QgsFeatureSink,
    QgsFields,
    QgsProcessingAlgorithm,
    QgsProcessingContext,
    QgsProcessingException,
    QgsProcessingFeedback,
    QgsProcessingParameterEnum,
    QgsProcessingParameterFile,
    QgsProcessingUtils,
    QgsRasterLayer,
    QgsRectangle,
    QgsVectorFileWriter,
    QgsVectorLayer,
    QgsWkbTypes,
)
from qgis.PyQt.QtGui import QIcon

from .. import settings
from ..engine_client import EngineCancelled, EngineError
from ..export import ExportError, export_raster, local_raster_path, native_resolution

ICON = os.path.join(os.path.dirname(os.path.dirname(__file__)), "icon.png")
LANE = "batch"

# The attributes of the polygons the engine writes (sam_core.geo.vectorize.pieces_to_features), for help texts.
ATTRIBUTES = (
    ("id", "1, 2, 3, … in output order"),
    ("predicted_iou", "the model's estimate of the mask's quality, 0 to 1"),
    ("stability_score", "how little the mask changes with its threshold, 0 to 1 (1 for prompted objects)"),
    ("area", "in map units²"),
    ("area_m2", "in square metres (on the ellipsoid for degrees; empty when the CRS's unit is unknown)"),
    ("tile", "number of the tile that holds most of the object"),
    ("n_tiles", "how many tiles the object spans"),
)


def attributes_help(extra: tuple = (), attributes: tuple = ATTRIBUTES) -> str:
    """The help paragraph that lists the output ``attributes`` and ``extra`` ones (HTML)."""
    items = "".join(f"<li><i>{name}</i>: {text}</li>" for name, text in tuple(attributes) + tuple(extra))
    return f"Attributes of the polygons:<ul>{items}</ul>"


def model_name(value: Any, names: tuple = (), default: str = "demo", refusal: str = "") -> str:
    """The MODEL parameter as a model name: a name, or its index in ``names`` (default
    ``settings.MODEL_NAMES``; scripts pass enum values); empty is ``default``. Raises
    QgsProcessingException with the valid choices otherwise (``refusal``: why, default "not a model of
    this plugin")."""
    names = names or settings.MODEL_NAMES
    if value is None or (isinstance(value, str) and not value.strip()):
        return default
    if isinstance(value, (list, tuple)) and len(value) == 1:
        value = value[0]
    text = str(value).strip()
    if isinstance(value, int) or text.isdigit():
        index = int(text)
        if 0 <= index < len(names):
            return names[index]
    elif text in names:
        return text
    choices = ", ".join(f"{i} = {name}" for i, name in enumerate(names))
    raise QgsProcessingException(
        f"Model (MODEL): {value!r} {refusal or 'is not a model of this plugin'}. Give one of the names or numbers "
        f"{choices} (or leave it empty for {default}); for your own weights set Checkpoint file (CHECKPOINT) instead.")


class SamAlgorithm(QgsProcessingAlgorithm):
    """Base class: subclasses define ``name``, ``displayName``, ``initAlgorithm`` and ``processAlgorithm``."""

    # The models the MODEL parameter offers (scripts may pass their index), the first is the default.
    MODELS: tuple = settings.MODEL_NAMES

    def model_choice(self, value: Any) -> str:
        """The MODEL parameter's value as a model name (QgsProcessingException with the choices otherwise)."""
        return model_name(value, self.MODELS, self.MODELS[0])

    def createInstance(self) -> "SamAlgorithm":
        return type(self)()

    def icon(self) -> QIcon:
        return QIcon(ICON)

    def group(self) -> str:
        return ""

    def groupId(self) -> str:
        return ""

    # -- parameters ---------------------------------------------------------------------------------
    def add_model_parameters(self) -> None:
        self.addParameter(QgsProcessingParameterEnum(
            "MODEL", "Model", list(self.MODELS), False, self.MODELS[0], False, True))
        self.addParameter(QgsProcessingParameterFile(
            "CHECKPOINT", "Checkpoint file (optional; its configuration is read from its weights, or is Model's "
            "when Model is an official model other than demo)",
            QgsProcessingParameterFile.Behavior.File, "", None, True, "Checkpoints (*.pth *.pt);;All files (*)"))

    def checkParameterValues(self, parameters: dict, context: QgsProcessingContext) -> tuple:  # noqa: N802
        """MODEL accepts a name or its index; an unknown one gets a message with the choices (not QGIS's
        generic "Incorrect parameter value")."""
        if self.parameterDefinition("MODEL") is not None and "MODEL" in parameters:
            try:
                name = self.model_choice(parameters["MODEL"])
            except QgsProcessingException as error:
                return False, str(error)
            parameters = dict(parameters)
            parameters["MODEL"] = name
        return super().checkParameterValues(parameters, context)

    def model_params(self, parameters: dict, context: QgsProcessingContext) -> dict:
        """What the user chose; the engine decides what a checkpoint with a model name means
        (``sam_core.pool.ModelSpec.of``)."""
        checkpoint = self.parameterAsFile(parameters, "CHECKPOINT", context) or None
        return {"model": self.model_choice(parameters.get("MODEL")), "checkpoint": checkpoint,
                "device": settings.device()}

    # -- raster -------------------------------------------------------------------------------------
    def raster(self, parameters: dict, context: QgsProcessingContext) -> QgsRasterLayer:
        layer = self.parameterAsRasterLayer(parameters, "INPUT", context)
        if layer is None or not layer.isValid():
            raise QgsProcessingException("INPUT: choose a valid raster layer")
        return layer

    def raster_file(self, layer: QgsRasterLayer, context: QgsProcessingContext, feedback: QgsProcessingFeedback,
                    extent: Optional[QgsRectangle] = None, resolution: Optional[float] = None) -> tuple[str, bool]:
        """(path, exported): the layer's own file, or a temporary GeoTIFF of ``extent`` at ``resolution``."""
        path = local_raster_path(layer)
        if path is not None:
            return path, False
        resolution = resolution or native_resolution(layer)
        if resolution is None:
            raise QgsProcessingException(
                f"'{layer.name()}' is not a local file and has no pixel size: set RESOLUTION (map units per pixel) "
                "and EXTENT so that it can be exported for segmentation")
        area = extent if extent is not None and not extent.isEmpty() else layer.extent()
        feedback.pushInfo(f"Exporting '{layer.name()}' at {resolution:g} map units per pixel to a temporary GeoTIFF")
        try:
            path = export_raster(layer, area, resolution, QgsProcessingUtils.generateTempFilename("sam_input.tif"),
                                 context.transformContext())
        except ExportError as error:
            raise QgsProcessingException(str(error)) from error
        return path, True

    # -- engine -------------------------------------------------------------------------------------
    def run_engine(self, cmd: str, params: dict, feedback: QgsProcessingFeedback) -> Any:
        """Run ``cmd`` in the engine with progress on ``feedback``; cancel stops it between tiles."""

        def progress(done: int, total: int, message: str) -> None:
            if total > 0:
                feedback.setProgress(100.0 * done / total)
            if message:
                feedback.setProgressText(message)

        try:
            return settings.client().request(cmd, params, lane=LANE, progress=progress,
                                             is_cancelled=feedback.isCanceled)
        except EngineCancelled as error:
            raise QgsProcessingException("Cancelled: no output was written.") from error
        except EngineError as error:
            raise QgsProcessingException(str(error)) from error

    def write_source(self, parameters: dict, name: str, context: QgsProcessingContext, hint: str) -> str:
        """Write the features of the vector parameter ``name`` (selection and filters applied) to a temporary
        GeoPackage in their own CRS, for the engine; an empty source is refused (``hint``: what to add)."""
        source = self.parameterAsSource(parameters, name, context)
        if source is None:
            raise QgsProcessingException(self.invalidSourceError(parameters, name))
        if source.featureCount() == 0:
            raise QgsProcessingException(f"{name} has no features: {hint}")
        path = QgsProcessingUtils.generateTempFilename(f"sam_{name.lower()}.gpkg")
        options = QgsVectorFileWriter.SaveVectorOptions()
        options.driverName = "GPKG"
        options.layerName = name.lower()
        writer = QgsVectorFileWriter.create(path, source.fields(), source.wkbType(), source.sourceCrs(),
                                            context.transformContext(), options)
        if writer.hasError() != QgsVectorFileWriter.WriterError.NoError:
            raise QgsProcessingException(f"could not write {name} to a temporary file: {writer.errorMessage()}")
        for feature in source.getFeatures():
            writer.addFeature(QgsFeature(feature), QgsFeatureSink.Flag.FastInsert)
        del writer
        return path

    def copy_to_sink(self, path: str, raster: QgsRasterLayer, parameters: dict, context: QgsProcessingContext,
                     feedback: QgsProcessingFeedback) -> str:
        """Copy the polygons the engine wrote to ``path`` into the OUTPUT sink; return its destination id."""
        source = QgsVectorLayer(path, "sam", "ogr")
        fields = QgsFields()
        if source.isValid():
            for field in source.fields():
                if field.name().lower() != "fid":
                    fields.append(field)
            wkb_type = source.wkbType()
        else:
            wkb_type = QgsWkbTypes.Type.MultiPolygon
        # The engine writes polygons in the raster's CRS; the sink takes the raster layer's CRS object so
        # that QGIS sees exactly the same CRS (a WKT round trip may rename parts of a custom CRS).
        sink, dest_id = self.parameterAsSink(parameters, "OUTPUT", context, fields, wkb_type, raster.crs())
        if sink is None:
            raise QgsProcessingException(self.invalidSinkError(parameters, "OUTPUT"))
        if source.isValid():
            names = fields.names()
            for feature in source.getFeatures():
                if feedback.isCanceled():
                    break
                copy = QgsFeature(fields)
                copy.setGeometry(feature.geometry())
                copy.setAttributes([feature[name] for name in names])
                sink.addFeature(copy, QgsFeatureSink.Flag.FastInsert)
        del source
        return dest_id


def remove_files(*paths: Optional[str]) -> None:
    """Delete temporary files (and a GeoPackage's -wal/-shm companions), ignoring missing ones."""
    for path in paths:
        if not path:
            continue
        for candidate in (path, path + "-wal", path + "-shm", path + ".aux.xml"):
            try:
                os.unlink(candidate)
            except OSError:
                pass
