"""SAM 3's geometry encoder: exemplar boxes (positive or negative) become prompt tokens.

Each box is encoded three ways and summed: a linear map of its (cx, cy, w, h), the image features
pooled inside it (RoIAlign 7x7 then a 7x7 convolution) and the sine encoding of its centre and size;
a label embedding marks it positive or negative. A class token closes the sequence, which then
attends to the image in a few layers. Boxes are normalized (cx, cy, w, h); tensors sequence first.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from sam_core.models.sam3.config import Sam3Config
from sam_core.models.sam3.decoder import cxcywh_to_xyxy
from sam_core.models.sam3.fusion import EncoderLayer
from sam_core.models.sam3.vision import SinePositions


def roi_align(features: torch.Tensor, boxes: torch.Tensor, size: int) -> torch.Tensor:
    """Average of bilinear samples in each of size x size bins of each box (torchvision's
    ``roi_align`` with ``aligned=False`` and an adaptive number of samples per bin).

    features (C, H, W); boxes (N, 4) as (x0, y0, x1, y1) in feature cells -> (N, C, size, size).
    """
    channels, height, width = features.shape
    out = features.new_zeros(len(boxes), channels, size, size)
    for n, (x0, y0, x1, y1) in enumerate(boxes.tolist()):
        box_w, box_h = max(x1 - x0, 1.0), max(y1 - y0, 1.0)
        bin_w, bin_h = box_w / size, box_h / size
        grid_w, grid_h = max(math.ceil(box_w / size), 1), max(math.ceil(box_h / size), 1)
        iy = torch.arange(size * grid_h, dtype=torch.float64)
        ix = torch.arange(size * grid_w, dtype=torch.float64)
        ys = y0 + (iy // grid_h) * bin_h + ((iy % grid_h) + 0.5) * bin_h / grid_h
        xs = x0 + (ix // grid_w) * bin_w + ((ix % grid_w) + 0.5) * bin_w / grid_w
        samples = _bilinear(features, ys, xs)  # C, size*grid_h, size*grid_w
        out[n] = samples.view(channels, size, grid_h, size, grid_w).sum(dim=(2, 4)) / (grid_h * grid_w)
    return out


def _bilinear(features: torch.Tensor, ys: torch.Tensor, xs: torch.Tensor) -> torch.Tensor:
    """Samples at every (y, x) of the two coordinate lists, zero outside [-1, size]."""
    height, width = features.shape[-2:]

    def corners(coords: torch.Tensor, size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        inside = (coords >= -1.0) & (coords <= size)
        coords = coords.clamp(min=0.0)
        low = coords.floor().long()
        at_edge = low >= size - 1
        low = torch.where(at_edge, torch.full_like(low, size - 1), low)
        high = torch.where(at_edge, low, low + 1)
        coords = torch.where(at_edge, low.double(), coords)
        frac = coords - low
        return low, high, frac, inside

    y_low, y_high, ly, y_in = corners(ys, height)
    x_low, x_high, lx, x_in = corners(xs, width)
    hy, hx = (1 - ly), (1 - lx)
    dtype = features.dtype
    wy_low, wy_high = hy.to(dtype)[:, None], ly.to(dtype)[:, None]
    wx_low, wx_high = hx.to(dtype)[None, :], lx.to(dtype)[None, :]
    f = features
    value = (wy_low * wx_low * f[:, y_low][:, :, x_low] + wy_low * wx_high * f[:, y_low][:, :, x_high]
             + wy_high * wx_low * f[:, y_high][:, :, x_low] + wy_high * wx_high * f[:, y_high][:, :, x_high])
    return value * (y_in[:, None] & x_in[None, :]).to(dtype)


class GeometryEncoder(nn.Module):
    def __init__(self, config: Sam3Config, roi_size: int = 7) -> None:
        super().__init__()
        d = config.d_model
        self.d_model = d
        self.roi_size = roi_size
        self.pos_enc = SinePositions(d)
        self.label_embed = nn.Embedding(2, d)
        self.cls_embed = nn.Embedding(1, d)
        # point prompts: part of the weights; the concept API takes boxes only
        self.points_direct_project = nn.Linear(2, d)
        self.points_pool_project = nn.Linear(d, d)
        self.points_pos_enc_project = nn.Linear(d, d)
        self.boxes_direct_project = nn.Linear(4, d)
        self.boxes_pool_project = nn.Conv2d(d, d, roi_size)
        self.boxes_pos_enc_project = nn.Linear(d + 2, d)
        self.final_proj = nn.Linear(d, d)
        self.norm = nn.LayerNorm(d)
        self.img_pre_norm = nn.LayerNorm(d)
        self.encode = nn.ModuleList(
            EncoderLayer(d, config.heads, config.ffn_dim, pos_in_self=False) for _ in range(config.geometry_layers)
        )
        self.encode_norm = nn.LayerNorm(d)

    def _boxes(self, boxes: torch.Tensor, labels: torch.Tensor, image: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """boxes (N, 4) normalized cxcywh, labels (N,) 1/0 -> tokens (N, 1, C) for one image."""
        height, width = size
        embed = self.boxes_direct_project(boxes)
        grid = self.img_pre_norm(image).permute(1, 2, 0).reshape(self.d_model, height, width)
        scale = torch.tensor([width, height, width, height], dtype=boxes.dtype, device=boxes.device)
        pooled = roi_align(grid, (cxcywh_to_xyxy(boxes) * scale).float(), self.roi_size)
        embed = embed + self.boxes_pool_project(pooled).view(len(boxes), self.d_model)
        cx, cy, w, h = boxes.unbind(-1)
        embed = embed + self.boxes_pos_enc_project(self.pos_enc.encode_boxes(cx, cy, w, h))
        return (self.label_embed(labels.long()) + embed)[:, None]

    def forward(self, boxes: torch.Tensor, labels: torch.Tensor, image: torch.Tensor, image_pos: torch.Tensor,
                size: tuple[int, int]) -> torch.Tensor:
        """Prompt tokens (N + 1, B, C) for N boxes; image and image_pos (H*W, B, C), B = 1 when there are
        boxes (without boxes, only the class token attends to each of the B images)."""
        tokens = self.cls_embed.weight.view(1, 1, self.d_model).expand(1, image.shape[1], self.d_model)
        if len(boxes):
            tokens = torch.cat([self._boxes(boxes, labels, image, size), tokens], dim=0)
        tokens = self.norm(self.final_proj(tokens))
        padding = torch.zeros(tokens.shape[1], tokens.shape[0], dtype=torch.bool, device=tokens.device)
        for layer in self.encode:
            tokens = layer(tokens, image, padding=padding, memory_pos=image_pos)
        return self.encode_norm(tokens)
