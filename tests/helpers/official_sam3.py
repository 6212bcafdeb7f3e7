"""Meta's ``sam3`` package (test-only), imported with the torchvision/timm/triton stand-ins on sys.path."""

from __future__ import annotations

import sys
import types

from helpers.official import _install_shims as _install_torchvision_timm_shims


def _install_shims() -> None:
    """The torchvision/timm stand-ins, plus a stand-in ``sam3.model.edt``: the real one imports triton
    at module level for a kernel only SAM 3's video tracker uses (a ``triton`` stand-in would not do:
    torch's own compiler imports triton when it is importable)."""
    _install_torchvision_timm_shims()
    if "sam3.model.edt" not in sys.modules:
        edt = types.ModuleType("sam3.model.edt")

        def edt_triton(*args, **kwargs):
            raise RuntimeError("sam3.model.edt (triton) is not available in the tests")

        edt.edt_triton = edt_triton
        sys.modules["sam3.model.edt"] = edt


def sam3_tokenizer():
    """The reference tokenizer (``sam3.model.tokenizer_ve.SimpleTokenizer``) on our shipped vocabulary."""
    _install_shims()
    from sam3.model.tokenizer_ve import SimpleTokenizer

    from sam_core.models.sam3.tokenizer import VOCAB_PATH

    return SimpleTokenizer(bpe_path=str(VOCAB_PATH))


# ---------------------------------------------------------------------------------------------------
# the reference image model at any size

import contextlib  # noqa: E402
import math  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402
from torch import nn  # noqa: E402

from sam_core.models.sam3.config import Sam3Config  # noqa: E402

# A small SAM 3: 112-pixel input, an 8x8 grid, windows of 4 with one global block; everything at
# d_model 64 with 2 heads; 30 queries.
SMALL_SAM3 = Sam3Config(
    name="small_sam3",
    image_size=112,
    patch_size=14,
    pretrain_size=56,
    vit_dim=32,
    vit_depth=2,
    vit_heads=2,
    vit_mlp_dim=148,
    window_size=4,
    global_blocks=(1,),
    d_model=64,
    heads=2,
    ffn_dim=96,
    text_width=64,
    text_layers=2,
    text_heads=1,
    text_projection_dim=48,
    context_length=32,
    encoder_layers=2,
    decoder_layers=2,
    num_queries=30,
    geometry_layers=1,
    scoring_hidden=96,
    pixel_decoder_stages=3,
)


