"""Random-weight SAM 2.1 checkpoints in the official format, built at test time from Meta's classes.

``official_sam2(config)`` instantiates Meta's ``SAM2Base`` (the classes and settings of the official
``sam2.1_hiera_*.yaml``, with the sizes of any :class:`Sam2Config`, so small test models run the
official code too). ``write_official_sam2_checkpoint`` randomizes every parameter, the constant ones
included (positional and no-memory embeddings, layer scales, norms), and saves ``{"model": sd}`` as
the official files do. ``official_image_predictor`` wraps a model in ``SAM2ImagePredictor``.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from helpers.checkpoints import randomize_constants
from helpers.official import sam2
from sam_core.models.sam2 import Sam2Config

# Small SAM 2.1: 256 px input, Hiera of width 16 with four stages (grids 64, 32, 16, 8), a 16 x 16
# image embedding of width 32. Stage 2's window (6) does not divide its grid (16): windows are padded.
SMALL_SAM2 = Sam2Config(
    name="small_sam2",
    image_size=256,
    embed_dim=16,
    num_heads=1,
    stages=(1, 1, 2, 1),
    global_att_blocks=(3,),
    window_spec=(8, 4, 6, 2),
    pos_embed_size=(7, 7),
    d_model=32,
    mem_dim=16,
    memory_attention_layers=2,
    memory_attention_ff_dim=64,
)


def official_sam2(config: Sam2Config, cls: type | None = None, **extra) -> nn.Module:
    """Meta's SAM2Base (or ``cls``, e.g. ``SAM2VideoPredictor``, with ``extra`` settings) for ``config``,
    as the sam2.1 yaml files build it (with the image predictor's dynamic multimask settings), eval
    mode. The decoder's sizes are fixed by SAM2Base."""
    sam2()
    from sam2.modeling.backbones.hieradet import Hiera
    from sam2.modeling.backbones.image_encoder import FpnNeck, ImageEncoder
    from sam2.modeling.memory_attention import MemoryAttention, MemoryAttentionLayer
    from sam2.modeling.memory_encoder import CXBlock, Fuser, MaskDownSampler, MemoryEncoder
    from sam2.modeling.position_encoding import PositionEmbeddingSine
    from sam2.modeling.sam.transformer import RoPEAttention
    from sam2.modeling.sam2_base import SAM2Base

    d, mem, side = config.d_model, config.mem_dim, config.image_embedding_size
    trunk = Hiera(
        embed_dim=config.embed_dim,
        num_heads=config.num_heads,
        stages=list(config.stages),
        global_att_blocks=list(config.global_att_blocks),
        window_pos_embed_bkg_spatial_size=list(config.pos_embed_size),
        window_spec=list(config.window_spec),
    )
    neck = FpnNeck(
        position_encoding=PositionEmbeddingSine(num_pos_feats=d, normalize=True, scale=None, temperature=10000),
        d_model=d,
        backbone_channel_list=trunk.channel_list,
        fpn_top_down_levels=list(config.fpn_top_down_levels),
        fpn_interp_model="nearest",
    )

    def rope(**kwargs) -> nn.Module:
        return RoPEAttention(rope_theta=config.rope_theta, feat_sizes=[side, side], embedding_dim=d,
                             num_heads=config.memory_attention_heads, downsample_rate=1, dropout=0.1, **kwargs)

    layer = MemoryAttentionLayer(
        activation="relu",
        dim_feedforward=config.memory_attention_ff_dim,
        dropout=0.1,
        pos_enc_at_attn=False,
        self_attention=rope(),
        d_model=d,
        pos_enc_at_cross_attn_keys=True,
        pos_enc_at_cross_attn_queries=False,
        cross_attention=rope(rope_k_repeat=True, kv_in_dim=mem),
    )
    memory_encoder = MemoryEncoder(
        out_dim=mem,
        position_encoding=PositionEmbeddingSine(num_pos_feats=mem, normalize=True, scale=None, temperature=10000),
        mask_downsampler=MaskDownSampler(embed_dim=d, kernel_size=3, stride=2, padding=1,
                                         total_stride=2 ** config.mask_downsampler_layers),
        fuser=Fuser(CXBlock(dim=d, kernel_size=config.fuser_kernel_size, padding=config.fuser_kernel_size // 2,
                            layer_scale_init_value=1e-6, use_dwconv=True), num_layers=config.fuser_layers),
        in_dim=d,
    )
    model = (cls or SAM2Base)(
        image_encoder=ImageEncoder(trunk=trunk, neck=neck, scalp=config.scalp),
        memory_attention=MemoryAttention(d_model=d, pos_enc_at_input=True, layer=layer,
                                         num_layers=config.memory_attention_layers),
        memory_encoder=memory_encoder,
        num_maskmem=config.num_maskmem,
        image_size=config.image_size,
        sigmoid_scale_for_mem_enc=20.0,
        sigmoid_bias_for_mem_enc=-10.0,
        use_mask_input_as_output_without_sam=True,
        directly_add_no_mem_embed=True,
        no_obj_embed_spatial=True,
        use_high_res_features_in_sam=True,
        multimask_output_in_sam=True,
        iou_prediction_use_sigmoid=True,
        use_obj_ptrs_in_encoder=True,
        add_tpos_enc_to_obj_ptrs=True,
        proj_tpos_enc_in_obj_ptrs=True,
        use_signed_tpos_enc_to_obj_ptrs=True,
        only_obj_ptrs_in_the_past_for_eval=True,
        pred_obj_scores=True,
        pred_obj_scores_mlp=True,
        fixed_no_obj_ptr=True,
        multimask_output_for_tracking=True,
        use_multimask_token_for_obj_ptr=True,
        multimask_min_pt_num=0,
        multimask_max_pt_num=1,
        use_mlp_for_obj_ptr_proj=True,
        compile_image_encoder=False,
        sam_mask_decoder_extra_args={
            "dynamic_multimask_via_stability": True,
            "dynamic_multimask_stability_delta": 0.05,
            "dynamic_multimask_stability_thresh": 0.98,
        },
        **extra,
    )
    return model.eval()


def write_official_sam2_checkpoint(config: Sam2Config, path: Path | str, seed: int = 0) -> Path:
    """Save ``{"model": state_dict}`` of the randomized official model for ``config``."""
    torch.manual_seed(seed)
    model = randomize_constants(official_sam2(config), seed)
    path = Path(path)
    torch.save({"model": model.state_dict()}, path)
    return path


def spread_object_scores(path: Path | str, scale: float = 30.0, shift: float = 40.9) -> Path:
    """Rewrite a random checkpoint so that its object-score head reports objects present on some
    frames and absent on others (random weights alone give scores of about -1.3 everywhere): the
    head's last layer times ``scale``, its bias times ``scale`` plus ``shift``."""
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    head = "sam_mask_decoder.pred_obj_score_head.layers.2."
    checkpoint["model"][head + "weight"] *= scale
    checkpoint["model"][head + "bias"] = checkpoint["model"][head + "bias"] * scale + shift
    torch.save(checkpoint, path)
    return Path(path)


def load_official_sam2(config: Sam2Config, checkpoint: Path | str) -> nn.Module:
    """The official model for ``config`` with the weights of ``checkpoint``, eval mode."""
    model = official_sam2(config)
    model.load_state_dict(torch.load(checkpoint, map_location="cpu", weights_only=True)["model"])
    return model.eval()


def official_video_predictor(config: Sam2Config, checkpoint: Path | str, **extra) -> nn.Module:
    """Meta's ``SAM2VideoPredictor`` for ``config`` with the weights of ``checkpoint``, with the
    settings ``build_sam2_video_predictor`` adds (binarized prompted masks for memory, hole filling of
    8 pixels, which is skipped with a warning without sam2's CUDA extension) and ``extra``."""
    sam2()
    from sam2.sam2_video_predictor import SAM2VideoPredictor

    settings = {"binarize_mask_from_pts_for_mem_enc": True, "fill_hole_area": 8, **extra}
    model = official_sam2(config, SAM2VideoPredictor, **settings)
    model.load_state_dict(torch.load(checkpoint, map_location="cpu", weights_only=True)["model"])
    return model.eval()


def official_image_predictor(model: nn.Module):
    """Meta's ``SAM2ImagePredictor`` on ``model``, its feature sizes set from the model's input size
    (the class hard-codes those of 1024 px)."""
    sam2()
    from sam2.sam2_image_predictor import SAM2ImagePredictor

    predictor = SAM2ImagePredictor(model)
    side = model.image_size // 16
    predictor._bb_feat_sizes = [(4 * side, 4 * side), (2 * side, 2 * side), (side, side)]
    return predictor


def official_mask_generator(model: nn.Module, **kwargs):
    """Meta's ``SAM2AutomaticMaskGenerator`` on ``model`` (its image predictor's feature sizes set from
    the model's input size, as in :func:`official_image_predictor`)."""
    sam2()
    from sam2.automatic_mask_generator import SAM2AutomaticMaskGenerator

    generator = SAM2AutomaticMaskGenerator(model, **kwargs)
    side = model.image_size // 16
    generator.predictor._bb_feat_sizes = [(4 * side, 4 * side), (2 * side, 2 * side), (side, side)]
    return generator
