"""sam_core.models against the reference packages: state-dict keys, loading, and numerics on the same
random-weight checkpoints (segment_anything for ViT, mobile_sam for TinyViT)."""

from __future__ import annotations

import pytest
import torch

from helpers.checkpoints import (
    SMALL_TINY_VIT,
    SMALL_VIT,
    load_official,
    load_ours,
    official_sam,
    write_official_checkpoint,
)
from sam_core.errors import SamError
from sam_core.models import (
    CONFIGS,
    SamConfig,
    build_sam,
    get_config,
    infer_config,
    load_checkpoint,
    read_state_dict,
    save_checkpoint,
)

OFFICIAL_NAMES = ("vit_b", "vit_l", "vit_h", "vit_t")


def _official_state_shapes(name: str) -> dict[str, tuple]:
    config = get_config(name)
    if config.encoder == "vit":
        with torch.device("meta"):
            model = official_sam(config)
    else:  # the reference TinyViT calls .item() while building: not possible on "meta"
        model = official_sam(config)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


@pytest.mark.parametrize("name", OFFICIAL_NAMES)
def test_state_dict_keys_and_shapes_equal_official(name):
    with torch.device("meta"):
        ours = build_sam(name)
    assert {k: tuple(v.shape) for k, v in ours.state_dict().items()} == _official_state_shapes(name)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_infer_config_recovers_named_configs(name):
    with torch.device("meta"):
        state_dict = build_sam(name).state_dict()
    assert infer_config(state_dict) == get_config(name)


@pytest.mark.parametrize("config", [SMALL_VIT, SMALL_TINY_VIT], ids=lambda c: c.name)
def test_infer_config_recovers_small_configs(config):
    state_dict = build_sam(config).state_dict()
    inferred = infer_config(state_dict, image_size=config.image_size)
    assert inferred == config.replace(name="custom")
    assert build_sam(inferred).state_dict().keys() == state_dict.keys()


def test_config_properties_and_errors():
    assert get_config("vit_b").image_embedding_size == 64
    assert get_config("vit_t").image_embedding_size == 64
    assert get_config("vit_h").low_res_size == 256
    assert SMALL_VIT.image_embedding_size == 8 and SMALL_TINY_VIT.low_res_size == 32
    with pytest.raises(SamError, match="vit_b"):
        get_config("vit_x")
    with pytest.raises(SamError):
        SamConfig(name="bad", image_size=100, patch_size=16)
    with pytest.raises(SamError):
        infer_config({"something": torch.zeros(1)})


def test_load_plain_and_wrapped(tmp_path, small_vit_checkpoint):
    wrapped = write_official_checkpoint(SMALL_VIT, tmp_path / "wrapped.pth", seed=0, wrap=True)
    plain = read_state_dict(small_vit_checkpoint)
    unwrapped = read_state_dict(wrapped)
    assert plain.keys() == unwrapped.keys()
    assert all(torch.equal(plain[k], unwrapped[k]) for k in plain)
    model = load_checkpoint(build_sam(SMALL_VIT), wrapped)
    assert all(torch.equal(v, plain[k]) for k, v in model.state_dict().items())


def test_save_checkpoint_is_official_format(tmp_path, small_tiny_vit_checkpoint):
    ours = load_ours(SMALL_TINY_VIT, small_tiny_vit_checkpoint)
    out = save_checkpoint(ours, tmp_path / "sub" / "copy.pth")
    assert [p.name for p in out.parent.iterdir()] == ["copy.pth"]  # no temporary file left behind
    data = torch.load(out, weights_only=True)
    assert isinstance(data, dict) and "model" not in data
    official = load_official(SMALL_TINY_VIT, out)  # strict load by the reference package
    assert official.state_dict().keys() == data.keys()


def test_wrong_model_names_the_likely_one():
    with torch.device("meta"):
        vit_b = build_sam("vit_b")
        vit_t_state = build_sam("vit_t").state_dict()
    with pytest.raises(SamError, match=r"missing.*unexpected.*looks like 'vit_t'"):
        load_checkpoint(vit_b, vit_t_state)


def test_wrong_shapes_are_reported(small_vit_checkpoint):
    other = SMALL_VIT.replace(embed_dim=64)
    with pytest.raises(SamError, match="another shape.*custom ViT"):
        load_checkpoint(build_sam(other), small_vit_checkpoint)


