"""SAM 3's sizes: ``Sam3Config``, the official size ``SAM3``, and ``infer_sam3_config(state_dict)``.

Every size is read from the weights (shapes of known keys). Head counts that a shape does not show
follow the official design: the vision transformer's head width comes from its rotary table, the
text transformer's heads are 64 channels wide (CLIP's rule), and every attention of the detector at
``d_model`` width has as many heads as the decoder's box relative-position bias outputs.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Mapping, Optional

import torch

from sam_core.errors import SamError

DETECTOR_PREFIX = "detector."
TRACKER_PREFIX = "tracker."


@dataclass(frozen=True)
class InteractiveConfig:
    """Sizes of SAM 3's interactive (point and box) head, the tracker's SAM-2-style prompt encoder and
    mask decoder (its width is the neck's ``d_model``). Official values; ``heads`` is not in the
    weights' shapes."""

    depth: int = 2
    mlp_dim: int = 2048
    heads: int = 8
    iou_head_depth: int = 3
    iou_head_hidden_dim: int = 256
    mask_in_chans: int = 16
    num_multimask_outputs: int = 3


@dataclass(frozen=True)
class Sam3Config:
    """Sizes of the SAM 3 image (concept) model. Pixels for ``image_size`` and ``patch_size``."""

    name: str = "sam3"
    image_size: int = 1008
    patch_size: int = 14
    pretrain_size: int = 336  # absolute position table covers pretrain_size / patch_size squared, tiled
    vit_dim: int = 1024
    vit_depth: int = 32
    vit_heads: int = 16
    vit_mlp_dim: int = 4736
    window_size: int = 24
    global_blocks: tuple[int, ...] = (7, 15, 23, 31)
    d_model: int = 256
    heads: int = 8
    ffn_dim: int = 2048
    text_width: int = 1024
    text_layers: int = 24
    text_heads: int = 16
    text_projection_dim: int = 512
    context_length: int = 32
    vocab_size: int = 49408
    encoder_layers: int = 6
    decoder_layers: int = 6
    num_queries: int = 200
    geometry_layers: int = 3
    scoring_hidden: int = 2048
    pixel_decoder_stages: int = 3
    # the interactive head (tracker neck + SAM-2-style heads) as the weights hold it (None: they hold
    # none); only sam_core.models.sam3.interactive builds it, the concept model ignores it
    interactive: Optional[InteractiveConfig] = None

    @property
    def grid(self) -> int:
        """Side of the image feature grid (tokens per row of the vision transformer)."""
        return self.image_size // self.patch_size

    def replace(self, **changes) -> "Sam3Config":
        return replace(self, **changes)


SAM3 = Sam3Config()


def detector_state(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The detector's weights of an official ``sam3.pt`` (keys without ``detector.``), or the dict as
    it is when it holds no ``detector.`` keys (a detector-only state dict)."""
    if any(key.startswith(DETECTOR_PREFIX) for key in state_dict):
        return {k[len(DETECTOR_PREFIX):]: v for k, v in state_dict.items() if k.startswith(DETECTOR_PREFIX)}
    return dict(state_dict)


def tracker_state(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The tracker's weights of an official ``sam3.pt``, keys kept with their ``tracker.`` prefix."""
    return {k: v for k, v in state_dict.items() if k.startswith(TRACKER_PREFIX)}


INTERACTIVE_NECK = "backbone.vision_backbone.sam2_convs."
INTERACTIVE_DECODER = TRACKER_PREFIX + "sam_mask_decoder."


def infer_interactive_config(state_dict: Mapping[str, torch.Tensor]) -> Optional[InteractiveConfig]:
    """The interactive head's sizes from an official ``sam3.pt``, or None when it holds no tracker
    mask decoder (a detector-only file: 'find' works, points and boxes do not)."""
    if not any(k.startswith(INTERACTIVE_DECODER) for k in state_dict):
        return None
    decoder = INTERACTIVE_DECODER
    try:
        return InteractiveConfig(
            depth=_count(state_dict, decoder + "transformer.layers."),
            mlp_dim=state_dict[decoder + "transformer.layers.0.mlp.lin1.weight"].shape[0],
            iou_head_depth=_count(state_dict, decoder + "iou_prediction_head.layers."),
            iou_head_hidden_dim=state_dict[decoder + "iou_prediction_head.layers.0.weight"].shape[0],
            mask_in_chans=state_dict[TRACKER_PREFIX + "sam_prompt_encoder.mask_downscaling.3.weight"].shape[0],
            num_multimask_outputs=state_dict[decoder + "mask_tokens.weight"].shape[0] - 1,
        )
    except (KeyError, IndexError) as error:
        raise SamError(f"this SAM 3 checkpoint's interactive (point and box) head is incomplete: {error} is "
                       f"missing; use the official sam3.pt, or 'find' with this file") from None


def is_sam3_state(state_dict: Mapping[str, torch.Tensor]) -> bool:
    """Whether a state dict holds a SAM 3 detector (official ``sam3.pt`` or detector-only)."""
    key = "backbone.language_backbone.encoder.token_embedding.weight"
    return key in state_dict or DETECTOR_PREFIX + key in state_dict


def _count(state: Mapping[str, torch.Tensor], prefix: str) -> int:
    indexes = {int(k[len(prefix):].split(".", 1)[0]) for k in state if k.startswith(prefix)}
    return max(indexes) + 1 if indexes else 0


def infer_sam3_config(state_dict: Mapping[str, torch.Tensor]) -> Sam3Config:
    """The configuration a SAM 3 state dict (official ``sam3.pt`` or detector-only) was made with."""
    state = detector_state(state_dict)
    try:
        trunk = "backbone.vision_backbone.trunk."
        patch = state[trunk + "patch_embed.proj.weight"]
        vit_dim, patch_size = patch.shape[0], patch.shape[-1]
        depth = _count(state, trunk + "blocks.")
        tables = [state[f"{trunk}blocks.{i}.attn.freqs_cis"] for i in range(depth)]
        head_dim = 2 * tables[0].shape[-1]
        window_tokens = min(t.shape[0] for t in tables)
        grid_tokens = max(t.shape[0] for t in tables)
        global_blocks = tuple(i for i, t in enumerate(tables) if t.shape[0] == grid_tokens)
        window = round(window_tokens ** 0.5)
        grid = round(grid_tokens ** 0.5)
        pos_positions = state[trunk + "pos_embed"].shape[1] - 1
        text = "backbone.language_backbone.encoder."
        text_width = state[text + "token_embedding.weight"].shape[1]
        decoder = "transformer.decoder."
        return Sam3Config(
            name="custom",
            image_size=grid * patch_size,
            patch_size=patch_size,
            pretrain_size=round(pos_positions ** 0.5) * patch_size,
            vit_dim=vit_dim,
            vit_depth=depth,
            vit_heads=vit_dim // head_dim,
            vit_mlp_dim=state[trunk + "blocks.0.mlp.fc1.weight"].shape[0],
            window_size=window,
            global_blocks=global_blocks,
            d_model=state["backbone.language_backbone.resizer.weight"].shape[0],
            heads=state[decoder + "boxRPB_embed_x.layers.1.weight"].shape[0],
            ffn_dim=state["transformer.encoder.layers.0.linear1.weight"].shape[0],
            text_width=text_width,
            text_layers=_count(state, text + "transformer.resblocks."),
            text_heads=max(1, text_width // 64),
            text_projection_dim=state[text + "text_projection"].shape[1],
            context_length=state[text + "positional_embedding"].shape[0],
            vocab_size=state[text + "token_embedding.weight"].shape[0],
            encoder_layers=_count(state, "transformer.encoder.layers."),
            decoder_layers=_count(state, decoder + "layers."),
            num_queries=state[decoder + "query_embed.weight"].shape[0],
            geometry_layers=_count(state, "geometry_encoder.encode."),
            scoring_hidden=state["dot_prod_scoring.prompt_mlp.layers.0.weight"].shape[0],
            pixel_decoder_stages=_count(state, "segmentation_head.pixel_decoder.conv_layers."),
            interactive=infer_interactive_config(state_dict),
        )
    except (KeyError, IndexError, ValueError) as error:
        raise SamError(f"these weights are not a SAM 3 checkpoint (missing or odd {error}); "
                       f"pass the official sam3.pt or a file saved from it") from error
