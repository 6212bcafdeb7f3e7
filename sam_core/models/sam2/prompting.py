"""Prompts on a square model input, shared by SAM 2.1 and SAM 3's interactive head: pixel (x, y)
points to the model-input frame, boxes as corner points, one decoder call for B prompts."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch

from sam_core.models.sam2.heads import select_dense

@dataclass
class Sam2Features:
    """One image through the encoder: ``image_embed`` (B, C, h, w), the stride-16 features with the
    no-memory embedding added (what the decoder sees on an image without memory); ``high_res``: the
    stride-4 and stride-8 maps after ``conv_s0`` / ``conv_s1`` ((B, C/8, 4h, 4w), (B, C/4, 2h, 2w))."""

    image_embed: torch.Tensor
    high_res: tuple[torch.Tensor, torch.Tensor]


class SquarePrompting:
    """Needs ``image_size`` (S, the square input side), ``sam_prompt_encoder`` and ``sam_mask_decoder``."""

    def input_coords(self, coords: np.ndarray, original_size: tuple[int, int]) -> np.ndarray:
        """(..., 2) (x, y) pixels of an (H, W) image -> the model-input frame (x * S / W, y * S / H)."""
        coords = np.asarray(coords, dtype=np.float64)
        scale = np.array([self.image_size / original_size[1], self.image_size / original_size[0]])
        return coords * scale

    def prompt_points(self, coords: Optional[torch.Tensor], labels: Optional[torch.Tensor],
                      boxes: Optional[torch.Tensor]) -> Optional[tuple[torch.Tensor, torch.Tensor]]:
        """Points (B, N, 2) with labels (B, N) and boxes (B, 4) (model-input frame) -> one point set:
        each box's corners first (labels 2, 3), then the points (the official image predictor)."""
        if boxes is None:
            return None if coords is None else (coords, labels)
        corners = boxes.reshape(-1, 2, 2)
        corner_labels = torch.tensor([[2, 3]], dtype=torch.int, device=boxes.device).repeat(corners.shape[0], 1)
        if coords is None:
            return corners, corner_labels
        return torch.cat([corners, coords], dim=1), torch.cat([corner_labels, labels.to(corner_labels.dtype)], dim=1)

    def decode(self, features: Sam2Features, coords: Optional[torch.Tensor], labels: Optional[torch.Tensor],
               boxes: Optional[torch.Tensor] = None, mask_input: Optional[torch.Tensor] = None,
               multimask: bool = True, dense_pe: Optional[torch.Tensor] = None,
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Decode B prompts on one image's features, as ``SAM2ImagePredictor._predict``.

        coords (B, N, 2) and boxes (B, 4) in the model-input frame, labels (B, N), mask_input (B, 1,
        low, low) logits. Returns low-resolution mask logits (B, K, low, low) (unclamped), IoU (B, K),
        mask tokens (B, K, C) and object-score logits (B, 1); K = 3 with ``multimask``, else 1.
        """
        points = self.prompt_points(coords, labels, boxes)
        sparse, dense = self.sam_prompt_encoder(points=points, boxes=None, masks=mask_input)
        if dense_pe is None:
            dense_pe = self.sam_prompt_encoder.get_dense_pe()
        return self.sam_mask_decoder(
            image_embeddings=features.image_embed,
            image_pe=dense_pe,
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=select_dense(dense, mask_input is not None),
            high_res_features=features.high_res,
            multimask_output=multimask,
        )
