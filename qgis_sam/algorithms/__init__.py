"""Processing algorithms of the "Segment Anything" provider (id ``sam``)."""

from .automask_raster import AutomaskRasterAlgorithm
from .encode_raster import EncodeRasterAlgorithm
from .find_objects import FindObjectsAlgorithm
from .segment_prompts import SegmentPromptsAlgorithm

ALGORITHMS = (AutomaskRasterAlgorithm, SegmentPromptsAlgorithm, EncodeRasterAlgorithm, FindObjectsAlgorithm)

__all__ = ["ALGORITHMS", "AutomaskRasterAlgorithm", "EncodeRasterAlgorithm", "FindObjectsAlgorithm",
           "SegmentPromptsAlgorithm"]