def test_bad_files(tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("not a checkpoint")
    with pytest.raises(SamError, match="notes.txt"):
        read_state_dict(text)
    other = tmp_path / "other.pth"
    torch.save({"weight": torch.zeros(3)}, other)
    with pytest.raises(SamError, match="other.pth"):
        read_state_dict(other)
    truncated = tmp_path / "truncated.pth"
    torch.save(build_sam(SMALL_VIT).state_dict(), truncated)
    truncated.write_bytes(truncated.read_bytes()[:1000])
    with pytest.raises(SamError, match="truncated.pth"):
        read_state_dict(truncated)
    with pytest.raises(SamError, match="missing.pth"):
        read_state_dict(tmp_path / "missing.pth")


# ---------------------------------------------------------------- numerics against the reference


def _image(config: SamConfig, seed: int, h: int, w: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.rand((1, 3, h, w), generator=generator) * 255


def _assert_close(ours: torch.Tensor, ref: torch.Tensor, rel: float) -> None:
    assert ours.shape == ref.shape
    if ref.numel() == 0:
        return
    scale = ref.abs().max().item()
    assert (ours - ref).abs().max().item() <= rel * max(scale, 1.0)


@torch.no_grad()
def _check_encoder(config: SamConfig, checkpoint) -> torch.Tensor:
    ref, ours = load_official(config, checkpoint), load_ours(config, checkpoint)
    s = config.image_size
    x = _image(config, 1, s * 3 // 4, s)
    assert torch.equal(ours.preprocess(x), ref.preprocess(x))
    ref_out = ref.image_encoder(ref.preprocess(x))
    our_out = ours.image_encoder(ours.preprocess(x))
    assert our_out.shape == (1, config.prompt_embed_dim, config.image_embedding_size, config.image_embedding_size)
    assert our_out.std() > 0.1  # randomized constants: a lively network
    _assert_close(our_out, ref_out, 1e-4)
    return ref_out


PROMPTS = ["points", "box", "points+box", "mask", "points+mask", "box+mask"]


def _prompts(config: SamConfig, kind: str, batch: int = 2):
    g = torch.Generator().manual_seed(3)
    s = config.image_size
    points = boxes = masks = None
    if "points" in kind:
        coords = torch.rand((batch, 3, 2), generator=g) * s
        labels = torch.tensor([[1, 0, 1], [1, -1, 0]][:batch] * (batch // 2 or 1))[:batch]
        points = (coords, labels)
    if "box" in kind:
        corner = torch.rand((batch, 2), generator=g) * s / 2
        boxes = torch.cat([corner, corner + s / 3], dim=1)
    if "mask" in kind:
        masks = torch.randn((batch, 1, config.low_res_size, config.low_res_size), generator=g) * 4
    return points, boxes, masks


@torch.no_grad()
def _check_prompts_and_decoder(config: SamConfig, checkpoint, embedding: torch.Tensor, kinds=PROMPTS) -> None:
    ref, ours = load_official(config, checkpoint), load_ours(config, checkpoint)
    assert torch.equal(ours.prompt_encoder.get_dense_pe(), ref.prompt_encoder.get_dense_pe())
    for kind in kinds:
        points, boxes, masks = _prompts(config, kind)
        ref_sparse, ref_dense = ref.prompt_encoder(points=points, boxes=boxes, masks=masks)
        sparse, dense = ours.prompt_encoder(points=points, boxes=boxes, masks=masks)
        _assert_close(sparse, ref_sparse, 1e-6)
        _assert_close(dense, ref_dense, 1e-6)
        for multimask in (True, False):
            ref_masks, ref_iou = ref.mask_decoder(
                image_embeddings=embedding, image_pe=ref.prompt_encoder.get_dense_pe(),
                sparse_prompt_embeddings=ref_sparse, dense_prompt_embeddings=ref_dense, multimask_output=multimask,
            )
            masks_out, iou = ours.mask_decoder(
                image_embeddings=embedding, image_pe=ours.prompt_encoder.get_dense_pe(),
                sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense, multimask_output=multimask,
            )
            k = config.num_multimask_outputs if multimask else 1
            assert masks_out.shape == (2, k, config.low_res_size, config.low_res_size)
            assert 0.02 < (ref_masks > 0).float().mean() < 0.98  # neither empty nor full
            assert (masks_out - ref_masks).abs().max().item() <= 1e-3
            assert (iou - ref_iou).abs().max().item() <= 1e-4
            input_size, original_size = (config.image_size * 3 // 4, config.image_size), (300, 400)
            assert torch.equal(
                ours.postprocess_masks(ref_masks, input_size, original_size),
                ref.postprocess_masks(ref_masks, input_size, original_size),
            )


def test_small_vit_parity(small_vit_checkpoint):
    embedding = _check_encoder(SMALL_VIT, small_vit_checkpoint)
    _check_prompts_and_decoder(SMALL_VIT, small_vit_checkpoint, embedding)


def test_small_tiny_vit_parity(small_tiny_vit_checkpoint):
    embedding = _check_encoder(SMALL_TINY_VIT, small_tiny_vit_checkpoint)
    _check_prompts_and_decoder(SMALL_TINY_VIT, small_tiny_vit_checkpoint, embedding)


@pytest.mark.slow
def test_vit_t_parity(vit_t_checkpoint):
    config = get_config("vit_t")
    embedding = _check_encoder(config, vit_t_checkpoint)
    _check_prompts_and_decoder(config, vit_t_checkpoint, embedding, kinds=["points+box", "mask"])


@pytest.mark.slow
def test_vit_b_parity(vit_b_checkpoint):
    config = get_config("vit_b")
    assert infer_config(read_state_dict(vit_b_checkpoint)) == config
    embedding = _check_encoder(config, vit_b_checkpoint)
    _check_prompts_and_decoder(config, vit_b_checkpoint, embedding, kinds=["points", "box+mask"])
