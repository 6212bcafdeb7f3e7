"""SAM 2.1 network parity with Meta's sam2==1.1.0 on random-weight checkpoints (constant parameters
randomized too): image encoder, prompt encoder + mask decoder through SAM2ImagePredictor, the SAM
heads with object pointers, the memory encoder and the memory attention; strict loading and the
configuration read back from the weights for the four official sizes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from helpers.official import sam2 as official_sam2_package
from helpers.sam2_checkpoints import (
    SMALL_SAM2,
    load_official_sam2,
    official_image_predictor,
    write_official_sam2_checkpoint,
)
from sam_core.errors import SamError
from sam_core.models.build import load_checkpoint, read_state_dict
from sam_core.models.sam2 import SAM2_CONFIGS, Sam2Features, build_sam2, infer_sam2_config

TOL = 1e-4


@pytest.fixture(scope="module")
def small_sam2_checkpoint(tmp_path_factory):
    return write_official_sam2_checkpoint(SMALL_SAM2, tmp_path_factory.mktemp("sam2") / "small_sam2.pt", seed=1)


@pytest.fixture(scope="module")
def pair(small_sam2_checkpoint):
    official = load_official_sam2(SMALL_SAM2, small_sam2_checkpoint)
    ours = load_checkpoint(build_sam2(SMALL_SAM2), small_sam2_checkpoint)
    return official, ours


def _image(height: int = 150, width: int = 220, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, (height // 10 + 1, width // 10 + 1, 3)).astype(np.float32)
    smooth = np.kron(base, np.ones((10, 10, 1)))[:height, :width]
    return np.clip(smooth + rng.normal(0, 20, smooth.shape), 0, 255).astype(np.uint8)


@pytest.mark.parametrize("name,yaml", [
    ("sam2.1_hiera_tiny", "sam2.1_hiera_t.yaml"),
    ("sam2.1_hiera_small", "sam2.1_hiera_s.yaml"),
    pytest.param("sam2.1_hiera_base_plus", "sam2.1_hiera_b+.yaml", marks=pytest.mark.slow),
    pytest.param("sam2.1_hiera_large", "sam2.1_hiera_l.yaml", marks=pytest.mark.slow),
])
def test_official_sizes_load_strictly_and_are_recognised(name, yaml):
    official_sam2_package()
    from sam2.build_sam import build_sam2 as build_official

    state = build_official(f"configs/sam2.1/{yaml}", None, device="cpu").state_dict()
    assert infer_sam2_config(state) == SAM2_CONFIGS[name]
    ours = build_sam2(name)
    load_checkpoint(ours, state)  # strict: same keys and shapes
    assert sum(v.numel() for v in ours.state_dict().values()) == sum(v.numel() for v in state.values())


def test_checkpoint_of_another_size_is_refused_with_its_name():
    official_sam2_package()
    from sam2.build_sam import build_sam2 as build_official

    state = build_official("configs/sam2.1/sam2.1_hiera_s.yaml", None, device="cpu").state_dict()
    with pytest.raises(SamError, match="sam2.1_hiera_small"):
        load_checkpoint(build_sam2("sam2.1_hiera_tiny"), state)


def test_small_config_is_read_back_from_the_weights(small_sam2_checkpoint):
    inferred = infer_sam2_config(read_state_dict(small_sam2_checkpoint), image_size=256)
    # what the weights hold; head count, global blocks and later windows are not in them
    recoverable = ("image_size", "embed_dim", "stages", "pos_embed_size", "d_model", "mem_dim", "num_maskmem",
                   "memory_attention_layers", "memory_attention_ff_dim", "fuser_layers", "mask_downsampler_layers")
    assert {k: getattr(inferred, k) for k in recoverable} == {k: getattr(SMALL_SAM2, k) for k in recoverable}
    assert inferred.window_spec[0] == SMALL_SAM2.window_spec[0]


def test_image_encoder_matches_official(pair):
    official, ours = pair
    x = torch.randn(2, 3, SMALL_SAM2.image_size, SMALL_SAM2.image_size)
    with torch.no_grad():
        expected = official.forward_image(x)["backbone_fpn"]
        got = ours.backbone(x)
    assert len(got) == len(expected) == 3
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b, atol=TOL, rtol=0)


def _our_prediction(ours, features, size, points=None, labels=None, box=None, mask_input=None, multimask=True):
    c = l = b = m = None
    if points is not None:
        c = torch.as_tensor(ours.input_coords(np.asarray(points, float), size), dtype=torch.float)[None]
        l = torch.as_tensor(labels, dtype=torch.int)[None]
    if box is not None:
        corners = ours.input_coords(np.asarray(box, float).reshape(2, 2), size)
        b = torch.as_tensor(corners.reshape(1, 4), dtype=torch.float)
    if mask_input is not None:
        m = torch.as_tensor(mask_input, dtype=torch.float)[None]
    with torch.no_grad():
        low, iou, _, _ = ours.decode(features, c, l, b, m, multimask)
        logits = ours.upscale(low, size)
    return logits[0].numpy(), iou[0].numpy(), low.clamp(-32, 32)[0].numpy()


PROMPTS = [
    dict(points=[[100, 60]], labels=[1], multimask=True),
    dict(points=[[100, 60]], labels=[1], multimask=False),
    dict(points=[[100, 60], [30, 20], [200.5, 140]], labels=[1, 0, 1], multimask=False),
    dict(box=[20, 30, 150, 120], multimask=False),
    dict(box=[20, 30, 150, 120], points=[[80, 70]], labels=[0], multimask=True),
]


@pytest.mark.parametrize("prompt", PROMPTS, ids=["click", "click-single", "points", "box", "box+point"])
def test_image_predictor_matches_official(pair, prompt):
    official, ours = pair
    image = _image()
    size = image.shape[:2]
    predictor = official_image_predictor(official)
    predictor.set_image(image)
    with torch.no_grad():
        features = ours.encode(ours.preprocess(torch.as_tensor(image).permute(2, 0, 1)[None]))
    torch.testing.assert_close(features.image_embed, predictor._features["image_embed"], atol=TOL, rtol=0)

    kwargs = {k: v for k, v in prompt.items() if k != "multimask"}
    expected = predictor.predict(
        point_coords=None if "points" not in kwargs else np.asarray(kwargs["points"], float),
        point_labels=None if "labels" not in kwargs else np.asarray(kwargs["labels"]),
        box=None if "box" not in kwargs else np.asarray(kwargs["box"], float),
        multimask_output=prompt["multimask"],
        return_logits=True,
    )
    got = _our_prediction(ours, features, size, **prompt)
    for a, b in zip(got, expected):
        np.testing.assert_allclose(a, b, atol=TOL, rtol=0)

    # refinement with the best candidate's low-res logits as mask_input
    best = int(np.argmax(expected[1]))
    refined = predictor.predict(point_coords=np.asarray([[100, 60]], float), point_labels=np.array([1]),
                                mask_input=expected[2][best : best + 1], multimask_output=False, return_logits=True)
    ours_refined = _our_prediction(ours, features, size, points=[[100, 60]], labels=[1],
                                   mask_input=got[2][best : best + 1], multimask=False)
    for a, b in zip(ours_refined, refined):
        np.testing.assert_allclose(a, b, atol=TOL, rtol=0)


def test_dynamic_multimask_falls_back_on_unstable_single_masks(pair, monkeypatch):
    """With one mask asked for, an unstable token-0 mask is replaced by the best multimask candidate
    (the decoder of build_sam2's image models). Random weights give unstable masks everywhere, so the
    threshold is set (on both models) between the prompts' stabilities to meet both branches."""
    official, ours = pair
    torch.manual_seed(3)
    image_embed = torch.randn(1, 32, 16, 16)
    high_res = (torch.randn(1, 4, 64, 64), torch.randn(1, 8, 32, 32))
    coords = torch.rand(8, 2, 2) * 256
    labels = torch.ones(8, 2, dtype=torch.int)
    pe = official.sam_prompt_encoder.get_dense_pe()
    with torch.no_grad():
        sparse, dense = official.sam_prompt_encoder(points=(coords, labels), boxes=None, masks=None)
        all_masks = official.sam_mask_decoder.predict_masks(image_embed, pe, sparse, dense, repeat_image=True,
                                                            high_res_features=list(high_res))[0]
        stability = ours.sam_mask_decoder.stability_scores(all_masks[:, :1]).flatten()
        threshold = float(stability.median())
        monkeypatch.setattr(official.sam_mask_decoder, "dynamic_multimask_stability_thresh", threshold)
        monkeypatch.setattr(ours.sam_mask_decoder, "stability_thresh", threshold)
        expected = official.sam_mask_decoder(image_embed, pe, sparse, dense, multimask_output=False,
                                             repeat_image=True, high_res_features=list(high_res))
        got = ours.decode(Sam2Features(image_embed, high_res), coords, labels, multimask=False)
    assert 0 < int((stability >= threshold).sum()) < 8
    torch.testing.assert_close(got[0], expected[0], atol=TOL, rtol=0)
    torch.testing.assert_close(got[1], expected[1], atol=TOL, rtol=0)


@pytest.mark.parametrize("multimask", [True, False])
def test_heads_object_pointer_and_object_score_match_official(pair, multimask):
    official, ours = pair
    torch.manual_seed(4)
    image_embed = torch.randn(3, 32, 16, 16)
    high_res = [torch.randn(3, 4, 64, 64), torch.randn(3, 8, 32, 32)]
    coords = torch.rand(3, 2, 2) * 256
    labels = torch.tensor([[1, 0], [1, 1], [2, 3]], dtype=torch.int32)
    mask_inputs = torch.randn(3, 1, 256, 256)
    for mask in (None, mask_inputs):
        with torch.no_grad():
            points = None if mask is not None else {"point_coords": coords, "point_labels": labels}
            expected = official._forward_sam_heads(image_embed, point_inputs=points, mask_inputs=mask,
                                                   high_res_features=high_res, multimask_output=multimask)
            got = ours.forward_heads(image_embed, tuple(high_res), None if mask is not None else coords,
                                     None if mask is not None else labels, mask, multimask)
        torch.testing.assert_close(got.multimasks, expected[0], atol=TOL, rtol=0)
        torch.testing.assert_close(got.ious, expected[2], atol=TOL, rtol=0)
        torch.testing.assert_close(got.best, expected[3], atol=TOL, rtol=0)
        torch.testing.assert_close(got.object_pointer, expected[5], atol=TOL, rtol=0)
        torch.testing.assert_close(got.object_score_logits, expected[6], atol=TOL, rtol=0)


def test_memory_encoder_matches_official(pair):
    official, ours = pair
    torch.manual_seed(5)
    pix = torch.randn(2, 32, 16, 16)
    masks = torch.randn(2, 1, 256, 256) * 5
    scores = torch.tensor([[2.0], [-1.0]])  # one present, one absent: no_obj_embed_spatial on the second
    with torch.no_grad():
        expected, expected_pos = official._encode_new_memory(
            [pix.flatten(2).permute(2, 0, 1)], [(16, 16)], masks, scores, is_mask_from_pts=True
        )
        got, pos = ours.encode_memory(pix, masks, scores)
    torch.testing.assert_close(got, expected, atol=TOL, rtol=0)
    torch.testing.assert_close(pos, expected_pos[0], atol=TOL, rtol=0)


def test_memory_attention_with_object_pointers_matches_official(pair):
    official, ours = pair
    torch.manual_seed(6)
    batch, tokens, frames, pointers = 2, 16 * 16, 3, 4
    curr = torch.randn(batch, tokens, 32)
    curr_pos = torch.randn(batch, tokens, 32)
    memory = torch.randn(batch, frames * tokens + pointers, 16)
    memory_pos = torch.randn(batch, frames * tokens + pointers, 16)
    with torch.no_grad():
        expected = official.memory_attention(
            curr=[curr.transpose(0, 1)], curr_pos=[curr_pos.transpose(0, 1)], memory=memory.transpose(0, 1),
            memory_pos=memory_pos.transpose(0, 1), num_obj_ptr_tokens=pointers,
        ).transpose(0, 1)
        got = ours.memory_attention(curr, memory, curr_pos, memory_pos, num_obj_ptr_tokens=pointers)
    torch.testing.assert_close(got, expected, atol=TOL, rtol=0)


def test_truncated_checkpoint_is_a_clear_error(small_sam2_checkpoint, tmp_path):
    data = small_sam2_checkpoint.read_bytes()
    broken = tmp_path / "broken.pt"
    broken.write_bytes(data[: len(data) // 2])
    with pytest.raises(SamError, match="is not a SAM checkpoint"):
        read_state_dict(broken)
