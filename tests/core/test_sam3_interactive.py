"""Points and boxes with SAM 3: our interactive head (Predictor on a SAM 3 checkpoint) against Meta's
sam3==0.1.4 (``Sam3Processor.set_image`` then ``Sam3Image.predict_inst``, the official
``SAM3InteractiveImagePredictor``) on a small random-weight checkpoint in the ``sam3.pt`` layout:
masks, IoU predictions and low-resolution logits for a point, points with a box, and a mask-input
refinement; loading rules (tracker keys, a file without the tracker part)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from helpers.official_sam3 import SMALL_SAM3, cpu_only
from helpers.official_sam3_interactive import load_official, write_sam3_interactive_checkpoint
from sam_core.errors import SamError
from sam_core.models.sam3.interactive import fill_small_holes, load_sam3_interactive
from sam_core.predictor import Predictor


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return write_sam3_interactive_checkpoint(SMALL_SAM3, tmp_path_factory.mktemp("sam3i") / "sam3.pt", seed=1)


@pytest.fixture(scope="module")
def reference(checkpoint):
    return load_official(SMALL_SAM3, checkpoint)


@pytest.fixture(scope="module")
def predictor(checkpoint):
    return Predictor(load_sam3_interactive(checkpoint))


@pytest.fixture(scope="module")
def image():
    """A 100 x 150 RGB scene: a gradient with a few filled shapes."""
    rng = np.random.default_rng(5)
    yy, xx = np.mgrid[0:100, 0:150]
    rgb = np.stack([xx * 1.5, yy * 2.0, (xx + yy) * 0.8], axis=-1)
    rgb[20:50, 30:70] = (220, 40, 40)
    rgb[60:90, 90:140] = (30, 200, 60)
    rgb[(yy - 30) ** 2 + (xx - 115) ** 2 < 15 ** 2] = (40, 60, 230)
    rgb += rng.normal(0, 6, rgb.shape)
    return np.clip(rgb, 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def reference_state(reference, image):
    from sam3.model.sam3_image_processor import Sam3Processor

    processor = Sam3Processor(reference, resolution=SMALL_SAM3.image_size, device="cpu")
    with cpu_only(), torch.inference_mode():
        return processor.set_image(Image.fromarray(image))


def _reference(reference, state, **prompts):
    with cpu_only(), torch.inference_mode():
        masks, scores, logits = reference.predict_inst(state, **prompts)
    order = np.argsort(-scores, kind="stable")
    return masks[order].astype(bool), scores[order], logits[order]


PROMPTS = {
    "point": dict(point_coords=np.array([[50.0, 35.0]]), point_labels=np.array([1]), multimask_output=True),
    "points_and_box": dict(point_coords=np.array([[50.0, 35.0], [120.0, 80.0]]), point_labels=np.array([1, 0]),
                           box=np.array([25.0, 15.0, 80.0, 60.0]), multimask_output=False),
    "box_multimask": dict(box=np.array([85.0, 55.0, 145.0, 95.0]), multimask_output=True),
}


def _ours(predictor, embedding, prompts):
    return predictor.predict(embedding, points=prompts.get("point_coords"), labels=prompts.get("point_labels"),
                             box=prompts.get("box"), mask_input=prompts.get("mask_input"),
                             multimask=prompts["multimask_output"])


def _assert_same(ours, ref):
    masks, scores, logits = ref
    assert ours.scores.shape == scores.shape
    np.testing.assert_allclose(ours.scores, scores, atol=1e-5)
    np.testing.assert_allclose(ours.logits, logits, atol=1e-3, rtol=1e-4)
    assert ours.masks.shape == masks.shape
    assert (ours.masks != masks).mean() < 1e-3


@pytest.mark.parametrize("name", list(PROMPTS))
def test_prompts_equal_official(predictor, reference, reference_state, image, name):
    embedding = predictor.encode(image)
    ref = _reference(reference, reference_state, **PROMPTS[name])
    _assert_same(_ours(predictor, embedding, PROMPTS[name]), ref)


def test_mask_input_refinement_equals_official(predictor, reference, reference_state, image):
    embedding = predictor.encode(image)
    first = _ours(predictor, embedding, PROMPTS["point"])
    prompts = dict(point_coords=np.array([[50.0, 35.0], [60.0, 45.0]]), point_labels=np.array([1, 1]),
                   mask_input=first.logits[:1], multimask_output=False)
    ref = _reference(reference, reference_state, **prompts)
    _assert_same(_ours(predictor, embedding, prompts), ref)


def test_features_equal_official(predictor, reference, reference_state, image):
    """The cached embedding holds what the head needs: the tracker neck's 1x level plus
    no_mem_embed, and the 4x and 2x levels through conv_s0 / conv_s1."""
    embedding = predictor.encode(image)
    sam2_out = reference_state["backbone_out"]["sam2_backbone_out"]["backbone_fpn"]
    no_mem = reference.inst_interactive_predictor.model.no_mem_embed.view(1, -1, 1, 1)
    torch.testing.assert_close(embedding.features, sam2_out[-1] + no_mem, atol=1e-5, rtol=1e-5)
    for ours, theirs in zip(embedding.high_res_features, sam2_out[:2]):
        torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)
    assert predictor.low_res_size == 4 * SMALL_SAM3.grid


def test_small_holes_filled_as_official():
    logits = torch.full((1, 1, 40, 40), 5.0)
    logits[0, 0, 5:10, 5:10] = -3.0  # a hole of 25 pixels
    logits[0, 0, 20:40, 0:40] = -3.0  # a large background region
    filled = fill_small_holes(logits, max_area=30)
    assert (filled[0, 0, 5:10, 5:10] == 10.0).all()
    assert (filled[0, 0, 20:40] == -3.0).all()


def test_checkpoint_without_tracker_says_use_find(tmp_path):
    path = write_sam3_interactive_checkpoint(SMALL_SAM3, tmp_path / "detector_only.pt", seed=2, tracker=False)
    with pytest.raises(SamError, match="no interactive head.*use 'find'"):
        load_sam3_interactive(path)


def test_incomplete_tracker_is_refused(checkpoint, tmp_path):
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)["model"]
    del state["tracker.sam_mask_decoder.iou_token.weight"]
    with pytest.raises(SamError, match="missing.*iou_token"):
        load_sam3_interactive(state)


def test_segment_command_with_sam3(checkpoint, predictor, image, tmp_path, capsys):
    """``segment --model sam3 --checkpoint sam3.pt`` (and the file alone) writes the Predictor's best mask."""
    from helpers.cli import run_cli

    scene = tmp_path / "scene.png"
    Image.fromarray(image).save(scene)
    expected = predictor.predict(predictor.encode(image), points=np.array([[50.0, 35.0]]), box=(25, 15, 80, 60))
    for options in (["--model", "sam3", "--checkpoint", checkpoint], ["--checkpoint", checkpoint]):
        out = tmp_path / "mask.png"
        code, _, err = run_cli(["segment", scene, "--point", "50,35", "--box", "25,15,80,60", "--out", out, *options],
                               capsys)
        assert code == 0, err
        np.testing.assert_array_equal(np.asarray(Image.open(out)) > 0, expected.masks[0])
        out.unlink()


