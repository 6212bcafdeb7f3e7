"""The SAM 3 image (concept) model: vision backbone + text encoder, geometry encoder for exemplar
boxes, fusion encoder, DETR decoder with presence token, dot-product scoring, segmentation head.
Module names give the official state-dict keys (``detector.`` stripped).

Use: ``encode_image`` once per image, ``encode_text`` once per phrase, then ``find`` for any mix of
phrase and exemplar boxes on the cached features.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from torch import nn

from sam_core.models.sam3.config import Sam3Config
from sam_core.models.sam3.decoder import Decoder, DotProductScoring
from sam_core.models.sam3.fusion import FusionEncoder
from sam_core.models.sam3.geometry import GeometryEncoder
from sam_core.models.sam3.segmentation import SegmentationHead
from sam_core.models.sam3.text import TextEncoder
from sam_core.models.sam3.vision import VisionBackbone


class Backbone(nn.Module):
    def __init__(self, config: Sam3Config) -> None:
        super().__init__()
        self.vision_backbone = VisionBackbone(config)
        self.language_backbone = TextEncoder(config)


class Transformer(nn.Module):
    def __init__(self, config: Sam3Config) -> None:
        super().__init__()
        self.encoder = FusionEncoder(config)
        self.decoder = Decoder(config)


@dataclass
class ImageFeatures:
    """One image's backbone output: the 4x, 2x and 1x maps (1, C, h, w) and their sine encodings."""

    levels: list[torch.Tensor]
    positions: list[torch.Tensor]


@dataclass
class TextFeatures:
    """One phrase: token features (L, 1, C) and padding mask (1, L), True where there is no token."""

    features: torch.Tensor
    padding: torch.Tensor


@dataclass
class ConceptOutput:
    """Every query's answer for one image: ``scores`` (Q,) = sigmoid(logits) * sigmoid(presence_logit),
    ``boxes`` (Q, 4) normalized (cx, cy, w, h), ``mask_logits`` (Q, h, w) on the 4x feature grid;
    ``logits`` (Q,) and ``presence_logit`` (a 0-d tensor) before the sigmoid, and the semantic map's
    logits ``semantic_logits`` (h, w) (where the concept is, all instances together), for training losses."""

    scores: torch.Tensor
    boxes: torch.Tensor
    mask_logits: torch.Tensor
    logits: torch.Tensor
    presence_logit: torch.Tensor
    semantic_logits: Optional[torch.Tensor] = None


class Sam3(nn.Module):
    def __init__(self, config: Sam3Config) -> None:
        super().__init__()
        self.config = config
        self.backbone = Backbone(config)
        self.transformer = Transformer(config)
        self.geometry_encoder = GeometryEncoder(config)
        self.segmentation_head = SegmentationHead(config)
        self.dot_prod_scoring = DotProductScoring(config)

    @property
    def image_encoder(self) -> nn.Module:
        """The part an image's features depend on (what :func:`sam_core.identity.weights_id` hashes)."""
        return self.backbone.vision_backbone

    def positions(self, levels: list[torch.Tensor]) -> list[torch.Tensor]:
        """The sine encodings of feature maps (1, C, h, w)."""
        encoding = self.backbone.vision_backbone.position_encoding
        return [encoding.grid(f.shape[-2], f.shape[-1], f.device).to(f.dtype) for f in levels]

    def encode_image(self, images: torch.Tensor) -> ImageFeatures:
        """images (1, 3, S, S), RGB scaled to [-1, 1] ((x / 255 - 0.5) / 0.5)."""
        levels, positions = self.backbone.vision_backbone(images)
        return ImageFeatures(levels, positions)

    def encode_text(self, ids: torch.Tensor) -> TextFeatures:
        """ids (1, context_length) from :class:`ClipTokenizer`."""
        features, padding = self.backbone.language_backbone(ids)
        return TextFeatures(features, padding)

    def find(self, image: ImageFeatures, text: TextFeatures, boxes: Optional[torch.Tensor] = None,
             labels: Optional[torch.Tensor] = None) -> ConceptOutput:
        """Every query's score, box and mask for a phrase plus exemplar ``boxes`` (N, 4) normalized
        (cx, cy, w, h) with ``labels`` (N,) 1 = like this, 0 = not like this."""
        return self.find_batch(image, text, boxes, labels)[0]

    def find_batch(self, image: ImageFeatures, text: TextFeatures, boxes: Optional[torch.Tensor] = None,
                   labels: Optional[torch.Tensor] = None) -> list[ConceptOutput]:
        """:meth:`find` for B (image, phrase) pairs at once: ``image`` maps (B, C, h, w), ``text``
        features (L, B, C) and padding (B, L); exemplar ``boxes`` only with B = 1. One output per pair."""
        coarse, coarse_pos = image.levels[-1], image.positions[-1]
        size = (coarse.shape[-2], coarse.shape[-1])
        tokens = coarse.flatten(2).permute(2, 0, 1)
        tokens_pos = coarse_pos.flatten(2).permute(2, 0, 1)
        if boxes is None:
            boxes = coarse.new_zeros(0, 4)
            labels = torch.zeros(0, dtype=torch.long, device=coarse.device)
        geometry = self.geometry_encoder(boxes, labels, tokens, tokens_pos, size)
        prompt = torch.cat([text.features, geometry], dim=0)
        padding = torch.cat([text.padding, torch.zeros(geometry.shape[1], geometry.shape[0], dtype=torch.bool,
                                                       device=geometry.device)], dim=1)
        fused = self.transformer.encoder(tokens, tokens_pos, prompt, padding)
        decoded = self.transformer.decoder(fused, tokens_pos, size, prompt, padding)
        queries = decoded.queries.transpose(0, 1)
        logits = self.dot_prod_scoring(queries, prompt, padding)
        scores = logits.sigmoid() * decoded.presence_logit.sigmoid()[:, None]
        masks, semantic = self.segmentation_head(image.levels, fused, prompt, padding, queries)
        return [ConceptOutput(scores=scores[b], boxes=decoded.boxes[:, b], mask_logits=masks[b], logits=logits[b],
                              presence_logit=decoded.presence_logit[b], semantic_logits=semantic[b])
                for b in range(scores.shape[0])]
