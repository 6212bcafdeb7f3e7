"""Predictor: behaviour, batching, cache use, and parity with the official SamPredictor.

Parity runs on the SAME random-weight checkpoint (official format) for ``sam_core``'s model and the
reference package's: a small ViT, a small TinyViT, full-size ``vit_b`` and full-size ``vit_t``. The
official predictor does not sort candidates, so its outputs are sorted by score before comparing.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from helpers.checkpoints import SMALL_TINY_VIT, SMALL_VIT, load_official, load_ours

from sam_core.errors import SamError
from sam_core.imaging import Preparation
from sam_core.predictor import Embedding, Prediction, Predictor

MASK_AGREEMENT = 0.999
IOU_TOL = 1e-4
LOGIT_TOL = 1e-3


@pytest.fixture(autouse=True)
def _threads():
    torch.set_num_threads(2)


def _official_predictor(config, checkpoint):
    from helpers.official import mobile_sam, segment_anything

    package = segment_anything() if config.encoder == "vit" else mobile_sam()
    return package.SamPredictor(load_official(config, checkpoint))


def _image(height, width, seed=0):
    """A random RGB image with a few flat blobs, so that masks have structure."""
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    yy, xx = np.mgrid[:height, :width]
    for _ in range(4):
        cy, cx = rng.uniform(0.2, 0.8) * height, rng.uniform(0.2, 0.8) * width
        radius = rng.uniform(0.08, 0.2) * min(height, width)
        image[(yy - cy) ** 2 + (xx - cx) ** 2 < radius**2] = rng.integers(0, 256, 3)
    return image


def _prompt_cases(height, width, low):
    """Points, box, both, mask input, multimask on and off; (x, y) pixels of the original image."""
    rng = np.random.default_rng(5)
    point = np.array([[0.4 * width, 0.55 * height]])
    points = np.array([[0.3 * width, 0.3 * height], [0.7 * width, 0.6 * height], [0.5 * width, 0.2 * height]])
    box = np.array([0.1 * width, 0.2 * height, 0.8 * width, 0.9 * height])
    mask_input = rng.normal(0, 4, (1, low, low)).astype(np.float32)
    return [
        dict(point_coords=point, point_labels=np.array([1]), multimask_output=True),
        dict(point_coords=point, point_labels=np.array([1]), multimask_output=False),
        dict(point_coords=points, point_labels=np.array([1, 0, 1]), multimask_output=False),
        dict(point_coords=points, point_labels=np.array([1, 0, 1]), multimask_output=True),
        dict(box=box, multimask_output=False),
        dict(box=box, multimask_output=True),
        dict(point_coords=points[:2], point_labels=np.array([1, 0]), box=box, multimask_output=False),
        dict(point_coords=point, point_labels=np.array([1]), mask_input=mask_input, multimask_output=False),
        dict(box=box, mask_input=mask_input, multimask_output=True),
    ]


def _compare(ours: Predictor, embedding: Embedding, official, case: dict) -> None:
    o_masks, o_iou, o_low = official.predict(**case)
    order = np.argsort(-o_iou, kind="stable")
    o_masks, o_iou, o_low = o_masks[order], o_iou[order], o_low[order]
    result = ours.predict(
        embedding,
        points=case.get("point_coords"),
        labels=case.get("point_labels"),
        box=case.get("box"),
        mask_input=case.get("mask_input"),
        multimask=case["multimask_output"],
    )
    assert result.masks.shape == o_masks.shape and result.masks.dtype == bool
    assert (result.masks == o_masks).mean() >= MASK_AGREEMENT
    np.testing.assert_allclose(result.scores, o_iou, rtol=0, atol=IOU_TOL)
    np.testing.assert_allclose(result.logits, o_low, rtol=0, atol=LOGIT_TOL)
    assert np.all(np.diff(result.scores) <= 0), "candidates must be best first"


def _parity(config, checkpoint, height, width, encoder_tol, by_file=True):
    # by_file: load as a user does (zoo, configuration inferred from the file); else with the config given
    ours = Predictor(None, checkpoint=checkpoint) if by_file else Predictor(load_ours(config, checkpoint))
    official = _official_predictor(config, checkpoint)
    image = _image(height, width)
    embedding = ours.encode(image)
    official.set_image(image)
    assert embedding.original_size == tuple(official.original_size)
    assert embedding.input_size == tuple(official.input_size)
    diff = (embedding.features - official.features).abs().max().item()
    assert diff <= encoder_tol * max(1.0, official.features.abs().max().item())
    for case in _prompt_cases(height, width, ours.low_res_size):
        _compare(ours, embedding, official, case)
    # masks are not degenerate: parity means something
    best = ours.predict(embedding, box=[0.1 * width, 0.2 * height, 0.8 * width, 0.9 * height]).masks[0]
    assert 0.001 < best.mean() < 0.999


def test_parity_small_vit(small_vit_checkpoint):
    _parity(SMALL_VIT, small_vit_checkpoint, 90, 140, 1e-4)


def test_parity_small_vit_image_at_model_size(small_vit_checkpoint):
    # original size == resized size: the second resize of the official post-processing is the identity
    _parity(SMALL_VIT, small_vit_checkpoint, 96, 128, 1e-4)


def test_parity_small_tiny_vit(small_tiny_vit_checkpoint):
    # TinyViT's input size cannot be read from its weights: build it with its configuration
    _parity(SMALL_TINY_VIT, small_tiny_vit_checkpoint, 150, 100, 1e-4, by_file=False)


@pytest.mark.slow
def test_parity_vit_b_full_size(vit_b_checkpoint):
    from sam_core.models import get_config

    _parity(get_config("vit_b"), vit_b_checkpoint, 768, 1024, 1e-3)


@pytest.mark.slow
def test_parity_vit_t_full_size(vit_t_checkpoint):
    from sam_core.models import get_config

    _parity(get_config("vit_t"), vit_t_checkpoint, 600, 800, 1e-3)


# --- behaviour -----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def small(small_vit_checkpoint):
    predictor = Predictor(None, checkpoint=small_vit_checkpoint)
    image = _image(90, 140, seed=1)
    return predictor, image, predictor.encode(image)


def test_embedding_fields(small):
    predictor, image, embedding = small
    assert embedding.features.shape == (1, 32, 8, 8) and embedding.features.dtype == torch.float32
    assert embedding.original_size == (90, 140)
    assert embedding.input_size == (82, 128)
    assert embedding.model_id == predictor.model_id and embedding.model_id
    assert embedding.preparation == Preparation()
    assert embedding.valid is None
    assert isinstance(embedding.key, str) and len(embedding.key) >= 32


def test_second_encode_runs_no_encoder(small_vit_checkpoint):
    predictor = Predictor(None, checkpoint=small_vit_checkpoint)
    image = _image(40, 50, seed=2)
    first = predictor.encode(image)
    assert predictor.encoder_runs == 1
    second = predictor.encode(image.copy())
    assert predictor.encoder_runs == 1
    assert torch.equal(first.features, second.features)
    predictor.encode(image, Preparation(value_range=(0, 200)))
    changed = image.copy()
    changed[0, 0, 0] ^= 1
    predictor.encode(changed)
    assert predictor.encoder_runs == 3


def test_encode_features_are_usable_with_autograd(small):
    predictor, _, embedding = small
    weight = torch.ones(1, requires_grad=True)
    (embedding.features * weight).sum().backward()
    assert weight.grad is not None


def test_default_multimask_follows_official_advice(small):
    predictor, _, embedding = small
    assert predictor.predict(embedding, points=[[40, 30]], labels=[1]).masks.shape == (3, 90, 140)
    assert predictor.predict(embedding, points=[[40, 30], [80, 50]], labels=[1, 0]).masks.shape == (1, 90, 140)
    assert predictor.predict(embedding, box=[10, 10, 60, 50]).masks.shape == (1, 90, 140)
    assert predictor.predict(embedding, points=[[40, 30]], labels=[1], box=[10, 10, 60, 50]).scores.shape == (1,)
    assert predictor.predict(embedding, points=[[40, 30]], multimask=False).scores.shape == (1,)
    assert predictor.predict(embedding, box=[10, 10, 60, 50], multimask=True).scores.shape == (3,)


def test_prediction_types_and_refinement_rounds(small):
    predictor, _, embedding = small
    low = predictor.low_res_size
    result = predictor.predict(embedding, points=[[40, 30]], labels=[1])
    assert isinstance(result, Prediction)
    assert result.masks.dtype == bool and result.scores.dtype == np.float32 and result.logits.dtype == np.float32
    assert result.logits.shape == (3, low, low)
    assert np.all(np.diff(result.scores) <= 0)
    points = [[40, 30]]
    labels = [1]
    logits = result.logits[0]
    for extra in ([70, 60, 0], [20, 70, 1]):
        points.append(extra[:2])
        labels.append(extra[2])
        refined = predictor.predict(embedding, points=points, labels=labels, mask_input=logits)
        assert refined.masks.shape == (1, 90, 140)
        logits = refined.logits[0]
    # the three accepted shapes of a mask input give the same answer
    a = predictor.predict(embedding, points=points, labels=labels, mask_input=logits)
    b = predictor.predict(embedding, points=points, labels=labels, mask_input=logits[None])
    c = predictor.predict(embedding, points=points, labels=labels, mask_input=torch.from_numpy(logits))
    np.testing.assert_array_equal(a.logits, b.logits)
    np.testing.assert_array_equal(a.logits, c.logits)


def test_batched_boxes_equal_single_calls(small):
    predictor, _, embedding = small
    boxes = np.array([[10, 10, 60, 50], [50, 20, 130, 80], [0, 0, 140, 90], [30, 40, 35, 48]], dtype=float)
    batch = predictor.predict_batch(embedding, boxes=boxes)
    assert batch.masks.shape == (4, 1, 90, 140) and batch.scores.shape == (4, 1)
    for i, box in enumerate(boxes):
        single = predictor.predict(embedding, box=box)
        assert (batch.masks[i] == single.masks).mean() >= MASK_AGREEMENT
        np.testing.assert_allclose(batch.scores[i], single.scores, atol=1e-5)
        np.testing.assert_allclose(batch.logits[i], single.logits, atol=1e-4)


def test_batched_points_multimask_and_mask_inputs(small):
    predictor, _, embedding = small
    low = predictor.low_res_size
    points = np.array([[[20, 20], [60, 40]], [[100, 70], [10, 80]], [[70, 10], [70, 80]]], dtype=float)
    labels = np.array([[1, 0], [1, 1], [1, 0]])
    batch = predictor.predict_batch(embedding, points=points, labels=labels, multimask=True)
    assert batch.masks.shape == (3, 3, 90, 140) and batch.logits.shape == (3, 3, low, low)
    for i in range(3):
        single = predictor.predict(embedding, points=points[i], labels=labels[i], multimask=True)
        np.testing.assert_allclose(batch.scores[i], single.scores, atol=1e-5)
        assert np.all(np.diff(batch.scores[i]) <= 0)
    inputs = batch.logits[:, 0]
    refined = predictor.predict_batch(embedding, points=points, labels=labels, mask_inputs=inputs)
    single = predictor.predict(embedding, points=points[1], labels=labels[1], mask_input=inputs[1])
    np.testing.assert_allclose(refined.logits[1], single.logits, atol=1e-4)


def test_decode_torch_is_unsorted_model_frame(small):
    predictor, _, embedding = small
    from sam_core.imaging import to_input_coords

    coords = torch.as_tensor(to_input_coords(np.array([[[40.0, 30.0]]]), (90, 140), 128), dtype=torch.float)
    labels = torch.ones(1, 1, dtype=torch.int)
    masks, iou, low = predictor.decode_torch(embedding, coords, labels, multimask=True)
    assert masks.shape == (1, 3, 90, 140) and iou.shape == (1, 3) and low.shape == (1, 3, 32, 32)
    assert masks.dtype == torch.float32  # logits, not thresholded
    small_masks, _, _ = predictor.decode_torch(embedding, coords, labels, multimask=True, upscale=False)
    assert small_masks.shape == (1, 3, 32, 32)
    result = predictor.predict(embedding, points=[[40, 30]], labels=[1])
    order = torch.argsort(iou[0], descending=True)
    np.testing.assert_allclose(result.scores, iou[0, order].numpy(), atol=0)
    np.testing.assert_array_equal(result.masks, (masks[0, order] > 0).numpy())


def test_clicks_share_the_image_work_and_see_weight_changes(small_vit_checkpoint):
    """Prompts on one image reuse the decoder's per-image work (``MaskDecoder.image_context``): the
    logits equal a decode that recomputes it, for single and batched prompts, and a change of the
    decoder's weights (a fine-tuning step) or another image is seen by the next prompt."""
    predictor = Predictor(None, checkpoint=small_vit_checkpoint)
    model = predictor.model
    first, second = predictor.encode(_image(90, 140, seed=1)), predictor.encode(_image(90, 140, seed=4))
    coords = torch.tensor([[[30.0, 40.0], [90.0, 20.0]], [[60.0, 60.0], [10.0, 100.0]]])
    labels = torch.tensor([[1, 0], [1, 1]], dtype=torch.int)
    boxes = torch.tensor([[10.0, 20.0, 80.0, 110.0], [40.0, 0.0, 120.0, 60.0]])

    def recomputed(embedding):
        with torch.inference_mode():
            sparse, dense = model.prompt_encoder(points=(coords, labels), boxes=boxes, masks=None)
            return model.mask_decoder(embedding.features, model.prompt_encoder.get_dense_pe(), sparse, dense, True)

    changes = [
        # a training step on the first block's attention to the image
        lambda: model.mask_decoder.transformer.layers[0].cross_attn_token_to_image.k_proj.weight.mul_(1.5),
        # a training step on the prompt encoder's "no mask" embedding, added to the image tokens
        lambda: model.prompt_encoder.no_mask_embed.weight.add_(0.25),
        lambda: None,
    ]
    for change in changes:
        for embedding in (first, second, first):
            _, iou, low = predictor.decode_torch(embedding, coords, labels, boxes, multimask=True, upscale=False)
            expected_low, expected_iou = recomputed(embedding)
            torch.testing.assert_close(low, expected_low, atol=1e-5, rtol=0)
            torch.testing.assert_close(iou, expected_iou, atol=1e-6, rtol=0)
        version = model.mask_decoder.context_version()
        with torch.no_grad():
            change()
        assert (model.mask_decoder.context_version() != version) == (change is changes[0])
    with pytest.raises(ValueError, match="exact"):
        model.set_precision("exact").mask_decoder.image_context(first.features, first.features, first.features)


