"""The guarded fast encoder for CPUs without bf16 (issue 21 items 3 and 4): ``int8-smooth`` (smoothing
folded into the LayerNorms, dynamic int8 of qkv and the MLPs), ``auto`` choosing it on a CPU without
bf16, and the command line's ``--precision int8-smooth``.

The accuracy guards sit beside those of the other precisions: vit_b's embedding within cosine 0.999 of
fp32 (tests/core/test_models.py::test_vit_b_precision_keeps_embeddings, slow; the small ViT and TinyViT
in test_small_precisions) and demo's masks at mean IoU >= 0.98 with fp32's
(tests/core/test_demo_quality.py::test_faster_precisions_give_the_masks_of_fp32)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from helpers.checkpoints import SMALL_TINY_VIT, SMALL_VIT, load_ours
from helpers.cli import run_cli, write_cells_png
from sam_core.errors import SamError
from sam_core.models import build_sam, precision, quantize
from sam_core.models.quantize import smooth_into_norms


def _input(config) -> torch.Tensor:
    generator = torch.Generator().manual_seed(3)
    return torch.rand((1, 3, config.image_size, config.image_size), generator=generator) * 255


@pytest.fixture
def no_bf16(monkeypatch):
    """A CPU without native bf16 (this machine may have it), as most users' laptops."""
    monkeypatch.setattr(precision, "cpu_has_bf16", lambda: False)


@pytest.mark.parametrize("config", [SMALL_VIT, SMALL_TINY_VIT], ids=lambda c: c.name)
def test_smoothing_keeps_the_fp32_function(config, request):
    checkpoint = request.getfixturevalue(f"{config.name}_checkpoint")
    plain, smoothed = load_ours(config, checkpoint), load_ours(config, checkpoint)
    pairs = smooth_into_norms(smoothed.image_encoder)
    blocks = config.depth if config.encoder == "vit" else sum(config.tiny_depths[1:])
    assert pairs == 2 * blocks  # the LayerNorms before qkv and before the first MLP layer of every block
    changed = [n for n, p in smoothed.image_encoder.named_parameters()
               if not torch.equal(p, plain.image_encoder.get_parameter(n))]
    assert changed  # the weights really moved between LayerNorms and Linears
    image = _input(config)
    with torch.no_grad():
        expected = plain.image_encoder(plain.preprocess(image))
        got = smoothed.image_encoder(smoothed.preprocess(image))
    assert (got - expected).abs().max().item() <= 1e-4 * expected.abs().max().item()


def test_int8_smooth_quantizes_qkv_and_the_mlps_only(small_vit_checkpoint):
    model = load_ours(SMALL_VIT, small_vit_checkpoint).set_precision("int8-smooth")
    assert model.precision == "int8-smooth"
    for block in model.image_encoder.blocks:
        for layer in (block.attn.qkv, block.mlp.lin1, block.mlp.lin2):
            assert isinstance(layer, torch.ao.nn.quantized.dynamic.Linear)
        assert type(block.attn.proj) is nn.Linear  # the output projection stays fp32
    with pytest.raises(SamError, match="quantized \\(int8-smooth\\)"):
        model.set_precision("int8")
    with pytest.raises(SamError, match="CPU only"):
        precision.resolve_precision("int8-smooth", "cuda")


def test_auto_on_a_cpu_without_bf16_picks_int8_smooth(no_bf16):
    assert precision.resolve_precision("auto", "cpu") == "int8-smooth"
    assert build_sam(SMALL_VIT, precision="auto").precision == "int8-smooth"
    tiny = build_sam(SMALL_TINY_VIT, precision="auto")  # TinyViT (vit_t, demo) too
    assert tiny.precision == "int8-smooth"
    kept = quantize.tinyvit_fp32_layers(tiny.image_encoder)
    assert kept and all(".mlp.fc1" in name for name in kept)
    for name, module in tiny.image_encoder.named_modules():
        if name in kept:
            assert type(module) is nn.Linear
        elif name.endswith(("attn.qkv", "mlp.fc1", "mlp.fc2")):
            assert isinstance(module, torch.ao.nn.quantized.dynamic.Linear), name

    line = precision.describe_auto("cpu")
    assert line.startswith("auto runs int8-smooth on cpu: this CPU has no native bf16, so the guarded fast path")
    assert "vit_b and vit_t embeddings within cosine 0.999" in line


