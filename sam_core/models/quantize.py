"""Dynamic int8 quantization of the image encoder's Linear layers (the CPU precisions ``int8`` and
``int8-smooth`` of :mod:`sam_core.models.precision`).

- ``int8``: the MLP Linear layers only, weights int8 per output channel, activations quantized per
  batch (per tensor) at run time.
- ``int8-smooth``: the MLPs and the attention's ``qkv`` projection, after a data-free SmoothQuant-style
  smoothing: for each LayerNorm that feeds a quantized Linear (``norm1 -> attn.qkv`` and
  ``norm2 -> mlp.lin1`` in SAM's ViT, ``attn.norm -> attn.qkv`` and ``mlp.norm -> mlp.fc1`` in
  TinyViT), input channel ``j`` is divided by ``s_j`` in the LayerNorm's affine parameters and the
  Linear's weight column ``j`` multiplied by it, which leaves the fp32 function unchanged (up to float
  rounding) but evens out the channels that per-tensor activation quantization has to share one scale
  for. ``s_j = a_j ** alpha / w_j ** (1 - alpha)`` with ``a_j`` the LayerNorm output's range estimated
  from its affine parameters (``3 |gamma_j| + |beta_j|``: no calibration images) and ``w_j`` the
  column's largest weight. The attention output projection, the softmax and the attention matrix
  products stay fp32 (quantizing the projection too measured cosine 0.9989 on vit_b, below the guard).
  In a TinyViT (vit_t, ``demo``) the first MLP layer of the attention stage with the most blocks
  (vit_t's third stage, 6 of its 10 attention blocks) also stays fp32: in int8 it alone took vit_t's
  embedding below cosine 0.999 (0.99893 with it, 0.99935 without, on the random-weight checkpoint of
  seed 0; benchmarks/RESULTS.md).

Both change the model in place and cannot be undone.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator

import torch
from torch import nn

SMOOTHING_ALPHA = 0.5
"""SmoothQuant's migration strength: 0 leaves the activations alone, 1 moves all their range into the weights."""

# (LayerNorm, Linear) attribute paths, relative to a block, whose pairs int8-smooth smooths.
_NORM_LINEAR_PAIRS = (
    ("norm1", "attn.qkv"),  # SAM ViT block
    ("norm2", "mlp.lin1"),
    ("attn.norm", "attn.qkv"),  # TinyViT block
    ("mlp.norm", "mlp.fc1"),
)


def _norm_linear_pairs(encoder: nn.Module) -> Iterator[tuple[nn.LayerNorm, nn.Linear]]:
    """Every (LayerNorm, Linear) pair of ``encoder`` where the Linear reads the LayerNorm's output only."""
    for block in encoder.modules():
        for norm_path, linear_path in _NORM_LINEAR_PAIRS:
            try:
                norm, linear = block.get_submodule(norm_path), block.get_submodule(linear_path)
            except AttributeError:
                continue
            if isinstance(norm, nn.LayerNorm) and isinstance(linear, nn.Linear) and norm.elementwise_affine:
                yield norm, linear


@torch.no_grad()
def smooth_into_norms(encoder: nn.Module, alpha: float = SMOOTHING_ALPHA) -> int:
    """Fold per-channel smoothing factors into the LayerNorms that feed ``qkv`` and the first MLP layer
    (see the module docstring); returns how many pairs were smoothed. The fp32 output is unchanged
    within float rounding."""
    count = 0
    for norm, linear in _norm_linear_pairs(encoder):
        activation = (3 * norm.weight.abs() + norm.bias.abs()).clamp(min=1e-5)
        weight = linear.weight.abs().amax(dim=0).clamp(min=1e-5)
        scale = (activation**alpha / weight ** (1 - alpha)).clamp(min=1e-5)
        norm.weight.div_(scale)
        norm.bias.div_(scale)
        linear.weight.mul_(scale)
        count += 1
    return count


def quantize_linears(encoder: nn.Module, chosen: Callable[[str], bool]) -> None:
    """Dynamic int8 quantization, weights per output channel, of ``encoder``'s Linear layers whose
    qualified names ``chosen`` accepts."""
    qconfig = torch.ao.quantization.per_channel_dynamic_qconfig
    spec = {name: qconfig for name, module in encoder.named_modules()
            if isinstance(module, nn.Linear) and chosen(name)}
    with warnings.catch_warnings():  # torch announces a move of quantization to torchao
        warnings.simplefilter("ignore", UserWarning)
        torch.ao.quantization.quantize_dynamic(encoder, spec, dtype=torch.qint8, inplace=True)


def tinyvit_fp32_layers(encoder: nn.Module) -> set[str]:
    """Names of the Linear layers ``int8-smooth`` keeps in fp32 in a TinyViT encoder: the first MLP layer
    of every block of the attention stage with the most blocks (see the module docstring); empty for
    other encoders."""
    stages = [(len(stage.blocks), index) for index, stage in enumerate(getattr(encoder, "layers", ()))
              if any(hasattr(block, "mlp") for block in getattr(stage, "blocks", ()))]
    if not stages:
        return set()
    depth, index = max(stages)
    return {f"layers.{index}.blocks.{block}.mlp.fc1" for block in range(depth)}


def _in_mlp(name: str) -> bool:
    return ".mlp." in f".{name}"


def _in_mlp_or_qkv(name: str) -> bool:
    return _in_mlp(name) or name.endswith("attn.qkv")


def quantize_encoder(encoder: nn.Module, precision: str) -> None:
    """Quantize ``encoder`` in place for ``precision`` (``int8`` or ``int8-smooth``)."""
    if precision == "int8":
        quantize_linears(encoder, _in_mlp)
    elif precision == "int8-smooth":
        smooth_into_norms(encoder)
        kept = tinyvit_fp32_layers(encoder)
        quantize_linears(encoder, lambda name: _in_mlp_or_qkv(name) and name not in kept)
    else:
        raise ValueError(f"{precision!r} is not a quantized precision")
