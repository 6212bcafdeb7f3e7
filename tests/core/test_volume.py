"""sam_core.volume: propagation through stacks, filling between key slices, 3D automatic labels."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
from scipy import ndimage

from sam_core.errors import SamError
from sam_core.masks import mask_iou
from sam_core.progress import CancelToken, Cancelled
from sam_core.volume import (
    automask_volume,
    fill_between,
    interpolate_masks,
    link_slices,
    prompts_from_mask,
    propagate,
)


@dataclass
class _Prediction:
    masks: np.ndarray
    scores: np.ndarray
    logits: np.ndarray


class ThresholdPredictor:
    """Deterministic predictor: the bright connected component under the positive point (else the
    largest one inside the box). Follows the Predictor interface; logits are +-10 on a 64 px grid."""

    def __init__(self, threshold: float = 100.0) -> None:
        self.threshold = threshold
        self.encoded = 0
        self.calls = []

    def encode(self, image, preparation=None):
        self.encoded += 1
        return np.asarray(image) > self.threshold

    def predict(self, embedding, points=None, labels=None, box=None, mask_input=None, multimask=None):
        self.calls.append({"points": points, "box": box, "mask_input": mask_input})
        components, _ = ndimage.label(embedding)
        mask = np.zeros(embedding.shape, bool)
        if points is not None:
            x, y = (int(round(v)) for v in points[0])
            if components[y, x]:
                mask = components == components[y, x]
        if not mask.any() and box is not None:
            x0, y0, x1, y1 = (int(round(v)) for v in box)
            inside = components[y0 : y1 + 1, x0 : x1 + 1]
            ids, counts = np.unique(inside[inside > 0], return_counts=True)
            if len(ids):
                mask = components == ids[np.argmax(counts)]
        score = 0.95 if mask.any() else 0.1
        small = mask[:: max(1, mask.shape[0] // 64), :: max(1, mask.shape[1] // 64)][:64, :64]
        logits = np.where(small, 10.0, -10.0).astype(np.float32)
        return _Prediction(mask[None], np.array([score], np.float32), logits[None])


def _ball_volume(depth: int = 20, size: int = 64):
    """Two objects: a ball in the centre (slices 4..15) and a column at a corner (all slices)."""
    z, y, x = np.ogrid[:depth, :size, :size]
    ball = ((z - 9.5) / 6.0) ** 2 + ((y - 32) / 14.0) ** 2 + ((x - 32) / 14.0) ** 2 <= 1
    column = np.broadcast_to(((y - 6) ** 2 + (x - 6) ** 2 <= 16), (depth, size, size))
    volume = np.where(ball | column, 200, 20).astype(np.uint8)
    return volume, ball



def test_prompts_from_mask_point_inside_and_box_with_margin():
    mask = np.zeros((50, 60), bool)
    mask[10:30, 20:40] = True
    mask[10:15, 20:25] = False  # concave corner: the point must stay inside
    points, labels, box = prompts_from_mask(mask, margin=0.1)
    x, y = points[0]
    assert mask[int(y), int(x)]
    assert labels.tolist() == [1]
    assert box.tolist() == [18.0, 8.0, 41.0, 31.0]
    with pytest.raises(SamError):
        prompts_from_mask(np.zeros((5, 5), bool))


def test_propagate_follows_object_both_ways_and_stops_where_it_ends():
    volume, ball = _ball_volume()
    predictor = ThresholdPredictor()
    steps = []
    result = propagate(predictor, volume, 9, ball[9], progress=lambda d, t, m: steps.append((d, t)))
    assert result.shape == volume.shape and result.dtype == bool
    assert mask_iou(result, ball) == 1.0
    assert not result[:, :12, :12].any()  # never jumps to the column
    # Stopped one slice after the object ended in each direction, not at the stack's ends.
    assert predictor.encoded == int(ball.reshape(len(ball), -1).any(axis=1).sum()) - 1 + 2
    assert steps[-1][0] == steps[-1][1]
    # Each step was prompted from the previous result: box, point and (after the first) its logits.
    assert all(c["box"] is not None and c["points"] is not None for c in predictor.calls)
    assert predictor.calls[0]["mask_input"] is None and predictor.calls[1]["mask_input"] is not None


def test_propagate_range_direction_and_bad_input():
    volume, ball = _ball_volume()
    result = propagate(ThresholdPredictor(), volume, 9, ball[9], index_range=(8, 11))
    assert result[8:12].any(axis=(1, 2)).all()
    assert not result[:8].any() and not result[12:].any()
    forward = propagate(ThresholdPredictor(), volume, 9, ball[9], direction="forward")
    assert not forward[:9].any() and forward[9:].any(axis=(1, 2)).sum() == ball[9:].any(axis=(1, 2)).sum()
    with pytest.raises(SamError):
        propagate(ThresholdPredictor(), volume, 9, np.zeros(volume.shape[1:], bool))
    with pytest.raises(SamError):
        propagate(ThresholdPredictor(), volume, 9, ball[9], direction="up")
    with pytest.raises(SamError):
        propagate(ThresholdPredictor(), volume[0], 0, ball[9])
    token = CancelToken()
    token.cancel()
    with pytest.raises(Cancelled):
        propagate(ThresholdPredictor(), volume, 9, ball[9], cancel=token)


def test_propagate_stops_on_low_overlap():
    """An object that jumps sideways between slices is not followed (overlap below min_overlap)."""
    volume = np.full((6, 64, 64), 20, np.uint8)
    volume[0:3, 10:30, 10:30] = 200
    volume[3:6, 34:54, 10:30] = 200  # touches nothing of the slice before
    volume[3:6, 28:34, 10:30] = 200  # a bridge so the component under the box is one object
    start = volume[0] > 100
    result = propagate(ThresholdPredictor(), volume, 0, start, min_overlap=0.5)
    assert result[:3].any(axis=(1, 2)).all()
    assert not result[3:].any()


def test_interpolate_masks_between_two_discs():
    yy, xx = np.ogrid[:64, :64]
    a = (yy - 32) ** 2 + (xx - 32) ** 2 <= 8**2
    b = (yy - 32) ** 2 + (xx - 32) ** 2 <= 16**2
    mid = interpolate_masks(a, b, 0.5)
    radius = np.sqrt(mid.sum() / np.pi)
    assert 11 <= radius <= 13
    assert np.array_equal(interpolate_masks(a, b, 0.0), a)


def test_fill_between_key_slices():
    volume, ball = _ball_volume()
    predictor = ThresholdPredictor()
    result = fill_between(predictor, volume, {6: ball[6], 13: ball[13]})
    assert np.array_equal(result[6:14], ball[6:14])
    assert not result[:6].any() and not result[14:].any()
    assert predictor.encoded == 6
    with pytest.raises(SamError):
        fill_between(predictor, volume, {6: ball[6]})


def test_link_slices_keeps_ids_across_slices():
    a = np.zeros((3, 20, 20), np.int32)
    a[0, 2:8, 2:8] = 5
    a[0, 12:18, 12:18] = 7
    a[1, 3:9, 3:9] = 2  # moved object 5
    a[1, 12:18, 12:18] = 9  # same as 7
    a[2, 12:18, 13:19] = 1  # 7 again
    a[2, 2:4, 15:19] = 3  # new object
    linked = link_slices(list(a))
    assert linked[0, 5, 5] == linked[1, 5, 5] == 1
    assert linked[0, 15, 15] == linked[1, 15, 15] == linked[2, 15, 15] == 2
    assert linked[2, 3, 16] == 3
    assert set(np.unique(linked)) == {0, 1, 2, 3}


def test_link_slices_is_one_to_one():
    """A slice where one object splits in two: only the better overlap keeps the id (the other part
    reaches well outside the object, so it is no fragment of it)."""
    a = np.zeros((2, 20, 20), np.int32)
    a[0, 2:18, 2:10] = 1
    a[1, 2:12, 2:10] = 1
    a[1, 13:18, 2:18] = 2
    linked = link_slices(list(a))
    assert linked[1, 5, 5] == linked[0, 5, 5]
    assert linked[1, 15, 5] not in (0, linked[0, 5, 5])


def test_automask_volume_links_components():
    volume, ball = _ball_volume()

    def segment(image):
        labels, _ = ndimage.label(image > 100)
        return labels

    steps = []
    labels = automask_volume(segment, volume, progress=lambda d, t, m: steps.append(d))
    assert labels.shape == volume.shape
    assert len(np.unique(labels[ball])) == 1 and labels[ball][0] > 0
    assert len(np.unique(labels[:, 6, 6])) == 1  # the column is one object through all slices
    assert labels[0, 6, 6] != labels[ball][0]
    assert steps[-1] == len(volume)


def test_propagate_with_a_real_predictor_stays_within_the_cache_budget(small_vit_checkpoint):
    """Mechanics with the real engine (random weights): slices are encoded on demand through the cache,
    and the cache never holds more than its memory budget."""
    from sam_core.cache import EmbeddingCache
    from sam_core.predictor import Predictor

    volume, ball = _ball_volume(depth=8)
    cache = EmbeddingCache(memory_bytes=3 * 32 * 8 * 8 * 4 + 64)
    predictor = Predictor(None, checkpoint=small_vit_checkpoint, cache=cache)
    result = propagate(predictor, volume, 4, ball[4], stop_iou=0.0, stop_stability=0.0, min_overlap=0.0)
    assert result.shape == volume.shape
    assert np.array_equal(result[4], ball[4])
    assert 1 <= predictor.encoder_runs <= 7
    assert cache.memory_used <= cache.memory_bytes


@pytest.mark.slow
def test_propagate_with_demo_segments_a_generated_3d_object(demo_checkpoint):
    from napari_sam.samples import make_volume_3d
    from sam_core.predictor import Predictor

    volume, labels = make_volume_3d()
    truth = labels == 1
    start = volume.shape[0] // 2
    predictor = Predictor("demo")
    points, point_labels, box = prompts_from_mask(truth[start], margin=0.05)  # a user's box and click
    mask = predictor.predict(predictor.encode(volume[start]), points, point_labels, box).masks[0]
    assert mask_iou(mask, truth[start]) >= 0.8
    result = propagate(predictor, volume, start, mask)
    assert mask_iou(result, truth) >= 0.75
