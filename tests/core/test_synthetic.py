"""Generated scenes, prompt sampling and losses of sam_core.train."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage

from sam_core.train.losses import bce_dice_loss, dice_loss, focal_loss, iou_loss, mask_iou, mask_loss
from sam_core.train.prompts import corrective_click, interior_point, jittered_box, mask_box, random_point_inside
from sam_core.train.synthetic import STYLES, generate_scene, generate_scenes


def test_scene_is_reproducible_and_seed_dependent():
    a = generate_scene((3, 7))
    b = generate_scene((3, 7))
    c = generate_scene((3, 8))
    assert np.array_equal(a.image, b.image) and np.array_equal(a.labels, b.labels)
    assert not np.array_equal(a.image, c.image)
    # scene i of a set does not depend on how many scenes are asked for
    assert np.array_equal(generate_scenes(2, seed=5)[1].image, generate_scenes(4, seed=5)[1].image)


@pytest.mark.parametrize("style", STYLES)
def test_scene_format_and_objects(style):
    for i in range(3):
        scene = generate_scene((11, i), size=128, style=style)
        assert scene.image.shape == (128, 128, 3) and scene.image.dtype == np.uint8
        assert scene.labels.shape == (128, 128) and scene.labels.dtype == np.int32
        n = scene.num_objects
        assert n >= 1
        # ids are consecutive, every object is one connected piece of at least 20 pixels
        assert set(np.unique(scene.labels)) <= set(range(n + 1))
        for obj in range(1, n + 1):
            mask = scene.labels == obj
            assert mask.sum() >= 20
            assert ndimage.label(mask)[1] == 1
        # objects are visible: their mean colour differs from the image around them
        assert scene.image.std() > 5


def test_scenes_mix_styles_and_colour():
    scenes = generate_scenes(30, seed=2)
    assert {s.style for s in scenes} == set(STYLES)
    # grey scenes carry only independent pixel noise between channels
    grey = [np.abs(s.image[..., 0].astype(int) - s.image[..., 1]).mean() < 8 for s in scenes]
    assert any(grey) and not all(grey)
    counts = [s.num_objects for s in scenes]
    assert min(counts) >= 1 and max(counts) >= 10


def test_prompts_lie_where_they_should():
    rng = np.random.default_rng(0)
    mask = np.zeros((64, 80), bool)
    mask[10:30, 20:60] = True
    x, y = interior_point(mask)
    assert mask[int(y), int(x)] and abs(y - 19.5) <= 1 and 29 <= x <= 50  # on the ridge of the distance map
    for _ in range(20):
        x, y = random_point_inside(rng, mask)
        assert mask[int(y), int(x)]
    assert mask_box(mask) == (20.0, 10.0, 59.0, 29.0)
    assert jittered_box(rng, mask, noise=0.0) == (20.0, 10.0, 59.0, 29.0)
    boxes = np.array([jittered_box(rng, mask) for _ in range(200)])
    assert np.all(boxes[:, :2] <= boxes[:, 2:]) and boxes.min() >= 0 and boxes[:, 2].max() <= 79
    assert np.abs(boxes.mean(axis=0) - [20, 10, 59, 29]).max() < 2.0


def test_corrective_clicks_fix_the_error():
    rng = np.random.default_rng(1)
    target = np.zeros((50, 50), bool)
    target[10:40, 10:40] = True
    too_small = np.zeros_like(target)
    too_small[10:25, 10:40] = True
    (x, y), label = corrective_click(rng, too_small, target)
    assert label == 1 and target[int(y), int(x)] and not too_small[int(y), int(x)]
    too_big = target.copy()
    too_big[40:48, :] = True
    (x, y), label = corrective_click(rng, too_big, target, centre=True)
    assert label == 0 and not target[int(y), int(x)] and abs(y - 43.5) <= 1


def test_losses():
    target = torch.zeros(2, 1, 32, 32)
    target[:, :, 8:24, 8:24] = 1
    good = (target * 2 - 1) * 10
    bad = -good
    logits = torch.cat([good, bad], dim=1)  # (2, 2, 32, 32): candidate 0 right, candidate 1 inverted
    for fn in (mask_loss, bce_dice_loss, focal_loss, dice_loss):
        loss = fn(logits, target)
        assert loss.shape == (2, 2)
        assert torch.all(loss[:, 0] < 0.05) and torch.all(loss[:, 1] > 0.5)
    iou = mask_iou(logits, target)
    assert torch.allclose(iou, torch.tensor([[1.0, 0.0], [1.0, 0.0]]))
    assert torch.allclose(iou_loss(torch.tensor([[1.0, 0.5]] * 2), logits, target), torch.tensor([[0.0, 0.25]] * 2))
    # focal and dice are weighted 20:1 as in SAM
    assert torch.allclose(mask_loss(logits, target), 20 * focal_loss(logits, target) + dice_loss(logits, target))
