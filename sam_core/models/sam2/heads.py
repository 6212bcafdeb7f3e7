"""SAM 2's prompt encoder and mask decoder.

The prompt encoder is SAM's, with box corners given as points labelled 2 (top-left) and 3
(bottom-right). The mask decoder is SAM's two-way transformer with three additions: an object-score
token (is the object in the image at all?), high-resolution skip features from the image encoder's
stride-4 and stride-8 levels added while upscaling, and, when one mask is asked for, a fall-back to
the best multimask candidate when the single mask is unstable.
"""

from __future__ import annotations

import torch
from torch import nn

from sam_core.models.common import MLP, LayerNorm2d
from sam_core.models.prompt_encoder import PromptEncoder
from sam_core.models.transformer import TwoWayTransformer


class Sam2PromptEncoder(PromptEncoder):
    """SAM's prompt encoder; point labels: 1 foreground, 0 background, 2 box top-left, 3 box
    bottom-right, -1 padding. Coordinates are (x, y) pixels of the square model input."""

    def _embed_points(self, points: torch.Tensor, labels: torch.Tensor, pad: bool) -> torch.Tensor:
        embedding = super()._embed_points(points, labels, pad)
        if pad:
            labels = torch.cat([labels, -labels.new_ones((labels.shape[0], 1))], dim=1)
        labels = labels[..., None]
        zero = embedding.new_zeros(())
        embedding = embedding + torch.where(labels == 2, self.point_embeddings[2].weight, zero)
        return embedding + torch.where(labels == 3, self.point_embeddings[3].weight, zero)


def _two_way_transformer(depth: int, dim: int, num_heads: int, mlp_dim: int, sam1_mlp: bool = False) -> TwoWayTransformer:
    """SAM's two-way transformer with SAM 2's names for the MLP's layers (``mlp.layers.0/1``), or
    SAM's own (``mlp.lin1/lin2``, as SAM 3's interactive head has them) when ``sam1_mlp``. Both
    compute Linear -> ReLU -> Linear."""
    transformer = TwoWayTransformer(depth=depth, embedding_dim=dim, num_heads=num_heads, mlp_dim=mlp_dim)
    if not sam1_mlp:
        for layer in transformer.layers:
            layer.mlp = MLP(dim, mlp_dim, dim, 2)
    return transformer


