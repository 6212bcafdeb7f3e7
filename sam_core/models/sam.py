"""The SAM network: image encoder, prompt encoder and mask decoder, with the official pre- and
post-processing of the model's input and output."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Optional, Union

import torch
import torch.nn.functional as F
from torch import nn

from sam_core.errors import SamError
from sam_core.models.config import SamConfig
from sam_core.models.precision import COMPUTE_DTYPES, QUANTIZED, resolve_precision
from sam_core.models.image_encoder import ImageEncoderViT
from sam_core.models.mask_decoder import MaskDecoder
from sam_core.models.prompt_encoder import PromptEncoder
from sam_core.models.tiny_vit import TinyViT
from sam_core.models.transformer import TwoWayTransformer


class Sam(nn.Module):
    """SAM for a :class:`SamConfig`; state-dict keys equal the official checkpoints'.

    Use :func:`sam_core.models.build.build_sam` to get one in eval mode.
    """

    mask_threshold: float = 0.0
    image_format: str = "RGB"
    precision: str = "fp32"

    def __init__(self, config: SamConfig) -> None:
        super().__init__()
        self.config = config
        self.image_encoder: nn.Module = ImageEncoderViT(config) if config.encoder == "vit" else TinyViT(config)
        side = config.image_embedding_size
        self.prompt_encoder = PromptEncoder(
            embed_dim=config.prompt_embed_dim,
            image_embedding_size=(side, side),
            input_image_size=(config.image_size, config.image_size),
            mask_in_chans=config.mask_in_chans,
        )
        self.mask_decoder = MaskDecoder(
            transformer_dim=config.prompt_embed_dim,
            transformer=TwoWayTransformer(
                depth=config.decoder_depth,
                embedding_dim=config.prompt_embed_dim,
                num_heads=config.decoder_num_heads,
                mlp_dim=config.decoder_mlp_dim,
            ),
            num_multimask_outputs=config.num_multimask_outputs,
            iou_head_depth=config.iou_head_depth,
            iou_head_hidden_dim=config.iou_head_hidden_dim,
        )
        self.register_buffer("pixel_mean", torch.tensor(config.pixel_mean).view(-1, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(config.pixel_std).view(-1, 1, 1), persistent=False)

    @property
    def device(self) -> torch.device:
        return self.pixel_mean.device

    @property
    def image_size(self) -> int:
        """Side of the square model input, in pixels."""
        return self.config.image_size

    def set_precision(self, precision: str) -> "Sam":
        """Run the image encoder in ``precision`` (see :mod:`sam_core.models.precision`) on this
        model's current device; returns self. ``int8`` and ``int8-smooth`` quantize the encoder in
        place (:mod:`sam_core.models.quantize`) and cannot be undone (build a new model for another
        precision); move the model to its device before choosing a precision.
        """
        resolved = resolve_precision(precision, self.device)
        if self.precision in QUANTIZED and resolved != self.precision:
            raise SamError(f"this model's encoder is quantized ({self.precision}); "
                           "build a new model for another precision")
        if resolved in QUANTIZED and self.precision != resolved:
            from sam_core.models.quantize import quantize_encoder

            quantize_encoder(self.image_encoder, resolved)
        self.image_encoder.compute_dtype = COMPUTE_DTYPES[resolved]
        for module in self.modules():
            if hasattr(module, "fused"):
                module.fused = resolved != "exact"
        self.precision = resolved
        return self

    def compile_encoder(self, cache_dir: Optional[Union[str, "os.PathLike[str]"]] = None) -> "Sam":
        """Compile the image encoder with ``torch.compile`` (inductor); returns self.

        The first encode after this compiles (tens of seconds; a C++ compiler is needed on the CPU);
        the compiled code is cached on disk in ``cache_dir`` (default: ``$TORCHINDUCTOR_CACHE_DIR``
        if set, else ``inductor`` in sam_core's cache folder) so that later processes skip most of
        that. Choose the precision and device first: changing them later compiles again.
        """
        if self.device.type == "cpu" and not (shutil.which("c++") or shutil.which("g++") or shutil.which("clang++")):
            raise SamError("compiling the encoder on the CPU needs a C++ compiler (for example g++); "
                           "install one or run without compiling")
        if cache_dir is not None:
            os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(Path(cache_dir))
        elif "TORCHINDUCTOR_CACHE_DIR" not in os.environ:
            from sam_core.weights import home_dir

            os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(home_dir() / "inductor")
        os.environ["TORCHINDUCTOR_FX_GRAPH_CACHE"] = "1"
        self.image_encoder.compile(dynamic=False)
        return self

    def preprocess(self, x: torch.Tensor) -> torch.Tensor:
        """Normalize a float (B, 3, h, w) or (3, h, w) image in 0..255 and zero-pad it to image_size."""
        x = (x - self.pixel_mean) / self.pixel_std
        h, w = x.shape[-2:]
        return F.pad(x, (0, self.image_size - w, 0, self.image_size - h))

    def postprocess_masks(
        self, masks: torch.Tensor, input_size: tuple[int, ...], original_size: tuple[int, ...]
    ) -> torch.Tensor:
        """Low-res logits (B, K, 4h, 4w) -> logits (B, K, H, W) of the original image.

        ``input_size`` is the (h, w) of the resized image before padding, ``original_size`` the
        (H, W) of the original image.
        """
        masks = F.interpolate(masks, (self.image_size, self.image_size), mode="bilinear", align_corners=False)
        masks = masks[..., : input_size[0], : input_size[1]]
        return F.interpolate(masks, original_size, mode="bilinear", align_corners=False)
