"""AutomaticMaskGenerator: parity with the official SamAutomaticMaskGenerator, records, label images.

Random-weight checkpoints give speckled, nearly full masks whose boxes all cover the image, so NMS
would keep one mask and the comparison would say little. The parity checkpoints are therefore made
"structured" (``structured_checkpoint``): the decoder's transposed convolutions repeat one kernel tap
over their 2x2 outputs (masks follow the embedding's cells instead of a checkerboard) and the
hypernetwork outputs are scaled up; the mask threshold (a plain model attribute, read by both
implementations) is set to the 85th percentile of the logits, so that masks are parts of the image. Both implementations run the same weights and threshold.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from helpers.checkpoints import SMALL_VIT, load_official, load_ours
from helpers.official import mobile_sam, segment_anything
from sam_core import masks as M
from sam_core.automask import AutomaticMaskGenerator, masks_to_labels
from sam_core.errors import SamError
from sam_core.imaging import to_input_coords
from sam_core.models import get_config
from sam_core.predictor import Predictor
from sam_core.progress import Cancelled, CancelToken


def scene(h: int, w: int, n: int, seed: int) -> np.ndarray:
    """An RGB uint8 image of ``n`` flat-coloured discs on a flat background."""
    rng = np.random.default_rng(seed)
    image = np.zeros((h, w, 3), np.uint8) + rng.integers(0, 255, 3, dtype=np.uint8)
    yy, xx = np.mgrid[:h, :w]
    for _ in range(n):
        cy, cx = rng.uniform(0, h), rng.uniform(0, w)
        r = rng.uniform(0.08, 0.3) * min(h, w)
        image[(yy - cy) ** 2 + (xx - cx) ** 2 < r * r] = rng.integers(0, 255, 3)
    return image


def structured_checkpoint(source: Path, target: Path, scale: float = 20.0) -> Path:
    state = torch.load(source, map_location="cpu", weights_only=True)
    for key in ("mask_decoder.output_upscaling.0.weight", "mask_decoder.output_upscaling.3.weight"):
        weight = state[key].clone()
        weight[:] = weight[:, :, :1, :1]
        state[key] = weight
    for key in list(state):
        if key.startswith("mask_decoder.output_hypernetworks_mlps") and ".layers.2." in key:
            state[key] = state[key] * scale
    torch.save(state, target)
    return target


def logit_quantile(predictor: Predictor, image: np.ndarray, n: int = 8, q: float = 0.85) -> float:
    embedding = predictor.encode(image)
    h, w = image.shape[:2]
    points = M.build_point_grid(n) * np.array([[w, h]])
    coords = torch.as_tensor(to_input_coords(points, (h, w), predictor.image_size), dtype=torch.float)
    low_res, _, _ = predictor.decode_torch(embedding, coords[:, None], torch.ones(len(points), 1, dtype=torch.int))
    return float(torch.quantile(low_res.flatten()[::7], q))


def mask_of(record: dict) -> np.ndarray:
    segmentation = record["segmentation"]
    return M.rle_to_mask(segmentation) if isinstance(segmentation, dict) else segmentation


def assert_same_records(ours: list, official: list, min_count: int = 5) -> None:
    """Same number of masks, in the same order, each with IoU >= 0.99 and the same scores and metadata."""
    assert len(official) >= min_count, f"only {len(official)} official masks: the test says too little"
    assert len(ours) == len(official)
    for a, b in zip(ours, official):
        ma, mb = mask_of(a), mask_of(b)
        union = (ma | mb).sum()
        iou = (ma & mb).sum() / union if union else 1.0  # two empty masks agree
        assert iou >= 0.99
        assert a["predicted_iou"] == pytest.approx(b["predicted_iou"], abs=1e-4)
        assert a["stability_score"] == pytest.approx(b["stability_score"], abs=1e-3)
        np.testing.assert_allclose(a["point_coords"], b["point_coords"])
        assert a["crop_box"] == b["crop_box"]
        assert np.abs(np.array(a["bbox"]) - np.array(b["bbox"])).max() <= 2
        assert abs(a["area"] - b["area"]) <= 0.01 * max(1, b["area"])


# --------------------------------------------------------------------------------------------------
# small ViT: exact parity, crops, small-region removal, output modes


@pytest.fixture(scope="module")
def small_setup(small_vit_checkpoint, tmp_path_factory):
    checkpoint = structured_checkpoint(small_vit_checkpoint, tmp_path_factory.mktemp("automask") / "small.pth")
    image = scene(96, 128, 8, seed=0)
    ours = Predictor(load_ours(SMALL_VIT, checkpoint))
    threshold = logit_quantile(ours, image)
    ours.model.mask_threshold = threshold
    official = load_official(SMALL_VIT, checkpoint)
    official.mask_threshold = threshold
    return ours, official, image, checkpoint, threshold


SMALL_CASES = {
    "grid": dict(points_per_side=8, pred_iou_thresh=0.01, stability_score_thresh=0.05, box_nms_thresh=0.9),
    "crops+small_regions": dict(
        points_per_side=8, pred_iou_thresh=0.0, stability_score_thresh=0.05, box_nms_thresh=0.9,
        crop_n_layers=1, min_mask_region_area=20,
    ),
    "two_layers_downscaled": dict(
        points_per_side=8, pred_iou_thresh=0.0, stability_score_thresh=0.0, crop_n_layers=2,
        crop_n_points_downscale_factor=2, box_nms_thresh=0.9, crop_nms_thresh=0.7,
    ),
}
GRID = SMALL_CASES["grid"]


@pytest.mark.parametrize("case", sorted(SMALL_CASES))
def test_parity_small_vit(small_setup, case):
    ours, official_model, image, _, _ = small_setup
    params = SMALL_CASES[case]
    if params.get("min_mask_region_area"):
        pytest.importorskip("cv2", reason="the official small-region removal needs OpenCV (test extra)")
    sa = segment_anything()
    expected = sa.SamAutomaticMaskGenerator(official_model, **params).generate(image)
    got = AutomaticMaskGenerator(ours, **params).generate(image)
    assert_same_records(got, expected)
    for a, b in zip(got, expected):
        assert np.array_equal(a["segmentation"], b["segmentation"])
        assert a["bbox"] == b["bbox"] and a["area"] == b["area"]
        assert set(a) == set(b)
        # the official boxes turn float when a batch keeps no mask (a float empty box tensor); ours stay int
        assert all(type(v) is int for v in a["bbox"] + a["crop_box"] + [a["area"]])


def test_parity_small_vit_uncompressed_rle(small_setup):
    ours, official_model, image, _, _ = small_setup
    params = dict(GRID, output_mode="uncompressed_rle")
    expected = segment_anything().SamAutomaticMaskGenerator(official_model, **params).generate(image)
    got = AutomaticMaskGenerator(ours, **params).generate(image)
    assert len(got) >= 3
    assert [r["segmentation"] for r in got] == [r["segmentation"] for r in expected]


def test_output_modes_and_record_format(small_setup):
    ours, _, image, _, _ = small_setup
    params = GRID
    binary = AutomaticMaskGenerator(ours, **params).generate(image)
    rle = AutomaticMaskGenerator(ours, output_mode="uncompressed_rle", **params).generate(image)
    coco = AutomaticMaskGenerator(ours, output_mode="coco_rle", **params).generate(image)
    assert len(binary) == len(rle) == len(coco) >= 3
    for b, r, c in zip(binary, rle, coco):
        mask = b["segmentation"]
        assert mask.dtype == bool and mask.shape == image.shape[:2]
        assert r["segmentation"]["size"] == list(image.shape[:2])
        assert isinstance(c["segmentation"]["counts"], str)
        assert np.array_equal(M.rle_to_mask(r["segmentation"]), mask)
        assert np.array_equal(M.rle_to_mask(c["segmentation"]), mask)
        assert b["area"] == int(mask.sum()) == M.area_from_rle(c["segmentation"])
        x, y, w, h = b["bbox"]
        rows, cols = np.nonzero(mask)
        assert [x, y, x + w, y + h] == [cols.min(), rows.min(), cols.max(), rows.max()]
        assert len(b["point_coords"]) == 1 and len(b["point_coords"][0]) == 2
        assert b["crop_box"] == [0, 0, image.shape[1], image.shape[0]]
        assert 0.0 <= b["stability_score"] <= 1.0
        assert b["predicted_iou"] > GRID["pred_iou_thresh"] and b["stability_score"] >= GRID["stability_score_thresh"]
    json.dumps(coco)  # COCO RLE records are JSON-serializable
    scores = [b["predicted_iou"] for b in binary]
    assert scores == sorted(scores, reverse=True)  # official order: NMS keeps by decreasing IoU


def test_progress_cancel_and_fast_mode(small_setup):
    ours, _, image, _, _ = small_setup
    calls = []
    params = dict(GRID, points_per_batch=16)
    full = AutomaticMaskGenerator(ours, **params).generate(image, progress=lambda d, t, m: calls.append((d, t)))
    assert calls[-1] == (4, 4) and [d for d, _ in calls] == [0, 1, 2, 3, 4]
    token = CancelToken()
    token.cancel()
    with pytest.raises(Cancelled):
        AutomaticMaskGenerator(ours, **params).generate(image, cancel=token)
    fast = AutomaticMaskGenerator(ours, skip_covered_points=True, **params).generate(image)
    assert 0 < len(fast) <= len(full)
    # every mask of the fast mode is one of the official algorithm's candidates, or absent
    fast_points = {tuple(r["point_coords"][0]) for r in fast}
    assert fast_points <= {tuple(p) for p in (M.build_point_grid(8) * [[128, 96]]).tolist()}


def test_batch_size_does_not_change_output(small_setup):
    ours, _, image, _, _ = small_setup
    params = GRID
    a = AutomaticMaskGenerator(ours, points_per_batch=7, **params).generate(image)
    b = AutomaticMaskGenerator(ours, points_per_batch=64, **params).generate(image)
    assert_same_records(a, b)


def test_parameter_errors(small_setup):
    ours = small_setup[0]
    for bad in (
        dict(points_per_side=None),
        dict(points_per_side=8, point_grids=[M.build_point_grid(4)]),
        dict(points_per_side=0),
        dict(points_per_batch=0),
        dict(output_mode="png"),
        dict(pred_iou_thresh=1.5),
        dict(crop_n_layers=-1),
        dict(points_per_side=None, point_grids=[M.build_point_grid(4)], crop_n_layers=1),
    ):
        with pytest.raises(SamError):
            AutomaticMaskGenerator(ours, **bad)


def test_explicit_point_grids(small_setup):
    ours, official_model, image, _, _ = small_setup
    grids = [np.random.default_rng(1).uniform(0, 1, (40, 2))]
    params = dict(GRID, points_per_side=None, point_grids=grids)
    expected = segment_anything().SamAutomaticMaskGenerator(official_model, **params).generate(image)
    got = AutomaticMaskGenerator(ours, **params).generate(image)
    assert_same_records(got, expected, min_count=3)


def test_no_masks(small_setup):
    ours, _, image, _, _ = small_setup
    assert AutomaticMaskGenerator(ours, points_per_side=4, pred_iou_thresh=1.0).generate(image) == []


# --------------------------------------------------------------------------------------------------
# label images


def test_masks_to_labels_rule():
    big = np.zeros((10, 12), bool)
    big[1:9, 1:11] = True
    small = np.zeros_like(big)
    small[3:5, 3:5] = True
    other = np.zeros_like(big)
    other[0, 11] = True
    records = [
        {"segmentation": small, "area": 4},
        {"segmentation": big, "area": int(big.sum())},
        {"segmentation": M.mask_to_rle(torch.as_tensor(other)[None])[0], "area": 1},
    ]
    labels = masks_to_labels(records)
    assert labels.dtype == np.int32 and labels.shape == (10, 12)
    assert (labels[small] == 1).all()  # the smaller mask on top of the larger one stays visible
    assert (labels[big & ~small] == 2).all()
    assert labels[0, 11] == 3 and labels[0, 0] == 0
    coco = [{"segmentation": M.coco_encode_rle(M.mask_to_rle(torch.as_tensor(m)[None])[0])} for m in (small, big)]
    assert np.array_equal(masks_to_labels(coco), np.where(small, 1, np.where(big, 2, 0)))
    assert masks_to_labels([], shape=(4, 5)).shape == (4, 5)
    with pytest.raises(SamError):
        masks_to_labels([])
    with pytest.raises(SamError):
        masks_to_labels(records, shape=(3, 3))


def test_generated_labels(small_setup):
    ours, _, image, _, _ = small_setup
    records = AutomaticMaskGenerator(ours, **GRID).generate(image)
    labels = masks_to_labels(records)
    assert labels.shape == image.shape[:2]
    smallest = int(np.argmin([r["area"] for r in records]))
    assert (labels[records[smallest]["segmentation"]] == smallest + 1).all()
    assert set(np.unique(labels)) <= set(range(len(records) + 1))


# --------------------------------------------------------------------------------------------------
# full-size models


# Full-size random encoders give near-uniform features: masks are speckled and nearly full whatever the
# point, so NMS would keep one. These tests therefore switch NMS off (threshold 1.0) and the score
# filters too, and compare every candidate of a 4x4 grid (48 masks): the full-size decoder, upsampling,
# stability scores, boxes, small-region removal and record order against the official package.
# NMS, crops and filters are compared on the small model above.
FULL_SIZE = dict(points_per_side=4, pred_iou_thresh=0.0, stability_score_thresh=0.0, box_nms_thresh=1.0)


@pytest.mark.slow
def test_parity_vit_b(vit_b_checkpoint):
    config = get_config("vit_b")
    image = scene(384, 512, 12, seed=1)
    pytest.importorskip("cv2", reason="the official small-region removal needs OpenCV (test extra)")
    params = dict(FULL_SIZE, min_mask_region_area=50)
    official = load_official(config, vit_b_checkpoint)
    expected = segment_anything().SamAutomaticMaskGenerator(official, **params).generate(image)
    del official
    got = AutomaticMaskGenerator(Predictor(load_ours(config, vit_b_checkpoint)), **params).generate(image)
    assert_same_records(got, expected, min_count=40)


@pytest.mark.slow
def test_parity_vit_t(vit_t_checkpoint):
    config = get_config("vit_t")
    image = scene(384, 512, 12, seed=2)
    expected = mobile_sam().SamAutomaticMaskGenerator(load_official(config, vit_t_checkpoint), **FULL_SIZE).generate(image)
    got = AutomaticMaskGenerator(Predictor(load_ours(config, vit_t_checkpoint)), **FULL_SIZE).generate(image)
    assert_same_records(got, expected, min_count=40)
