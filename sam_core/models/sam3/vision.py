"""SAM 3's vision backbone: a plain ViT with 2-D rotary attention (windowed blocks and a few global
ones), a tiled absolute position table, and a simple feature pyramid neck (4x, 2x, 1x, 0.5x).

Shapes: images (B, 3, S, S) normalized to [-1, 1]; tokens (B, H, W, C) with H = W = S / patch.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from sam_core.models.sam3.config import Sam3Config


def sam3_input(images: torch.Tensor, resolution: int) -> torch.Tensor:
    """(B, 3, H, W) RGB in 0..255 (uint8 or float) -> (B, 3, S, S) model input, as SAM 3's image
    transform: resized to S x S (aspect not kept) with antialiased bilinear interpolation, rounded to
    uint8 as torchvision does, then scaled to [-1, 1]."""
    x = images.float()
    if tuple(x.shape[-2:]) != (resolution, resolution):
        x = F.interpolate(x, size=(resolution, resolution), mode="bilinear", align_corners=False, antialias=True)
        x = x.round_().clamp_(0, 255)
    return (x / 255.0 - 0.5) / 0.5


def axial_rotary_table(head_dim: int, side: int, scale: float, theta: float = 10000.0) -> torch.Tensor:
    """Complex rotations (side*side, head_dim/2): half the channel pairs turn with x, half with y.
    Token t sits at x = t % side, y = t // side, positions multiplied by ``scale``."""
    freqs = 1.0 / (theta ** (torch.arange(0, head_dim, 4)[: head_dim // 4].float() / head_dim))
    t = torch.arange(side * side, dtype=torch.float32)
    x = (t % side) * scale
    y = torch.div(t, side, rounding_mode="floor") * scale
    angles_x, angles_y = torch.outer(x, freqs), torch.outer(y, freqs)
    return torch.cat([torch.polar(torch.ones_like(angles_x), angles_x),
                      torch.polar(torch.ones_like(angles_y), angles_y)], dim=-1)


def rotate(x: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """Apply a rotary table (L, C/2) to (..., L, C) queries or keys."""
    pairs = torch.view_as_complex(x.float().reshape(*x.shape[:-1], -1, 2))
    return torch.view_as_real(pairs * table).flatten(-2).type_as(x)


class RotaryAttention(nn.Module):
    """Multi-head self-attention on a (B, H, W, C) grid with 2-D rotary position."""

    def __init__(self, dim: int, heads: int, side: int, rope_scale: float) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)
        self.register_buffer("freqs_cis", axial_rotary_table(dim // heads, side, rope_scale))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, h, w, _ = x.shape
        q, k, v = self.qkv(x).reshape(b, h * w, 3, self.heads, -1).permute(2, 0, 3, 1, 4).unbind(0)
        q, k = rotate(q, self.freqs_cis), rotate(k, self.freqs_cis)
        x = F.scaled_dot_product_attention(q, k, v)
        return self.proj(x.view(b, self.heads, h, w, -1).permute(0, 2, 3, 1, 4).reshape(b, h, w, -1))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


def _windows(x: torch.Tensor, size: int) -> tuple[torch.Tensor, tuple[int, int]]:
    b, h, w, c = x.shape
    pad_h, pad_w = (size - h % size) % size, (size - w % size) % size
    if pad_h or pad_w:
        x = F.pad(x, (0, 0, 0, pad_w, 0, pad_h))
    hp, wp = h + pad_h, w + pad_w
    x = x.view(b, hp // size, size, wp // size, size, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, size, size, c), (hp, wp)


def _unwindows(x: torch.Tensor, size: int, padded: tuple[int, int], hw: tuple[int, int]) -> torch.Tensor:
    hp, wp = padded
    b = x.shape[0] // (hp * wp // size // size)
    x = x.reshape(b, hp // size, wp // size, size, size, -1).permute(0, 1, 3, 2, 4, 5).reshape(b, hp, wp, -1)
    return x[:, : hw[0], : hw[1]]


class Block(nn.Module):
    """Pre-norm transformer block; attention within ``window`` x ``window`` tiles, or global (0)."""

    def __init__(self, config: Sam3Config, window: int) -> None:
        super().__init__()
        dim = config.vit_dim
        side = window or config.grid
        self.norm1 = nn.LayerNorm(dim)
        self.attn = RotaryAttention(dim, config.vit_heads, side, config.window_size / side)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, config.vit_mlp_dim)
        self.window = window

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x
        x = self.norm1(x)
        if self.window:
            hw = x.shape[1:3]
            x, padded = _windows(x, self.window)
            x = _unwindows(self.attn(x), self.window, padded, hw)
        else:
            x = self.attn(x)
        x = shortcut + x
        return x + self.mlp(self.norm2(x))


class PatchEmbed(nn.Module):
    def __init__(self, patch: int, dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(3, dim, kernel_size=patch, stride=patch, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).permute(0, 2, 3, 1)


class ViT(nn.Module):
    """The trunk: (B, 3, S, S) -> (B, C, S/patch, S/patch) after the last block."""

    def __init__(self, config: Sam3Config) -> None:
        super().__init__()
        self.patch_embed = PatchEmbed(config.patch_size, config.vit_dim)
        pretrain_grid = config.pretrain_size // config.patch_size
        self.pos_embed = nn.Parameter(torch.zeros(1, pretrain_grid * pretrain_grid + 1, config.vit_dim))
        self.ln_pre = nn.LayerNorm(config.vit_dim)
        self.blocks = nn.ModuleList(
            Block(config, 0 if i in config.global_blocks else config.window_size) for i in range(config.vit_depth)
        )

    def _position(self, h: int, w: int) -> torch.Tensor:
        table = self.pos_embed[:, 1:]  # the class token's entry is not used
        side = math.isqrt(table.shape[1])
        table = table.reshape(1, side, side, -1).permute(0, 3, 1, 2)
        if (side, side) != (h, w):
            table = table.tile([1, 1, h // side + 1, w // side + 1])[:, :, :h, :w]
        return table.permute(0, 2, 3, 1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(images)
        x = self.ln_pre(x + self._position(x.shape[1], x.shape[2]))
        for block in self.blocks:
            x = block(x)
        return x.permute(0, 3, 1, 2)


class SinePositions(nn.Module):
    """DETR's normalized sine position encoding with ``dim`` channels (y half, then x half)."""

    def __init__(self, dim: int, temperature: float = 10000.0) -> None:
        super().__init__()
        self.half = dim // 2
        self.temperature = temperature
        self.scale = 2 * math.pi

    def _frequencies(self, device: torch.device) -> torch.Tensor:
        steps = torch.arange(self.half, dtype=torch.float32, device=device)
        return self.temperature ** (2 * (steps // 2) / self.half)

    def _interleave(self, angles: torch.Tensor) -> torch.Tensor:
        return torch.stack((angles[..., 0::2].sin(), angles[..., 1::2].cos()), dim=-1).flatten(-2)

    def encode_xy(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Encodings (N, dim/2) of normalized x and y in [0, 1] (1-D tensors)."""
        frequencies = self._frequencies(x.device)
        return (self._interleave((x * self.scale)[:, None] / frequencies),
                self._interleave((y * self.scale)[:, None] / frequencies))

    def encode_boxes(self, cx: torch.Tensor, cy: torch.Tensor, w: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        """(N, dim + 2): the centre's y and x encodings, then the height and the width as they are."""
        pos_x, pos_y = self.encode_xy(cx, cy)
        return torch.cat((pos_y, pos_x, h[:, None], w[:, None]), dim=1)

    def grid(self, height: int, width: int, device: torch.device) -> torch.Tensor:
        """(1, dim, height, width) encoding of a feature grid."""
        eps = 1e-6
        y = torch.arange(1, height + 1, dtype=torch.float32, device=device)
        x = torch.arange(1, width + 1, dtype=torch.float32, device=device)
        y = (y / (y[-1:] + eps) * self.scale).view(-1, 1).expand(height, width)
        x = (x / (x[-1:] + eps) * self.scale).view(1, -1).expand(height, width)
        frequencies = self._frequencies(device)
        pos_x = self._interleave(x[..., None] / frequencies)
        pos_y = self._interleave(y[..., None] / frequencies)
        return torch.cat((pos_y, pos_x), dim=-1).permute(2, 0, 1)[None]


def _neck_level(scale: float, dim: int, d_model: int) -> nn.Sequential:
    level = nn.Sequential()
    if scale == 4.0:
        level.add_module("dconv_2x2_0", nn.ConvTranspose2d(dim, dim // 2, kernel_size=2, stride=2))
        level.add_module("gelu", nn.GELU())
        level.add_module("dconv_2x2_1", nn.ConvTranspose2d(dim // 2, dim // 4, kernel_size=2, stride=2))
        out = dim // 4
    elif scale == 2.0:
        level.add_module("dconv_2x2", nn.ConvTranspose2d(dim, dim // 2, kernel_size=2, stride=2))
        out = dim // 2
    elif scale == 1.0:
        out = dim
    else:
        level.add_module("maxpool_2x2", nn.MaxPool2d(kernel_size=2, stride=2))
        out = dim
    level.add_module("conv_1x1", nn.Conv2d(out, d_model, kernel_size=1))
    level.add_module("conv_3x3", nn.Conv2d(d_model, d_model, kernel_size=3, padding=1))
    return level


NECK_SCALES = (4.0, 2.0, 1.0, 0.5)


class VisionBackbone(nn.Module):
    """Trunk + neck. ``forward`` returns the 4x, 2x and 1x levels (B, d_model, h, w) and their sine
    encodings; the 0.5x level exists in the weights but SAM 3's image model drops it. With
    ``interactive_neck`` a second neck of the same design, ``sam2_convs`` (the tracker's), feeds the
    point-and-box head from the same trunk (:meth:`interactive_levels`). ``img_size``: the input side
    in pixels."""

    def __init__(self, config: Sam3Config, interactive_neck: bool = False) -> None:
        super().__init__()
        self.img_size = config.image_size
        self.trunk = ViT(config)
        self.convs = nn.ModuleList(_neck_level(s, config.vit_dim, config.d_model) for s in NECK_SCALES)
        if interactive_neck:
            self.sam2_convs = nn.ModuleList(_neck_level(s, config.vit_dim, config.d_model) for s in NECK_SCALES)
        self.position_encoding = SinePositions(config.d_model)

    def interactive_levels(self, images: torch.Tensor) -> list[torch.Tensor]:
        """The interactive head's 4x, 2x and 1x levels (B, d_model, h, w) of images (B, 3, S, S)
        normalized to [-1, 1] (the tracker's neck; its 0.5x level is dropped as the detector's)."""
        x = self.trunk(images)
        return [conv(x) for conv in self.sam2_convs[:-1]]

    def forward(self, images: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        x = self.trunk(images)
        levels = [conv(x) for conv in self.convs[:-1]]
        positions = [self.position_encoding.grid(f.shape[-2], f.shape[-1], f.device).to(f.dtype).expand(f.shape[0], -1, -1, -1)
                     for f in levels]
        return levels, positions
