"""SAM 3's segmentation head: the fused image tokens attend once more to the prompt, a small pixel
decoder climbs the feature pyramid (1x -> 2x -> 4x), and each query's mask is the dot product of its
embedding with the per-pixel embeddings. Masks are logits on the 4x grid (B, Q, 4h, 4w)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from sam_core.models.common import MLP
from sam_core.models.sam3.config import Sam3Config


class PixelDecoder(nn.Module):
    def __init__(self, dim: int, stages: int) -> None:
        super().__init__()
        self.conv_layers = nn.ModuleList(nn.Conv2d(dim, dim, 3, 1, 1) for _ in range(stages))
        self.norms = nn.ModuleList(nn.GroupNorm(8, dim) for _ in range(stages))

    def forward(self, levels: list[torch.Tensor]) -> torch.Tensor:
        """levels finest first; the coarsest is upsampled (nearest), added, convolved, step by step."""
        x = levels[-1]
        for index, finer in enumerate(reversed(levels[:-1])):
            x = finer + F.interpolate(x, size=finer.shape[-2:], mode="nearest")
            x = F.relu(self.norms[index](self.conv_layers[index](x)))
        return x


class MaskPredictor(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.mask_embed = MLP(dim, dim, dim, 3)

    def forward(self, queries: torch.Tensor, pixels: torch.Tensor) -> torch.Tensor:
        return torch.einsum("bqc,bchw->bqhw", self.mask_embed(queries), pixels)


class SegmentationHead(nn.Module):
    def __init__(self, config: Sam3Config) -> None:
        super().__init__()
        d = config.d_model
        self.pixel_decoder = PixelDecoder(d, config.pixel_decoder_stages)
        self.mask_predictor = MaskPredictor(d)
        self.cross_attend_prompt = nn.MultiheadAttention(d, config.heads)
        self.cross_attn_norm = nn.LayerNorm(d)
        # a semantic (one-channel) map of where the prompt is: not used for instances (a training signal)
        self.semantic_seg_head = nn.Conv2d(d, 1, kernel_size=1)
        self.instance_seg_head = nn.Conv2d(d, d, kernel_size=1)

    def forward(self, levels: list[torch.Tensor], fused: torch.Tensor, prompt: torch.Tensor,
                prompt_padding: torch.Tensor, queries: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """levels: the backbone's 4x, 2x, 1x maps (B, C, h, w); fused (h*w, B, C) image tokens;
        queries (B, Q, C) -> mask logits (B, Q, 4h, 4w) and the semantic map's logits (B, 4h, 4w)."""
        y = self.cross_attn_norm(fused)
        fused = self.cross_attend_prompt(y, prompt, prompt, key_padding_mask=prompt_padding, need_weights=False)[0] + fused
        coarse = levels[-1]
        fused_map = fused.permute(1, 2, 0).reshape(-1, *coarse.shape[1:])
        pixels = self.pixel_decoder([*levels[:-1], fused_map])
        return self.mask_predictor(queries, self.instance_seg_head(pixels)), self.semantic_seg_head(pixels)[:, 0]
