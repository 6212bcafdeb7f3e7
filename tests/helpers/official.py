"""Import Meta's reference packages (test-only) with the torchvision/timm shims on sys.path."""

from __future__ import annotations

import sys
from pathlib import Path

_SHIMS = str(Path(__file__).parent / "shims")


def _install_shims() -> None:
    if _SHIMS not in sys.path:
        sys.path.insert(0, _SHIMS)


def segment_anything():
    """The official ``segment_anything`` package (segment-anything==1.0)."""
    _install_shims()
    import segment_anything as sa
    import segment_anything.automatic_mask_generator  # noqa: F401  (needs the torchvision shim)

    return sa


def mobile_sam():
    """The ``mobile_sam`` package of mobilesam-mirror (MobileSAM's TinyViT and its predictor)."""
    _install_shims()
    import mobile_sam as ms
    import mobile_sam.automatic_mask_generator  # noqa: F401

    return ms


def sam2():
    """Meta's ``sam2`` package (sam2==1.1.0): the model classes, ``SAM2ImagePredictor`` and the
    automatic mask generator."""
    _install_shims()
    import sam2 as package
    import sam2.automatic_mask_generator  # noqa: F401  (needs the torchvision shim)
    import sam2.modeling.sam2_base  # noqa: F401
    import sam2.sam2_image_predictor  # noqa: F401

    return package
