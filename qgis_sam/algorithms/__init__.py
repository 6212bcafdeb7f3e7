"""Processing algorithms of the "Segment Anything" provider (id ``sam``)."""

from .automask_raster import AutomaskRasterAlgorithm
from .encode_raster import EncodeRasterAlgorithm
from .segment_prompts import SegmentPromptsAlgorithm

ALGORITHMS = (AutomaskRasterAlgorithm, SegmentPromptsAlgorithm, EncodeRasterAlgorithm)

__all__ = ["ALGORITHMS", "AutomaskRasterAlgorithm", "EncodeRasterAlgorithm", "SegmentPromptsAlgorithm"]