def test_auto_on_a_cpu_with_bf16_keeps_bf16(monkeypatch):
    monkeypatch.setattr(precision, "cpu_has_bf16", lambda: True)
    assert precision.resolve_precision("auto", "cpu") == "bf16"
    assert precision.describe_auto("cpu").startswith("auto runs bf16 on cpu: ")


def test_cli_precision_int8_smooth(tmp_path, small_vit_checkpoint, capsys):
    image = write_cells_png(tmp_path)
    out = tmp_path / "mask.png"
    code, _, err = run_cli(["segment", image, "--point", "45,35", "--out", out, "--checkpoint", small_vit_checkpoint,
                            "--precision", "int8-smooth", "--verbose"], capsys)
    assert code == 0, err
    assert "encoder precision int8-smooth (as asked)" in err
    mask = np.asarray(Image.open(out))
    assert mask.shape == (70, 90) and mask.any()


def test_cli_auto_runs_int8_smooth_without_bf16(tmp_path, small_vit_checkpoint, no_bf16, capsys):
    image = write_cells_png(tmp_path)
    code, _, err = run_cli(["segment", image, "--point", "45,35", "--out", tmp_path / "mask.png", "--checkpoint",
                            small_vit_checkpoint, "--precision", "auto", "--verbose"], capsys)
    assert code == 0, err
    assert "encoder precision int8-smooth (auto runs int8-smooth on cpu: " in err



def test_fused_vit_keeps_its_tokens_contiguous_and_equals_exact_with_padded_windows(tmp_path):
    """The fast paths' layout work (the int8-smooth profile: copies of the residual stream and of the
    attention bias): every block's LayerNorms and Linears get contiguous tokens, so none copies them, and
    the windowed blocks project only the image's tokens, not the windows' padding; the fp32 result stays
    that of the official operations (``exact``) on a grid the windows do not divide (10 = 3 x 4 - 2)."""
    from dataclasses import replace

    from helpers.checkpoints import write_official_checkpoint

    config = replace(SMALL_VIT, name="small_vit_padded", image_size=160)
    checkpoint = write_official_checkpoint(config, tmp_path / "padded.pth", seed=0)
    image = _input(config)
    exact = load_ours(config, checkpoint).set_precision("exact")
    fused = load_ours(config, checkpoint)
    layouts = []

    def record(module, args):
        layouts.append((type(module).__name__, args[0].is_contiguous()))

    for block in fused.image_encoder.blocks:
        for module in (block.norm1, block.norm2, block.attn.qkv, block.attn.proj, block.mlp.lin1, block.mlp.lin2):
            module.register_forward_pre_hook(record)
    with torch.no_grad():
        expected = exact.image_encoder(exact.preprocess(image))
        got = fused.image_encoder(fused.preprocess(image))
    assert len(layouts) == 6 * config.depth
    assert all(contiguous for _, contiguous in layouts), layouts
    assert (got - expected).abs().max().item() <= 1e-5 * max(expected.abs().max().item(), 1.0)


def test_fused_tiny_vit_runs_its_convolutions_channels_last(small_tiny_vit_checkpoint):
    """vit_t's fp32 speed-up (issue 21 item 3): in the fused forms the TinyViT's convolutional stage gets
    channels-last maps (oneDNN's faster layout), the result within float rounding of ``exact``, which
    keeps the official layout."""
    image = _input(SMALL_TINY_VIT)
    layouts = {}

    def record(name):
        def hook(module, args):
            layouts[name] = args[0].is_contiguous(memory_format=torch.channels_last)
        return hook

    results = {}
    for name in ("exact", "fp32"):
        model = load_ours(SMALL_TINY_VIT, small_tiny_vit_checkpoint).set_precision(name)
        model.image_encoder.layers[0].blocks[0].conv1.register_forward_pre_hook(record(name))
        with torch.no_grad():
            results[name] = model.image_encoder(model.preprocess(image))
    assert layouts == {"exact": False, "fp32": True}
    expected = results["exact"]
    assert (results["fp32"] - expected).abs().max().item() <= 1e-5 * max(expected.abs().max().item(), 1.0)