def official_sam3(config: Sam3Config) -> nn.Module:
    """The reference ``Sam3Image`` built directly from its classes with ``config``'s sizes, as
    ``sam3.model_builder.build_sam3_image_model`` builds the official one (no tracker). The position
    encodings get no CUDA precompute and the decoder no CUDA coordinate cache (both are caches of
    values computed the same way on first use)."""
    _install_shims()
    from sam3.model.decoder import TransformerDecoder, TransformerDecoderLayer
    from sam3.model.encoder import TransformerEncoderFusion, TransformerEncoderLayer
    from sam3.model.geometry_encoders import SequenceGeometryEncoder
    from sam3.model.maskformer_segmentation import PixelDecoder, UniversalSegmentationHead
    from sam3.model.model_misc import MLP, DotProductScoring, TransformerWrapper
    from sam3.model.model_misc import MultiheadAttentionWrapper as MHA
    from sam3.model.necks import Sam3DualViTDetNeck
    from sam3.model.position_encoding import PositionEmbeddingSine
    from sam3.model.sam3_image import Sam3Image
    from sam3.model.text_encoder_ve import VETextEncoder
    from sam3.model.tokenizer_ve import SimpleTokenizer
    from sam3.model.vitdet import ViT
    from sam3.model.vl_combiner import SAM3VLBackbone

    from sam_core.models.sam3.tokenizer import VOCAB_PATH

    c = config
    d = c.d_model

    def sine():
        return PositionEmbeddingSine(num_pos_feats=d, normalize=True, scale=None, temperature=10000)

    vit = ViT(img_size=c.image_size, pretrain_img_size=c.pretrain_size, patch_size=c.patch_size,
              embed_dim=c.vit_dim, depth=c.vit_depth, num_heads=c.vit_heads, mlp_ratio=c.vit_mlp_dim / c.vit_dim,
              norm_layer="LayerNorm", drop_path_rate=0.1, qkv_bias=True, use_abs_pos=True, tile_abs_pos=True,
              global_att_blocks=c.global_blocks, rel_pos_blocks=(), use_rope=True, use_interp_rope=True,
              window_size=c.window_size, pretrain_use_cls_token=True, retain_cls_token=False, ln_pre=True,
              ln_post=False, return_interm_layers=False, bias_patch_embed=False)
    neck = Sam3DualViTDetNeck(position_encoding=sine(), d_model=d, scale_factors=[4.0, 2.0, 1.0, 0.5], trunk=vit,
                              add_sam2_neck=False)
    text = VETextEncoder(tokenizer=SimpleTokenizer(bpe_path=str(VOCAB_PATH)), d_model=d, width=c.text_width,
                         heads=c.text_heads, layers=c.text_layers, context_length=c.context_length,
                         vocab_size=c.vocab_size)
    text.encoder.text_projection = nn.Parameter(torch.empty(c.text_width, c.text_projection_dim))
    backbone = SAM3VLBackbone(visual=neck, text=text, scalp=1)

    encoder_layer = TransformerEncoderLayer(
        activation="relu", d_model=d, dim_feedforward=c.ffn_dim, dropout=0.1, pos_enc_at_attn=True,
        pos_enc_at_cross_attn_keys=False, pos_enc_at_cross_attn_queries=False, pre_norm=True,
        self_attention=MHA(num_heads=c.heads, dropout=0.1, embed_dim=d, batch_first=True),
        cross_attention=MHA(num_heads=c.heads, dropout=0.1, embed_dim=d, batch_first=True))
    encoder = TransformerEncoderFusion(layer=encoder_layer, num_layers=c.encoder_layers, d_model=d,
                                       num_feature_levels=1, frozen=False, use_act_checkpoint=True,
                                       add_pooled_text_to_img_feat=False, pool_text_with_mask=True)
    decoder_layer = TransformerDecoderLayer(
        activation="relu", d_model=d, dim_feedforward=c.ffn_dim, dropout=0.1,
        cross_attention=MHA(num_heads=c.heads, dropout=0.1, embed_dim=d), n_heads=c.heads,
        use_text_cross_attention=True)
    decoder = TransformerDecoder(layer=decoder_layer, num_layers=c.decoder_layers, num_queries=c.num_queries,
                                 return_intermediate=True, box_refine=True, num_o2m_queries=0, dac=True,
                                 boxRPB="log", d_model=d, frozen=False, interaction_layer=None,
                                 dac_use_selfatt_ln=True, resolution=None, stride=None, use_act_checkpoint=True,
                                 presence_token=True)
    transformer = TransformerWrapper(encoder=encoder, decoder=decoder, d_model=d)
    scoring = DotProductScoring(d_model=d, d_proj=d, prompt_mlp=MLP(
        input_dim=d, hidden_dim=c.scoring_hidden, output_dim=d, num_layers=2, dropout=0.1, residual=True,
        out_norm=nn.LayerNorm(d)))
    segmentation = UniversalSegmentationHead(
        hidden_dim=d, upsampling_stages=c.pixel_decoder_stages, aux_masks=False, presence_head=False,
        dot_product_scorer=None, act_ckpt=True, cross_attend_prompt=MHA(num_heads=c.heads, dropout=0, embed_dim=d),
        pixel_decoder=PixelDecoder(num_upsampling_stages=c.pixel_decoder_stages, interpolation_mode="nearest",
                                   hidden_dim=d))
    geo_layer = TransformerEncoderLayer(
        activation="relu", d_model=d, dim_feedforward=c.ffn_dim, dropout=0.1, pos_enc_at_attn=False, pre_norm=True,
        self_attention=MHA(num_heads=c.heads, dropout=0.1, embed_dim=d, batch_first=False),
        pos_enc_at_cross_attn_queries=False, pos_enc_at_cross_attn_keys=True,
        cross_attention=MHA(num_heads=c.heads, dropout=0.1, embed_dim=d, batch_first=False))
    geometry = SequenceGeometryEncoder(
        pos_enc=sine(), encode_boxes_as_points=False, points_direct_project=True, points_pool=True,
        points_pos_enc=True, boxes_direct_project=True, boxes_pool=True, boxes_pos_enc=True, d_model=d,
        num_layers=c.geometry_layers, layer=geo_layer, use_act_ckpt=True, add_cls=True, add_post_encode_proj=True)
    model = Sam3Image(backbone=backbone, transformer=transformer, input_geometry_encoder=geometry,
                      segmentation_head=segmentation, num_feature_levels=1, o2m_mask_predict=True,
                      dot_prod_scoring=scoring, use_instance_query=False, multimask_output=True,
                      inst_interactive_predictor=None, matcher=None)
    return model.eval()