class Sam2MaskDecoder(nn.Module):
    """Image embedding + prompt embeddings -> mask logits at 4x the embedding's resolution, predicted
    IoU (sigmoid), the mask tokens (for object pointers) and object-score logits. ``sam1_mlp``: the
    transformer's MLPs carry SAM's key names (SAM 3's interactive head), see ``_two_way_transformer``."""

    def __init__(self, dim: int, depth: int, num_heads: int, mlp_dim: int, num_multimask_outputs: int,
                 iou_head_depth: int, iou_head_hidden_dim: int, stability_delta: float = 0.05,
                 stability_thresh: float = 0.98, sam1_mlp: bool = False) -> None:
        super().__init__()
        self.transformer = _two_way_transformer(depth, dim, num_heads, mlp_dim, sam1_mlp)
        self.num_mask_tokens = num_multimask_outputs + 1
        self.iou_token = nn.Embedding(1, dim)
        self.mask_tokens = nn.Embedding(self.num_mask_tokens, dim)
        self.obj_score_token = nn.Embedding(1, dim)
        self.output_upscaling = nn.Sequential(
            nn.ConvTranspose2d(dim, dim // 4, kernel_size=2, stride=2),
            LayerNorm2d(dim // 4),
            nn.GELU(),
            nn.ConvTranspose2d(dim // 4, dim // 8, kernel_size=2, stride=2),
            nn.GELU(),
        )
        self.conv_s0 = nn.Conv2d(dim, dim // 8, kernel_size=1)
        self.conv_s1 = nn.Conv2d(dim, dim // 4, kernel_size=1)
        self.output_hypernetworks_mlps = nn.ModuleList(MLP(dim, dim, dim // 8, 3) for _ in range(self.num_mask_tokens))
        self.iou_prediction_head = MLP(dim, iou_head_hidden_dim, self.num_mask_tokens, iou_head_depth)
        self.pred_obj_score_head = MLP(dim, dim, 1, 3)
        self.stability_delta = stability_delta
        self.stability_thresh = stability_thresh

    def forward(
        self,
        image_embeddings: torch.Tensor,
        image_pe: torch.Tensor,
        sparse_prompt_embeddings: torch.Tensor,
        dense_prompt_embeddings: torch.Tensor,
        high_res_features: tuple[torch.Tensor, torch.Tensor],
        multimask_output: bool,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Decode B prompts on one image (or B images).

        image_embeddings (1 or B, C, h, w); image_pe (1, C, h, w); sparse (B, N, C); dense (1 or B, C,
        h, w); high_res_features: the stride-4 and stride-8 maps already through ``conv_s0`` /
        ``conv_s1``. Returns mask logits (B, K, 4h, 4w), IoU (B, K) with K = 3 for multimask output
        (candidates 1..3) else 1 (token 0, or the best candidate when token 0's mask is unstable), mask
        tokens (B, K, C) for object pointers (the multimask tokens, or token 0) and object-score
        logits (B, 1).
        """
        masks, iou, tokens, object_scores = self.predict_masks(
            image_embeddings, image_pe, sparse_prompt_embeddings, dense_prompt_embeddings, high_res_features
        )
        if multimask_output:
            return masks[:, 1:], iou[:, 1:], tokens[:, 1:], object_scores
        if not self.training:
            masks, iou = self._dynamic_multimask(masks, iou)
        else:
            masks, iou = masks[:, :1], iou[:, :1]
        return masks, iou, tokens[:, :1], object_scores

    def predict_masks(
        self,
        image_embeddings: torch.Tensor,
        image_pe: torch.Tensor,
        sparse_prompt_embeddings: torch.Tensor,
        dense_prompt_embeddings: torch.Tensor,
        high_res_features: tuple[torch.Tensor, torch.Tensor],
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """All candidates: mask logits (B, 1 + M, 4h, 4w), IoU (B, 1 + M), mask tokens (B, 1 + M, C),
        object-score logits (B, 1)."""
        output_tokens = torch.cat([self.obj_score_token.weight, self.iou_token.weight, self.mask_tokens.weight], dim=0)
        batch = sparse_prompt_embeddings.shape[0]
        tokens = torch.cat((output_tokens.unsqueeze(0).expand(batch, -1, -1), sparse_prompt_embeddings), dim=1)
        src = image_embeddings + dense_prompt_embeddings
        b, c, h, w = src.shape
        hs, src = self.transformer(src, image_pe, tokens)
        mask_tokens_out = hs[:, 2 : 2 + self.num_mask_tokens, :]
        src = src.transpose(1, 2).reshape(src.shape[0], c, h, w)
        upconv1, norm, act1, upconv2, act2 = self.output_upscaling
        feat_s0, feat_s1 = high_res_features
        upscaled = act1(norm(upconv1(src) + feat_s1))
        upscaled = act2(upconv2(upscaled) + feat_s0)
        hyper_in = torch.stack(
            [mlp(mask_tokens_out[:, i, :]) for i, mlp in enumerate(self.output_hypernetworks_mlps)], dim=1
        )
        b, c, h, w = upscaled.shape
        masks = (hyper_in @ upscaled.view(b, c, h * w)).view(b, -1, h, w)
        iou = torch.sigmoid(self.iou_prediction_head(hs[:, 1, :]))
        object_scores = self.pred_obj_score_head(hs[:, 0, :])
        return masks, iou, mask_tokens_out, object_scores

    def stability_scores(self, mask_logits: torch.Tensor) -> torch.Tensor:
        """Area above +delta over area above -delta, per mask (1 when both are empty)."""
        flat = mask_logits.flatten(-2)
        inner = torch.sum(flat > self.stability_delta, dim=-1).float()
        outer = torch.sum(flat > -self.stability_delta, dim=-1).float()
        return torch.where(outer > 0, inner / outer, 1.0)

    def _dynamic_multimask(self, masks: torch.Tensor, iou: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Token 0's mask, or the best-scoring multimask candidate where token 0's is unstable."""
        multi_iou = iou[:, 1:]
        best = torch.argmax(multi_iou, dim=-1)
        rows = torch.arange(multi_iou.shape[0], device=iou.device)
        best_masks = masks[:, 1:][rows, best].unsqueeze(1)
        best_iou = multi_iou[rows, best].unsqueeze(1)
        single_masks, single_iou = masks[:, :1], iou[:, :1]
        stable = self.stability_scores(single_masks) >= self.stability_thresh
        return (torch.where(stable[..., None, None], single_masks, best_masks),
                torch.where(stable, single_iou, best_iou))


def select_dense(dense: torch.Tensor, has_mask_input: bool) -> torch.Tensor:
    """The dense prompt embedding to add to the image embedding: without mask inputs every prompt's
    is the same ``no_mask_embed``, so one (1, C, h, w) copy broadcasts over the batch."""
    return dense if has_mask_input else dense[:1]

