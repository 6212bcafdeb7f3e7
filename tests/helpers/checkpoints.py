"""Random-weight checkpoints in the official format, built at test time, and the reference models.

``write_official_checkpoint(config, path)`` builds the REFERENCE network (Meta's ``segment_anything``
for ViT configurations, ``mobile_sam`` for TinyViT) of any :class:`SamConfig`, fills every parameter
and buffer with seeded random values of a sensible scale (``randomize_constants``: the official
builders leave positional embeddings, relative-position tables, TinyViT attention biases, norms and
BatchNorm statistics constant, which parity tests would then never exercise) and saves its state dict.
"""

from __future__ import annotations

import math
from functools import partial
from pathlib import Path

import torch
from torch import nn

from helpers.official import mobile_sam, segment_anything
from sam_core.models import SamConfig, build_sam, load_checkpoint

# Small ViT: 128 px input, 8x8 embedding, one windowed and one global block.
SMALL_VIT = SamConfig(
    name="small_vit",
    image_size=128,
    patch_size=16,
    embed_dim=32,
    depth=2,
    num_heads=2,
    global_attn_indexes=(1,),
    window_size=4,
    prompt_embed_dim=32,
    decoder_mlp_dim=64,
    iou_head_hidden_dim=32,
)

# Small TinyViT: 128 px input, 8x8 embedding. The reference TinyViT strides its last patch merging by 1
# only when the last width is 320, 448 or 576, so the last width is 320 here.
SMALL_TINY_VIT = SamConfig(
    name="small_tiny_vit",
    encoder="tiny_vit",
    image_size=128,
    tiny_embed_dims=(16, 32, 64, 320),
    tiny_depths=(1, 1, 2, 1),
    tiny_num_heads=(1, 2, 4, 10),
    tiny_window_sizes=(7, 4, 8, 4),
    tiny_num_classes=10,
    prompt_embed_dim=32,
    decoder_mlp_dim=64,
    iou_head_hidden_dim=32,
)


def _official_tiny_vit(config: SamConfig) -> nn.Module:
    ms = mobile_sam()
    from mobile_sam.modeling.tiny_vit_sam import LayerNorm2d, TinyViT

    class AnySizeTinyViT(TinyViT):
        """The reference TinyViT with its two hard-coded sizes (a 64x64 output grid, a 256-channel
        neck) taken from the configuration instead; everything else is the reference code."""

        def __init__(self, grid: int, out_chans: int, **kwargs) -> None:
            super().__init__(**kwargs)
            self.grid = grid
            if out_chans != 256:
                dim = kwargs["embed_dims"][-1]
                self.neck = nn.Sequential(
                    nn.Conv2d(dim, out_chans, kernel_size=1, bias=False),
                    LayerNorm2d(out_chans),
                    nn.Conv2d(out_chans, out_chans, kernel_size=3, padding=1, bias=False),
                    LayerNorm2d(out_chans),
                )

        def forward_features(self, x):
            x = self.patch_embed(x)
            for layer in self.layers:
                x = layer(x)
            b, _, c = x.size()
            x = x.view(b, self.grid, self.grid, c).permute(0, 3, 1, 2)
            return self.neck(x)

    kwargs = dict(
        img_size=config.image_size,
        in_chans=3,
        num_classes=config.tiny_num_classes,
        embed_dims=list(config.tiny_embed_dims),
        depths=list(config.tiny_depths),
        num_heads=list(config.tiny_num_heads),
        window_sizes=list(config.tiny_window_sizes),
        mlp_ratio=config.mlp_ratio,
        drop_rate=0.0,
        drop_path_rate=0.0,
        use_checkpoint=False,
        mbconv_expand_ratio=4.0,
        local_conv_size=3,
        layer_lr_decay=0.8,
    )
    if config.image_embedding_size == 64 and config.prompt_embed_dim == 256:
        return ms.modeling.TinyViT(**kwargs)
    return AnySizeTinyViT(config.image_embedding_size, config.prompt_embed_dim, **kwargs)


def official_sam(config: SamConfig) -> nn.Module:
    """The reference network (``segment_anything`` or ``mobile_sam`` classes) for ``config``, eval mode."""
    package = segment_anything() if config.encoder == "vit" else mobile_sam()
    modeling = package.modeling
    side = config.image_embedding_size
    if config.encoder == "vit":
        encoder = modeling.ImageEncoderViT(
            depth=config.depth,
            embed_dim=config.embed_dim,
            img_size=config.image_size,
            mlp_ratio=config.mlp_ratio,
            norm_layer=partial(nn.LayerNorm, eps=1e-6),
            num_heads=config.num_heads,
            patch_size=config.patch_size,
            qkv_bias=True,
            use_rel_pos=True,
            global_attn_indexes=list(config.global_attn_indexes),
            window_size=config.window_size,
            out_chans=config.prompt_embed_dim,
        )
    else:
        encoder = _official_tiny_vit(config)
    sam = modeling.Sam(
        image_encoder=encoder,
        prompt_encoder=modeling.PromptEncoder(
            embed_dim=config.prompt_embed_dim,
            image_embedding_size=(side, side),
            input_image_size=(config.image_size, config.image_size),
            mask_in_chans=config.mask_in_chans,
        ),
        mask_decoder=modeling.MaskDecoder(
            num_multimask_outputs=config.num_multimask_outputs,
            transformer=modeling.TwoWayTransformer(
                depth=config.decoder_depth,
                embedding_dim=config.prompt_embed_dim,
                mlp_dim=config.decoder_mlp_dim,
                num_heads=config.decoder_num_heads,
            ),
            transformer_dim=config.prompt_embed_dim,
            iou_head_depth=config.iou_head_depth,
            iou_head_hidden_dim=config.iou_head_hidden_dim,
        ),
        pixel_mean=list(config.pixel_mean),
        pixel_std=list(config.pixel_std),
    )
    return sam.eval()


