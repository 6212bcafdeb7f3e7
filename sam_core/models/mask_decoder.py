"""SAM's mask decoder: the two-way transformer, upscaling, hypernetwork masks and the IoU head."""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from sam_core.models.common import MLP, LayerNorm2d
from sam_core.models.transformer import ImageContext, TwoWayTransformer


# Prompts decoded together by the fused forms: each holds image-sized intermediates (4 to 8 MB per prompt
# and tensor at vit_b's size), so a batch of 64 would hold gigabytes at once.
FUSED_CHUNK = 16


class MaskDecoder(nn.Module):
    """Predicts mask logits at 4x the embedding resolution and their IoU, one token per candidate.

    Token 0 is the single-mask output; tokens 1..num_multimask_outputs are the ambiguity-aware ones.
    ``fused = True`` (all precisions but ``exact``) runs the upscaling on the transformer's
    channels-last tokens: each 2x2-stride-2 transposed convolution is one matrix product, the layer norm
    is a plain one over channels, and only the few candidate masks are rearranged into the pixel grid.
    Large batches are decoded ``FUSED_CHUNK`` prompts at a time. Same values up to float rounding;
    ``fused = False`` computes exactly the official operations. The fused forms also skip the upscaling
    of prompts whose candidates all fall at or below an ``iou_floor`` (see :meth:`forward`).
    """

    fused: bool = True

    def __init__(self, transformer_dim: int, transformer: TwoWayTransformer, num_multimask_outputs: int = 3,
                 iou_head_depth: int = 3, iou_head_hidden_dim: int = 256) -> None:
        super().__init__()
        self.transformer_dim = transformer_dim
        self.transformer = transformer
        self.num_multimask_outputs = num_multimask_outputs
        self.iou_token = nn.Embedding(1, transformer_dim)
        self.num_mask_tokens = num_multimask_outputs + 1
        self.mask_tokens = nn.Embedding(self.num_mask_tokens, transformer_dim)
        self.output_upscaling = nn.Sequential(
            nn.ConvTranspose2d(transformer_dim, transformer_dim // 4, kernel_size=2, stride=2),
            LayerNorm2d(transformer_dim // 4),
            nn.GELU(),
            nn.ConvTranspose2d(transformer_dim // 4, transformer_dim // 8, kernel_size=2, stride=2),
            nn.GELU(),
        )
        self.output_hypernetworks_mlps = nn.ModuleList(
            MLP(transformer_dim, transformer_dim, transformer_dim // 8, 3) for _ in range(self.num_mask_tokens)
        )
        self.iou_prediction_head = MLP(transformer_dim, iou_head_hidden_dim, self.num_mask_tokens, iou_head_depth)

    def image_context(self, image_embeddings: torch.Tensor, image_pe: torch.Tensor,
                      dense_prompt_embeddings: torch.Tensor) -> ImageContext:
        """What decoding shares across prompts on one (1, C, h, w) image embedding, for prompts whose
        dense embedding is ``dense_prompt_embeddings`` (the prompt encoder's "no mask" embedding,
        (1, C, h, w) or broadcast): pass it as ``context`` to :meth:`forward` for every later prompt
        without a mask input on that image. Fused forms only (not ``exact``)."""
        self._require_fused()
        return self.transformer.image_context(image_embeddings + dense_prompt_embeddings[:1], image_pe)

    def context_version(self) -> tuple[int, ...]:
        """A value that changes whenever a weight :meth:`image_context` uses is changed in place (an
        optimizer step, ``load_state_dict``): a context made under another value is stale."""
        first = self.transformer.layers[0]
        weights = (*first.cross_attn_token_to_image.parameters(), *first.cross_attn_image_to_token.parameters())
        return tuple(weight._version for weight in weights)

    def forward(
        self,
        image_embeddings: torch.Tensor,
        image_pe: torch.Tensor,
        sparse_prompt_embeddings: torch.Tensor,
        dense_prompt_embeddings: torch.Tensor,
        multimask_output: bool,
        iou_floor: Optional[float] = None,
        context: Optional[ImageContext] = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Decode B prompts.

        ``image_embeddings`` is (1, C, h, w), shared by all prompts, or (B, C, h, w), one per prompt;
        ``image_pe`` (1, C, h, w); sparse (B, N, C); dense (B, C, h, w). Returns low-res logits
        (B, K, 4h, 4w) and IoU predictions (B, K), K = num_multimask_outputs or 1.

        With ``iou_floor`` (for callers that drop every candidate whose predicted IoU is not above it),
        the fused forms leave out the upscaling of prompts none of whose K candidates predicts more:
        their logits are -inf. Every other prompt's logits are unchanged.

        ``context`` (from :meth:`image_context` on this ``image_embeddings`` and the same dense
        embedding; prompts without mask input) skips the work every prompt on the image shares; the
        values stay the same up to float rounding.
        """
        count = len(sparse_prompt_embeddings)
        selected = slice(1, None) if multimask_output else slice(0, 1)
        chunked = self.fused and count > FUSED_CHUNK
        parts = ([slice(start, start + FUSED_CHUNK) for start in range(0, count, FUSED_CHUNK)] if chunked
                 else [slice(None)])
        shared = image_embeddings.shape[0] == 1
        results = [
            self.predict_masks(image_embeddings if shared else image_embeddings[part], image_pe,
                               sparse_prompt_embeddings[part], dense_prompt_embeddings[part], iou_floor, selected,
                               context)
            for part in parts
        ]
        masks, iou_pred = (torch.cat(column) for column in zip(*results)) if chunked else results[0]
        return masks[:, selected], iou_pred[:, selected]

    def predict_masks(
        self,
        image_embeddings: torch.Tensor,
        image_pe: torch.Tensor,
        sparse_prompt_embeddings: torch.Tensor,
        dense_prompt_embeddings: torch.Tensor,
        iou_floor: Optional[float] = None,
        selected: slice = slice(None),
        context: Optional[ImageContext] = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits and IoU of every mask token (single-mask token first): (B, K+1, 4h, 4w), (B, K+1).

        ``iou_floor``, ``selected`` (the tokens returned) and ``context``: see :meth:`forward`.
        """
        bs = sparse_prompt_embeddings.shape[0]
        output_tokens = torch.cat([self.iou_token.weight, self.mask_tokens.weight], dim=0)
        tokens = torch.cat((output_tokens.unsqueeze(0).expand(bs, -1, -1), sparse_prompt_embeddings), dim=1)

        if image_embeddings.shape[0] not in (1, bs):
            raise ValueError("image_embeddings must have batch size 1 or one per prompt")
        c, h, w = image_embeddings.shape[1:]
        dense = dense_prompt_embeddings
        if context is not None:
            self._require_fused()
            hs, src = self.transformer(None, None, tokens, context)
        else:
            if image_embeddings.shape[0] == 1 and (dense.shape[0] == 1 or dense.stride(0) == 0):
                # one image and the same dense embedding for every prompt (no mask input): the image
                # tokens stay batch 1 until the first layer mixes in the prompts (the transformer broadcasts)
                src = image_embeddings + dense[:1]
            else:
                src = (image_embeddings + dense).expand(bs, -1, -1, -1)
            hs, src = self.transformer(src, image_pe, tokens)
        iou_token_out = hs[:, 0, :]
        mask_tokens_out = hs[:, 1 : 1 + self.num_mask_tokens, :]

        hyper_in = torch.stack(
            [mlp(mask_tokens_out[:, i, :]) for i, mlp in enumerate(self.output_hypernetworks_mlps)], dim=1
        )
        iou_pred = self.iou_prediction_head(iou_token_out)
        if not self.fused:
            upscaled = self.output_upscaling(src.transpose(1, 2).reshape(bs, c, h, w))
            b, c, h, w = upscaled.shape
            return (hyper_in @ upscaled.view(b, c, h * w)).view(b, -1, h, w), iou_pred
        if iou_floor is None:
            return self._upscaled_masks(src, h, w, hyper_in), iou_pred
        needed = (iou_pred[:, selected] > iou_floor).any(dim=1)
        masks = src.new_full((bs, self.num_mask_tokens, 4 * h, 4 * w), float("-inf"))
        if bool(needed.any()):
            masks[needed] = self._upscaled_masks(src[needed], h, w, hyper_in[needed])
        return masks, iou_pred

    def _require_fused(self) -> None:
        if not self.fused:
            raise ValueError("image contexts belong to the fused forms; the exact precision recomputes everything")

    def _upscaled_masks(self, tokens: torch.Tensor, h: int, w: int, hyper_in: torch.Tensor) -> torch.Tensor:
        """``output_upscaling`` and the hypernetwork product on (B, h*w, C) tokens -> (B, K, 4h, 4w)."""
        first, norm, _, second, _ = self.output_upscaling
        b = tokens.shape[0]

        def transposed_conv(x: torch.Tensor, conv: nn.ConvTranspose2d) -> torch.Tensor:
            # (B, P, Cin) -> (B, P, 2, 2, Cout): every input pixel gives its own 2x2 block of outputs
            c_in, c_out = conv.weight.shape[:2]
            weight = conv.weight.permute(0, 2, 3, 1).reshape(c_in, 4 * c_out)
            return torch.addmm(conv.bias.repeat(4), x.reshape(-1, c_in), weight).view(b, -1, 2, 2, c_out)

        x = transposed_conv(tokens, first)
        x = F.gelu(F.layer_norm(x, x.shape[-1:], norm.weight, norm.bias, norm.eps))
        x = F.gelu(transposed_conv(x.reshape(b, -1, x.shape[-1]), second))
        masks = x.reshape(b, -1, x.shape[-1]) @ hyper_in.transpose(1, 2)  # (B, h*w*16, K)
        k = masks.shape[-1]
        # pixel (i, j), first block (a1, b1), second block (a2, b2) -> row 4i + 2a1 + a2, col 4j + 2b1 + b2
        masks = masks.view(b, h, w, 2, 2, 2, 2, k).permute(0, 7, 1, 3, 5, 2, 4, 6)
        return masks.reshape(b, k, 4 * h, 4 * w)