def test_invalid_pixels_are_never_in_masks(small_vit_checkpoint):
    predictor = Predictor(None, checkpoint=small_vit_checkpoint)
    image = _image(60, 80, seed=3).astype(np.float32)
    image[:, :20] = np.nan
    embedding = predictor.encode(image)
    assert embedding.valid is not None and not embedding.valid[:, :20].any()
    result = predictor.predict(embedding, box=[0, 0, 80, 60], multimask=True)
    assert not result.masks[:, :, :20].any()


def test_box_corners_in_any_order_and_clipped(small):
    predictor, _, embedding = small
    a = predictor.predict(embedding, box=[10, 10, 60, 50])
    b = predictor.predict(embedding, box=[60, 50, 10, 10])
    np.testing.assert_array_equal(a.logits, b.logits)
    c = predictor.predict(embedding, box=[-30, -5, 140, 90])
    d = predictor.predict(embedding, box=[0, 0, 140, 90])
    np.testing.assert_array_equal(c.logits, d.logits)


@pytest.mark.parametrize(
    "kwargs, words",
    [
        (dict(), "at least one point"),
        (dict(points=[[150, 10]], labels=[1]), "outside the image"),
        (dict(points=[[10, -3]], labels=[1]), "outside the image"),
        (dict(points=[[10, 10], [20, 20]], labels=[1]), "one label per point"),
        (dict(points=[[10, 10]], labels=[2]), "1 \\(positive\\) or 0"),
        (dict(points=[[10, 10, 3]], labels=[1]), "shape \\(N, 2\\)"),
        (dict(points=[[np.nan, 10]], labels=[1]), "finite"),
        (dict(labels=[1]), "without points"),
        (dict(box=[10, 10, 20]), "four numbers"),
        (dict(box=[200, 100, 300, 200]), "outside the image"),
        (dict(box=[10, 10, 10, 40]), "empty"),
        (dict(points=[[10, 10]], mask_input=np.zeros((16, 16))), "mask input"),
    ],
)
def test_user_mistakes_raise_clear_errors(small, kwargs, words):
    predictor, _, embedding = small
    with pytest.raises(SamError, match=words):
        predictor.predict(embedding, **kwargs)


