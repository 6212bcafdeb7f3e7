"""Small layers shared by the encoders and the decoder."""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn


class MLPBlock(nn.Module):
    """Linear -> activation -> Linear (the transformer MLP of SAM's ViT and two-way transformer)."""

    def __init__(self, embedding_dim: int, mlp_dim: int, act: type[nn.Module] = nn.GELU) -> None:
        super().__init__()
        self.lin1 = nn.Linear(embedding_dim, mlp_dim)
        self.lin2 = nn.Linear(mlp_dim, embedding_dim)
        self.act = act()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin2(self.act(self.lin1(x)))


class MLP(nn.Module):
    """``num_layers`` linear layers with ``activation`` (ReLU by default) between them (the decoder's
    heads; SAM 2's Hiera blocks use GELU)."""

    def __init__(self, input_dim: int, hidden_dim: int, output_dim: int, num_layers: int,
                 activation: Callable[[torch.Tensor], torch.Tensor] = F.relu) -> None:
        super().__init__()
        dims_in = [input_dim] + [hidden_dim] * (num_layers - 1)
        dims_out = [hidden_dim] * (num_layers - 1) + [output_dim]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims_in, dims_out))
        self.activation = activation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        last = len(self.layers) - 1
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < last:
                x = self.activation(x)
        return x


class LayerNorm2d(nn.Module):
    """Layer norm over the channels of a (B, C, H, W) tensor."""

    def __init__(self, num_channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(num_channels))
        self.bias = nn.Parameter(torch.zeros(num_channels))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = x.mean(1, keepdim=True)
        var = (x - mean).pow(2).mean(1, keepdim=True)
        x = (x - mean) / torch.sqrt(var + self.eps)
        return self.weight[:, None, None] * x + self.bias[:, None, None]


def neck(in_chans: int, out_chans: int) -> nn.Sequential:
    """The encoders' neck: 1x1 conv, norm, 3x3 conv, norm (keys ``neck.0`` .. ``neck.3``)."""
    return nn.Sequential(
        nn.Conv2d(in_chans, out_chans, kernel_size=1, bias=False),
        LayerNorm2d(out_chans),
        nn.Conv2d(out_chans, out_chans, kernel_size=3, padding=1, bias=False),
        LayerNorm2d(out_chans),
    )
