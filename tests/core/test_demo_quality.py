"""The bundled demo model segments generated objects it never saw, through the public API."""

from __future__ import annotations

import numpy as np
import pytest

from sam_core import AutomaticMaskGenerator, Predictor
from sam_core.masks import mask_iou
from sam_core.train.quality import automask_quality, mask_agreement, prompt_quality
from sam_core.train.synthetic import generate_scenes

pytestmark = pytest.mark.usefixtures("single_thread", "demo_checkpoint")
HELD_OUT_SEED = 1000  # the training used seed 0


@pytest.fixture(scope="module")
def predictor():
    return Predictor("demo")


@pytest.fixture(scope="module")
def scenes():
    return generate_scenes(8, seed=HELD_OUT_SEED)


def test_click_and_box(predictor, scenes):
    quality = prompt_quality(predictor, scenes, max_objects=6)
    assert quality.objects >= 30, quality
    assert quality.click >= CLICK_MIN, quality
    assert quality.box >= BOX_MIN, quality


def test_corrective_clicks_improve_the_mask(predictor, scenes):
    from sam_core.train.prompts import corrective_click, interior_point

    rng = np.random.default_rng(0)
    first, later = [], []
    for scene in scenes[:4]:
        embedding = predictor.encode(scene.image)
        for obj in range(1, min(scene.num_objects, 5) + 1):
            target = scene.labels == obj
            points, labels = [interior_point(target)], [1]
            result = predictor.predict(embedding, points=np.array(points), labels=np.array(labels))
            first.append(mask_iou(result.masks[0], target))
            mask, logits = result.masks[0], result.logits[0]
            for _ in range(2):
                point, label = corrective_click(rng, mask, target, centre=True)
                points.append(point)
                labels.append(label)
                result = predictor.predict(embedding, points=np.array(points), labels=np.array(labels),
                                           mask_input=logits[None])
                mask, logits = result.masks[0], result.logits[0]
            later.append(mask_iou(mask, target))
    summary = f"one click {np.mean(first):.3f}, after two corrective clicks {np.mean(later):.3f}"
    assert np.mean(later) >= np.mean(first) + 0.02, summary
    assert np.mean(later) >= CLICK_MIN, summary


def test_automatic_masks(predictor, scenes):
    # the demo's IoU head is not confident enough for the official 0.88 / 0.95 thresholds (see
    # benchmarks/RESULTS.md), so this measures with lowered ones
    generator = AutomaticMaskGenerator(predictor, points_per_side=16, pred_iou_thresh=0.5, stability_score_thresh=0.8)
    quality = automask_quality(generator, scenes[:3])
    assert quality.recall >= RECALL_MIN, quality
    assert quality.spurious <= SPURIOUS_MAX, quality


@pytest.mark.parametrize("precision", ["bf16", "int8", "int8-smooth"])
def test_faster_precisions_give_the_masks_of_fp32(precision, predictor, scenes):
    """Issue 7's accuracy guard: the faster encoder paths keep demo's click and box masks on generated
    scenes at a mean IoU of at least 0.98 with those of fp32 (the decoder runs in fp32 in every
    precision)."""
    faster = Predictor("demo", precision=precision)
    assert faster.model.precision == precision
    ious = mask_agreement(predictor, faster, scenes[:4])
    summary = f"{precision}: {len(ious)} prompts, mean IoU {np.mean(ious):.4f}, min {np.min(ious):.4f}"
    assert len(ious) >= 30, summary
    assert np.mean(ious) >= 0.98, summary



# Lower bounds below what the shipped demo measures here (click 0.90, box 0.93, automatic masks 100% found
# and 0% spurious on these 3 scenes; benchmarks/RESULTS.md), far above an untrained model (IoU about
# 0.01, nothing found): a broken pipeline fails.
CLICK_MIN = 0.8
BOX_MIN = 0.85
RECALL_MIN = 0.8
SPURIOUS_MAX = 0.2
