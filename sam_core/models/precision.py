"""Numeric precision of the image encoder (the expensive part of SAM).

- ``fp32`` (the default): float32 with fused attention (``scaled_dot_product_attention`` with the
  relative-position bias as mask): equal to the official implementation within float rounding
  (about 1e-6 on the embedding), faster and lighter than it.
- ``exact``: float32 with the official operations in the official order: bit-for-bit equal to the
  official package (the reference for the parity tests; slower).
- ``bf16``: bfloat16 autocast with fused attention; on CPUs with bf16 instructions and on GPUs.
- ``fp16``: float16 autocast with fused attention; GPU only.
- ``int8``: dynamic int8 quantization of the encoder's MLP Linear layers (weights int8 per output
  channel, activations quantized per batch; the attention projections stay fp32 to keep the
  embedding within cosine 0.999 of fp32) with fused fp32 attention; CPU only.
- ``auto``: ``bf16`` where the device runs it natively, ``fp16`` on GPUs without bf16, else ``fp32``.

The prompt encoder and the mask decoder always run in fp32; the embedding is returned as float32.
Every precision but ``exact`` also runs the mask decoder's fused forms (regrouped attention between
prompt and image tokens, upscaling as matrix products; see ``transformer.Attention`` and
``mask_decoder.MaskDecoder``): equal within float rounding, about twice as fast at full size. ``exact``
runs the official decoder operations too.
"""

from __future__ import annotations

import contextlib

import torch

from sam_core.errors import SamError

PRECISIONS = ("auto", "fp32", "exact", "bf16", "fp16", "int8")

COMPUTE_DTYPES: dict[str, torch.dtype | None] = {
    "fp32": None,
    "exact": None,
    "bf16": torch.bfloat16,
    "fp16": torch.float16,
    "int8": None,
}


def cpu_has_bf16() -> bool:
    """True when this CPU multiplies bfloat16 natively (AVX512-BF16 or AMX), so bf16 is faster."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def resolve_precision(precision: str, device: torch.device | str) -> str:
    """The concrete precision (``fp32``, ``exact``, ``bf16``, ``fp16`` or ``int8``) for ``precision`` on ``device``.

    Raises :class:`SamError` for an unknown name or a precision the device cannot run.
    """
    if precision not in PRECISIONS:
        raise SamError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
    kind = torch.device(device).type
    if precision == "auto":
        if kind == "cuda":
            return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        if kind == "cpu":
            return "bf16" if cpu_has_bf16() else "fp32"
        return "fp32"
    if precision == "fp16" and kind == "cpu":
        raise SamError("precision fp16 needs a GPU; on the CPU use bf16, int8 or fp32")
    if precision == "int8" and kind != "cpu":
        raise SamError("precision int8 runs on the CPU only; on a GPU use fp16 or bf16")
    return precision


def autocast(device_type: str, dtype: torch.dtype | None):
    """An autocast context for ``dtype`` on ``device_type``; a no-op for None (fp32)."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type, dtype=dtype)
