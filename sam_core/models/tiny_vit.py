"""MobileSAM's TinyViT image encoder (state-dict keys of the official ``mobile_sam.pt``).

Stage 0 is convolutional (MBConv blocks); later stages are windowed attention blocks with learned
attention biases per offset, a depthwise "local" convolution and an MLP. Patch merging between stages
halves the resolution, except into the last stage (stride 1), so the output grid is
``image_size / (4 * 2 ** (stages - 2))`` tokens per side (64 for vit_t at 1024).
"""

from __future__ import annotations

import itertools

import torch
import torch.nn.functional as F
from torch import nn

from sam_core.models.common import neck
from sam_core.models.config import SamConfig
from sam_core.models.precision import autocast


class ConvBN(nn.Sequential):
    """Conv2d without bias followed by BatchNorm2d (keys ``c`` and ``bn``).

    ``fused = True`` (all precisions but ``exact``) folds the batch norm's running statistics into the
    convolution's weights and bias in eval mode: one convolution, equal up to float rounding. In
    training mode, and with ``fused = False``, the two run as the official layers.
    """

    fused: bool = True

    def __init__(self, in_chans: int, out_chans: int, kernel: int = 1, stride: int = 1, pad: int = 0, groups: int = 1) -> None:
        super().__init__()
        self.add_module("c", nn.Conv2d(in_chans, out_chans, kernel, stride, pad, 1, groups, bias=False))
        self.add_module("bn", nn.BatchNorm2d(out_chans))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.fused or self.training:
            return super().forward(x)
        conv, norm = self.c, self.bn
        scale = norm.weight * torch.rsqrt(norm.running_var + norm.eps)
        weight = conv.weight * scale.view(-1, 1, 1, 1)
        return F.conv2d(x, weight, norm.bias - norm.running_mean * scale, conv.stride, conv.padding, conv.dilation,
                        conv.groups)