def test_batch_mistakes(small):
    predictor, _, embedding = small
    with pytest.raises(SamError, match="same number"):
        predictor.predict_batch(embedding, points=np.zeros((2, 1, 2)), labels=np.ones((2, 1)), boxes=np.zeros((3, 4)) + [0, 0, 5, 5])
    with pytest.raises(SamError, match="\\(B, N, 2\\)"):
        predictor.predict_batch(embedding, points=np.zeros((2, 2)))
    with pytest.raises(SamError, match="\\(B, 4\\)"):
        predictor.predict_batch(embedding, boxes=np.zeros(4))
    with pytest.raises(SamError):
        predictor.predict_batch(embedding)


def test_model_instance_and_device(small_vit_checkpoint):
    model = load_official(SMALL_VIT, small_vit_checkpoint)  # any module with the official interface
    predictor = Predictor(model, device="cpu")
    assert predictor.model_id.startswith("weights:")
    assert Predictor(load_official(SMALL_VIT, small_vit_checkpoint)).model_id == predictor.model_id
    with pytest.raises(SamError):
        Predictor(model, checkpoint=small_vit_checkpoint)


def test_models_of_every_precision_are_accepted_as_instances(small_vit_checkpoint):
    """A loaded model passed in (no zoo id) is identified by its encoder's weights, int8 ones included."""
    image = _image(40, 50, seed=2)
    ids = set()
    for precision in ("fp32", "int8"):
        model = load_ours(SMALL_VIT, small_vit_checkpoint).set_precision(precision)
        predictor = Predictor(model)
        assert predictor.predict(predictor.encode(image), points=[[20, 20]]).masks.shape == (3, 40, 50)
        ids.add(predictor.model_id)
    assert len(ids) == 2


