"""SAM 2's image trunk: Hiera, a hierarchical ViT with windowed attention and query pooling.

Tokens are kept as (B, H, W, C) (row, column, channel). Each stage after the first halves the grid
(max-pooling the attention queries in its first block) and doubles the width and the head count.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from sam_core.models.common import MLP
from sam_core.models.sam2.config import Sam2Config


def window_partition(x: torch.Tensor, window: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """(B, H, W, C) -> (B * windows, window, window, C), zero-padding H and W to multiples of
    ``window``; also returns the padded (H, W)."""
    b, h, w, c = x.shape
    pad_h, pad_w = (window - h % window) % window, (window - w % window) % window
    if pad_h or pad_w:
        x = F.pad(x, (0, 0, 0, pad_w, 0, pad_h))
    hp, wp = h + pad_h, w + pad_w
    x = x.view(b, hp // window, window, wp // window, window, c)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, window, window, c), (hp, wp)


def window_unpartition(windows: torch.Tensor, window: int, padded: tuple[int, int], size: tuple[int, int]) -> torch.Tensor:
    """Inverse of :func:`window_partition`: back to (B, H, W, C) of the unpadded ``size``."""
    hp, wp = padded
    h, w = size
    b = windows.shape[0] // (hp * wp // window // window)
    x = windows.reshape(b, hp // window, wp // window, window, window, -1)
    x = x.permute(0, 1, 3, 2, 4, 5).reshape(b, hp, wp, -1)
    return x[:, :h, :w, :] if hp > h or wp > w else x


def _pool(x: torch.Tensor, pool: nn.Module | None) -> torch.Tensor:
    """Max-pool a (B, H, W, C) grid (identity when ``pool`` is None)."""
    if pool is None:
        return x
    return pool(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)


class MultiScaleAttention(nn.Module):
    """Self-attention over a (B, H, W, C) grid, its queries optionally max-pooled (halving H and W)."""

    def __init__(self, dim: int, dim_out: int, num_heads: int, q_pool: nn.Module | None) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.q_pool = q_pool
        self.qkv = nn.Linear(dim, dim_out * 3)
        self.proj = nn.Linear(dim_out, dim_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, h, w, _ = x.shape
        q, k, v = torch.unbind(self.qkv(x).reshape(b, h * w, 3, self.num_heads, -1), 2)
        if self.q_pool is not None:
            q = _pool(q.reshape(b, h, w, -1), self.q_pool)
            h, w = q.shape[1:3]
            q = q.reshape(b, h * w, self.num_heads, -1)
        x = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
        return self.proj(x.transpose(1, 2).reshape(b, h, w, -1))


class MultiScaleBlock(nn.Module):
    """Norm, (windowed) attention, residual; norm, GELU MLP, residual. A block that changes the width
    projects its shortcut (``proj``) and, at a stage start, pools it with the queries."""

    def __init__(self, dim: int, dim_out: int, num_heads: int, mlp_ratio: float, window_size: int,
                 q_stride: tuple[int, int] | None) -> None:
        super().__init__()
        self.dim, self.dim_out = dim, dim_out
        self.window_size = window_size
        self.q_stride = q_stride
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.pool = nn.MaxPool2d(kernel_size=q_stride, stride=q_stride) if q_stride else None
        self.attn = MultiScaleAttention(dim, dim_out, num_heads, q_pool=self.pool)
        self.norm2 = nn.LayerNorm(dim_out, eps=1e-6)
        self.mlp = MLP(dim_out, int(dim_out * mlp_ratio), dim_out, 2, activation=F.gelu)
        if dim != dim_out:
            self.proj = nn.Linear(dim, dim_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x
        x = self.norm1(x)
        if self.dim != self.dim_out:
            shortcut = _pool(self.proj(x), self.pool)
        window = self.window_size
        if window > 0:
            size = (x.shape[1], x.shape[2])
            x, padded = window_partition(x, window)
        x = self.attn(x)
        if self.q_stride:
            window = self.window_size // self.q_stride[0]
            size = (shortcut.shape[1], shortcut.shape[2])
            padded = tuple(s + (window - s % window) % window for s in size) if window > 0 else size
        if self.window_size > 0:
            x = window_unpartition(x, window, padded, size)
        x = shortcut + x
        return x + self.mlp(self.norm2(x))


class PatchEmbed(nn.Module):
    """7x7 convolution of stride 4: (B, 3, H, W) image -> (B, H/4, W/4, C) tokens."""

    def __init__(self, embed_dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(3, embed_dim, kernel_size=7, stride=4, padding=3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).permute(0, 2, 3, 1)


class Hiera(nn.Module):
    """The Hiera trunk of a :class:`Sam2Config`: (B, 3, S, S) normalised image -> one (B, C_i, H_i, W_i)
    feature map per stage, highest resolution first (strides 4, 8, 16, 32 for four stages)."""

    def __init__(self, config: Sam2Config) -> None:
        super().__init__()
        stages = config.stages
        self.stage_ends = [sum(stages[: i + 1]) - 1 for i in range(len(stages))]
        pool_blocks = {end + 1 for end in self.stage_ends[:-1]}
        self.patch_embed = PatchEmbed(config.embed_dim)
        self.pos_embed = nn.Parameter(torch.zeros(1, config.embed_dim, *config.pos_embed_size))
        self.pos_embed_window = nn.Parameter(torch.zeros(1, config.embed_dim, config.window_spec[0], config.window_spec[0]))
        dim, heads, stage = config.embed_dim, config.num_heads, 0
        self.blocks = nn.ModuleList()
        for i in range(sum(stages)):
            dim_out = dim
            window = 0 if i in config.global_att_blocks else config.window_spec[stage]
            if i - 1 in self.stage_ends:  # first block of a later stage: wider, more heads
                dim_out, heads, stage = dim * 2, heads * 2, stage + 1
            self.blocks.append(MultiScaleBlock(dim, dim_out, heads, config.mlp_ratio, window,
                                               (2, 2) if i in pool_blocks else None))
            dim = dim_out
        self.channel_list = [self.blocks[i].dim_out for i in self.stage_ends[::-1]]

    def _pos_embed(self, size: tuple[int, int]) -> torch.Tensor:
        """Background embedding resized (bicubic) to the grid plus the window embedding tiled: (1, H, W, C)."""
        pos = F.interpolate(self.pos_embed, size=size, mode="bicubic")
        window = self.pos_embed_window
        pos = pos + window.tile([a // b for a, b in zip(pos.shape, window.shape)])
        return pos.permute(0, 2, 3, 1)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.patch_embed(x)
        x = x + self._pos_embed((x.shape[1], x.shape[2]))
        outputs = []
        for i, block in enumerate(self.blocks):
            x = block(x)
            if i in self.stage_ends:
                outputs.append(x.permute(0, 3, 1, 2))
        return outputs