class PatchEmbed(nn.Module):
    """Two stride-2 3x3 conv+BN layers: (B, 3, S, S) -> (B, D, S/4, S/4)."""

    def __init__(self, in_chans: int, embed_dim: int) -> None:
        super().__init__()
        self.seq = nn.Sequential(
            ConvBN(in_chans, embed_dim // 2, 3, 2, 1),
            nn.GELU(),
            ConvBN(embed_dim // 2, embed_dim, 3, 2, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.seq(x)


class MBConv(nn.Module):
    """Inverted residual block (1x1 expand, 3x3 depthwise, 1x1 project) on (B, C, H, W)."""

    def __init__(self, dim: int, expand_ratio: float = 4.0) -> None:
        super().__init__()
        hidden = int(dim * expand_ratio)
        self.conv1 = ConvBN(dim, hidden)
        self.act1 = nn.GELU()
        self.conv2 = ConvBN(hidden, hidden, 3, 1, 1, groups=hidden)
        self.act2 = nn.GELU()
        self.conv3 = ConvBN(hidden, dim)
        self.act3 = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.act1(self.conv1(x))
        y = self.act2(self.conv2(y))
        y = self.conv3(y)
        return self.act3(y + x)


class PatchMerging(nn.Module):
    """Downsampling between stages: tokens (B, L, C) or maps (B, C, H, W) -> tokens (B, L', C')."""

    def __init__(self, resolution: int, dim: int, out_dim: int, stride: int) -> None:
        super().__init__()
        self.resolution = resolution
        self.act = nn.GELU()
        self.conv1 = ConvBN(dim, out_dim)
        self.conv2 = ConvBN(out_dim, out_dim, 3, stride, 1, groups=out_dim)
        self.conv3 = ConvBN(out_dim, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim == 3:
            x = x.view(x.shape[0], self.resolution, self.resolution, -1).permute(0, 3, 1, 2)
        x = self.act(self.conv1(x))
        x = self.act(self.conv2(x))
        x = self.conv3(x)
        return x.permute(0, 2, 3, 1).reshape(x.shape[0], -1, x.shape[1])  # a view for channels-last maps


class ConvLayer(nn.Module):
    """Stage 0: MBConv blocks, then patch merging."""

    def __init__(self, dim: int, depth: int, downsample: PatchMerging | None) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(MBConv(dim) for _ in range(depth))
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return self.downsample(x) if self.downsample is not None else x


class Mlp(nn.Module):
    """Norm -> Linear -> GELU -> Linear."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)
        self.act = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(self.norm(x))))


def _offset_indexes(window: int) -> tuple[torch.Tensor, int]:
    """For every (query, key) pair of a window, the index of its |dy|, |dx| offset; and the count."""
    points = list(itertools.product(range(window), range(window)))
    offsets: dict[tuple[int, int], int] = {}
    idxs = []
    for p1 in points:
        for p2 in points:
            idxs.append(offsets.setdefault((abs(p1[0] - p2[0]), abs(p1[1] - p2[1])), len(offsets)))
    return torch.tensor(idxs, dtype=torch.long).view(len(points), len(points)), len(offsets)


class Attention(nn.Module):
    """Pre-norm multi-head attention on (B, N, C) windows with a learned bias per offset and head.

    ``fused = True`` (all precisions but ``exact``) runs ``scaled_dot_product_attention`` with the
    bias as mask; ``fused = False`` computes exactly the official operations.
    """

    fused: bool = True

    def __init__(self, dim: int, num_heads: int, window: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.key_dim = dim // num_heads
        self.scale = self.key_dim**-0.5
        self.norm = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        idxs, count = _offset_indexes(window)
        self.attention_biases = nn.Parameter(torch.zeros(num_heads, count))
        self.register_buffer("attention_bias_idxs", idxs, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        qkv = self.qkv(self.norm(x))
        q, k, v = qkv.view(b, n, self.num_heads, -1).split([self.key_dim] * 3, dim=3)
        q, k, v = q.permute(0, 2, 1, 3), k.permute(0, 2, 1, 3), v.permute(0, 2, 1, 3)
        bias = self.attention_biases[:, self.attention_bias_idxs]
        if self.fused:
            # a 4-D mask: torch's fused CPU kernel takes no 3-D one (it would fall back to a slower path)
            mask = bias.to(q.dtype).unsqueeze(0)
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=self.scale)
            return self.proj(out.transpose(1, 2).reshape(b, n, -1))
        attn = ((q @ k.transpose(-2, -1)) * self.scale + bias).softmax(dim=-1)
        return self.proj((attn @ v).transpose(1, 2).reshape(b, n, -1))


class TinyViTBlock(nn.Module):
    """Windowed attention, depthwise local conv, MLP, on tokens (B, L, C) of a resolution x resolution grid.

    ``fused = True`` (all precisions but ``exact``) runs the local convolution on the tokens seen as a
    channels-last map, without rearranging them into channels-first order and back; ``fused = False``
    runs the official rearrangements.
    """

    fused: bool = True

    def __init__(self, dim: int, resolution: int, num_heads: int, window: int, mlp_ratio: float) -> None:
        super().__init__()
        self.resolution = resolution
        self.window_size = window
        self.attn = Attention(dim, num_heads, window)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.local_conv = ConvBN(dim, dim, 3, 1, 1, groups=dim)

    def _windowed_attention(self, x: torch.Tensor) -> torch.Tensor:
        b, l, c = x.shape
        h = w = self.resolution
        ws = self.window_size
        if h == ws and w == ws:
            return self.attn(x)
        x = x.view(b, h, w, c)
        pad_b, pad_r = (ws - h % ws) % ws, (ws - w % ws) % ws
        if pad_b or pad_r:
            x = F.pad(x, (0, 0, 0, pad_r, 0, pad_b))
        ph, pw = h + pad_b, w + pad_r
        nh, nw = ph // ws, pw // ws
        x = x.view(b, nh, ws, nw, ws, c).transpose(2, 3).reshape(b * nh * nw, ws * ws, c)
        x = self.attn(x)
        x = x.view(b, nh, nw, ws, ws, c).transpose(2, 3).reshape(b, ph, pw, c)
        if pad_b or pad_r:
            x = x[:, :h, :w].contiguous()
        return x.view(b, l, c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, l, c = x.shape
        x = x + self._windowed_attention(x)
        if self.fused:
            grid = x.view(b, self.resolution, self.resolution, c).permute(0, 3, 1, 2)
            x = self.local_conv(grid).permute(0, 2, 3, 1).reshape(b, l, c)
        else:
            x = self.local_conv(x.transpose(1, 2).reshape(b, c, self.resolution, self.resolution))
            x = x.view(b, c, l).transpose(1, 2)
        return x + self.mlp(x)


class BasicLayer(nn.Module):
    """An attention stage: TinyViT blocks, then patch merging (except after the last stage)."""

    def __init__(self, dim: int, resolution: int, depth: int, num_heads: int, window: int, mlp_ratio: float,
                 downsample: PatchMerging | None) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(
            TinyViTBlock(dim, resolution, num_heads, window, mlp_ratio) for _ in range(depth)
        )
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return self.downsample(x) if self.downsample is not None else x


class TinyViT(nn.Module):
    """MobileSAM's encoder for a :class:`SamConfig` with ``encoder == "tiny_vit"``.

    ``norm_head`` and ``head`` (the ImageNet classifier) are kept only so that official checkpoints
    load with strict key matching; they are not used. ``compute_dtype`` (None for fp32) is the
    autocast dtype; the output is always float32. ``fused`` (all precisions but ``exact``) runs the
    convolutional stages on channels-last maps (oneDNN's faster layout; equal within float rounding).
    """

    compute_dtype: torch.dtype | None = None
    fused: bool = True

    def __init__(self, config: SamConfig) -> None:
        super().__init__()
        self.img_size = config.image_size
        dims = config.tiny_embed_dims
        stages = len(dims)
        first = config.image_size // 4
        resolutions = [first // 2 ** min(i, stages - 2) for i in range(stages)]
        self.grid = resolutions[-1]
        self.patch_embed = PatchEmbed(3, dims[0])
        self.layers = nn.ModuleList()
        for i in range(stages):
            downsample = None
            if i < stages - 1:
                stride = 1 if i == stages - 2 else 2
                downsample = PatchMerging(resolutions[i], dims[i], dims[i + 1], stride)
            if i == 0:
                layer: nn.Module = ConvLayer(dims[0], config.tiny_depths[0], downsample)
            else:
                layer = BasicLayer(dims[i], resolutions[i], config.tiny_depths[i], config.tiny_num_heads[i],
                                   config.tiny_window_sizes[i], config.mlp_ratio, downsample)
            self.layers.append(layer)
        self.norm_head = nn.LayerNorm(dims[-1])
        self.head = nn.Linear(dims[-1], config.tiny_num_classes) if config.tiny_num_classes > 0 else nn.Identity()
        self.neck = neck(dims[-1], config.prompt_embed_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with autocast(x.device.type, self.compute_dtype):
            if self.fused:
                x = x.contiguous(memory_format=torch.channels_last)
            x = self.patch_embed(x)
            for layer in self.layers:
                x = layer(x)
            b, _, c = x.shape
            x = self.neck(x.view(b, self.grid, self.grid, c).permute(0, 3, 1, 2))
        return x.float()
