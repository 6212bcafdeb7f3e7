"""Model configurations: the official SAM / MobileSAM sizes, and recovery of a size from a checkpoint.

A :class:`SamConfig` describes every size of the network (input size, depth, width, heads), so that
small test and demo models run through exactly the same code as the official ones.
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass
from typing import Mapping

import torch

from sam_core.errors import SamError

PIXEL_MEAN = (123.675, 116.28, 103.53)
PIXEL_STD = (58.395, 57.12, 57.375)


@dataclass(frozen=True)
class SamConfig:
    """Every size of a SAM network. Image sizes are in pixels of the square, padded model input.

    ``encoder`` is ``"vit"`` (SAM's ViT with windowed/global attention) or ``"tiny_vit"`` (MobileSAM).
    ViT fields apply to ``"vit"``; ``tiny_*`` fields to ``"tiny_vit"``. ``prompt_embed_dim`` is the
    channel count of the image embedding (the neck's output) and of the mask decoder's transformer.
    """

    name: str
    encoder: str = "vit"
    image_size: int = 1024
    patch_size: int = 16
    # ViT encoder
    embed_dim: int = 768
    depth: int = 12
    num_heads: int = 12
    global_attn_indexes: tuple[int, ...] = (2, 5, 8, 11)
    window_size: int = 14
    mlp_ratio: float = 4.0
    # TinyViT encoder (one entry per stage; stage 0 is convolutional, its heads/window are unused)
    tiny_embed_dims: tuple[int, ...] = ()
    tiny_depths: tuple[int, ...] = ()
    tiny_num_heads: tuple[int, ...] = ()
    tiny_window_sizes: tuple[int, ...] = ()
    tiny_num_classes: int = 1000
    # prompt encoder and mask decoder
    prompt_embed_dim: int = 256
    mask_in_chans: int = 16
    decoder_depth: int = 2
    decoder_mlp_dim: int = 2048
    decoder_num_heads: int = 8
    iou_head_depth: int = 3
    iou_head_hidden_dim: int = 256
    num_multimask_outputs: int = 3
    pixel_mean: tuple[float, float, float] = PIXEL_MEAN
    pixel_std: tuple[float, float, float] = PIXEL_STD

    def __post_init__(self) -> None:
        if self.encoder not in ("vit", "tiny_vit"):
            raise SamError(f"unknown encoder {self.encoder!r} in config {self.name!r}: use 'vit' or 'tiny_vit'")
        if self.encoder == "vit":
            if self.image_size % self.patch_size:
                raise SamError(f"config {self.name!r}: image_size must be a multiple of patch_size")
            if self.embed_dim % self.num_heads:
                raise SamError(f"config {self.name!r}: embed_dim must be a multiple of num_heads")
        else:
            n = len(self.tiny_embed_dims)
            if n < 2 or not (len(self.tiny_depths) == len(self.tiny_num_heads) == len(self.tiny_window_sizes) == n):
                raise SamError(f"config {self.name!r}: TinyViT needs at least 2 stages, all tiny_* of equal length")
            if self.image_size % (4 * 2 ** (n - 2)):
                raise SamError(f"config {self.name!r}: image_size must be a multiple of {4 * 2 ** (n - 2)}")

    @property
    def image_embedding_size(self) -> int:
        """Tokens per side of the image embedding (64 for the official models)."""
        if self.encoder == "vit":
            return self.image_size // self.patch_size
        return self.image_size // (4 * 2 ** (len(self.tiny_embed_dims) - 2))

    @property
    def low_res_size(self) -> int:
        """Pixels per side of the low-resolution mask logits and of ``mask_input`` (256 officially)."""
        return 4 * self.image_embedding_size

    def replace(self, **changes) -> "SamConfig":
        """A copy with some fields changed."""
        return dataclasses.replace(self, **changes)


CONFIGS: dict[str, SamConfig] = {
    "vit_b": SamConfig(
        name="vit_b", embed_dim=768, depth=12, num_heads=12, global_attn_indexes=(2, 5, 8, 11)
    ),
    "vit_l": SamConfig(
        name="vit_l", embed_dim=1024, depth=24, num_heads=16, global_attn_indexes=(5, 11, 17, 23)
    ),
    "vit_h": SamConfig(
        name="vit_h", embed_dim=1280, depth=32, num_heads=16, global_attn_indexes=(7, 15, 23, 31)
    ),
    "vit_t": SamConfig(
        name="vit_t",
        encoder="tiny_vit",
        tiny_embed_dims=(64, 128, 160, 320),
        tiny_depths=(2, 2, 6, 2),
        tiny_num_heads=(2, 4, 5, 10),
        tiny_window_sizes=(7, 7, 14, 7),
    ),
}

# The project's own small model (trained by sam_core.train): three TinyViT stages give a 32 x 32
# embedding (stride 8) at 256 px input. Checkpoints do not record the decoder's head count, so keep
# decoder_num_heads at 8 for infer_config to recover this entry from a file.
CONFIGS["demo"] = SamConfig(
    name="demo",
    encoder="tiny_vit",
    image_size=256,
    tiny_embed_dims=(32, 64, 128),
    tiny_depths=(2, 2, 4),
    tiny_num_heads=(1, 2, 4),
    tiny_window_sizes=(7, 8, 16),
    tiny_num_classes=0,
    prompt_embed_dim=96,
    decoder_mlp_dim=512,
    iou_head_hidden_dim=128,
)


def get_config(name: str) -> SamConfig:
    """The configuration called ``name``; :class:`SamError` listing the known names otherwise."""
    try:
        return CONFIGS[name]
    except KeyError:
        raise SamError(f"unknown model {name!r}; known models: {', '.join(CONFIGS)}") from None


def _count(state_dict: Mapping[str, torch.Tensor], pattern: str) -> int:
    regex = re.compile(pattern)
    indexes = {int(m.group(1)) for k in state_dict if (m := regex.match(k))}
    return max(indexes) + 1 if indexes else 0


def _decoder_heads(dim: int) -> int:
    # Not stored in a checkpoint: the official 8 when the attention width allows it.
    internal = dim // 2
    return 8 if internal % 8 == 0 else math.gcd(internal, 8)


def infer_config(state_dict: Mapping[str, torch.Tensor], image_size: int | None = None) -> SamConfig:
    """Recover a :class:`SamConfig` from the tensor shapes of a SAM state dict.

    A known configuration (``CONFIGS``) is returned when the shapes match it; otherwise the result
    is named ``"custom"``. Not recoverable from shapes: the decoder's head count (assumed 8) and,
    for TinyViT, the input size (``image_size``, default 1024).
    """
    sd = state_dict
    try:
        prompt_dim = sd["prompt_encoder.not_a_point_embed.weight"].shape[1]
        decoder = dict(
            prompt_embed_dim=prompt_dim,
            mask_in_chans=sd["prompt_encoder.mask_downscaling.3.weight"].shape[0],
            decoder_depth=_count(sd, r"mask_decoder\.transformer\.layers\.(\d+)\."),
            decoder_mlp_dim=sd["mask_decoder.transformer.layers.0.mlp.lin1.weight"].shape[0],
            decoder_num_heads=_decoder_heads(prompt_dim),
            iou_head_depth=_count(sd, r"mask_decoder\.iou_prediction_head\.layers\.(\d+)\."),
            iou_head_hidden_dim=sd["mask_decoder.iou_prediction_head.layers.0.weight"].shape[0],
            num_multimask_outputs=sd["mask_decoder.mask_tokens.weight"].shape[0] - 1,
        )
        if "image_encoder.patch_embed.proj.weight" in sd:
            config = _infer_vit(sd, decoder)
        elif "image_encoder.patch_embed.seq.0.c.weight" in sd:
            config = _infer_tiny_vit(sd, decoder, image_size or 1024)
        else:
            raise KeyError("image_encoder.patch_embed")
    except (KeyError, IndexError, AttributeError) as exc:
        raise SamError(f"not a SAM state dict: cannot find the tensor {exc}") from None
    for known in CONFIGS.values():
        if _same_network(config if image_size else config.replace(image_size=known.image_size), known):
            return known
    return config


def _same_network(inferred: SamConfig, known: SamConfig) -> bool:
    if known.encoder == "tiny_vit" and inferred.encoder == "tiny_vit" and known.tiny_num_heads:
        # stage 0 is convolutional: its head count and window size are not in the weights
        inferred = inferred.replace(
            tiny_num_heads=known.tiny_num_heads[:1] + inferred.tiny_num_heads[1:],
            tiny_window_sizes=known.tiny_window_sizes[:1] + inferred.tiny_window_sizes[1:],
        )
    return inferred == known.replace(name="custom")


def _infer_vit(sd: Mapping[str, torch.Tensor], decoder: dict) -> SamConfig:
    proj = sd["image_encoder.patch_embed.proj.weight"]
    embed_dim, patch = proj.shape[0], proj.shape[-1]
    side = sd["image_encoder.pos_embed"].shape[1]
    depth = _count(sd, r"image_encoder\.blocks\.(\d+)\.")
    rel = [sd[f"image_encoder.blocks.{i}.attn.rel_pos_h"] for i in range(depth)]
    global_idx = tuple(i for i, r in enumerate(rel) if r.shape[0] == 2 * side - 1)
    windowed = [r.shape[0] for r in rel if r.shape[0] != 2 * side - 1]
    return SamConfig(
        name="custom",
        encoder="vit",
        image_size=side * patch,
        patch_size=patch,
        embed_dim=embed_dim,
        depth=depth,
        num_heads=embed_dim // rel[0].shape[1],
        global_attn_indexes=global_idx,
        window_size=(windowed[0] + 1) // 2 if windowed else 0,
        mlp_ratio=sd["image_encoder.blocks.0.mlp.lin1.weight"].shape[0] / embed_dim,
        **decoder,
    )


def _infer_tiny_vit(sd: Mapping[str, torch.Tensor], decoder: dict, image_size: int) -> SamConfig:
    stages = _count(sd, r"image_encoder\.layers\.(\d+)\.")
    dims, depths, heads, windows = [], [], [], []
    for i in range(stages):
        depths.append(_count(sd, rf"image_encoder\.layers\.{i}\.blocks\.(\d+)\."))
        if i == 0:
            dims.append(sd["image_encoder.layers.0.blocks.0.conv1.c.weight"].shape[1])
            heads.append(1)
            windows.append(7)
        else:
            dims.append(sd[f"image_encoder.layers.{i}.blocks.0.attn.qkv.weight"].shape[1])
            biases = sd[f"image_encoder.layers.{i}.blocks.0.attn.attention_biases"]
            heads.append(biases.shape[0])
            windows.append(math.isqrt(biases.shape[1]))
    head = sd.get("image_encoder.head.weight")
    mlp = sd["image_encoder.layers.1.blocks.0.mlp.fc1.weight"].shape[0] / dims[1]
    return SamConfig(
        name="custom",
        encoder="tiny_vit",
        image_size=image_size,
        mlp_ratio=mlp,
        tiny_embed_dims=tuple(dims),
        tiny_depths=tuple(depths),
        tiny_num_heads=tuple(heads),
        tiny_window_sizes=tuple(windows),
        tiny_num_classes=head.shape[0] if head is not None else 0,
        **decoder,
    )
