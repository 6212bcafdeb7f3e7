"""The SAM 2.1 network: image encoder, prompt encoder, mask decoder, memory encoder, memory attention
and object pointers, with state-dict keys equal to the official checkpoints', and the official image
path (``SAM2ImagePredictor``): a 1024 x 1024 input that does not keep the aspect ratio.

Coordinates: points are (x, y) pixels; an image of (H, W) pixels maps to the model input by
x * S / W, y * S / H (S = ``image_size``). Masks are (..., rows, columns).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from sam_core.errors import SamError
from sam_core.models.common import MLP
from sam_core.models.sam2.config import IMAGENET_MEAN, IMAGENET_STD, Sam2Config
from sam_core.models.sam2.heads import Sam2MaskDecoder, Sam2PromptEncoder
from sam_core.models.sam2.memory import MemoryAttention, MemoryEncoder
from sam_core.models.sam2.neck import ImageEncoder, sine_position_encoding
from sam_core.models.sam2.prompting import Sam2Features, SquarePrompting

# logits of a mask where the object is judged absent (the official NO_OBJ_SCORE)
NO_OBJECT_SCORE = -1024.0
# the official image predictor clamps the low-resolution logits it returns to this range
LOW_RES_CLAMP = 32.0
# mask logits given to the memory encoder: sigmoid(logits) * scale + bias
MEMORY_SIGMOID_SCALE, MEMORY_SIGMOID_BIAS = 20.0, -10.0


@dataclass
class HeadsOutput:
    """The SAM heads on one frame, as the official ``_forward_sam_heads``: ``multimasks`` (B, K, 4h,
    4w) logits (-1024 where the object is judged absent), ``ious`` (B, K), ``best`` (B, 1, 4h, 4w)
    logits of the best candidate, ``object_pointer`` (B, C), ``object_score_logits`` (B, 1),
    ``decoded`` (B, K, 4h, 4w) the decoder's logits before the absent objects' are replaced (the
    ones training takes its mask loss on)."""

    multimasks: torch.Tensor
    ious: torch.Tensor
    best: torch.Tensor
    object_pointer: torch.Tensor
    object_score_logits: torch.Tensor
    decoded: torch.Tensor


class Sam2(SquarePrompting, nn.Module):
    """SAM 2.1 for a :class:`Sam2Config` (eval mode from :func:`build_sam2`)."""

    family = "sam2"
    mask_threshold: float = 0.0
    image_format: str = "RGB"
    precision: str = "fp32"

    def __init__(self, config: Sam2Config) -> None:
        super().__init__()
        self.config = config
        d, mem = config.d_model, config.mem_dim
        side = config.image_embedding_size
        self.image_encoder = ImageEncoder(config)
        self.sam_prompt_encoder = Sam2PromptEncoder(
            embed_dim=d,
            image_embedding_size=(side, side),
            input_image_size=(config.image_size, config.image_size),
            mask_in_chans=config.mask_in_chans,
        )
        self.sam_mask_decoder = Sam2MaskDecoder(
            d, config.decoder_depth, config.decoder_num_heads, config.decoder_mlp_dim,
            config.num_multimask_outputs, config.iou_head_depth, config.iou_head_hidden_dim,
        )
        self.memory_encoder = MemoryEncoder(d, mem, config.mask_downsampler_layers, config.fuser_layers,
                                            config.fuser_kernel_size)
        self.memory_attention = MemoryAttention(d, mem, config.memory_attention_layers, config.memory_attention_heads,
                                                config.memory_attention_ff_dim, config.rope_theta)
        self.maskmem_tpos_enc = nn.Parameter(torch.zeros(config.num_maskmem, 1, 1, mem))
        self.no_mem_embed = nn.Parameter(torch.zeros(1, 1, d))
        self.no_mem_pos_enc = nn.Parameter(torch.zeros(1, 1, d))
        self.no_obj_ptr = nn.Parameter(torch.zeros(1, d))
        self.no_obj_embed_spatial = nn.Parameter(torch.zeros(1, mem))
        self.mask_downsample = nn.Conv2d(1, 1, kernel_size=4, stride=4)
        self.obj_ptr_proj = MLP(d, d, d, 3)
        self.obj_ptr_tpos_proj = nn.Linear(d, mem)
        self.register_buffer("pixel_mean", torch.tensor(IMAGENET_MEAN).view(-1, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(IMAGENET_STD).view(-1, 1, 1), persistent=False)

    @property
    def device(self) -> torch.device:
        return self.pixel_mean.device

    @property
    def image_size(self) -> int:
        """Side of the square model input, in pixels."""
        return self.config.image_size

    @property
    def low_res_size(self) -> int:
        """Side of the low-resolution mask logits and of ``mask_input``."""
        return self.config.low_res_size

    def set_precision(self, precision: str) -> "Sam2":
        """SAM 2.1 runs in fp32 for now: ``fp32``, ``exact`` and ``auto`` keep it; other precisions raise
        :class:`SamError`."""
        if precision not in ("fp32", "exact", "auto"):
            raise SamError(f"precision {precision!r} is not available for SAM 2.1 models yet (they run in fp32); "
                           f"leave --precision out or use fp32")
        return self

    def compile_encoder(self, cache_dir: object = None) -> "Sam2":
        """Not available for SAM 2.1 yet: raises :class:`SamError`."""
        raise SamError("compiling the encoder is not available for SAM 2.1 models yet; run without --compile")

    # --- the image path ----------------------------------------------------------------------------

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) RGB in 0..255 (uint8 or float) -> (B, 3, S, S) model input, as the official
        transforms: scale to 0..1, resize to S x S (bilinear, antialiased; the aspect ratio is not
        kept), normalise with the ImageNet mean and standard deviation."""
        x = images.to(torch.float32).div(255)
        x = F.interpolate(x, size=(self.image_size, self.image_size), mode="bilinear", align_corners=False,
                          antialias=True)
        return x.sub(self.pixel_mean).div(self.pixel_std)

    def backbone(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Model input -> the neck's kept levels, highest resolution first, with ``conv_s0`` and
        ``conv_s1`` applied to the first two (the official ``forward_image``)."""
        levels = self.image_encoder(x)
        levels[0] = self.sam_mask_decoder.conv_s0(levels[0])
        levels[1] = self.sam_mask_decoder.conv_s1(levels[1])
        return levels

    def encode(self, x: torch.Tensor) -> Sam2Features:
        """Model input (B, 3, S, S) -> the features the image predictor decodes prompts on."""
        levels = self.backbone(x)
        image_embed = levels[-1] + self.no_mem_embed.view(1, -1, 1, 1)
        return Sam2Features(image_embed=image_embed, high_res=(levels[0], levels[1]))

    def upscale(self, low_res: torch.Tensor, original_size: tuple[int, int]) -> torch.Tensor:
        """Low-resolution logits (B, K, low, low) -> logits (B, K, H, W) of the original image (one
        bilinear resize, as the official image predictor)."""
        return F.interpolate(low_res, tuple(original_size), mode="bilinear", align_corners=False)

    # --- the heads of the video path ---------------------------------------------------------------

    def forward_heads(self, image_embed: torch.Tensor, high_res: tuple[torch.Tensor, torch.Tensor],
                      point_coords: Optional[torch.Tensor] = None, point_labels: Optional[torch.Tensor] = None,
                      mask_inputs: Optional[torch.Tensor] = None, multimask: bool = False) -> HeadsOutput:
        """The official ``_forward_sam_heads`` on one frame's (memory-conditioned) features: masks,
        IoU, object score and the object pointer (``no_obj_ptr`` where the object is absent).

        point_coords (B, P, 2) model-input pixels with labels (B, P) (None: one padding point);
        mask_inputs (B, 1, H, W) of any size (resized, antialiased, to the low-resolution size).
        """
        batch = image_embed.shape[0]
        device = image_embed.device
        if point_coords is None:
            point_coords = torch.zeros(batch, 1, 2, device=device)
            point_labels = -torch.ones(batch, 1, dtype=torch.int32, device=device)
        mask_prompt = None
        if mask_inputs is not None:
            size = self.sam_prompt_encoder.mask_input_size
            mask_prompt = mask_inputs.float()
            if tuple(mask_prompt.shape[-2:]) != tuple(size):
                mask_prompt = F.interpolate(mask_prompt, size=size, align_corners=False, mode="bilinear", antialias=True)
        sparse, dense = self.sam_prompt_encoder(points=(point_coords, point_labels), boxes=None, masks=mask_prompt)
        masks, ious, tokens, object_scores = self.sam_mask_decoder(
            image_embeddings=image_embed,
            image_pe=self.sam_prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            high_res_features=high_res,
            multimask_output=multimask,
        )
        decoded = masks
        present = object_scores > 0
        masks = torch.where(present[:, None, None], masks, NO_OBJECT_SCORE).float()
        token = tokens[:, 0]
        best = masks
        if multimask:
            index = torch.argmax(ious, dim=-1)
            rows = torch.arange(batch, device=device)
            best = masks[rows, index].unsqueeze(1)
            token = tokens[rows, index]
        return HeadsOutput(masks, ious, best, self.object_pointer(token, object_scores), object_scores, decoded)

    def object_pointer(self, token: torch.Tensor, object_score_logits: torch.Tensor) -> torch.Tensor:
        """A mask token (B, C) -> the object pointer (B, C): projected where the object is present,
        ``no_obj_ptr`` where it is not."""
        present = (object_score_logits > 0).float()
        return present * self.obj_ptr_proj(token) + (1 - present) * self.no_obj_ptr

    def encode_memory(self, pix_feat: torch.Tensor, mask_logits: torch.Tensor,
                      object_score_logits: torch.Tensor, binarize: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """A frame's memory (the official ``_encode_new_memory``): its (B, C, h, w) stride-16 features
        (without the no-memory embedding) and its (B, 1, S, S) mask logits -> memory features (B,
        mem_dim, h, w) (``no_obj_embed_spatial`` added where the object is absent) and their
        positional encoding. ``binarize``: the mask is taken as ``logits > 0`` instead of their sigmoid
        (the official video predictor's ``binarize_mask_from_pts_for_mem_enc`` on prompted frames)."""
        mask = (mask_logits > 0).float() if binarize else torch.sigmoid(mask_logits)
        mask = mask * MEMORY_SIGMOID_SCALE + MEMORY_SIGMOID_BIAS
        features, pos = self.memory_encoder(pix_feat, mask)
        absent = 1 - (object_score_logits > 0).float()
        features = features + absent[..., None, None] * self.no_obj_embed_spatial[..., None, None]
        return features, pos

    def position_encoding(self, height: int, width: int) -> torch.Tensor:
        """Sine positional encoding (1, d_model, height, width) of a feature grid."""
        return sine_position_encoding(self.config.d_model, height, width, self.device)
