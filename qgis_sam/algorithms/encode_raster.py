"""sam:encode_raster: precompute the embedding of every tile so that later clicks are instant."""

from __future__ import annotations

from qgis.core import QgsProcessingOutputNumber, QgsProcessingParameterRasterLayer

from .automask_raster import add_tiling_parameters, tiling_params
from .base import SamAlgorithm


class EncodeRasterAlgorithm(SamAlgorithm):
    def name(self) -> str:
        return "encode_raster"

    def displayName(self) -> str:
        return "Precompute embeddings of a raster"

    def shortHelpString(self) -> str:
        return (
            "Runs the image encoder on every tile of the raster and stores the embeddings in the engine's "
            "on-disk cache, so that clicks of the map tool (with the same <b>Bands</b>, <b>Tile size</b>, "
            "<b>Tile overlap</b> and <b>Model</b>) only run the fast mask decoder. The output <i>Tiles encoded</i> "
            "is the number of tiles encoded or found in the cache."
        )

    def initAlgorithm(self, config=None) -> None:
        self.addParameter(QgsProcessingParameterRasterLayer("INPUT", "Raster layer"))
        add_tiling_parameters(self)
        self.add_model_parameters()
        self.addOutput(QgsProcessingOutputNumber("TILES", "Tiles encoded"))

    def processAlgorithm(self, parameters, context, feedback):
        layer = self.raster(parameters, context)
        path, exported = self.raster_file(layer, context, feedback)
        if exported:
            feedback.reportError(
                "This layer is not a local file: its embeddings are cached for this export only.", False)
        params = {"raster": path}
        params.update(tiling_params(self, parameters, context))
        params.update(self.model_params(parameters, context))
        result = self.run_engine("encode_raster", params, feedback)
        feedback.pushInfo(f"{result['tiles']} tiles encoded or already cached")
        return {"TILES": result["tiles"]}
