"""SAM's ViT image encoder: patch embedding, windowed and global attention with decomposed relative
positions (ViTDet / MViTv2), and the neck. Input (B, 3, S, S) normalized and padded; output
(B, prompt_embed_dim, S / patch, S / patch)."""

from __future__ import annotations

from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from sam_core.models.common import MLPBlock, neck
from sam_core.models.config import SamConfig
from sam_core.models.precision import autocast


class PatchEmbed(nn.Module):
    """Non-overlapping patches to tokens: (B, C, H, W) -> (B, H/p, W/p, D)."""

    def __init__(self, patch_size: int, in_chans: int, embed_dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).permute(0, 2, 3, 1)


def rel_pos_table(q_size: int, k_size: int, rel_pos: torch.Tensor) -> torch.Tensor:
    """Relative-position embeddings for every (query, key) pair along one axis: (q_size, k_size, C).

    ``rel_pos`` is linearly resized when it was trained for another size.
    """
    length = 2 * max(q_size, k_size) - 1
    if rel_pos.shape[0] != length:
        resized = F.interpolate(rel_pos.reshape(1, rel_pos.shape[0], -1).permute(0, 2, 1), size=length, mode="linear")
        rel_pos = resized.reshape(-1, length).permute(1, 0)
    q_coords = torch.arange(q_size)[:, None] * max(k_size / q_size, 1.0)
    k_coords = torch.arange(k_size)[None, :] * max(q_size / k_size, 1.0)
    offsets = (q_coords - k_coords) + (k_size - 1) * max(q_size / k_size, 1.0)
    return rel_pos[offsets.long()]


