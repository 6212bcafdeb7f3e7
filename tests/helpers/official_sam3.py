"""Meta's ``sam3`` package (test-only), imported with the torchvision/timm/triton stand-ins on sys.path."""

from __future__ import annotations

from helpers.official import _install_shims


def sam3_tokenizer():
    """The reference tokenizer (``sam3.model.tokenizer_ve.SimpleTokenizer``) on our shipped vocabulary."""
    _install_shims()
    from sam3.model.tokenizer_ve import SimpleTokenizer

    from sam_core.models.sam3.tokenizer import VOCAB_PATH

    return SimpleTokenizer(bpe_path=str(VOCAB_PATH))