_NORMS = (nn.LayerNorm, nn.GroupNorm)


def randomize_sam3(model: nn.Module, seed: int = 0) -> nn.Module:
    """Seeded random values in every floating parameter (complex rotary tables stay as built):
    linear/conv weights and biases uniform with variance 1/fan_in, norm weights in [0.5, 1.5] and
    biases in [-0.2, 0.2], embeddings N(0, 1), position tables N(0, 0.2^2). This fills the text
    encoder's ``positional_embedding`` and ``text_projection`` (left uninitialised by the builder)
    and the decoder's zero-initialised last box layer."""
    generator = torch.Generator().manual_seed(seed)
    modules = dict(model.named_modules())
    with torch.no_grad():
        for name, tensor in model.state_dict(keep_vars=True).items():
            if not tensor.is_floating_point():
                continue
            owner_name, _, leaf = name.rpartition(".")
            owner = modules[owner_name]
            shape = tensor.shape
            if isinstance(owner, _NORMS):
                values = 0.5 + torch.rand(shape, generator=generator) if leaf == "weight" else \
                    (torch.rand(shape, generator=generator) * 2 - 1) * 0.2
            elif isinstance(owner, nn.Embedding):
                values = torch.randn(shape, generator=generator)
            elif leaf in ("pos_embed", "positional_embedding"):
                values = torch.randn(shape, generator=generator) * 0.2
            else:
                fan_in = shape[-1] if leaf in ("text_projection",) else None
                if fan_in is None:
                    if leaf.endswith("bias"):
                        weight = getattr(owner, leaf.replace("bias", "weight"))
                        fan_in = math.prod(weight.shape[1:])
                    else:
                        fan_in = math.prod(shape[1:])
                bound = math.sqrt(3 / max(fan_in, 1))
                values = (torch.rand(shape, generator=generator) * 2 - 1) * bound
            tensor.copy_(values.to(tensor.dtype))
    return model.eval()


def write_sam3_checkpoint(config: Sam3Config, path, seed: int = 0, official_layout: bool = True) -> Path:
    """Save the randomized reference model's weights; ``official_layout`` prefixes the keys with
    ``detector.`` as in the official ``sam3.pt`` (whose tensors sit under a ``model`` key)."""
    torch.manual_seed(seed)
    model = randomize_sam3(official_sam3(config), seed)
    state = model.state_dict()
    if official_layout:
        state = {"model": {f"detector.{k}": v for k, v in state.items()}}
    path = Path(path)
    torch.save(state, path)
    return path


def sam3_processor_class():
    """The reference ``Sam3Processor`` class (sam3 imported with the stand-ins)."""
    _install_shims()
    from sam3.model.sam3_image_processor import Sam3Processor

    return Sam3Processor


@contextlib.contextmanager
def cpu_only():
    """While inside: ``Tensor.pin_memory`` returns the tensor (sam3 pins box scales for a CUDA copy;
    pinning needs CUDA)."""
    original = torch.Tensor.pin_memory
    torch.Tensor.pin_memory = lambda self, *args, **kwargs: self
    try:
        yield
    finally:
        torch.Tensor.pin_memory = original