def _fan_in(tensor: torch.Tensor) -> int:
    return tensor.shape[1] * (tensor[0][0].numel() if tensor.ndim > 2 else 1)


_NORMS = (nn.LayerNorm, nn.BatchNorm2d, nn.GroupNorm)
# SAM 2's learned embeddings held by the model itself (zeros or tiny in the official builder)
_SAM2_EMBEDDINGS = ("maskmem_tpos_enc", "no_mem_embed", "no_mem_pos_enc", "no_obj_ptr", "no_obj_embed_spatial")


@torch.no_grad()
def randomize_constants(model: nn.Module, seed: int = 0) -> nn.Module:
    """Fill every floating parameter and persistent buffer with seeded random values.

    Scales keep the network tame: linear/conv weights and biases uniform with variance 1/fan_in
    (variance-preserving, so mask logits are neither tiny nor saturated), norm weights in [0.5, 1.5] and biases in [-0.2, 0.2], BatchNorm running variances in
    [0.5, 1.5], embeddings and the positional Gaussian matrix N(0, 1), absolute / relative position
    tables N(0, 0.2^2), TinyViT attention biases N(0, 0.5^2). Values depend only on ``seed`` and the
    tensor names. Returns the model in eval mode (TinyViT caches its biases when switched to eval).
    """
    generator = torch.Generator().manual_seed(seed)

    def fill(tensor: torch.Tensor, kind: str, bound: float = 1.0) -> None:
        shape = tensor.shape
        if kind == "uniform":
            values = (torch.rand(shape, generator=generator) * 2 - 1) * bound
        elif kind == "around_one":
            values = 0.5 + torch.rand(shape, generator=generator)
        else:
            values = torch.randn(shape, generator=generator) * bound
        tensor.copy_(values.to(tensor.dtype))

    modules = dict(model.named_modules())
    for name, tensor in model.state_dict(keep_vars=True).items():
        if not tensor.is_floating_point():
            continue
        owner_name, _, leaf = name.rpartition(".")
        owner = modules[owner_name]
        is_norm = isinstance(owner, _NORMS) or type(owner).__name__ == "LayerNorm2d"
        if is_norm:
            if leaf in ("weight", "running_var"):
                fill(tensor, "around_one")
            elif leaf == "bias":
                fill(tensor, "uniform", 0.2)
            else:  # running_mean
                fill(tensor, "normal", 0.1)
        elif isinstance(owner, nn.Embedding) or leaf == "positional_encoding_gaussian_matrix":
            fill(tensor, "normal", 1.0)
        elif leaf in ("pos_embed", "rel_pos_h", "rel_pos_w", "pos_embed_window") or leaf in _SAM2_EMBEDDINGS:
            fill(tensor, "normal", 0.2)
        elif leaf == "gamma":  # SAM 2's ConvNeXt layer scale (1e-6 in the official builder)
            fill(tensor, "around_one")
        elif leaf == "attention_biases":
            fill(tensor, "normal", 0.5)
        elif leaf == "weight":
            fill(tensor, "uniform", math.sqrt(3 / _fan_in(tensor)))
        elif leaf == "bias":
            weight = getattr(owner, "weight")
            fill(tensor, "uniform", math.sqrt(3 / _fan_in(weight)))
        else:
            raise AssertionError(f"no random rule for {name}")
    model.train()  # reference TinyViT drops and rebuilds its cached biases on train() / eval()
    return model.eval()


def write_official_checkpoint(config: SamConfig, path: Path | str, seed: int = 0, wrap: bool = False) -> Path:
    """Save the state dict of the randomized reference model for ``config`` (``{"model": sd}`` if wrap)."""
    torch.manual_seed(seed)
    model = randomize_constants(official_sam(config), seed)
    state_dict = model.state_dict()
    path = Path(path)
    torch.save({"model": state_dict} if wrap else state_dict, path)
    return path


def load_official(config: SamConfig, checkpoint: Path | str) -> nn.Module:
    """The reference network for ``config`` with the weights of ``checkpoint``, in eval mode."""
    model = official_sam(config)
    model.load_state_dict(torch.load(checkpoint, map_location="cpu", weights_only=True))
    model.train()
    return model.eval()


def load_ours(config: SamConfig, checkpoint: Path | str):
    """``sam_core``'s network for ``config`` with the weights of ``checkpoint``, in eval mode."""
    return load_checkpoint(build_sam(config), checkpoint)
