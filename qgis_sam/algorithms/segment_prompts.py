"""sam:segment_prompts: polygons from prompt points and boxes of a vector layer (any CRS)."""

from __future__ import annotations

from qgis.core import (
    QgsProcessing,
    QgsProcessingParameterFeatureSink,
    QgsProcessingParameterFeatureSource,
    QgsProcessingParameterField,
    QgsProcessingParameterRasterLayer,
    QgsProcessingUtils,
)

from .base import SamAlgorithm, attributes_help, remove_files


class SegmentPromptsAlgorithm(SamAlgorithm):
    def name(self) -> str:
        return "segment_prompts"

    def displayName(self) -> str:
        return "Segment objects from prompt points and boxes"

    def shortHelpString(self) -> str:
        return (
            "Segments objects marked by the features of <b>Prompts</b>: points (positive or negative) and "
            "boxes (polygons, taken as their bounds). Prompts may be in any CRS; the polygons come out in the "
            "raster's CRS.<br><br>"
            "Each object comes from one <i>prompt group</i>, the prompts that describe it together: every "
            "polygon with the points inside it; every positive point outside polygons on its own; a negative "
            "point outside polygons joins the group of the nearest positive point. When the prompt layer has a "
            "field named <i>group</i>, features with the same value of it form one group instead. One polygon is "
            "written per group.<br><br>"
            "<b>Positive/negative field</b>: 1, true, positive, pos, foreground or fg is positive; 0, false, "
            "negative, neg, background or bg negative; with no field (or an empty value) points are positive."
            "<br><br>"
            + attributes_help((("group", "the prompt group the polygon comes from"),)) +
            "<b>Model</b> or a <b>Checkpoint file</b> chooses the weights."
        )

    def initAlgorithm(self, config=None) -> None:
        self.addParameter(QgsProcessingParameterRasterLayer("INPUT", "Raster layer"))
        self.addParameter(QgsProcessingParameterFeatureSource(
            "PROMPTS", "Prompts (points or polygons)",
            [QgsProcessing.SourceType.TypeVectorPoint, QgsProcessing.SourceType.TypeVectorPolygon]))
        self.addParameter(QgsProcessingParameterField(
            "LABEL_FIELD", "Positive/negative field (1 positive, 0 negative)", None, "PROMPTS",
            QgsProcessingParameterField.DataType.Any, False, True))
        self.add_model_parameters()
        self.addParameter(QgsProcessingParameterFeatureSink(
            "OUTPUT", "Segments", QgsProcessing.SourceType.TypeVectorPolygon))

    def processAlgorithm(self, parameters, context, feedback):
        layer = self.raster(parameters, context)
        prompts = self.write_source(parameters, "PROMPTS", context, "add points or boxes to segment")
        path, exported = None, False
        output = QgsProcessingUtils.generateTempFilename("sam_segments.fgb")
        try:
            path, exported = self.raster_file(layer, context, feedback)
            params = {
                "raster": path,
                "prompts": prompts,
                "output": output,
                "label_field": self.parameterAsString(parameters, "LABEL_FIELD", context) or None,
            }
            params.update(self.model_params(parameters, context))
            result = self.run_engine("segment_prompts", params, feedback)
            feedback.pushInfo(f"{result.get('count')} polygons")
            dest_id = self.copy_to_sink(output, layer, parameters, context, feedback)
        finally:
            remove_files(output, prompts, path if exported else None)
        return {"OUTPUT": dest_id}
