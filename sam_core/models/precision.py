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
- ``auto``: ``bf16`` where the device runs it natively, ``fp16`` on GPUs without bf16, else ``fp32``
  (:func:`describe_auto` says which, and why, in one line).

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


def describe_auto(device: torch.device | str = "cpu") -> str:
    """One line saying which precision ``auto`` runs on ``device`` and why, for the command line
    (``models``, ``--verbose``) and the napari and QGIS panels, e.g.
    ``"auto runs fp32 on cpu: this CPU has no native bf16 ..."``.

    ``auto`` picks the fastest precision that keeps the embedding within cosine 0.999 of fp32 and the
    masks equal within rounding (bf16 where the device multiplies it natively); ``int8`` is faster on
    CPUs but stays opt-in (it quantizes the MLPs only and is not checked against that guard).
    """
    torch_device = torch.device(device)
    chosen = resolve_precision("auto", torch_device)
    kind = torch_device.type
    if kind == "cuda":
        why = "this GPU runs bf16" if chosen == "bf16" else "this GPU has no bf16, so float16"
    elif kind == "cpu":
        why = ("this CPU multiplies bf16 natively (AVX512-BF16 or AMX)" if chosen == "bf16" else
               "this CPU has no native bf16 and no other guarded faster path; --precision int8 is faster "
               "but opt-in (embedding cosine about 0.999 to fp32)")
    else:
        why = f"no reduced precision is checked on {kind}"
    return f"auto runs {chosen} on {kind}: {why}"
