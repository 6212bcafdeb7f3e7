"""SAM 3's text encoder: CLIP's causal text transformer over the token ids, resized to ``d_model``.

``forward(ids)`` takes (B, L) token ids (0 = padding) and returns the token features (L, B, d_model)
(sequence first) and the padding mask (B, L), True where there is no token.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

from sam_core.models.sam3.config import Sam3Config


class ResidualAttentionBlock(nn.Module):
    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(width, heads, batch_first=True)
        self.ln_1 = nn.LayerNorm(width)
        self.ln_2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(OrderedDict([
            ("c_fc", nn.Linear(width, width * 4)),
            ("gelu", nn.GELU()),
            ("c_proj", nn.Linear(width * 4, width)),
        ]))

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        y = self.ln_1(x)
        x = x + self.attn(y, y, y, need_weights=False, attn_mask=mask)[0]
        return x + self.mlp(self.ln_2(x))


class Transformer(nn.Module):
    def __init__(self, width: int, layers: int, heads: int) -> None:
        super().__init__()
        self.resblocks = nn.ModuleList(ResidualAttentionBlock(width, heads) for _ in range(layers))

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        for block in self.resblocks:
            x = block(x, mask)
        return x


class TextTransformer(nn.Module):
    def __init__(self, config: Sam3Config) -> None:
        super().__init__()
        width = config.text_width
        self.token_embedding = nn.Embedding(config.vocab_size, width)
        self.positional_embedding = nn.Parameter(torch.zeros(config.context_length, width))
        self.transformer = Transformer(width, config.text_layers, config.text_heads)
        self.ln_final = nn.LayerNorm(width)
        # CLIP's pooled-output projection: part of the weights, not used by SAM 3's detector
        self.text_projection = nn.Parameter(torch.zeros(width, config.text_projection_dim))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        length = ids.shape[1]
        causal = torch.full((length, length), float("-inf"), device=ids.device).triu_(1)
        x = self.token_embedding(ids) + self.positional_embedding[:length]
        return self.ln_final(self.transformer(x, causal))


class TextEncoder(nn.Module):
    def __init__(self, config: Sam3Config) -> None:
        super().__init__()
        self.encoder = TextTransformer(config)
        self.resizer = nn.Linear(config.text_width, config.d_model)

    def forward(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.encoder(ids)
        return self.resizer(features.transpose(0, 1)), ids == 0
