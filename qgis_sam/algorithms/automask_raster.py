"""sam:automask_raster: every object of a raster as polygons (tiled automatic masks, seams merged)."""

from __future__ import annotations

from qgis.core import (
    QgsProcessing,
    QgsProcessingParameterBand,
    QgsProcessingParameterExtent,
    QgsProcessingParameterFeatureSink,
    QgsProcessingParameterNumber,
    QgsProcessingParameterRasterLayer,
    QgsProcessingUtils,
)

from .base import SamAlgorithm, attributes_help, remove_files


# The help sentences of the parameters add_tiling_parameters and add_area_parameters add (HTML).
TILING_HELP = ("<b>Bands</b>: one band (grey) or three (red, green, blue). <b>Tile size</b> and <b>Tile overlap</b> "
               "in pixels (an object larger than a tile may still be cut). <b>Resolution</b> resamples to a ground "
               "resolution (map units per pixel; empty: native). <b>Extent</b> limits the area.")


def add_tiling_parameters(algorithm: SamAlgorithm) -> None:
    algorithm.addParameter(QgsProcessingParameterBand(
        "BANDS", "Bands (one or three; empty: the first three, or the only one)", None, "INPUT", True, True))
    algorithm.addParameter(QgsProcessingParameterNumber(
        "TILE_SIZE", "Tile size (pixels)", QgsProcessingParameterNumber.Type.Integer, 1024, False, 64, 8192))
    algorithm.addParameter(QgsProcessingParameterNumber(
        "OVERLAP", "Tile overlap (pixels)", QgsProcessingParameterNumber.Type.Integer, 128, False, 0, 4096))


def add_area_parameters(algorithm: SamAlgorithm) -> None:
    algorithm.addParameter(QgsProcessingParameterNumber(
        "RESOLUTION", "Resolution (map units per pixel; empty: native)", QgsProcessingParameterNumber.Type.Double,
        None, True, 0.0))
    algorithm.addParameter(QgsProcessingParameterExtent("EXTENT", "Extent (empty: the whole raster)", None, True))


def area_params(algorithm: SamAlgorithm, layer, parameters: dict, context, feedback) -> tuple[str, bool, dict]:
    """(raster path, exported, {"resolution", "extent"}): the raster's file, or a temporary GeoTIFF of EXTENT at
    RESOLUTION for a layer that is not a local file (then the engine reads all of it at its own pixel size)."""
    extent = None
    if parameters.get("EXTENT") not in (None, ""):
        extent = algorithm.parameterAsExtent(parameters, "EXTENT", context, layer.crs())
    resolution = None
    if parameters.get("RESOLUTION") not in (None, ""):
        resolution = algorithm.parameterAsDouble(parameters, "RESOLUTION", context) or None
    path, exported = algorithm.raster_file(layer, context, feedback, extent, resolution)
    return path, exported, {
        "resolution": None if exported else resolution,
        "extent": None if exported or extent is None or extent.isEmpty() else
        [extent.xMinimum(), extent.yMinimum(), extent.xMaximum(), extent.yMaximum()],
    }


def tiling_params(algorithm: SamAlgorithm, parameters: dict, context) -> dict:
    bands = algorithm.parameterAsInts(parameters, "BANDS", context)
    return {
        "bands": [int(band) for band in bands] or None,
        "tile_size": algorithm.parameterAsInt(parameters, "TILE_SIZE", context),
        "overlap": algorithm.parameterAsInt(parameters, "OVERLAP", context),
    }


class AutomaskRasterAlgorithm(SamAlgorithm):
    def name(self) -> str:
        return "automask_raster"

    def displayName(self) -> str:
        return "Segment everything in a raster (automatic masks)"

    def shortHelpString(self) -> str:
        return (
            "Finds every object of the raster with Segment Anything's automatic mask generator, tile by tile, "
            "joins objects cut by tile seams, and writes them as polygons in the raster's CRS. An object that "
            "reaches a tile's border but was not found by the neighbouring tile is segmented again in a window "
            "centred on it, so that it is kept whole instead of ending in a straight line on the border.<br><br>"
            + attributes_help()
            + TILING_HELP + " <b>Minimum area</b> "
            "(map units²) drops small polygons, <b>Simplification tolerance</b> (map units) simplifies outlines. "
            "<b>Points per side</b>, <b>Predicted IoU threshold</b> and <b>Stability score threshold</b> are the "
            "generator's settings (empty: the model's). <b>Model</b> or a <b>Checkpoint file</b> chooses the "
            "weights.<br><br>"
            "The work runs in the Segment Anything engine process; cancel stops between tiles and writes nothing."
        )

    def initAlgorithm(self, config=None) -> None:
        self.addParameter(QgsProcessingParameterRasterLayer("INPUT", "Raster layer"))
        add_tiling_parameters(self)
        add_area_parameters(self)
        self.add_model_parameters()
        self.addParameter(QgsProcessingParameterNumber(
            "POINTS_PER_SIDE", "Points per side (grid of prompts per tile; empty: the model's, 32; demo 16)",
            QgsProcessingParameterNumber.Type.Integer, None, True, 1, 256))
        self.addParameter(QgsProcessingParameterNumber(
            "PRED_IOU_THRESH", "Predicted IoU threshold (empty: the model's, 0.88; demo 0.5)",
            QgsProcessingParameterNumber.Type.Double, None, True, 0.0, 1.0))
        self.addParameter(QgsProcessingParameterNumber(
            "STABILITY_THRESH", "Stability score threshold (empty: the model's, 0.95; demo 0.8)",
            QgsProcessingParameterNumber.Type.Double, None, True, 0.0, 1.0))
        self.addParameter(QgsProcessingParameterNumber(
            "MIN_AREA", "Minimum area (map units²)", QgsProcessingParameterNumber.Type.Double, 0.0, False, 0.0))
        self.addParameter(QgsProcessingParameterNumber(
            "SIMPLIFY", "Simplification tolerance (map units; 0: none)", QgsProcessingParameterNumber.Type.Double, 0.0,
            False, 0.0))
        self.addParameter(QgsProcessingParameterFeatureSink(
            "OUTPUT", "Segments", QgsProcessing.SourceType.TypeVectorPolygon))

    def processAlgorithm(self, parameters, context, feedback):
        layer = self.raster(parameters, context)
        path, exported, area = area_params(self, layer, parameters, context, feedback)
        output = QgsProcessingUtils.generateTempFilename("sam_automask.fgb")
        params = {
            "raster": path,
            "output": output,
            **area,
            # parameters left empty are the model's recommended ones (sam_core.zoo.automask_defaults)
            "generator_params": {
                key: number(parameters, name, context)
                for name, key, number in (("POINTS_PER_SIDE", "points_per_side", self.parameterAsInt),
                                          ("PRED_IOU_THRESH", "pred_iou_thresh", self.parameterAsDouble),
                                          ("STABILITY_THRESH", "stability_score_thresh", self.parameterAsDouble))
                if parameters.get(name) not in (None, "")
            },
            "min_area": self.parameterAsDouble(parameters, "MIN_AREA", context),
            "simplify": self.parameterAsDouble(parameters, "SIMPLIFY", context),
        }
        params.update(tiling_params(self, parameters, context))
        params.update(self.model_params(parameters, context))
        try:
            result = self.run_engine("automask_raster", params, feedback)
            feedback.pushInfo(f"{result.get('count')} polygons from {result.get('tiles_done')} tiles")
            dest_id = self.copy_to_sink(output, layer, parameters, context, feedback)
        finally:
            remove_files(output, path if exported else None)
        return {"OUTPUT": dest_id}
