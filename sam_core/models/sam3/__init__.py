"""SAM 3 ("Segment Anything with Concepts") in pure PyTorch: state-dict keys and numerics equal to
Meta's ``sam3`` package. So far: the CLIP tokenizer of its text encoder."""

from sam_core.models.sam3.tokenizer import ClipTokenizer, load_tokenizer

__all__ = ["ClipTokenizer", "load_tokenizer"]
