"""SAM 3's interactive head: points, boxes and mask inputs on one image, as the official
``Sam3Image.predict_inst`` (``SAM3InteractiveImagePredictor``) computes them.

The network is the part of ``sam3.pt`` that the tracker uses on a prompted frame: SAM 3's vision
trunk, the tracker's own neck (``detector.backbone.vision_backbone.sam2_convs``) and the tracker's
SAM-2-style prompt encoder and mask decoder (``tracker.sam_prompt_encoder``,
``tracker.sam_mask_decoder``, with object-score token and high-resolution skip features, see
:mod:`sam_core.models.sam2.heads`), plus ``tracker.no_mem_embed`` added to the coarsest level. The
text encoder, fusion encoder, DETR decoder and the tracker's memory parts are not built.

:class:`Sam3Interactive` offers the surface :class:`sam_core.predictor.Predictor` uses for SAM-2-style
models (``preprocess``, ``encode``, ``decode``, ``upscale``, ``input_coords``), with ``family =
"sam3"``. Module names give the official keys (``detector.`` stripped from the backbone's).
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Optional, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from sam_core.errors import SamError
from sam_core.models.sam2.heads import Sam2MaskDecoder, Sam2PromptEncoder
from sam_core.models.sam2.prompting import Sam2Features, SquarePrompting
from sam_core.models.sam3.config import (DETECTOR_PREFIX, INTERACTIVE_NECK, TRACKER_PREFIX, Sam3Config,
                                         infer_sam3_config)
from sam_core.models.sam3.vision import VisionBackbone, sam3_input

# the official interactive predictor fills holes of the low-resolution masks up to this many pixels
# (SAM3InteractiveImagePredictor's max_hole_area) before resizing them to the image
MAX_HOLE_AREA = 256
# the logit a filled hole gets (the mask threshold + 10, as the official post-processing)
HOLE_FILL_LOGIT = 10.0
NO_HEAD = ("this checkpoint has no interactive head (the tracker part of sam3.pt: points and boxes); use 'find' "
           "with it, or use the official sam3.pt from https://huggingface.co/facebook/sam3")


class InteractiveHead(nn.Module):
    """The tracker's prompt encoder, mask decoder and no-memory embedding (keys ``tracker.*``)."""

    def __init__(self, config: Sam3Config) -> None:
        super().__init__()
        head = config.interactive
        d, side = config.d_model, config.grid
        self.sam_prompt_encoder = Sam2PromptEncoder(
            embed_dim=d,
            image_embedding_size=(side, side),
            input_image_size=(config.image_size, config.image_size),
            mask_in_chans=head.mask_in_chans,
        )
        self.sam_mask_decoder = Sam2MaskDecoder(
            d, head.depth, head.heads, head.mlp_dim, head.num_multimask_outputs, head.iou_head_depth,
            head.iou_head_hidden_dim, sam1_mlp=True,
        )
        self.no_mem_embed = nn.Parameter(torch.zeros(1, 1, d))


class _Backbone(nn.Module):
    def __init__(self, config: Sam3Config) -> None:
        super().__init__()
        self.vision_backbone = VisionBackbone(config, interactive_neck=True)


def fill_small_holes(low_res: torch.Tensor, max_area: int = MAX_HOLE_AREA, threshold: float = 0.0) -> torch.Tensor:
    """Logits (B, K, h, w) with every background region (logit <= ``threshold``, 8-connected) of at
    most ``max_area`` pixels set to ``threshold + 10``, as the official SAM 3 interactive predictor
    post-processes its low-resolution masks (regions touching the border count too)."""
    from skimage.measure import label

    if max_area <= 0:
        return low_res
    background = (low_res <= threshold).cpu().numpy()
    holes = np.zeros_like(background)
    for index in np.ndindex(background.shape[:-2]):
        labels = label(background[index].astype(np.uint8), connectivity=2)
        if labels.max() == 0:
            continue
        areas = np.bincount(labels.ravel())
        small = areas <= max_area
        small[0] = False
        holes[index] = small[labels]
    if not holes.any():
        return low_res
    mask = torch.from_numpy(holes).to(low_res.device)
    return torch.where(mask, torch.as_tensor(threshold + HOLE_FILL_LOGIT, dtype=low_res.dtype), low_res)