def test_segment_without_tracker_is_one_error_line(tmp_path, image, capsys):
    from helpers.cli import run_cli

    path = write_sam3_interactive_checkpoint(SMALL_SAM3, tmp_path / "detector_only.pt", seed=2, tracker=False)
    scene = tmp_path / "scene.png"
    Image.fromarray(image).save(scene)
    out = tmp_path / "mask.png"
    code, _, err = run_cli(["segment", scene, "--point", "50,35", "--out", out, "--model", "sam3", "--checkpoint", path],
                           capsys)
    assert code == 2 and not out.exists()
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and "no interactive head" in lines[0], err


def test_predictor_from_zoo_name_and_file(checkpoint, predictor, image):
    """``Predictor("sam3", checkpoint=...)`` and ``Predictor(None, checkpoint=...)`` load the interactive head;
    its embeddings are not the concept model's (another model id)."""
    for name in ("sam3", None):
        loaded = Predictor(name, checkpoint=checkpoint)
        assert loaded.family == "sam3" and loaded.model_id.startswith("sam3-interactive:")
        ours = loaded.predict(loaded.encode(image), points=np.array([[50.0, 35.0]]))
        np.testing.assert_allclose(ours.scores, predictor.predict(predictor.encode(image),
                                                                  points=np.array([[50.0, 35.0]])).scores, atol=1e-6)


