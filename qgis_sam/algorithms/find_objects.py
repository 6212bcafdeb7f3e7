"""sam:find_objects: every instance of a concept (a phrase and/or exemplars) as polygons, with SAM 3."""

from __future__ import annotations

from qgis.core import (
    QgsProcessing,
    QgsProcessingException,
    QgsProcessingParameterFeatureSink,
    QgsProcessingParameterFeatureSource,
    QgsProcessingParameterNumber,
    QgsProcessingParameterRasterLayer,
    QgsProcessingParameterString,
    QgsProcessingUtils,
)

from .. import settings
from .automask_raster import TILING_HELP, add_area_parameters, add_tiling_parameters, area_params, tiling_params
from .base import ATTRIBUTES as SEGMENT_ATTRIBUTES
from .base import SamAlgorithm, attributes_help, model_name, remove_files

# Side of the box an exemplar point becomes, in pixels of the raster (sam_core.geo.prompts.POINT_BOX_PIXELS).
POINT_BOX_PIXELS = 32

_SAME = dict(SEGMENT_ATTRIBUTES)
# The attributes of the polygons (sam_core.geo.find.FIELDS), for the help text.
ATTRIBUTES = (
    ("id", _SAME["id"]),
    ("class", "the text searched for (<i>exemplar</i> without a text)"),
    ("score", "the model's confidence, 0 to 1 (an object joined across tiles: the area-weighted mean)"),
    *((name, _SAME[name]) for name in ("area", "area_m2", "tile", "n_tiles")),
)


class FindObjectsAlgorithm(SamAlgorithm):
    MODELS = settings.CONCEPT_MODEL_NAMES

    def model_choice(self, value) -> str:
        return model_name(value, self.MODELS, self.MODELS[0], "cannot find objects by name (only SAM 3 models can)")

    def name(self) -> str:
        return "find_objects"

    def displayName(self) -> str:
        return "Find objects by name (SAM 3)"

    def shortHelpString(self) -> str:
        return (
            "Finds every instance of a concept in the raster with SAM 3, tile by tile, and writes them as "
            "polygons in the raster's CRS; instances cut by tile seams are joined.<br><br>"
            "<b>Text</b>: what to find, a word or short phrase (e.g. building, swimming pool; a text longer "
            "than the model reads, 30 tokens for sam3, is refused). <b>Exemplars</b>: optional polygons (their bounds) or points around examples of what to "
            f"find, in any CRS; a point stands for a box of {POINT_BOX_PIXELS} × {POINT_BOX_PIXELS} pixels "
            "centred on it. SAM 3 reads an exemplar from the pixels under it, so an exemplar helps in the tiles "
            "that hold it whole; the other tiles are searched with the text alone, and without a text only the "
            "tiles holding an exemplar are searched. <b>Score threshold</b>: the least score an instance needs "
            "(0 to 1).<br><br>"
            + attributes_help(attributes=ATTRIBUTES)
            + TILING_HELP + " <b>Model</b> (models that find objects by name: "
            f"{', '.join(self.MODELS)}) or a <b>Checkpoint file</b> (SAM 3's sam3.pt) chooses the weights.<br><br>"
            "The work runs in the Segment Anything engine process; cancel stops between tiles and writes nothing."
        )

    def initAlgorithm(self, config=None) -> None:
        self.addParameter(QgsProcessingParameterRasterLayer("INPUT", "Raster layer"))
        self.addParameter(QgsProcessingParameterString("TEXT", "Text (what to find, e.g. building)", None, False, True))
        self.addParameter(QgsProcessingParameterFeatureSource(
            "EXEMPLARS", "Exemplars (optional polygons or points around examples, any CRS)",
            [QgsProcessing.SourceType.TypeVectorPoint, QgsProcessing.SourceType.TypeVectorPolygon], None, True))
        self.addParameter(QgsProcessingParameterNumber(
            "THRESHOLD", "Score threshold (0 to 1)", QgsProcessingParameterNumber.Type.Double, 0.5, False, 0.0, 1.0))
        add_tiling_parameters(self)
        add_area_parameters(self)
        self.add_model_parameters()
        self.addParameter(QgsProcessingParameterFeatureSink(
            "OUTPUT", "Objects", QgsProcessing.SourceType.TypeVectorPolygon))

    def processAlgorithm(self, parameters, context, feedback):
        layer = self.raster(parameters, context)
        text = self.parameterAsString(parameters, "TEXT", context)
        has_exemplars = parameters.get("EXEMPLARS") not in (None, "")
        if not text.strip() and not has_exemplars:
            raise QgsProcessingException("Text (TEXT) is empty: give a word or a short phrase of what to find, "
                                         "e.g. building, or Exemplars (EXEMPLARS) around examples")
        exemplars = self.write_source(parameters, "EXEMPLARS", context, "draw polygons or points around examples "
                                      "of what to find, or leave Exemplars empty") if has_exemplars else None
        path, exported = None, False
        output = QgsProcessingUtils.generateTempFilename("sam_find.fgb")
        try:
            path, exported, area = area_params(self, layer, parameters, context, feedback)
            params = {
                "raster": path,
                "output": output,
                "text": text if text.strip() else None,
                "exemplars": exemplars,
                "threshold": self.parameterAsDouble(parameters, "THRESHOLD", context),
                **area,
            }
            params.update(tiling_params(self, parameters, context))
            params.update(self.model_params(parameters, context))
            result = self.run_engine("find_raster", params, feedback)
            feedback.pushInfo(f"{result.get('count')} objects from {result.get('tiles_searched')} of "
                              f"{result.get('tiles_total')} tiles searched")
            dest_id = self.copy_to_sink(output, layer, parameters, context, feedback)
        finally:
            remove_files(output, exemplars, path if exported else None)
        return {"OUTPUT": dest_id}