def test_embedding_of_another_model_is_refused(small, small_tiny_vit_checkpoint):
    _, _, embedding = small
    other = Predictor(load_ours(SMALL_TINY_VIT, small_tiny_vit_checkpoint))
    with pytest.raises(SamError, match="another model"):
        other.predict(embedding, box=[10, 10, 60, 50])


def test_precision_is_part_of_the_cache_key(small_vit_checkpoint):
    predictor = Predictor(None, checkpoint=small_vit_checkpoint, precision="exact")
    assert predictor.model.precision == "exact"
    image = _image(30, 40, seed=4)
    exact = predictor.encode(image)
    predictor.model.set_precision("bf16")
    fast = predictor.encode(image)
    assert predictor.encoder_runs == 2 and fast.key != exact.key
    assert fast.model_id == exact.model_id  # the same weights: the decoder accepts either embedding
    predictor.predict(exact, box=[5, 5, 30, 20])
    with pytest.raises(SamError, match="precision"):
        Predictor(None, checkpoint=small_vit_checkpoint, precision="fp64")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_same_masks_on_cuda_as_on_cpu(small_vit_checkpoint):
    image = _image(90, 140, seed=6)
    cpu = Predictor(None, checkpoint=small_vit_checkpoint, precision="fp32")
    gpu = Predictor(None, checkpoint=small_vit_checkpoint, device="cuda", precision="fp32")
    a, b = cpu.encode(image), gpu.encode(image)
    assert b.features.device.type == "cuda"
    for kwargs in (dict(points=[[40, 30]], labels=[1]), dict(box=[10, 10, 100, 70])):
        ra, rb = cpu.predict(a, **kwargs), gpu.predict(b, **kwargs)
        assert (ra.masks == rb.masks).mean() >= MASK_AGREEMENT
        np.testing.assert_allclose(ra.scores, rb.scores, atol=1e-3)
