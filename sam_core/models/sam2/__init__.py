"""SAM 2.1 in pure PyTorch: Hiera trunk, FPN neck, prompt encoder, mask decoder with object scores and
high-resolution skip features, memory encoder, memory attention (RoPE) and object pointers, with
state-dict keys and numerics equal to Meta's ``sam2`` package."""

from __future__ import annotations

from sam_core.models.sam2.config import SAM2_CONFIGS, Sam2Config, infer_sam2_config, is_sam2_state_dict
from sam_core.models.sam2.model import HeadsOutput, Sam2, Sam2Features
from sam_core.errors import SamError


def get_sam2_config(name: str) -> Sam2Config:
    """The SAM 2.1 configuration called ``name``; :class:`SamError` listing the known names otherwise."""
    try:
        return SAM2_CONFIGS[name]
    except KeyError:
        raise SamError(f"unknown SAM 2.1 model {name!r}; known: {', '.join(SAM2_CONFIGS)}") from None


def refuse_sam2(model: object, action: str) -> None:
    """Raise :class:`SamError` when ``model`` is a SAM 2.1 network (or SAM 3's interactive head, which
    shares its design) and ``action`` (e.g. "ONNX export") does not support it yet."""
    family = getattr(model, "family", "sam")
    if family in ("sam2", "sam3"):
        what = "SAM 2.1" if family == "sam2" else "SAM 3"
        raise SamError(f"{action} is not available for {what} models yet; use a SAM model (vit_t, vit_b, ...)")


def build_sam2(config: Sam2Config | str) -> Sam2:
    """A SAM 2.1 network (random weights, eval mode, on the CPU) for a configuration or its name."""
    if isinstance(config, str):
        config = get_sam2_config(config)
    return Sam2(config).eval()


__all__ = [
    "HeadsOutput",
    "SAM2_CONFIGS",
    "Sam2",
    "Sam2Config",
    "Sam2Features",
    "build_sam2",
    "get_sam2_config",
    "infer_sam2_config",
    "is_sam2_state_dict",
    "refuse_sam2",
]
