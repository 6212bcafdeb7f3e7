"""One step of SAM 2.1's tracking with memory (the official ``SAM2Base.track_step``): a frame's features
conditioned on the memories and object pointers of frames already processed, the SAM heads on them,
and the frame's own memory for later frames.

This is the network-level building block of propagation; choosing frames, reading them and keeping
their memories bounded belong to the propagation module that drives it. Frame indexes are integers;
``reverse`` is True when tracking towards lower indexes. Tensors are batch first (B = objects).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Optional

import torch
import torch.nn.functional as F

from sam_core.models.sam2.model import Sam2

# the official evaluation settings of SAM 2.1 (sam2.1_hiera_*.yaml): object pointers of at most 16 frames
MAX_OBJECT_POINTERS = 16
# logits given to a mask prompt used as the output as it is (the official out_scale, out_bias)
MASK_AS_OUTPUT_SCALE, MASK_AS_OUTPUT_BIAS = 20.0, -10.0


@dataclass
class FrameFeatures:
    """A frame through the image encoder (:meth:`Sam2.backbone`): ``high_res`` the stride-4 and stride-8
    maps after ``conv_s0`` / ``conv_s1``, ``pix_feat`` the stride-16 features (B, C, h, w) without the
    no-memory embedding, ``pos`` their sine positional encoding (1, C, h, w)."""

    high_res: tuple[torch.Tensor, torch.Tensor]
    pix_feat: torch.Tensor
    pos: torch.Tensor


@dataclass
class FrameState:
    """What tracking keeps of a processed frame: ``mask_logits`` (B, 1, low, low), ``mask_logits_full``
    (B, 1, S, S) (model-input size), ``object_pointer`` (B, C), ``object_score_logits`` (B, 1; > 0:
    the object is present), ``memory`` and ``memory_pos`` (B, mem_dim, h, w)."""

    mask_logits: torch.Tensor
    mask_logits_full: torch.Tensor
    object_pointer: torch.Tensor
    object_score_logits: torch.Tensor
    memory: torch.Tensor
    memory_pos: torch.Tensor


def frame_features(model: Sam2, image: torch.Tensor) -> FrameFeatures:
    """A (B, 3, S, S) model input -> its :class:`FrameFeatures`."""
    levels = model.backbone(image)
    pix_feat = levels[-1]
    pos = model.position_encoding(pix_feat.shape[-2], pix_feat.shape[-1]).to(pix_feat.dtype)
    return FrameFeatures(high_res=(levels[0], levels[1]), pix_feat=pix_feat, pos=pos)


def sine_1d(positions: torch.Tensor, dim: int, temperature: float = 10000.0) -> torch.Tensor:
    """1-D sine/cosine encoding (N, dim) of (N,) positions (the official ``get_1d_sine_pe``)."""
    half = dim // 2
    dim_t = torch.arange(half, dtype=torch.float32, device=positions.device)
    dim_t = temperature ** (2 * (dim_t // 2) / half)
    angles = positions.unsqueeze(-1) / dim_t
    return torch.cat([angles.sin(), angles.cos()], dim=-1)


def condition_on_memory(model: Sam2, frame_idx: int, features: FrameFeatures, cond: Mapping[int, FrameState],
                        tracked: Mapping[int, FrameState], num_frames: int, reverse: bool = False) -> torch.Tensor:
    """The frame's stride-16 features (B, C, h, w) after memory attention to: every prompted
    (conditioning) frame in ``cond``, the ``num_maskmem - 1`` frames just before it in tracking order
    (from ``tracked``), and the object pointers of the prompted frames not after it and of up to 15
    tracked frames before it, with their temporal encodings."""
    pix_feat = features.pix_feat
    batch, channels, h, w = pix_feat.shape
    n_mem = model.config.num_maskmem
    step = -1 if reverse else 1
    memories, memory_pos = [], []
    entries = [(0, state) for state in cond.values()]
    entries += [(t_pos, tracked.get(frame_idx - (n_mem - t_pos) * step)) for t_pos in range(1, n_mem)]
    for t_pos, state in entries:
        if state is None:
            continue
        memories.append(state.memory.flatten(2).transpose(1, 2).to(pix_feat.dtype))  # stored in bf16 by propagation
        pos = state.memory_pos.flatten(2).transpose(1, 2) + model.maskmem_tpos_enc[n_mem - t_pos - 1].view(1, 1, -1)
        memory_pos.append(pos)

    max_pointers = min(num_frames, MAX_OBJECT_POINTERS)
    pointers = [((frame_idx - t) * step, state.object_pointer) for t, state in cond.items()
                if (t >= frame_idx if reverse else t <= frame_idx)]
    for distance in range(1, max_pointers):
        t = frame_idx - distance * step
        if t < 0 or t >= num_frames:
            break
        if t in tracked:
            pointers.append((distance, tracked[t].object_pointer))
    num_pointer_tokens = 0
    if pointers:
        mem_dim = model.config.mem_dim
        distances = torch.tensor([d for d, _ in pointers], device=pix_feat.device)
        ptrs = torch.stack([p for _, p in pointers], dim=1)  # (B, N, C)
        ptr_pos = model.obj_ptr_tpos_proj(sine_1d(distances / (max_pointers - 1), channels))  # (N, mem_dim)
        ptr_pos = ptr_pos.unsqueeze(0).expand(batch, -1, -1)
        if mem_dim < channels:  # each pointer is split into C / mem_dim tokens
            split = channels // mem_dim
            ptrs = ptrs.reshape(batch, -1, split, mem_dim).flatten(1, 2)
            ptr_pos = ptr_pos.repeat_interleave(split, dim=1)
        memories.append(ptrs)
        memory_pos.append(ptr_pos)
        num_pointer_tokens = ptrs.shape[1]

    curr = pix_feat.flatten(2).transpose(1, 2)
    curr_pos = features.pos.flatten(2).transpose(1, 2).expand(batch, -1, -1)
    out = model.memory_attention(curr, torch.cat(memories, dim=1), curr_pos, torch.cat(memory_pos, dim=1),
                                 num_obj_ptr_tokens=num_pointer_tokens)
    return out.transpose(1, 2).reshape(batch, channels, h, w)


def track_step(model: Sam2, frame_idx: int, features: FrameFeatures, cond: Mapping[int, FrameState],
               tracked: Mapping[int, FrameState], num_frames: int, *, first_prompted: bool = False,
               point_coords: Optional[torch.Tensor] = None, point_labels: Optional[torch.Tensor] = None,
               mask_input: Optional[torch.Tensor] = None, reverse: bool = False,
               previous_mask_logits: Optional[torch.Tensor] = None) -> FrameState:
    """One frame of tracking, as the official ``track_step`` (with its memory encoder run).

    ``first_prompted``: the frame is a prompted frame with no memory before it (its features get the
    no-memory embedding instead of memory attention). Prompts: points (B, P, 2) in model-input pixels
    with labels (B, P) (1, 0, 2 / 3 for box corners), or a mask (B, 1, H, W) used as the output as it
    is. ``previous_mask_logits`` (B, 1, low, low): a correction's earlier logits, given with points.
    A frame tracked without prompts gives three candidates and keeps the best by predicted IoU.
    """
    if mask_input is not None:
        low, full, pointer, scores = _mask_as_output(model, features, mask_input)
    else:
        if first_prompted:
            pix = features.pix_feat + model.no_mem_embed.view(1, -1, 1, 1)
        else:
            pix = condition_on_memory(model, frame_idx, features, cond, tracked, num_frames, reverse)
        points = 0 if point_labels is None else point_labels.shape[1]
        heads = model.forward_heads(pix, features.high_res, point_coords, point_labels, previous_mask_logits,
                                    multimask=points <= 1)
        low, pointer, scores = heads.best, heads.object_pointer, heads.object_score_logits
        full = F.interpolate(low, size=(model.image_size, model.image_size), mode="bilinear", align_corners=False)
    memory, memory_pos = model.encode_memory(features.pix_feat, full, scores)
    return FrameState(low, full, pointer, scores, memory, memory_pos)


def _mask_as_output(model: Sam2, features: FrameFeatures, mask: torch.Tensor
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """A (B, 1, S, S) mask prompt taken as the frame's output (the official ``_use_mask_as_output``):
    logits +-10 (low-resolution and full), the object pointer decoded from the mask, the object present
    where the mask has a pixel."""
    full = mask.float() * MASK_AS_OUTPUT_SCALE + MASK_AS_OUTPUT_BIAS
    low = F.interpolate(full, size=(full.shape[-2] // 4, full.shape[-1] // 4), align_corners=False, mode="bilinear",
                        antialias=True)
    heads = model.forward_heads(features.pix_feat, features.high_res, mask_inputs=model.mask_downsample(mask.float()))
    present = torch.any(mask.flatten(1).float() > 0.0, dim=1)[..., None].float()
    scores = MASK_AS_OUTPUT_SCALE * present + MASK_AS_OUTPUT_BIAS
    pointer = present * heads.object_pointer + (1 - present) * model.no_obj_ptr
    return low, full, pointer, scores
