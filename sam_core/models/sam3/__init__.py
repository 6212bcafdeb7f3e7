"""SAM 3 ("Segment Anything with Concepts") image model in pure PyTorch: state-dict keys and numerics
equal to Meta's ``sam3`` package (vision backbone, CLIP text encoder and tokenizer, geometry encoder,
fusion encoder, DETR decoder with presence token, segmentation head), and the interactive
(point/box) head of ``sam_core.models.sam3.interactive`` (``Sam3Interactive``, ``load_sam3_interactive``).
The video tracker is not here yet."""

from sam_core.models.sam3.build import load_sam3, read_sam3_state_dict
from sam_core.models.sam3.config import SAM3, InteractiveConfig, Sam3Config, infer_sam3_config, is_sam3_state
from sam_core.models.sam3.interactive import Sam3Interactive, load_sam3_interactive
from sam_core.models.sam3.model import Sam3
from sam_core.models.sam3.tokenizer import ClipTokenizer, load_tokenizer

__all__ = ["SAM3", "ClipTokenizer", "InteractiveConfig", "Sam3", "Sam3Config", "Sam3Interactive",
           "load_sam3_interactive", "infer_sam3_config", "is_sam3_state", "load_sam3",
           "load_tokenizer", "read_sam3_state_dict"]
