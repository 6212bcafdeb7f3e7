"""SAM 2.1's tracking step with memory (sam_core.models.sam2.tracking) equals Meta's
``SAM2Base.track_step`` (sam2==1.1.0) frame after frame, on a small random-weight checkpoint: a
clicked first frame, frames tracked forward with memories and object pointers, a mask-prompted
frame, a box-prompted correction, and tracking in reverse."""

from __future__ import annotations

import pytest
import torch

from helpers.sam2_checkpoints import SMALL_SAM2, load_official_sam2, write_official_sam2_checkpoint
from sam_core.models.build import load_checkpoint
from sam_core.models.sam2 import build_sam2
from sam_core.models.sam2.tracking import frame_features, track_step

TOL = 2e-4
FRAMES = 9  # more than num_maskmem (7): the oldest memories leave the window


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    path = write_official_sam2_checkpoint(SMALL_SAM2, tmp_path_factory.mktemp("track") / "small_sam2.pt", seed=3)
    return load_official_sam2(SMALL_SAM2, path), load_checkpoint(build_sam2(SMALL_SAM2), path)


def _official_features(official, image):
    backbone = official.forward_image(image)
    _, feats, pos, sizes = official._prepare_backbone_features(backbone)
    return feats, pos, sizes


def _compare(got, expected):
    torch.testing.assert_close(got.mask_logits, expected["pred_masks"], atol=TOL, rtol=0)
    torch.testing.assert_close(got.mask_logits_full, expected["pred_masks_high_res"], atol=TOL, rtol=0)
    torch.testing.assert_close(got.object_pointer, expected["obj_ptr"], atol=TOL, rtol=0)
    torch.testing.assert_close(got.object_score_logits, expected["object_score_logits"], atol=TOL, rtol=0)
    torch.testing.assert_close(got.memory, expected["maskmem_features"], atol=TOL, rtol=0)
    torch.testing.assert_close(got.memory_pos, expected["maskmem_pos_enc"][-1], atol=TOL, rtol=0)


@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
def test_track_step_equals_official_over_a_sequence(models, reverse):
    official, ours = models
    torch.manual_seed(7)
    images = [torch.randn(2, 3, 256, 256) for _ in range(FRAMES)]  # two objects tracked at once
    order = list(range(FRAMES))[::-1] if reverse else list(range(FRAMES))
    first, mask_frame = order[0], order[3]
    clicks = {"point_coords": torch.tensor([[[100.0, 120.0]], [[30.0, 200.0]]]),
              "point_labels": torch.tensor([[1], [1]], dtype=torch.int32)}
    mask = torch.zeros(2, 1, 256, 256)
    mask[0, :, 40:120, 60:160] = 1  # the second object's mask is empty: reported absent
    official_out = {"cond_frame_outputs": {}, "non_cond_frame_outputs": {}}
    cond, tracked = {}, {}
    with torch.no_grad():
        for index, t in enumerate(order):
            feats, pos, sizes = _official_features(official, images[t])
            features = frame_features(ours, images[t])
            prompted = t in (first, mask_frame)
            points = clicks if t == first else None
            masks = mask if t == mask_frame else None
            expected = official.track_step(t, t == first, feats, pos, sizes, points, masks, official_out, FRAMES,
                                           track_in_reverse=reverse)
            got = track_step(ours, t, features, cond, tracked, FRAMES, first_prompted=t == first,
                             point_coords=None if points is None else points["point_coords"],
                             point_labels=None if points is None else points["point_labels"],
                             mask_input=masks, reverse=reverse)
            _compare(got, expected)
            (official_out["cond_frame_outputs"] if prompted else official_out["non_cond_frame_outputs"])[t] = expected
            (cond if prompted else tracked)[t] = got
    assert float(got.object_score_logits[1]) != float(got.object_score_logits[0])


def test_box_correction_with_previous_logits_equals_official(models):
    official, ours = models
    torch.manual_seed(8)
    images = [torch.randn(1, 3, 256, 256) for _ in range(3)]
    official_out = {"cond_frame_outputs": {}, "non_cond_frame_outputs": {}}
    cond, tracked = {}, {}
    click = {"point_coords": torch.tensor([[[128.0, 128.0]]]), "point_labels": torch.tensor([[1]], dtype=torch.int32)}
    box = {"point_coords": torch.tensor([[[40.0, 50.0], [200.0, 210.0]]]),
           "point_labels": torch.tensor([[2, 3]], dtype=torch.int32)}
    with torch.no_grad():
        for t in range(3):
            feats, pos, sizes = _official_features(official, images[t])
            features = frame_features(ours, images[t])
            points = click if t == 0 else None
            expected = official.track_step(t, t == 0, feats, pos, sizes, points, None, official_out, 3)
            got = track_step(ours, t, features, cond, tracked, 3, first_prompted=t == 0,
                             point_coords=None if points is None else points["point_coords"],
                             point_labels=None if points is None else points["point_labels"])
            (official_out["cond_frame_outputs"] if t == 0 else official_out["non_cond_frame_outputs"])[t] = expected
            (cond if t == 0 else tracked)[t] = got
        # a correction on frame 2: a box, with the frame's earlier logits as the mask prompt
        feats, pos, sizes = _official_features(official, images[2])
        previous = official_out["non_cond_frame_outputs"].pop(2)
        expected = official.track_step(2, False, feats, pos, sizes, box, None, official_out, 3,
                                       prev_sam_mask_logits=previous["pred_masks"])
        earlier = tracked.pop(2)
        got = track_step(ours, 2, frame_features(ours, images[2]), cond, tracked, 3, point_coords=box["point_coords"],
                         point_labels=box["point_labels"], previous_mask_logits=earlier.mask_logits)
    _compare(got, expected)