class Sam3Interactive(SquarePrompting, nn.Module):
    """SAM 3 for points, boxes and mask inputs (see the module notes). Built from a
    :class:`Sam3Config` whose ``interactive`` sizes are set."""

    family = "sam3"
    mask_threshold = 0.0

    def __init__(self, config: Sam3Config) -> None:
        super().__init__()
        if config.interactive is None:
            raise SamError(NO_HEAD)
        self.config = config
        self.backbone = _Backbone(config)
        self.tracker = InteractiveHead(config)
        self.register_buffer("pixel_mean", torch.zeros(3, 1, 1), persistent=False)  # where the model is

    @property
    def image_encoder(self) -> VisionBackbone:
        """What an embedding depends on (``img_size``: the input side in pixels)."""
        return self.backbone.vision_backbone

    @property
    def sam_prompt_encoder(self) -> Sam2PromptEncoder:
        return self.tracker.sam_prompt_encoder

    @property
    def sam_mask_decoder(self) -> Sam2MaskDecoder:
        return self.tracker.sam_mask_decoder

    @property
    def image_size(self) -> int:
        return self.config.image_size

    @property
    def low_res_size(self) -> int:
        """Side of the low-resolution logits and of ``mask_input`` (4 per feature cell; 288 officially)."""
        return 4 * self.config.grid

    def set_precision(self, precision: str) -> "Sam3Interactive":
        """SAM 3 runs in fp32 here: ``fp32``, ``exact`` and ``auto`` keep it; others raise :class:`SamError`."""
        if precision not in ("fp32", "exact", "auto"):
            raise SamError(f"precision {precision!r} is not available for SAM 3 yet (it runs in fp32); "
                           f"leave --precision out or use fp32")
        return self

    def compile_encoder(self, cache_dir: object = None) -> "Sam3Interactive":
        """Not available for SAM 3: raises :class:`SamError`."""
        raise SamError("compiling the encoder is not available for SAM 3 yet; run without --compile")

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) RGB 0..255 -> (B, 3, S, S) model input, as SAM 3's image transform (see
        :func:`sam_core.models.sam3.vision.sam3_input`)."""
        return sam3_input(images, self.image_size)

    def encode(self, x: torch.Tensor) -> Sam2Features:
        """Model input -> the coarsest level plus ``no_mem_embed`` and the 4x and 2x levels through the
        decoder's ``conv_s0`` / ``conv_s1`` (``Sam3Processor.set_image`` then ``predict_inst``)."""
        levels = self.image_encoder.interactive_levels(x)
        decoder = self.sam_mask_decoder
        image_embed = levels[-1] + self.tracker.no_mem_embed.view(1, -1, 1, 1)
        return Sam2Features(image_embed=image_embed, high_res=(decoder.conv_s0(levels[0]), decoder.conv_s1(levels[1])))

    def upscale(self, low_res: torch.Tensor, original_size: tuple[int, int]) -> torch.Tensor:
        """Low-resolution logits (B, K, low, low) -> logits (B, K, H, W) of the original image: small
        holes filled (:func:`fill_small_holes`), then one bilinear resize, as the official predictor."""
        filled = fill_small_holes(low_res.float(), threshold=self.mask_threshold)
        return F.interpolate(filled, tuple(original_size), mode="bilinear", align_corners=False)


_COMPUTED = (".attn.freqs_cis",)


def interactive_state(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The weights :class:`Sam3Interactive` runs, from an official ``sam3.pt`` (keys ``detector.*``
    and ``tracker.*``): the detector's vision backbone (``detector.`` stripped) and the tracker."""
    vision = DETECTOR_PREFIX + "backbone.vision_backbone."
    return {(k[len(DETECTOR_PREFIX):] if k.startswith(vision) else k): v for k, v in state_dict.items()
            if k.startswith(vision) or k.startswith(TRACKER_PREFIX)}


def load_sam3_interactive(checkpoint: Union[str, Path, Mapping[str, torch.Tensor]],
                          config: Optional[Sam3Config] = None) -> Sam3Interactive:
    """SAM 3's interactive model (eval mode, CPU) with the weights of an official ``sam3.pt`` (a path
    or its state dict). Every weight of the parts it runs must be there with its shape; the tracker's
    memory parts are not loaded. A file without the tracker part raises :class:`SamError` saying to
    use ``find``."""
    from sam_core.models.sam3.build import read_sam3_state_dict

    state = read_sam3_state_dict(checkpoint) if isinstance(checkpoint, (str, Path)) else checkpoint
    config = config or infer_sam3_config(state)
    if config.interactive is None:
        raise SamError(NO_HEAD)
    model = Sam3Interactive(config)
    weights = interactive_state(state)
    expected = model.state_dict()
    missing = [k for k in expected if k not in weights and not k.endswith(_COMPUTED)]
    wrong = [k for k in expected if k in weights and tuple(weights[k].shape) != tuple(expected[k].shape)]
    if missing or wrong:
        parts = []
        for what, keys in (("missing", missing), ("with other shapes", wrong)):
            if keys:
                parts.append(f"{len(keys)} {what} ({', '.join(keys[:3])}{', ...' if len(keys) > 3 else ''})")
        neck = any(k.startswith(INTERACTIVE_NECK) for k in missing)
        raise SamError("these SAM 3 weights do not fit the interactive (point and box) head: " + "; ".join(parts)
                       + ("; the tracker's neck (sam2_convs) is not in the file" if neck else "")
                       + "; use the official sam3.pt")
    model.load_state_dict({k: weights[k] for k in expected if k in weights}, strict=False)
    return model.eval()