def test_automatic_masks_come_from_the_interactive_head(predictor, image):
    """The AutomaticMaskGenerator runs on SAM 3's head (no official SAM 3 generator exists): every record is
    one of the three candidates the Predictor gives for its grid point, with that candidate's IoU."""
    from sam_core.automask import AutomaticMaskGenerator
    from sam_core.masks import rle_to_mask

    generator = AutomaticMaskGenerator(predictor, points_per_side=3, pred_iou_thresh=0.0, stability_score_thresh=0.0,
                                       box_nms_thresh=1.0, output_mode="uncompressed_rle")
    records = generator.generate(image)
    assert records
    embedding = predictor.encode(image)
    for record in records:
        candidates = predictor.predict(embedding, points=np.array(record["point_coords"]), multimask=True)
        index = int(np.argmin(np.abs(candidates.scores - record["predicted_iou"])))
        assert abs(candidates.scores[index] - record["predicted_iou"]) < 1e-5
        mask = rle_to_mask(record["segmentation"]).astype(bool)
        assert (mask != candidates.masks[index]).mean() < 1e-3


def test_export_refuses_sam3_with_one_error_line(checkpoint, tmp_path, capsys):
    from helpers.cli import run_cli

    code, _, err = run_cli(["export", "onnx", "--checkpoint", checkpoint, "--out", tmp_path / "onnx"], capsys)
    assert code == 2 and err.startswith("error:") and "not available for SAM 3 models yet" in err, err
    assert not (tmp_path / "onnx").exists()


def test_disk_cache_keeps_what_the_head_needs(checkpoint, image, tmp_path):
    """An embedding read back from the on-disk cache (another predictor, no encoder run) decodes the same."""
    from sam_core.cache import EmbeddingCache

    first = Predictor(load_sam3_interactive(checkpoint), cache=EmbeddingCache(directory=tmp_path))
    expected = first.predict(first.encode(image), points=np.array([[50.0, 35.0]]), box=(25, 15, 80, 60))
    second = Predictor(load_sam3_interactive(checkpoint), cache=EmbeddingCache(directory=tmp_path))
    embedding = second.encode(image)
    assert second.encoder_runs == 0 and len(embedding.high_res_features) == 2
    again = second.predict(embedding, points=np.array([[50.0, 35.0]]), box=(25, 15, 80, 60))
    np.testing.assert_allclose(again.scores, expected.scores, atol=1e-3)
    assert (again.masks != expected.masks).mean() < 1e-2


def test_find_works_on_the_same_file(checkpoint, reference, image):
    """One sam3.pt serves both: the concept model loads it too (tracker keys and neck ignored there) and its
    scores equal Sam3Processor's on that file."""
    from sam3.model.sam3_image_processor import Sam3Processor

    from sam_core.concepts import ConceptPredictor
    from sam_core.models.sam3.build import load_sam3

    concepts = ConceptPredictor(load_sam3(checkpoint))
    found = concepts.find(concepts.encode(image), text="a shape", threshold=0.0, max_instances=5)
    processor = Sam3Processor(reference, resolution=SMALL_SAM3.image_size, device="cpu", confidence_threshold=-1.0)
    with cpu_only(), torch.inference_mode():
        state = processor.set_text_prompt("a shape", processor.set_image(Image.fromarray(image)))
    expected = torch.sort(state["scores"], descending=True).values[:5].numpy()
    np.testing.assert_allclose(found.scores, expected, atol=1e-4)
