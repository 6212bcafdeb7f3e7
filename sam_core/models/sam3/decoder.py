"""SAM 3's DETR-style decoder: learned object queries refine their boxes layer by layer while they
attend to the prompt and to the fused image (with a box relative-position bias); a presence token
says whether the concept is in the image at all. Also the dot-product scoring of queries against
the prompt. Boxes are normalized (cx, cy, w, h) in [0, 1]; tensors are sequence first."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from sam_core.models.common import MLP
from sam_core.models.sam3.config import Sam3Config


def inverse_sigmoid(x: torch.Tensor, eps: float = 1e-3) -> torch.Tensor:
    x = x.clamp(min=0, max=1)
    return torch.log(x.clamp(min=eps) / (1 - x).clamp(min=eps))


def cxcywh_to_xyxy(boxes: torch.Tensor) -> torch.Tensor:
    cx, cy, w, h = boxes.unbind(-1)
    return torch.stack([cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h], dim=-1)


def box_sine_embedding(boxes: torch.Tensor, dim: int) -> torch.Tensor:
    """(N, B, 4) boxes -> (N, B, 2 * dim): sine encodings of cy, cx, w, h with dim/2 channels each."""
    half = dim // 2
    steps = torch.arange(half, dtype=torch.float32, device=boxes.device)
    frequencies = 10000 ** (2 * torch.div(steps, 2, rounding_mode="floor") / half)

    def encode(values: torch.Tensor) -> torch.Tensor:
        angles = (values * 2 * math.pi)[:, :, None] / frequencies
        return torch.stack((angles[:, :, 0::2].sin(), angles[:, :, 1::2].cos()), dim=3).flatten(2)

    cx, cy, w, h = boxes.unbind(-1)
    return torch.cat((encode(cy), encode(cx), encode(w), encode(h)), dim=2)


class DecoderLayer(nn.Module):
    """Self-attention (presence token + queries), cross-attention to the prompt, cross-attention to
    the image with an additive bias, feed-forward; post-norm."""

    def __init__(self, dim: int, heads: int, ffn_dim: int) -> None:
        super().__init__()
        self.cross_attn = nn.MultiheadAttention(dim, heads)
        self.norm1 = nn.LayerNorm(dim)
        self.ca_text = nn.MultiheadAttention(dim, heads)
        self.catext_norm = nn.LayerNorm(dim)
        self.self_attn = nn.MultiheadAttention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.linear1 = nn.Linear(dim, ffn_dim)
        self.linear2 = nn.Linear(ffn_dim, dim)
        self.norm3 = nn.LayerNorm(dim)

    def forward(self, queries: torch.Tensor, query_pos: torch.Tensor, presence: torch.Tensor,
                prompt: torch.Tensor, prompt_padding: torch.Tensor, image: torch.Tensor,
                image_pos: torch.Tensor, image_bias: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.cat([presence, queries], dim=0)
        pos = torch.cat([torch.zeros_like(presence), query_pos], dim=0)
        q = x + pos
        x = self.norm2(x + self.self_attn(q, q, x)[0])
        x = self.catext_norm(x + self.ca_text(x + pos, prompt, prompt, key_padding_mask=prompt_padding)[0])
        bias = torch.cat([torch.zeros_like(image_bias[:, :1]), image_bias], dim=1)
        x = self.norm1(x + self.cross_attn(x + pos, image + image_pos, image, attn_mask=bias, need_weights=False)[0])
        x = self.norm3(x + self.linear2(F.relu(self.linear1(x))))
        return x[1:], x[:1]


@dataclass
class DecoderOutput:
    queries: torch.Tensor  # (Q, B, C) normalized query features of the last layer
    boxes: torch.Tensor  # (Q, B, 4) normalized (cx, cy, w, h) after the last refinement
    presence_logit: torch.Tensor  # (B,) the last layer's presence logit


class Decoder(nn.Module):
    def __init__(self, config: Sam3Config) -> None:
        super().__init__()
        d = config.d_model
        self.layers = nn.ModuleList(DecoderLayer(d, config.heads, config.ffn_dim) for _ in range(config.decoder_layers))
        self.norm = nn.LayerNorm(d)
        self.bbox_embed = MLP(d, d, 4, 3)
        self.query_embed = nn.Embedding(config.num_queries, d)
        self.reference_points = nn.Embedding(config.num_queries, 4)
        self.boxRPB_embed_x = MLP(2, d, config.heads, 2)
        self.boxRPB_embed_y = MLP(2, d, config.heads, 2)
        self.presence_token = nn.Embedding(1, d)
        self.presence_token_head = MLP(d, d, 1, 3)
        self.presence_token_out_norm = nn.LayerNorm(d)
        self.ref_point_head = MLP(2 * d, d, d, 2)
        self.d_model = d

    def _box_bias(self, boxes: torch.Tensor, height: int, width: int) -> torch.Tensor:
        """(B * heads, Q, H * W) attention bias from each query box to each image cell (log-scaled
        distances of the cell to the box's edges, through two small MLPs)."""
        xyxy = cxcywh_to_xyxy(boxes).transpose(0, 1)  # B, Q, 4
        b, q, _ = xyxy.shape
        rows = torch.arange(0, height, device=boxes.device, dtype=torch.float32) / height
        cols = torch.arange(0, width, device=boxes.device, dtype=torch.float32) / width
        dy = (rows.view(1, -1, 1) - xyxy.reshape(-1, 1, 4)[:, :, 1:4:2]).view(b, q, -1, 2)
        dx = (cols.view(1, -1, 1) - xyxy.reshape(-1, 1, 4)[:, :, 0:3:2]).view(b, q, -1, 2)
        dx, dy = dx * 8, dy * 8
        dx = torch.sign(dx) * torch.log2(torch.abs(dx) + 1.0) / 3.0
        dy = torch.sign(dy) * torch.log2(torch.abs(dy) + 1.0) / 3.0
        bias = self.boxRPB_embed_y(dy).unsqueeze(3) + self.boxRPB_embed_x(dx).unsqueeze(2)  # B, Q, H, W, heads
        return bias.flatten(2, 3).permute(0, 3, 1, 2).contiguous().flatten(0, 1)

    def forward(self, image: torch.Tensor, image_pos: torch.Tensor, size: tuple[int, int],
                prompt: torch.Tensor, prompt_padding: torch.Tensor) -> DecoderOutput:
        batch = image.shape[1]
        queries = self.query_embed.weight.unsqueeze(1).repeat(1, batch, 1)
        boxes = self.reference_points.weight.unsqueeze(1).repeat(1, batch, 1).sigmoid()
        presence = self.presence_token.weight[None].expand(1, batch, -1)
        for layer in self.layers:
            query_pos = self.ref_point_head(box_sine_embedding(boxes, self.d_model))
            bias = self._box_bias(boxes, *size)
            queries, presence = layer(queries, query_pos, presence, prompt, prompt_padding, image, image_pos, bias)
            normed = self.norm(queries)
            boxes = (self.bbox_embed(normed) + inverse_sigmoid(boxes)).sigmoid()
        logit = self.presence_token_head(self.presence_token_out_norm(presence)).squeeze(-1)
        return DecoderOutput(queries=normed, boxes=boxes, presence_logit=logit[0])


class ScoringMLP(nn.Module):
    """Two linear layers with ReLU, a residual connection and a closing layer norm."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList([nn.Linear(dim, hidden), nn.Linear(hidden, dim)])
        self.out_norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out_norm(x + self.layers[1](F.relu(self.layers[0](x))))


class DotProductScoring(nn.Module):
    """Query logits: projected queries dotted with the projected mean of the (MLP'd) prompt tokens,
    scaled by 1/sqrt(dim) and clamped to [-12, 12]."""

    def __init__(self, config: Sam3Config) -> None:
        super().__init__()
        d = config.d_model
        self.prompt_mlp = ScoringMLP(d, config.scoring_hidden)
        self.prompt_proj = nn.Linear(d, d)
        self.hs_proj = nn.Linear(d, d)
        self.scale = float(1.0 / math.sqrt(d))

    def forward(self, queries: torch.Tensor, prompt: torch.Tensor, prompt_padding: torch.Tensor) -> torch.Tensor:
        """queries (B, Q, C), prompt (S, B, C), padding (B, S) -> logits (B, Q)."""
        prompt = self.prompt_mlp(prompt)
        valid = (~prompt_padding).float().permute(1, 0)[..., None]
        pooled = (prompt * valid).sum(dim=0) / torch.clamp(valid.sum(dim=0), min=1.0)
        scores = torch.matmul(self.hs_proj(queries), self.prompt_proj(pooled).unsqueeze(-1)) * self.scale
        return scores.clamp(min=-12.0, max=12.0).squeeze(-1)
