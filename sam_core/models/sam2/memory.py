"""SAM 2's memory: the memory encoder (a frame's features fused with its predicted mask) and the
memory attention (a frame's features attending to memories of other frames and object pointers,
with rotary position encoding).

Token sequences here are batch first: (B, N, C), N = h * w tokens in row-major order.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from sam_core.models.common import LayerNorm2d
from sam_core.models.sam2.neck import sine_position_encoding


# --- memory encoder ----------------------------------------------------------------------------------


class MaskDownSampler(nn.Module):
    """(B, 1, H, W) mask -> (B, dim, H / 2^layers, W / 2^layers): ``layers`` times a 3x3 stride-2
    convolution (channels x4), norm and GELU, then a 1x1 convolution (keys ``encoder.N``)."""

    def __init__(self, dim: int, layers: int) -> None:
        super().__init__()
        self.encoder = nn.Sequential()
        chans = 1
        for _ in range(layers):
            self.encoder.append(nn.Conv2d(chans, chans * 4, kernel_size=3, stride=2, padding=1))
            self.encoder.append(LayerNorm2d(chans * 4))
            self.encoder.append(nn.GELU())
            chans *= 4
        self.encoder.append(nn.Conv2d(chans, dim, kernel_size=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x)


class CXBlock(nn.Module):
    """ConvNeXt block: depth-wise convolution, norm, pointwise MLP (x4, GELU), layer scale, residual."""

    def __init__(self, dim: int, kernel_size: int) -> None:
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, kernel_size=kernel_size, padding=kernel_size // 2, groups=dim)
        self.norm = LayerNorm2d(dim)
        self.pwconv1 = nn.Linear(dim, 4 * dim)
        self.pwconv2 = nn.Linear(4 * dim, dim)
        self.gamma = nn.Parameter(torch.full((dim,), 1e-6))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.norm(self.dwconv(x)).permute(0, 2, 3, 1)
        y = self.gamma * self.pwconv2(F.gelu(self.pwconv1(y)))
        return x + y.permute(0, 3, 1, 2)


class Fuser(nn.Module):
    """A stack of :class:`CXBlock` (keys ``layers.N``)."""

    def __init__(self, dim: int, layers: int, kernel_size: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList(CXBlock(dim, kernel_size) for _ in range(layers))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x)
        return x


class MemoryEncoder(nn.Module):
    """A frame's (B, d_model, h, w) features + its (B, 1, 16h, 16w) mask (already through the sigmoid,
    scale and bias) -> memory features (B, mem_dim, h, w) and their sine positional encoding."""

    def __init__(self, d_model: int, mem_dim: int, downsampler_layers: int, fuser_layers: int, kernel_size: int) -> None:
        super().__init__()
        self.mask_downsampler = MaskDownSampler(d_model, downsampler_layers)
        self.pix_feat_proj = nn.Conv2d(d_model, d_model, kernel_size=1)
        self.fuser = Fuser(d_model, fuser_layers, kernel_size)
        self.out_proj = nn.Conv2d(d_model, mem_dim, kernel_size=1) if mem_dim != d_model else nn.Identity()
        self.mem_dim = mem_dim

    def forward(self, pix_feat: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mask = self.mask_downsampler(mask)
        x = self.pix_feat_proj(pix_feat.to(mask.device)) + mask
        x = self.out_proj(self.fuser(x))
        pos = sine_position_encoding(self.mem_dim, x.shape[-2], x.shape[-1], x.device).to(x.dtype)
        return x, pos.expand(x.shape[0], -1, -1, -1)


# --- memory attention --------------------------------------------------------------------------------


def axial_rope(head_dim: int, width: int, height: int, theta: float) -> torch.Tensor:
    """Complex rotations (width * height, head_dim / 2) for a row-major grid: the first half of each
    head's channel pairs turns with the column, the second half with the row."""
    freqs = 1.0 / (theta ** (torch.arange(0, head_dim, 4)[: head_dim // 4].float() / head_dim))
    t = torch.arange(width * height, dtype=torch.float32)
    t_x = (t % width).float()
    t_y = torch.div(t, width, rounding_mode="floor").float()
    angles_x, angles_y = torch.outer(t_x, freqs), torch.outer(t_y, freqs)
    return torch.cat([torch.polar(torch.ones_like(angles_x), angles_x),
                      torch.polar(torch.ones_like(angles_y), angles_y)], dim=-1)


def _rotate(x: torch.Tensor, rotation: torch.Tensor) -> torch.Tensor:
    """Apply (N, D/2) complex rotations to (B, heads, N * r, D) tokens (rotations repeated r times)."""
    pairs = torch.view_as_complex(x.float().reshape(*x.shape[:-1], -1, 2))
    repeat = pairs.shape[-2] // rotation.shape[0]
    if repeat > 1:
        rotation = rotation.repeat(repeat, 1)
    return torch.view_as_real(pairs * rotation).flatten(3).type_as(x)


class RoPEAttention(nn.Module):
    """Multi-head attention with axial rotary position encoding of queries and keys (keys may come
    from ``kv_in_dim`` channels; the last ``num_k_exclude_rope`` keys, object pointers, are not
    rotated). Queries are a square grid; keys are that grid repeated (memories of several frames)."""

    def __init__(self, dim: int, num_heads: int, kv_in_dim: int | None = None, rope_theta: float = 10000.0) -> None:
        super().__init__()
        kv_in_dim = kv_in_dim or dim
        self.num_heads = num_heads
        self.rope_theta = rope_theta
        self.q_proj = nn.Linear(dim, dim)
        self.k_proj = nn.Linear(kv_in_dim, dim)
        self.v_proj = nn.Linear(kv_in_dim, dim)
        self.out_proj = nn.Linear(dim, dim)
        self._rotation: torch.Tensor | None = None

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        return x.reshape(b, n, self.num_heads, c // self.num_heads).transpose(1, 2)

    def rotation(self, tokens: int, head_dim: int, device: torch.device) -> torch.Tensor:
        """The rotations of a square grid of ``tokens`` queries (computed once per grid size)."""
        held = self._rotation
        if held is None or held.shape[0] != tokens or held.device != device:
            side = math.sqrt(tokens)
            held = axial_rope(head_dim, side, side, self.rope_theta).to(device)
            self._rotation = held
        return held

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, num_k_exclude_rope: int = 0) -> torch.Tensor:
        q, k, v = self._heads(self.q_proj(q)), self._heads(self.k_proj(k)), self._heads(self.v_proj(v))
        rotation = self.rotation(q.shape[-2], q.shape[-1], q.device)
        q = _rotate(q, rotation)
        rotated = k.shape[-2] - num_k_exclude_rope
        if rotated > 0:
            k = torch.cat([_rotate(k[:, :, :rotated], rotation), k[:, :, rotated:]], dim=2)
        out = F.scaled_dot_product_attention(q, k, v).transpose(1, 2)
        return self.out_proj(out.reshape(out.shape[0], out.shape[1], -1))


class MemoryAttentionLayer(nn.Module):
    """Pre-norm self-attention (RoPE), cross-attention to memories (RoPE; keys get their positional
    encoding added), ReLU feed-forward."""

    def __init__(self, d_model: int, mem_dim: int, num_heads: int, ff_dim: int, rope_theta: float) -> None:
        super().__init__()
        self.self_attn = RoPEAttention(d_model, num_heads, rope_theta=rope_theta)
        self.cross_attn_image = RoPEAttention(d_model, num_heads, kv_in_dim=mem_dim, rope_theta=rope_theta)
        self.linear1 = nn.Linear(d_model, ff_dim)
        self.linear2 = nn.Linear(ff_dim, d_model)
        self.norm1 = nn.LayerNorm(d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.norm3 = nn.LayerNorm(d_model)

    def forward(self, tgt: torch.Tensor, memory: torch.Tensor, memory_pos: torch.Tensor, num_k_exclude_rope: int) -> torch.Tensor:
        x = self.norm1(tgt)
        tgt = tgt + self.self_attn(x, x, x)
        x = self.norm2(tgt)
        tgt = tgt + self.cross_attn_image(x, memory + memory_pos, memory, num_k_exclude_rope=num_k_exclude_rope)
        return tgt + self.linear2(F.relu(self.linear1(self.norm3(tgt))))


class MemoryAttention(nn.Module):
    """Condition a frame's tokens (B, h*w, d_model) on memories (B, M, mem_dim) whose last
    ``num_obj_ptr_tokens`` entries are object-pointer tokens; returns (B, h*w, d_model)."""

    def __init__(self, d_model: int, mem_dim: int, layers: int, num_heads: int, ff_dim: int, rope_theta: float) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            MemoryAttentionLayer(d_model, mem_dim, num_heads, ff_dim, rope_theta) for _ in range(layers)
        )
        self.norm = nn.LayerNorm(d_model)

    def forward(self, curr: torch.Tensor, memory: torch.Tensor, curr_pos: torch.Tensor, memory_pos: torch.Tensor,
                num_obj_ptr_tokens: int = 0) -> torch.Tensor:
        output = curr + 0.1 * curr_pos
        for layer in self.layers:
            output = layer(output, memory, memory_pos, num_obj_ptr_tokens)
        return self.norm(output)
