"""SAM 3's image (concept) model against Meta's sam3==0.1.4 on random-weight checkpoints of a small
configuration built from the reference classes: keys, configuration inference, loading, and the
masks, boxes and scores of Sam3Processor for a text query, an exemplar query and both."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from helpers.official_sam3 import SMALL_SAM3, cpu_only, official_sam3, randomize_sam3, write_sam3_checkpoint
from sam_core.concepts import ConceptPredictor
from sam_core.errors import SamError
from sam_core.models.sam3 import build as sam3_build
from sam_core.models.sam3.config import SAM3, infer_sam3_config
from sam_core.models.sam3.model import Sam3

TOP = 20


@pytest.fixture(scope="module")
def sam3_checkpoint(tmp_path_factory):
    return write_sam3_checkpoint(SMALL_SAM3, tmp_path_factory.mktemp("sam3") / "sam3_small.pt", seed=0)


@pytest.fixture(scope="module")
def reference(sam3_checkpoint):
    model = official_sam3(SMALL_SAM3)
    state = torch.load(sam3_checkpoint, map_location="cpu", weights_only=True)["model"]
    model.load_state_dict({k[len("detector."):]: v for k, v in state.items()})
    return model.eval()


@pytest.fixture(scope="module")
def predictor(sam3_checkpoint):
    return ConceptPredictor(sam3_build.load_sam3(sam3_checkpoint))


@pytest.fixture(scope="module")
def image():
    """A 100 x 150 RGB scene: a gradient with a few filled shapes."""
    rng = np.random.default_rng(3)
    yy, xx = np.mgrid[0:100, 0:150]
    rgb = np.stack([xx * 1.5, yy * 2.0, (xx + yy) * 0.8], axis=-1)
    rgb[20:50, 30:70] = (220, 40, 40)
    rgb[60:90, 90:140] = (30, 200, 60)
    rgb[(yy - 30) ** 2 + (xx - 115) ** 2 < 15 ** 2] = (40, 60, 230)
    rgb += rng.normal(0, 6, rgb.shape)
    return np.clip(rgb, 0, 255).astype(np.uint8)


def _normalized(box, width, height):
    x0, y0, x1, y1 = box
    return [(x0 + x1) / 2 / width, (y0 + y1) / 2 / height, (x1 - x0) / width, (y1 - y0) / height]


def _reference_findings(model, image, text, exemplars, negatives):
    from sam3.model.sam3_image_processor import Sam3Processor

    height, width = image.shape[:2]
    processor = Sam3Processor(model, resolution=SMALL_SAM3.image_size, device="cpu", confidence_threshold=-1.0)
    with cpu_only(), torch.inference_mode():
        state = processor.set_image(Image.fromarray(image))
        if text is not None:
            state = processor.set_text_prompt(text, state)
        for box in exemplars:
            state = processor.add_geometric_prompt(_normalized(box, width, height), True, state)
        for box in negatives:
            state = processor.add_geometric_prompt(_normalized(box, width, height), False, state)
    order = torch.argsort(state["scores"], descending=True, stable=True)[:TOP]
    return (state["masks"][order, 0].numpy(), state["boxes"][order].numpy(), state["scores"][order].numpy())


QUERIES = {
    "text": ("red square", [], []),
    "exemplar": (None, [(30, 20, 70, 50)], [(90, 60, 140, 90)]),
    "both": ("a shape", [(30, 20, 70, 50), (100, 15, 130, 45)], []),
}


@pytest.mark.parametrize("query", list(QUERIES))
def test_masks_boxes_scores_equal_sam3_processor(query, predictor, reference, image):
    text, exemplars, negatives = QUERIES[query]
    ref_masks, ref_boxes, ref_scores = _reference_findings(reference, image, text, exemplars, negatives)
    embedding = predictor.encode(image)
    ours = predictor.find(embedding, text=text, exemplars=exemplars, negatives=negatives, threshold=-1.0)
    assert len(ours) == SMALL_SAM3.num_queries and ours.masks.shape[1:] == image.shape[:2]
    np.testing.assert_allclose(ours.scores[:TOP], ref_scores, atol=1e-3)
    for ref_mask, ref_box, ref_score in zip(ref_masks, ref_boxes, ref_scores):
        # the instance of ours with this score (ties resolved by the box)
        close = np.flatnonzero(np.abs(ours.scores - ref_score) <= 1e-3)
        match = close[np.argmin(np.abs(ours.boxes[close] - ref_box).max(axis=1))]
        assert np.abs(ours.boxes[match] - ref_box).max() <= 1.0
        union = np.logical_or(ours.masks[match], ref_mask).sum()
        iou = np.logical_and(ours.masks[match], ref_mask).sum() / union if union else 1.0
        assert iou >= 0.99


def test_threshold_keeps_instances_above_it_best_first(predictor, image):
    embedding = predictor.encode(image)
    everything = predictor.find(embedding, text="red square", threshold=-1.0)
    cut = float(np.median(everything.scores))
    kept = predictor.find(embedding, text="red square", threshold=cut)
    assert len(kept) == int((everything.scores > cut).sum()) > 0
    assert np.all(np.diff(kept.scores) <= 0)
    assert len(predictor.find(embedding, text="red square", threshold=-1.0, max_instances=3)) == 3


def test_queries_reuse_the_cached_image_features(predictor, image):
    calls = []
    hook = predictor.model.backbone.vision_backbone.register_forward_hook(lambda *args: calls.append(1))
    try:
        embedding = predictor.encode(image.copy())
        first = predictor.find(embedding, text="red square", threshold=-1.0)
        predictor.find(embedding, text="tree", threshold=-1.0)
        again = predictor.find(predictor.encode(image.copy()), text="red square", threshold=-1.0)
        predictor.encode(image[::-1].copy())
    finally:
        hook.remove()
    assert len(calls) <= 2  # the image once at most (it may be cached by an earlier test), its flip once
    assert calls[-1:] == [1]
    np.testing.assert_array_equal(first.scores, again.scores)
    assert embedding.features.shape == (1, SMALL_SAM3.d_model, 8, 8)
    assert [t.shape[-1] for t in embedding.high_res_features] == [32, 16]


def test_an_embedding_of_another_model_is_refused(predictor, image, small_vit_checkpoint):
    from sam_core.predictor import Predictor

    other = Predictor(None, checkpoint=small_vit_checkpoint).encode(image)
    with pytest.raises(SamError, match="computed by another model"):
        predictor.find(other, text="cell")


def test_configuration_is_inferred_from_the_weights(sam3_checkpoint):
    state = sam3_build.read_sam3_state_dict(sam3_checkpoint)
    assert infer_sam3_config(state) == SMALL_SAM3.replace(name="custom")


def test_state_dict_keys_and_shapes_equal_official(reference):
    ours = Sam3(SMALL_SAM3).state_dict()
    assert {k: tuple(v.shape) for k, v in ours.items()} == {k: tuple(v.shape) for k, v in reference.state_dict().items()}


def test_full_size_has_the_official_parameter_count_and_round_trips_its_configuration():
    with torch.device("meta"):
        model = Sam3(SAM3)
    assert round(sum(p.numel() for p in model.parameters()) / 1e5) == 8405  # 840.5 M, as the reference
    assert infer_sam3_config(model.state_dict()) == SAM3.replace(name="custom")


def test_loading_is_strict_on_detector_keys_and_skips_the_tracker(sam3_checkpoint):
    state = sam3_build.read_sam3_state_dict(sam3_checkpoint)
    extra = dict(state)
    extra["tracker.maskmem_tpos_enc"] = torch.zeros(7, 1, 1, 64)
    extra["detector.backbone.vision_backbone.sam2_convs.0.conv_1x1.weight"] = torch.zeros(64, 8, 1, 1)
    sam3_build.load_sam3(extra)  # the tracker and its neck are not the concept model's
    missing = {k: v for k, v in state.items() if not k.endswith("dot_prod_scoring.hs_proj.weight")}
    with pytest.raises(SamError, match="1 missing .*hs_proj"):
        sam3_build.load_sam3(missing)
    unknown = dict(state, **{"detector.transformer.decoder.extra.weight": torch.zeros(1)})
    with pytest.raises(SamError, match="1 unexpected"):
        sam3_build.load_sam3(unknown)


def test_truncated_or_foreign_checkpoint_is_a_clear_error(sam3_checkpoint, tmp_path):
    truncated = tmp_path / "sam3.pt"
    truncated.write_bytes(sam3_checkpoint.read_bytes()[:5000])
    with pytest.raises(SamError, match="not a SAM 3 checkpoint .*download it again"):
        sam3_build.read_sam3_state_dict(truncated)
    foreign = tmp_path / "other.pt"
    torch.save({"image_encoder.x": torch.zeros(1)}, foreign)
    with pytest.raises(SamError, match="not a SAM 3 checkpoint"):
        sam3_build.read_sam3_state_dict(foreign)


@pytest.mark.parametrize("text, message", [
    ("", "the text is empty"),
    ("   ", "the text is empty"),
    ("nucleus " * 20, "too long: 40 tokens, SAM 3 reads at most 30"),
])
def test_bad_text_is_a_clear_error(predictor, image, text, message):
    embedding = predictor.encode(image)
    with pytest.raises(SamError, match=message):
        predictor.find(embedding, text=text)


@pytest.mark.parametrize("box, message", [
    ((10, 10, 10, 40), "has no area"),
    ((40, 10, 20, 30), "has no area"),
    ((-5, 10, 20, 30), "outside the image, which is 150 x 100"),
    ((100, 50, 151, 90), "outside the image"),
    ((1, 2, 3), "not four numbers"),
])
def test_bad_exemplar_box_is_a_clear_error(predictor, image, box, message):
    embedding = predictor.encode(image)
    with pytest.raises(SamError, match=message):
        predictor.find(embedding, exemplars=[box])


def test_nothing_to_find_is_a_clear_error(predictor, image):
    with pytest.raises(SamError, match="nothing to find"):
        predictor.find(predictor.encode(image))


def test_masks_are_cleared_on_transparent_pixels(predictor, image):
    rgba = np.dstack([image, np.full(image.shape[:2], 255, np.uint8)])
    rgba[:, :40, 3] = 0  # the left 40 columns are transparent
    found = predictor.find(predictor.encode(rgba), text="red square", threshold=-1.0)
    assert found.masks[:, :, :40].sum() == 0 and found.masks[:, :, 40:].any()
    records = found.records("red square")
    assert records[0]["class"] == "red square" and records[0]["area"] == int(found.masks[0].sum())
