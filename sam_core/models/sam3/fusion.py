"""SAM 3's vision-language fusion encoder: image tokens attend to themselves (with position) and
then to the prompt tokens (text, exemplar boxes). Tensors are sequence first: (L, B, C)."""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from sam_core.models.sam3.config import Sam3Config


def attention(dim: int, heads: int) -> nn.MultiheadAttention:
    return nn.MultiheadAttention(dim, heads)


class EncoderLayer(nn.Module):
    """Pre-norm layer: self-attention, cross-attention to ``memory``, ReLU feed-forward.

    ``pos`` is added to the self-attention queries and keys when ``pos_in_self``; ``memory_pos`` to
    the cross-attention keys when given."""

    def __init__(self, dim: int, heads: int, ffn_dim: int, pos_in_self: bool) -> None:
        super().__init__()
        self.self_attn = attention(dim, heads)
        self.cross_attn_image = attention(dim, heads)
        self.linear1 = nn.Linear(dim, ffn_dim)
        self.linear2 = nn.Linear(ffn_dim, dim)
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.norm3 = nn.LayerNorm(dim)
        self.pos_in_self = pos_in_self

    def forward(self, x: torch.Tensor, memory: torch.Tensor, *, pos: Optional[torch.Tensor] = None,
                padding: Optional[torch.Tensor] = None, memory_padding: Optional[torch.Tensor] = None,
                memory_pos: Optional[torch.Tensor] = None) -> torch.Tensor:
        y = self.norm1(x)
        q = y + pos if self.pos_in_self else y
        x = x + self.self_attn(q, q, y, key_padding_mask=padding, need_weights=False)[0]
        y = self.norm2(x)
        key = memory + memory_pos if memory_pos is not None else memory
        x = x + self.cross_attn_image(y, key, memory, key_padding_mask=memory_padding, need_weights=False)[0]
        return x + self.linear2(F.relu(self.linear1(self.norm3(x))))


class FusionEncoder(nn.Module):
    """``forward(image (HW, B, C), image_pos (HW, B, C), prompt (S, B, C), prompt_padding (B, S))``
    -> fused image tokens (HW, B, C)."""

    def __init__(self, config: Sam3Config) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            EncoderLayer(config.d_model, config.heads, config.ffn_dim, pos_in_self=True)
            for _ in range(config.encoder_layers)
        )

    def forward(self, image: torch.Tensor, image_pos: torch.Tensor, prompt: torch.Tensor,
                prompt_padding: torch.Tensor) -> torch.Tensor:
        x = image
        for layer in self.layers:
            x = layer(x, prompt, pos=image_pos, memory_padding=prompt_padding)
        return x
