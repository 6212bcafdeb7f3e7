"""sam_core.masks against the official ``segment_anything.utils.amg`` functions (exact equality)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage

from helpers.official import segment_anything
from sam_core import masks as M


@pytest.fixture(scope="module")
def official():
    segment_anything()
    from segment_anything.utils import amg as official_amg

    return official_amg


def blobby_masks(n: int, h: int, w: int, seed: int) -> torch.Tensor:
    """Random masks with islands and holes of many sizes (smoothed noise, thresholded)."""
    rng = np.random.default_rng(seed)
    noise = rng.standard_normal((n, h, w))
    smooth = np.stack([ndimage.gaussian_filter(a, sigma=rng.uniform(0.7, 3.0)) for a in noise])
    thresholds = rng.uniform(-0.05, 0.15, size=(n, 1, 1))
    return torch.as_tensor(smooth > thresholds)


def test_stability_score_equals_official(official):
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 5, 37, 53, generator=gen) * 4
    expected = official.calculate_stability_score(logits, 0.0, 1.0)
    for chunk in (1, 4, 64):
        got = M.stability_score(logits, 0.0, 1.0, chunk_size=chunk)
        assert got.shape == (3, 5)
        assert torch.equal(got, expected)
    assert torch.equal(M.stability_score(logits, 0.5, 2.0), official.calculate_stability_score(logits, 0.5, 2.0))


def test_boxes_equal_official(official):
    masks = blobby_masks(6, 31, 45, seed=1)
    masks[2] = False  # an empty mask gives [0, 0, 0, 0]
    masks[3] = False
    masks[3, 30, 44] = True  # a single pixel at the corner
    got = M.masks_to_boxes(masks)
    assert got.dtype == torch.int64
    assert torch.equal(got, official.batched_mask_to_box(masks))
    assert torch.equal(got[2], torch.zeros(4, dtype=torch.int64))
    assert got[3].tolist() == [44, 30, 44, 30]
    assert torch.equal(M.masks_to_boxes(masks.reshape(2, 3, 31, 45)), got.reshape(2, 3, 4))
    assert torch.equal(M.masks_to_boxes(masks[0]), official.batched_mask_to_box(masks[0]))
    assert M.masks_to_boxes(torch.zeros(0, 5, 5, dtype=torch.bool)).shape == (0, 4)


def brute_force_nms(boxes: torch.Tensor, scores: torch.Tensor, thresh: float) -> list[int]:
    order = sorted(range(len(scores)), key=lambda i: (-float(scores[i]), i))
    kept: list[int] = []
    for i in order:
        ok = True
        for j in kept:
            iou = M.box_iou(boxes[i : i + 1].float(), boxes[j : j + 1].float())[0, 0]
            if iou > thresh:
                ok = False
                break
        if ok:
            kept.append(i)
    return kept


def test_nms_torchvision_semantics():
    from torchvision.ops import boxes as shim  # the test shim of torchvision's ops

    gen = torch.Generator().manual_seed(2)
    xy = torch.randint(0, 60, (200, 2), generator=gen)
    wh = torch.randint(1, 30, (200, 2), generator=gen)
    boxes = torch.cat([xy, xy + wh], dim=1)
    scores = torch.randint(0, 8, (200,), generator=gen).float()  # many ties
    for thresh in (0.3, 0.5, 0.7):
        got = M.nms(boxes.float(), scores, thresh)
        assert got.tolist() == brute_force_nms(boxes, scores, thresh)
        assert torch.equal(got, shim.nms(boxes.float(), scores, thresh))
    # identical boxes: IoU 1.0 > thresh suppresses; IoU equal to the threshold does not
    same = torch.tensor([[0.0, 0, 10, 10], [0, 0, 10, 10], [0, 0, 10, 5]])
    assert M.nms(same, torch.tensor([0.5, 0.9, 0.1]), 0.7).tolist() == [1, 2]
    assert M.nms(same[[0, 2]], torch.tensor([1.0, 0.5]), 0.5).tolist() == [0, 1]
    # categories never suppress each other
    idxs = torch.randint(0, 3, (200,), generator=gen)
    got = M.batched_nms(boxes.float(), scores, idxs, 0.5)
    assert torch.equal(got, shim.batched_nms(boxes.float(), scores, idxs, 0.5))
    for c in range(3):
        sel = torch.nonzero(idxs == c)[:, 0]
        per_class = sel[M.nms(boxes[sel].float(), scores[sel], 0.5)]
        assert set(per_class.tolist()) == set(got[idxs[got] == c].tolist())
    assert M.nms(torch.zeros(0, 4), torch.zeros(0), 0.5).shape == (0,)


def test_rle_equals_official(official):
    masks = blobby_masks(7, 23, 17, seed=3)
    masks[0] = True
    masks[1] = False
    masks[2, 0, 0] = True
    masks[3, 0, 0] = False
    got = M.mask_to_rle(masks)
    expected = official.mask_to_rle_pytorch(masks)
    assert got == expected
    for rle, mask in zip(got, masks):
        assert np.array_equal(M.rle_to_mask(rle), official.rle_to_mask(rle))
        assert np.array_equal(M.rle_to_mask(rle), mask.numpy())
        assert M.area_from_rle(rle) == official.area_from_rle(rle) == int(mask.sum())
    assert M.mask_to_rle(torch.zeros(0, 4, 4, dtype=torch.bool)) == []


def test_coco_compressed_rle_equals_pycocotools():
    mask_utils = pytest.importorskip("pycocotools.mask")
    masks = blobby_masks(6, 64, 48, seed=4)
    masks[0] = True
    masks[1] = False
    for rle in M.mask_to_rle(masks):
        ours = M.coco_encode_rle(rle)
        theirs = mask_utils.frPyObjects(rle, *rle["size"])
        assert ours["counts"] == theirs["counts"].decode("utf-8")
        assert ours["size"] == list(theirs["size"])
        assert M.coco_string_to_counts(ours["counts"]) == rle["counts"]
        assert np.array_equal(M.rle_to_mask(ours), mask_utils.decode(theirs).astype(bool))
        assert M.area_from_rle(ours) == int(mask_utils.area(theirs))


def test_coco_compressed_rle_round_trip_without_pycocotools():
    masks = blobby_masks(5, 200, 300, seed=5)  # long runs: counts beyond one 5-bit group, negative diffs
    for rle, mask in zip(M.mask_to_rle(masks), masks):
        encoded = M.coco_encode_rle(rle)
        assert isinstance(encoded["counts"], str)
        assert M.coco_string_to_counts(encoded["counts"]) == rle["counts"]
        assert np.array_equal(M.rle_to_mask(encoded), mask.numpy())


def test_grids_and_crops_equal_official(official):
    for n in (1, 4, 7, 32):
        assert np.array_equal(M.build_point_grid(n), official.build_point_grid(n))
    for args in ((32, 2, 2), (16, 3, 1), (10, 0, 2)):
        for a, b in zip(M.build_all_layer_point_grids(*args), official.build_all_layer_point_grids(*args)):
            assert np.array_equal(a, b)
    for size in ((1024, 1024), (480, 640), (777, 333), (50, 1200)):
        for layers in (0, 1, 2, 3):
            for ratio in (512 / 1500, 0.1, 0.0):
                assert M.generate_crop_boxes(size, layers, ratio) == official.generate_crop_boxes(size, layers, ratio)


def test_uncrop_helpers_equal_official(official):
    gen = torch.Generator().manual_seed(6)
    boxes = torch.randint(0, 200, (20, 4), generator=gen)
    points = torch.rand(20, 2, generator=gen, dtype=torch.float64) * 100
    crop = [37, 12, 237, 180]
    assert torch.equal(M.uncrop_boxes_xyxy(boxes, crop), official.uncrop_boxes_xyxy(boxes, crop))
    assert torch.equal(M.uncrop_points(points, crop), official.uncrop_points(points, crop))
    masks = blobby_masks(3, 168, 200, seed=7)
    assert torch.equal(M.uncrop_masks(masks, crop, 300, 400), official.uncrop_masks(masks, crop, 300, 400))
    assert M.uncrop_masks(masks, [0, 0, 200, 168], 168, 200) is masks
    orig = [0, 0, 400, 300]
    assert torch.equal(
        M.is_box_near_crop_edge(boxes, crop, orig), official.is_box_near_crop_edge(boxes, crop, orig)
    )
    assert torch.equal(M.box_xyxy_to_xywh(boxes[0]), official.box_xyxy_to_xywh(boxes[0]))
    assert np.array_equal(M.box_xyxy_to_xywh(boxes.numpy()), torch.stack([official.box_xyxy_to_xywh(b) for b in boxes]).numpy())


@pytest.mark.parametrize("mode", ["holes", "islands"])
def test_remove_small_regions_equals_official(official, mode):
    pytest.importorskip("cv2")
    masks = blobby_masks(12, 80, 90, seed=8).numpy()
    masks[0] = False
    masks[1] = True
    for area in (1, 5, 30, 200, 10_000):
        for mask in masks:
            got, changed = M.remove_small_regions(mask, area, mode)
            expected, expected_changed = official.remove_small_regions(mask, area, mode)
            assert changed == expected_changed
            assert np.array_equal(got, expected)


def test_remove_small_regions_rules():
    mask = np.zeros((20, 20), dtype=bool)
    mask[2:12, 2:12] = True
    mask[5, 5] = False  # a 1-pixel hole
    mask[15, 15] = True  # a 1-pixel island
    mask[17, 16] = True  # ... that touches another one diagonally (8-connected: one island of 2)
    filled, changed = M.remove_small_regions(mask, 2, "holes")
    assert changed and filled[5, 5] and filled.sum() == mask.sum() + 1
    cleaned, changed = M.remove_small_regions(mask, 3, "islands")
    assert changed and not cleaned[15, 15] and not cleaned[17, 16] and cleaned[2, 2]
    kept, changed = M.remove_small_regions(mask, 3, "holes")
    assert changed  # hole of 1 filled
    only_small = np.zeros((10, 10), dtype=bool)
    only_small[1, 1] = only_small[5:7, 5] = True
    largest, changed = M.remove_small_regions(only_small, 100, "islands")
    assert changed and largest.sum() == 2 and not largest[1, 1]
    with pytest.raises(ValueError):
        M.remove_small_regions(mask, 3, "both")


def test_postprocess_small_regions_equals_official(official):
    pytest.importorskip("cv2")
    sa = segment_anything()
    Generator = sa.SamAutomaticMaskGenerator
    masks = blobby_masks(10, 60, 70, seed=9)
    masks[5] = masks[4]  # a duplicate
    masks[6] = False
    masks[6, 10:40, 10:40] = True  # a clean square, unchanged by post-processing
    rles = official.mask_to_rle_pytorch(masks)
    data = official.MaskData(rles=rles, boxes=official.batched_mask_to_box(masks), iou_preds=torch.rand(10))
    data = Generator.postprocess_small_regions(data, 25, 0.7)
    keep, new_masks, changed = M.postprocess_small_regions(masks, 25, 0.7)
    assert len(keep) == len(data["rles"])
    for k, rle, box in zip(keep.tolist(), data["rles"], data["boxes"]):
        assert np.array_equal(new_masks[k].numpy(), official.rle_to_mask(rle))
        assert torch.equal(M.masks_to_boxes(new_masks[k]), box)
    assert not bool(changed[6])


def test_mask_iou_is_the_one_rule_for_empty_masks():
    """One IoU for sam_core and its tests: two empty masks are the same mask (1.0); one empty is 0.0."""
    a = np.zeros((4, 5), bool)
    b = a.copy()
    assert M.mask_iou(a, b) == 1.0
    b[1:3, 1:4] = True
    assert M.mask_iou(a, b) == 0.0
    a[1:3, 1:2] = True
    assert M.mask_iou(a, b) == pytest.approx(2 / 6)
    with pytest.raises(ValueError, match="shapes"):
        M.mask_iou(a, b[:3])


def test_stability_of_logits_with_nothing_near_the_mask_is_nan_and_stops_propagation():
    """The one stability score (official: 0 / 0 is NaN); volume propagation uses it and stops at NaN."""
    from sam_core import volume

    logits = torch.full((1, 8, 8), -5.0)
    assert torch.isnan(M.stability_score(logits, 0.0, 1.0)).all()
    assert np.isnan(volume._stability(logits[0].numpy()))
    logits[0, 2:6, 2:6] = 3.0
    logits[0, 6, 2:6] = 0.5  # above -1, below +1
    assert volume._stability(logits[0].numpy()) == pytest.approx(16 / 20)
