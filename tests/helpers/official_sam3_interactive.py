"""Meta's SAM 3 with its interactive head (test-only): ``Sam3Image`` with the tracker's neck and a
``SAM3InteractiveImagePredictor`` around a ``Sam3TrackerBase``, as ``build_sam3_image_model(
enable_inst_interactivity=True)`` builds it, at any size; and random-weight checkpoints in the
official ``sam3.pt`` layout (``detector.*`` and ``tracker.*``)."""

from __future__ import annotations

import copy
from pathlib import Path

import torch
from torch import nn

from helpers.official_sam3 import _install_shims, official_sam3, randomize_sam3
from sam_core.models.sam3.config import Sam3Config

TRACKER_IN_IMAGE_MODEL = "inst_interactive_predictor.model."


def official_tracker(config: Sam3Config) -> nn.Module:
    """The reference tracker (``Sam3TrackerBase``) at ``config``'s width, built as ``build_tracker``
    builds it (its SAM heads' sizes are fixed in the class) with smaller memory parts."""
    _install_shims()
    from sam3.model.decoder import TransformerDecoderLayerv2, TransformerEncoderCrossAttention
    from sam3.model.memory import CXBlock, SimpleFuser, SimpleMaskDownSampler, SimpleMaskEncoder
    from sam3.model.model_misc import TransformerWrapper
    from sam3.model.position_encoding import PositionEmbeddingSine
    from sam3.model.sam3_tracker_base import Sam3TrackerBase
    from sam3.sam.transformer import RoPEAttention

    d = config.d_model
    mem = d // 2
    grid = config.grid
    maskmem = SimpleMaskEncoder(
        out_dim=mem, in_dim=d,
        position_encoding=PositionEmbeddingSine(num_pos_feats=mem, normalize=True, scale=None, temperature=10000),
        mask_downsampler=SimpleMaskDownSampler(embed_dim=d, kernel_size=3, stride=2, padding=1,
                                               interpol_size=[grid * 16, grid * 16]),
        fuser=SimpleFuser(layer=CXBlock(dim=d, kernel_size=7, padding=3, layer_scale_init_value=1.0e-06,
                                        use_dwconv=True), num_layers=1))
    layer = TransformerDecoderLayerv2(
        cross_attention_first=False, activation="relu", dim_feedforward=2 * d, dropout=0.1, pos_enc_at_attn=False,
        pre_norm=True, d_model=d, pos_enc_at_cross_attn_keys=True, pos_enc_at_cross_attn_queries=False,
        self_attention=RoPEAttention(embedding_dim=d, num_heads=1, downsample_rate=1, dropout=0.1,
                                     rope_theta=10000.0, feat_sizes=[grid, grid]),
        cross_attention=RoPEAttention(embedding_dim=d, num_heads=1, downsample_rate=1, dropout=0.1, kv_in_dim=mem,
                                      rope_theta=10000.0, feat_sizes=[grid, grid], rope_k_repeat=True))
    encoder = TransformerEncoderCrossAttention(remove_cross_attention_layers=[], batch_first=True, d_model=d,
                                               frozen=False, pos_enc_at_input=True, layer=layer, num_layers=1,
                                               use_act_checkpoint=False)
    return Sam3TrackerBase(
        backbone=None, transformer=TransformerWrapper(encoder=encoder, decoder=None, d_model=d),
        maskmem_backbone=maskmem, num_maskmem=7, image_size=config.image_size, backbone_stride=config.patch_size,
        multimask_output_in_sam=True, multimask_output_for_tracking=True, multimask_min_pt_num=0,
        multimask_max_pt_num=1, max_cond_frames_in_attn=4,
        sam_mask_decoder_extra_args={"dynamic_multimask_via_stability": True,
                                     "dynamic_multimask_stability_delta": 0.05,
                                     "dynamic_multimask_stability_thresh": 0.98})


def official_sam3_interactive(config: Sam3Config) -> nn.Module:
    """The reference ``Sam3Image`` with the tracker's neck (a copy of the detector's, as
    ``add_sam2_neck=True`` makes it) and ``inst_interactive_predictor``; its feature sizes set to
    ``config``'s grid (the class fixes the official 288, 144, 72)."""
    _install_shims()
    from sam3.model.sam1_task_predictor import SAM3InteractiveImagePredictor

    model = official_sam3(config)
    neck = model.backbone.vision_backbone
    neck.sam2_convs = copy.deepcopy(neck.convs)
    predictor = SAM3InteractiveImagePredictor(official_tracker(config))
    g = config.grid
    predictor._bb_feat_sizes = [(4 * g, 4 * g), (2 * g, 2 * g), (g, g)]
    model.inst_interactive_predictor = predictor
    return model.eval()


def official_layout(state: dict[str, torch.Tensor], tracker: bool = True) -> dict[str, torch.Tensor]:
    """An image model's state dict as ``sam3.pt`` holds it: ``detector.*`` and, with ``tracker``,
    ``tracker.*`` (without: a detector-only file, the tracker's neck dropped too)."""
    out = {}
    for key, value in state.items():
        if key.startswith(TRACKER_IN_IMAGE_MODEL):
            if tracker:
                out["tracker." + key[len(TRACKER_IN_IMAGE_MODEL):]] = value
        elif tracker or ".sam2_convs." not in key:
            out["detector." + key] = value
    return out


def write_sam3_interactive_checkpoint(config: Sam3Config, path, seed: int = 0, tracker: bool = True) -> Path:
    """Seeded random weights of the reference model with its interactive head, saved as ``sam3.pt``
    is (``{"model": {...}}``)."""
    torch.manual_seed(seed)
    model = randomize_sam3(official_sam3_interactive(config), seed)
    path = Path(path)
    torch.save({"model": official_layout(model.state_dict(), tracker)}, path)
    return path


def load_official(config: Sam3Config, path) -> nn.Module:
    """The reference model with a checkpoint's weights, mapped as the official ``_load_checkpoint``
    maps them (``detector.`` stripped, ``tracker.`` -> ``inst_interactive_predictor.model.``)."""
    model = official_sam3_interactive(config)
    state = torch.load(path, map_location="cpu", weights_only=True)["model"]
    mapped = {k.replace("detector.", ""): v for k, v in state.items() if "detector" in k}
    mapped.update({k.replace("tracker.", TRACKER_IN_IMAGE_MODEL): v for k, v in state.items() if "tracker" in k})
    missing, unexpected = model.load_state_dict(mapped, strict=False)
    assert not unexpected, unexpected[:5]
    assert all("freqs_cis" in k for k in missing), missing[:5]
    return model.eval()
