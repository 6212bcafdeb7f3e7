"""Fine-tuning: input errors before training, resume and cancel, official-format checkpoints, and a
clear gain on a domain the bundled demo model handles badly."""

from __future__ import annotations

from functools import partial

import numpy as np
import pytest
import torch
from PIL import Image
from scipy import ndimage

from sam_core.cli import main as cli_main
from sam_core.errors import SamError
from sam_core.progress import Cancelled, CancelToken
from sam_core.train.finetune import finetune, load_pairs
from sam_core.train.synthetic import generate_scene
from sam_core.zoo import load_model

pytestmark = pytest.mark.usefixtures("single_thread")


def halo_scene(seed: int, size: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """A domain the demo never saw: cells with a bright core inside a faint halo (barely above the
    background), labelled core AND halo as one object (the demo segments the bright core only)."""
    rng = np.random.default_rng(seed)
    base = generate_scene(rng, size=size, style="shapes")
    labels = np.zeros((size, size), np.int32)
    background = rng.uniform(40, 200)
    image = np.full((size, size, 3), background, np.float32)
    next_id = 1
    for obj in range(1, base.num_objects + 1):
        cell = ndimage.binary_fill_holes(base.labels == obj)
        core = ndimage.binary_erosion(cell, iterations=int(rng.integers(4, 8)))
        if core.sum() < 60:
            continue
        image[cell] = background + rng.choice([-1, 1]) * rng.uniform(12, 20)
        image[core] = rng.uniform(0, 255, 3)
        labels[cell] = next_id
        next_id += 1
    image += rng.normal(0, 3, image.shape)
    return np.clip(image, 0, 255).astype(np.uint8), labels


@pytest.fixture(scope="module")
def demo():
    return partial(load_model, "demo")


def small_pairs(n: int = 3, seed: int = 40):
    scenes = [generate_scene((seed, i), size=128) for i in range(n)]
    return [s.image for s in scenes], [s.labels for s in scenes]


def test_bad_input_is_refused_before_training(demo, tmp_path):
    images, labels = small_pairs(2)
    calls = []
    progress = lambda done, total, message: calls.append(message)  # noqa: E731
    with pytest.raises(SamError, match="must match"):
        finetune(demo(), images, [labels[0][:-1], labels[1]], epochs=1, progress=progress)
    with pytest.raises(SamError, match="no objects"):
        finetune(demo(), images, [labels[0], np.zeros_like(labels[1])], epochs=1, progress=progress)
    with pytest.raises(SamError, match="2 images but 1 label"):
        finetune(demo(), images, labels[:1], epochs=1)
    with pytest.raises(SamError, match=r"quantized \(int8-smooth\).*without a precision"):
        finetune(demo().set_precision("int8-smooth"), images, labels, epochs=1, progress=progress)
    assert calls == []  # nothing ran

    (tmp_path / "img").mkdir()
    (tmp_path / "lab").mkdir()
    for name, image, label in zip(("a", "b"), images, labels):
        Image.fromarray(image).save(tmp_path / "img" / f"{name}.png")
        Image.fromarray(label.astype(np.uint16)).save(tmp_path / "lab" / f"{name}.png")
    Image.fromarray(images[0]).save(tmp_path / "img" / "c.png")
    with pytest.raises(SamError, match="images without a label file: c"):
        load_pairs(tmp_path / "img", tmp_path / "lab")
    (tmp_path / "img" / "c.png").unlink()
    loaded_images, loaded_labels = load_pairs(tmp_path / "img", tmp_path / "lab")
    assert np.array_equal(loaded_images[1], images[1]) and np.array_equal(loaded_labels[0], labels[0])
    with pytest.raises(SamError, match="not found"):
        load_pairs(tmp_path / "missing", tmp_path / "lab")


def test_resume_and_cancel(demo, tmp_path):
    images, labels = small_pairs(3)
    out = tmp_path / "tuned.pth"
    first = finetune(demo(), images, labels, epochs=1, checkpoint_path=out, objects_per_step=4)
    assert [r.epoch for r in first.history] == [0, 1] and out.is_file()
    assert set(first.val_iou) == {"point", "point+click", "box"}
    saved = torch.load(out, weights_only=True)

    # a cancelled run leaves the last finished epoch in place
    token = CancelToken()

    def cancel_after_one_step(done, total, message):
        if message.startswith("epoch 2"):
            token.cancel()

    with pytest.raises(Cancelled):
        finetune(demo(), images, labels, epochs=3, checkpoint_path=out, cancel=token,
                 progress=cancel_after_one_step, objects_per_step=4)
    after_cancel = torch.load(out, weights_only=True)
    assert all(torch.equal(saved[k], after_cancel[k]) for k in saved)

    # resuming continues after epoch 1 with the saved weights and history
    resumed = finetune(demo(), images, labels, epochs=2, checkpoint_path=out, objects_per_step=4)
    assert [r.epoch for r in resumed.history] == [0, 1, 2]
    assert resumed.history[1] == first.history[1]
    # other data cannot silently continue this run
    with pytest.raises(SamError, match="other data"):
        finetune(demo(), images[:2], labels[:2], epochs=3, checkpoint_path=out)


def test_finetuned_checkpoint_loads_in_the_official_package(small_vit_checkpoint, tmp_path):
    """A fine-tuned checkpoint is a plain state dict that segment_anything's network loads strictly."""
    from helpers.checkpoints import SMALL_VIT
    from helpers.official import segment_anything

    images, labels = small_pairs(2)
    out = tmp_path / "tuned.pth"
    finetune(load_model(None, small_vit_checkpoint), images, labels, epochs=1, checkpoint_path=out,
             objects_per_step=4)
    official = _official_vit_like(segment_anything(), SMALL_VIT)
    official.load_state_dict(torch.load(out, weights_only=True), strict=True)


def _official_vit_like(sa, config):
    modeling = sa.modeling
    side = config.image_embedding_size
    return modeling.Sam(
        image_encoder=modeling.ImageEncoderViT(
            depth=config.depth, embed_dim=config.embed_dim, img_size=config.image_size, mlp_ratio=config.mlp_ratio,
            norm_layer=partial(torch.nn.LayerNorm, eps=1e-6), num_heads=config.num_heads,
            patch_size=config.patch_size, qkv_bias=True, use_rel_pos=True,
            global_attn_indexes=config.global_attn_indexes, window_size=config.window_size,
            out_chans=config.prompt_embed_dim,
        ),
        prompt_encoder=modeling.PromptEncoder(
            embed_dim=config.prompt_embed_dim, image_embedding_size=(side, side),
            input_image_size=(config.image_size, config.image_size), mask_in_chans=16),
        mask_decoder=modeling.MaskDecoder(
            num_multimask_outputs=3,
            transformer=modeling.TwoWayTransformer(depth=config.decoder_depth, embedding_dim=config.prompt_embed_dim,
                                                   mlp_dim=config.decoder_mlp_dim, num_heads=config.decoder_num_heads),
            transformer_dim=config.prompt_embed_dim, iou_head_depth=config.iou_head_depth,
            iou_head_hidden_dim=config.iou_head_hidden_dim,
        ),
    )


@pytest.mark.slow
def test_finetuning_the_decoder_helps_on_a_new_domain(demo):
    pairs = [halo_scene(seed) for seed in range(8)]
    images = [p[0] for p in pairs]
    labels = [p[1] for p in pairs]
    result = finetune(demo(), images, labels, epochs=EPOCHS, lr=1e-3, val_fraction=0.25, objects_per_step=12)
    before, after = result.history[0].val, result.history[-1].val
    summary = f"validation IoU before {before}, after {after}"
    assert after["point"] >= before["point"] + GAIN, summary
    assert np.mean(list(after.values())) >= np.mean(list(before.values())) + GAIN, summary


EPOCHS = 6
GAIN = 0.1


def test_command_line(tmp_path, capsys):
    images, labels = small_pairs(3)
    (tmp_path / "img").mkdir()
    (tmp_path / "lab").mkdir()
    for i, (image, label) in enumerate(zip(images, labels)):
        Image.fromarray(image).save(tmp_path / "img" / f"{i}.png")
        Image.fromarray(label.astype(np.uint16)).save(tmp_path / "lab" / f"{i}.tif")
    out = tmp_path / "model.pth"
    code = cli_main(["finetune", str(tmp_path / "img"), str(tmp_path / "lab"), "--out", str(out), "--epochs", "1",
                     "--quiet"])
    assert code == 0 and out.is_file()
    assert "validation mean IoU" in capsys.readouterr().out
    Image.fromarray(labels[0][:-2].astype(np.uint16)).save(tmp_path / "lab" / "0.tif")
    bad = tmp_path / "bad.pth"
    code = cli_main(["finetune", str(tmp_path / "img"), str(tmp_path / "lab"), "--out", str(bad), "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "must match" in err[0] and not bad.exists()