def decomposed_rel_pos(
    q: torch.Tensor, rel_pos_h: torch.Tensor, rel_pos_w: torch.Tensor, size: tuple[int, int]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Height and width terms of the attention bias for queries ``q`` (B, h*w, C) on an (h, w) grid.

    Returns ``(rel_h, rel_w)`` of shapes (B, h, w, h) and (B, h, w, w): the bias of query (i, j) for
    key (k, l) is ``rel_h[..., i, j, k] + rel_w[..., i, j, l]``.
    """
    h, w = size
    table_h = rel_pos_table(h, h, rel_pos_h)
    table_w = rel_pos_table(w, w, rel_pos_w)
    grid_q = q.reshape(q.shape[0], h, w, q.shape[-1])
    rel_h = torch.einsum("bhwc,hkc->bhwk", grid_q, table_h)
    rel_w = torch.einsum("bhwc,wkc->bhwk", grid_q, table_w)
    return rel_h, rel_w


# Bytes of relative-position bias materialized at once by the fused path (heads are processed in chunks).
_BIAS_CHUNK_BYTES = 256 * 1024 * 1024


class Attention(nn.Module):
    """Multi-head self-attention on a (B, H, W, D) token grid with decomposed relative positions.

    ``fused = True`` (all precisions but ``exact``) runs ``scaled_dot_product_attention`` with the
    relative-position bias as attention mask, a few heads at a time to bound the memory of the bias;
    ``fused = False`` computes exactly the official operations.
    """

    fused: bool = True

    def __init__(self, dim: int, num_heads: int, input_size: tuple[int, int]) -> None:
        super().__init__()
        self.num_heads = num_heads
        head_dim = dim // num_heads
        self.scale = head_dim**-0.5
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)
        self.rel_pos_h = nn.Parameter(torch.zeros(2 * input_size[0] - 1, head_dim))
        self.rel_pos_w = nn.Parameter(torch.zeros(2 * input_size[1] - 1, head_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(self.attend(x))

    def attend(self, x: torch.Tensor) -> torch.Tensor:
        """The attention of (B, H, W, D) tokens before the output projection ``proj``: (B, H, W, D)."""
        b, h, w, _ = x.shape
        n = h * w
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        if self.fused:
            return self._fused(*qkv.unbind(0), h, w)
        q, k, v = qkv.reshape(3, b * self.num_heads, n, -1).unbind(0)
        rel_h, rel_w = decomposed_rel_pos(q, self.rel_pos_h, self.rel_pos_w, (h, w))
        attn = (q * self.scale) @ k.transpose(-2, -1)
        attn = attn.view(-1, h, w, h, w) + rel_h[:, :, :, :, None] + rel_w[:, :, :, None, :]
        attn = attn.view(-1, n, n).softmax(dim=-1)
        return (attn @ v).view(b, self.num_heads, h, w, -1).permute(0, 2, 3, 1, 4).reshape(b, h, w, -1)

    def _fused(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, h: int, w: int) -> torch.Tensor:
        """Attention of (B, heads, n, C) tensors; returns (B, h, w, heads * C)."""
        b, heads, n, c = q.shape
        chunk = max(1, min(heads, _BIAS_CHUNK_BYTES // (b * n * n * 4)))
        outs = []
        for start in range(0, heads, chunk):
            qc, kc, vc = (t[:, start : start + chunk] for t in (q, k, v))
            rel_h, rel_w = decomposed_rel_pos(qc.reshape(-1, n, c), self.rel_pos_h, self.rel_pos_w, (h, w))
            # einsum's outputs are strided views; made contiguous (small), their broadcast sum comes out
            # contiguous, so the (n, n) bias needs no second copy (an out= buffer would not export or compile)
            rel_h, rel_w = rel_h.contiguous(), rel_w.contiguous()
            bias = (rel_h[:, :, :, :, None] + rel_w[:, :, :, None, :]).reshape(b, qc.shape[1], n, n)
            outs.append(F.scaled_dot_product_attention(qc, kc, vc, attn_mask=bias.to(qc.dtype), scale=self.scale))
        out = torch.cat(outs, dim=1) if len(outs) > 1 else outs[0]
        return out.view(b, heads, h, w, c).permute(0, 2, 3, 1, 4).reshape(b, h, w, heads * c)


def window_partition(x: torch.Tensor, window: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """(B, H, W, C) -> (B * windows, window, window, C), zero-padding H and W up to multiples of ``window``.

    Returns the windows and the padded size (Hp, Wp).
    """
    b, h, w, c = x.shape
    pad_h = (window - h % window) % window
    pad_w = (window - w % window) % window
    if pad_h or pad_w:
        x = F.pad(x, (0, 0, 0, pad_w, 0, pad_h))
    hp, wp = h + pad_h, w + pad_w
    x = x.view(b, hp // window, window, wp // window, window, c)
    return x.permute(0, 1, 3, 2, 4, 5).contiguous().view(-1, window, window, c), (hp, wp)


def window_unpartition(windows: torch.Tensor, window: int, padded: tuple[int, int], size: tuple[int, int]) -> torch.Tensor:
    """Inverse of :func:`window_partition`: back to (B, H, W, C) without the padding."""
    hp, wp = padded
    h, w = size
    b = windows.shape[0] // (hp * wp // window // window)
    x = windows.view(b, hp // window, wp // window, window, window, -1)
    x = x.permute(0, 1, 3, 2, 4, 5).contiguous().view(b, hp, wp, -1)
    if hp > h or wp > w:
        x = x[:, :h, :w, :].contiguous()
    return x


class Block(nn.Module):
    """Pre-norm transformer block; windowed attention when ``window_size > 0``, else global."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, window_size: int, grid: int) -> None:
        super().__init__()
        norm = partial(nn.LayerNorm, eps=1e-6)
        self.norm1 = norm(dim)
        side = window_size if window_size > 0 else grid
        self.attn = Attention(dim, num_heads, (side, side))
        self.norm2 = norm(dim)
        self.mlp = MLPBlock(dim, int(dim * mlp_ratio))
        self.window_size = window_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x
        x = self.norm1(x)
        if self.window_size > 0:
            h, w = x.shape[1], x.shape[2]
            x, padded = window_partition(x, self.window_size)
            if self.attn.fused:  # the projection runs on the image's tokens only, not on the windows' padding
                x = self.attn.proj(window_unpartition(self.attn.attend(x), self.window_size, padded, (h, w)))
            else:
                x = window_unpartition(self.attn(x), self.window_size, padded, (h, w))
        else:
            x = self.attn(x)
        x = shortcut + x
        return x + self.mlp(self.norm2(x))


class ImageEncoderViT(nn.Module):
    """SAM's ViT encoder for a :class:`SamConfig` with ``encoder == "vit"``.

    ``compute_dtype`` (None for fp32) is the autocast dtype; the output is always float32. ``fused``
    (all precisions but ``exact``) keeps the token grid contiguous; ``exact`` keeps the official layout.
    """

    compute_dtype: torch.dtype | None = None
    fused: bool = True

    def __init__(self, config: SamConfig) -> None:
        super().__init__()
        self.img_size = config.image_size
        grid = config.image_size // config.patch_size
        self.patch_embed = PatchEmbed(config.patch_size, 3, config.embed_dim)
        self.pos_embed = nn.Parameter(torch.zeros(1, grid, grid, config.embed_dim))
        self.blocks = nn.ModuleList(
            Block(
                config.embed_dim,
                config.num_heads,
                config.mlp_ratio,
                0 if i in config.global_attn_indexes else config.window_size,
                grid,
            )
            for i in range(config.depth)
        )
        self.neck = neck(config.embed_dim, config.prompt_embed_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with autocast(x.device.type, self.compute_dtype):
            x = self.patch_embed(x)
            if self.fused:
                # the patch embedding is a channels-last view of a convolution's output: made contiguous
                # once here, the residual stream stays contiguous and no LayerNorm or Linear copies it again
                x = x.contiguous()
            x = x + self.pos_embed
            for block in self.blocks:
                x = block(x)
            x = self.neck(x.permute(0, 3, 1, 2))
        return x.float()
