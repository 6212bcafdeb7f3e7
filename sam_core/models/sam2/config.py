"""SAM 2.1 model configurations: the four official sizes, and recovery of a size from a checkpoint.

A :class:`Sam2Config` describes every size of the network (Hiera trunk, FPN neck, decoder, memory),
so that small test models run through exactly the same code as the official ones. The behaviour flags
that all SAM 2.1 checkpoints share (object scores, high-resolution skip features, sigmoid IoU head,
dynamic multimask, object pointers) are fixed in the model, not configurable.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from typing import Mapping, Optional

import torch

from sam_core.errors import SamError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class Sam2Config:
    """Every size of a SAM 2.1 network. ``image_size`` is the side of the square model input (pixels).

    Hiera: ``embed_dim`` and ``num_heads`` of the first stage (doubled at each later stage), blocks per
    stage (``stages``), blocks with global attention (``global_att_blocks``, counted over all stages),
    window size per stage (``window_spec``), the background size of the windowed positional
    embedding (``pos_embed_size``). ``d_model`` is the neck's and decoder's width; ``mem_dim`` the
    width of memories.
    """

    name: str
    image_size: int = 1024
    # Hiera trunk
    embed_dim: int = 96
    num_heads: int = 1
    stages: tuple[int, ...] = (1, 2, 7, 2)
    global_att_blocks: tuple[int, ...] = (5, 7, 9)
    window_spec: tuple[int, ...] = (8, 4, 14, 7)
    pos_embed_size: tuple[int, int] = (7, 7)
    mlp_ratio: float = 4.0
    # FPN neck: levels with top-down features; levels dropped from the low-resolution end ("scalp")
    d_model: int = 256
    fpn_top_down_levels: tuple[int, ...] = (2, 3)
    scalp: int = 1
    # prompt encoder and mask decoder
    mask_in_chans: int = 16
    decoder_depth: int = 2
    decoder_mlp_dim: int = 2048
    decoder_num_heads: int = 8
    iou_head_depth: int = 3
    iou_head_hidden_dim: int = 256
    num_multimask_outputs: int = 3
    # memory encoder and memory attention
    mem_dim: int = 64
    num_maskmem: int = 7
    mask_downsampler_layers: int = 4
    fuser_layers: int = 2
    fuser_kernel_size: int = 7
    memory_attention_layers: int = 4
    memory_attention_heads: int = 1
    memory_attention_ff_dim: int = 2048
    rope_theta: float = 10000.0

    def __post_init__(self) -> None:
        if len(self.stages) != len(self.window_spec) or len(self.stages) < 3:
            raise SamError(f"config {self.name!r}: give one window size per Hiera stage (at least 3 stages)")
        if self.image_size % self.backbone_stride:
            raise SamError(f"config {self.name!r}: image_size must be a multiple of {self.backbone_stride}")

    @property
    def backbone_stride(self) -> int:
        """Pixels per token of the image embedding (16 officially: 4 at the patch embedding, 2 per pooled stage)."""
        return 4 * 2 ** (len(self.stages) - 1 - self.scalp)

    @property
    def image_embedding_size(self) -> int:
        """Tokens per side of the image embedding (64 for the official models)."""
        return self.image_size // self.backbone_stride

    @property
    def low_res_size(self) -> int:
        """Pixels per side of the low-resolution mask logits and of ``mask_input`` (256 officially)."""
        return 4 * self.image_embedding_size

    def replace(self, **changes) -> "Sam2Config":
        """A copy with some fields changed."""
        return dataclasses.replace(self, **changes)


SAM2_CONFIGS: dict[str, Sam2Config] = {
    "sam2.1_hiera_tiny": Sam2Config(name="sam2.1_hiera_tiny"),
    "sam2.1_hiera_small": Sam2Config(name="sam2.1_hiera_small", stages=(1, 2, 11, 2), global_att_blocks=(7, 10, 13)),
    "sam2.1_hiera_base_plus": Sam2Config(
        name="sam2.1_hiera_base_plus",
        embed_dim=112,
        num_heads=2,
        stages=(2, 3, 16, 3),
        global_att_blocks=(12, 16, 20),
        pos_embed_size=(14, 14),
    ),
    "sam2.1_hiera_large": Sam2Config(
        name="sam2.1_hiera_large",
        embed_dim=144,
        num_heads=2,
        stages=(2, 6, 36, 4),
        global_att_blocks=(23, 33, 43),
        window_spec=(8, 4, 16, 8),
        pos_embed_size=(7, 7),
    ),
    # the project's own small model (sam_core.train.train_demo2): 256-pixel input, 16 x 16 embedding
    "demo2": Sam2Config(
        name="demo2",
        image_size=256,
        embed_dim=32,
        stages=(1, 2, 3, 1),
        global_att_blocks=(5, 6),
        window_spec=(8, 4, 8, 8),
        d_model=64,
        decoder_mlp_dim=256,
        decoder_num_heads=4,
        iou_head_hidden_dim=64,
        mem_dim=32,
        memory_attention_layers=2,
        memory_attention_ff_dim=256,
    ),
}


def is_sam2_state_dict(state_dict: Mapping[str, torch.Tensor]) -> bool:
    """Whether a state dict holds SAM 2 weights (a Hiera trunk and the SAM 2 heads)."""
    return "image_encoder.trunk.patch_embed.proj.weight" in state_dict and any(
        k.startswith("sam_mask_decoder.") for k in state_dict
    )


def _count(state_dict: Mapping[str, torch.Tensor], pattern: str) -> int:
    regex = re.compile(pattern)
    indexes = {int(m.group(1)) for k in state_dict if (m := regex.match(k))}
    return max(indexes) + 1 if indexes else 0


def infer_sam2_config(state_dict: Mapping[str, torch.Tensor], image_size: Optional[int] = None) -> Sam2Config:
    """Recover a :class:`Sam2Config` from the tensor shapes of a SAM 2.1 state dict.

    A known configuration (``SAM2_CONFIGS``) is returned when the shapes match it; otherwise the result
    is named ``"custom"``. Not recoverable from shapes: the trunk's head count, which blocks attend
    globally and the window sizes after the first stage (a custom trunk gets 1 head, windowed attention
    everywhere and windows of 4, 14, 7 tokens), and the input size of a custom network (``image_size``,
    default 1024; a known one keeps its own).
    Raises :class:`SamError` naming the tensor that is missing.
    """
    sd = state_dict
    prefix = "image_encoder.trunk."
    try:
        embed_dim = sd[prefix + "patch_embed.proj.weight"].shape[0]
        depth = _count(sd, r"image_encoder\.trunk\.blocks\.(\d+)\.")
        starts = [0] + [i for i in range(1, depth) if f"{prefix}blocks.{i}.proj.weight" in sd]
        stages = tuple(b - a for a, b in zip(starts, starts[1:] + [depth]))
        pos = sd[prefix + "pos_embed"].shape
        first_window = sd[prefix + "pos_embed_window"].shape[-1]
        mask_convs = _count(sd, r"memory_encoder\.mask_downsampler\.encoder\.(\d+)\.weight")
        out_proj = sd.get("memory_encoder.out_proj.weight")
        d_model = sd["image_encoder.neck.convs.0.conv.weight"].shape[0]
        shapes = dict(
            embed_dim=embed_dim,
            stages=stages,
            pos_embed_size=(pos[-2], pos[-1]),
            mlp_ratio=sd[prefix + "blocks.0.mlp.layers.0.weight"].shape[0] / embed_dim,
            d_model=d_model,
            mask_in_chans=sd["sam_prompt_encoder.mask_downscaling.3.weight"].shape[0],
            decoder_depth=_count(sd, r"sam_mask_decoder\.transformer\.layers\.(\d+)\."),
            decoder_mlp_dim=sd["sam_mask_decoder.transformer.layers.0.mlp.layers.0.weight"].shape[0],
            iou_head_depth=_count(sd, r"sam_mask_decoder\.iou_prediction_head\.layers\.(\d+)\."),
            iou_head_hidden_dim=sd["sam_mask_decoder.iou_prediction_head.layers.0.weight"].shape[0],
            num_multimask_outputs=sd["sam_mask_decoder.mask_tokens.weight"].shape[0] - 1,
            mem_dim=out_proj.shape[0] if out_proj is not None else d_model,
            num_maskmem=sd["maskmem_tpos_enc"].shape[0],
            mask_downsampler_layers=(mask_convs - 1) // 3,
            fuser_layers=_count(sd, r"memory_encoder\.fuser\.layers\.(\d+)\."),
            fuser_kernel_size=sd["memory_encoder.fuser.layers.0.dwconv.weight"].shape[-1],
            memory_attention_layers=_count(sd, r"memory_attention\.layers\.(\d+)\."),
            memory_attention_ff_dim=sd["memory_attention.layers.0.linear1.weight"].shape[0],
        )
    except (KeyError, IndexError, AttributeError) as exc:
        raise SamError(f"not a SAM 2.1 state dict: cannot find the tensor {exc}") from None
    for known in SAM2_CONFIGS.values():  # a known size keeps its own input size unless one is given
        if known.window_spec[0] == first_window and known.replace(**shapes, image_size=known.image_size) == known:
            return known.replace(**shapes, image_size=image_size or known.image_size)
    later_windows = (4, 14, 7, 7, 7, 7)[: len(stages) - 1]
    return Sam2Config(name="custom", window_spec=(first_window, *later_windows), global_att_blocks=(),
                      image_size=image_size or 1024, **shapes)
