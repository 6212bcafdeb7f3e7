"""SAM 2's image encoder: the Hiera trunk and its feature-pyramid neck, and the sine positional
encoding of feature grids."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from sam_core.models.sam2.config import Sam2Config
from sam_core.models.sam2.hiera import Hiera


def sine_position_encoding(channels: int, height: int, width: int, device: torch.device | None = None,
                           temperature: float = 10000.0) -> torch.Tensor:
    """Normalised sine/cosine encoding of an (height, width) grid, (1, channels, height, width): the
    first half of the channels encodes the row, the second the column."""
    half = channels // 2
    scale = 2 * math.pi
    eps = 1e-6
    y = torch.arange(1, height + 1, dtype=torch.float32, device=device).view(1, -1, 1).repeat(1, 1, width)
    x = torch.arange(1, width + 1, dtype=torch.float32, device=device).view(1, 1, -1).repeat(1, height, 1)
    y = y / (y[:, -1:, :] + eps) * scale
    x = x / (x[:, :, -1:] + eps) * scale
    dim_t = torch.arange(half, dtype=torch.float32, device=device)
    dim_t = temperature ** (2 * (dim_t // 2) / half)
    pos_x = x[:, :, :, None] / dim_t
    pos_y = y[:, :, :, None] / dim_t
    pos_x = torch.stack((pos_x[:, :, :, 0::2].sin(), pos_x[:, :, :, 1::2].cos()), dim=4).flatten(3)
    pos_y = torch.stack((pos_y[:, :, :, 0::2].sin(), pos_y[:, :, :, 1::2].cos()), dim=4).flatten(3)
    return torch.cat((pos_y, pos_x), dim=3).permute(0, 3, 1, 2)


class _Lateral(nn.Module):
    """A 1x1 convolution to the neck's width (key ``conv``)."""

    def __init__(self, in_chans: int, out_chans: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_chans, out_chans, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class FpnNeck(nn.Module):
    """Lateral 1x1 convolutions of every trunk stage to ``d_model`` channels; levels in
    ``top_down_levels`` also add the next coarser level, upsampled 2x (nearest)."""

    def __init__(self, channel_list: list[int], d_model: int, top_down_levels: tuple[int, ...]) -> None:
        super().__init__()
        self.convs = nn.ModuleList(_Lateral(c, d_model) for c in channel_list)
        self.top_down_levels = tuple(top_down_levels)

    def forward(self, xs: list[torch.Tensor]) -> list[torch.Tensor]:
        """Trunk features, highest resolution first -> neck features in the same order."""
        n = len(self.convs) - 1
        out: list[torch.Tensor] = [xs[0]] * (n + 1)
        previous = None
        for i in range(n, -1, -1):
            lateral = self.convs[n - i](xs[i])
            if i in self.top_down_levels and previous is not None:
                up = F.interpolate(previous.to(torch.float32), scale_factor=2.0, mode="nearest")
                previous = lateral + up
            else:
                previous = lateral
            out[i] = previous
        return out


class ImageEncoder(nn.Module):
    """Hiera trunk + FPN neck (keys ``trunk.*``, ``neck.convs.*``): (B, 3, S, S) normalised image ->
    feature maps of the kept levels, highest resolution first (strides 4, 8 and 16 officially, each
    ``d_model`` channels; the coarsest level only feeds the one above it)."""

    def __init__(self, config: Sam2Config) -> None:
        super().__init__()
        self.trunk = Hiera(config)
        self.neck = FpnNeck(self.trunk.channel_list, config.d_model, config.fpn_top_down_levels)
        self.scalp = config.scalp
        self.img_size = config.image_size

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        features = self.neck(self.trunk(x))
        return features[: len(features) - self.scalp] if self.scalp > 0 else features
