"""SAM 2.1 through the project's Predictor, embedding cache and ``segment`` command, against Meta's
``SAM2ImagePredictor`` (sam2==1.1.0) on the same random-weight checkpoint: a small configuration for
the prompt kinds, the full-size ``sam2.1_hiera_tiny`` once through the command line."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from helpers.cli import run_cli
from helpers.sam2_checkpoints import SMALL_SAM2, load_official_sam2, official_image_predictor, write_official_sam2_checkpoint
from sam_core import zoo
from sam_core.cache import EmbeddingCache
from sam_core.errors import SamError
from sam_core.io import read_image
from sam_core.models.build import load_checkpoint
from sam_core.models.sam2 import SAM2_CONFIGS, Sam2, build_sam2
from sam_core.predictor import Predictor

TOL = 1e-4


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return write_official_sam2_checkpoint(SMALL_SAM2, tmp_path_factory.mktemp("sam2p") / "small_sam2.pt", seed=2)


@pytest.fixture(scope="module")
def official(checkpoint):
    return official_image_predictor(load_official_sam2(SMALL_SAM2, checkpoint))


@pytest.fixture(scope="module")
def predictor(checkpoint):
    return Predictor(load_checkpoint(build_sam2(SMALL_SAM2), checkpoint))


def _image(height: int = 130, width: int = 210, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    image[30:90, 50:120] = (220, 60, 40)
    return image


def _assert_same(got, expected_masks, expected_scores, expected_logits, logits_full):
    """Our sorted Prediction equals the official output sorted by score; mask pixels may differ only
    where the official logit is within TOL of the threshold."""
    order = np.argsort(-expected_scores, kind="stable")
    np.testing.assert_allclose(got.scores, expected_scores[order], atol=TOL, rtol=0)
    np.testing.assert_allclose(got.logits, expected_logits[order], atol=TOL, rtol=0)
    differ = got.masks != expected_masks[order]
    assert not (differ & (np.abs(logits_full[order]) > TOL)).any()


PROMPTS = {
    "one click (three candidates)": dict(points=[[80.0, 60.0]], labels=[1]),
    "clicks": dict(points=[[80.0, 60.0], [10.0, 12.0], [150.5, 100.0]], labels=[1, 0, 1]),
    "box": dict(box=[45.0, 25.0, 125.0, 95.0]),
    "box and a background click": dict(box=[45.0, 25.0, 125.0, 95.0], points=[[60.0, 40.0]], labels=[0]),
    "box corners in any order, clipped": dict(box=[125.0, 95.0, -5.0, 20.0]),
}


@pytest.mark.parametrize("name", list(PROMPTS))
def test_predict_equals_official_image_predictor(predictor, official, name):
    image = _image()
    prompt = PROMPTS[name]
    embedding = predictor.encode(image)
    assert embedding.high_res_features is not None
    official.set_image(image)
    points = np.asarray(prompt["points"]) if "points" in prompt else None
    labels = np.asarray(prompt["labels"]) if "labels" in prompt else None
    box = prompt.get("box")
    got = predictor.predict(embedding, points=points, labels=labels, box=box)
    multimask = points is not None and len(points) == 1 and box is None
    official_box = None
    if box is not None:  # the predictor orders and clips corners; the official takes them as given
        x0, x1 = sorted((box[0], box[2]))
        y0, y1 = sorted((box[1], box[3]))
        official_box = np.clip([x0, y0, x1, y1], 0, [image.shape[1], image.shape[0]] * 2)
    kwargs = dict(point_coords=points, point_labels=labels, box=official_box, multimask_output=multimask)
    logits, _, _ = official.predict(**kwargs, return_logits=True)
    masks, scores, low_res = official.predict(**kwargs)
    assert got.masks.shape == (3 if multimask else 1, *image.shape[:2])
    _assert_same(got, masks, scores, low_res, logits)

    # refinement: the best candidate's logits back as mask_input
    again = predictor.predict(embedding, points=points, labels=labels, box=box, mask_input=got.logits[0])
    kwargs = dict(point_coords=points, point_labels=labels, box=official_box, mask_input=got.logits[:1],
                  multimask_output=False)
    logits, _, _ = official.predict(**kwargs, return_logits=True)
    masks, scores, low_res = official.predict(**kwargs)
    _assert_same(again, masks, scores, low_res, logits)


def test_predict_batch_equals_official_batched_boxes(predictor, official):
    image = _image(seed=1)
    boxes = np.array([[45.0, 25.0, 125.0, 95.0], [5.0, 5.0, 60.0, 50.0], [100.0, 60.0, 200.0, 125.0]])
    got = predictor.predict_batch(predictor.encode(image), boxes=boxes)
    official.set_image(image)
    logits, _, _ = official.predict(box=boxes, multimask_output=False, return_logits=True)
    masks, scores, low_res = official.predict(box=boxes, multimask_output=False)
    assert got.masks.shape == (3, 1, *image.shape[:2])
    for row in range(3):
        _assert_same(type(got)(got.masks[row], got.scores[row], got.logits[row]), masks[row], scores[row],
                     low_res[row], logits[row])


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_disk_cache_keeps_the_high_resolution_features(checkpoint, tmp_path, dtype):
    image = _image(seed=3)
    model = load_checkpoint(build_sam2(SMALL_SAM2), checkpoint)
    first = Predictor(model, cache=EmbeddingCache(directory=tmp_path, dtype=dtype))
    fresh = first.encode(image)
    second = Predictor(model, cache=EmbeddingCache(directory=tmp_path, dtype=dtype))
    cached = second.encode(image)
    assert second.encoder_runs == 0
    assert [t.shape for t in cached.high_res_features] == [t.shape for t in fresh.high_res_features]
    for a, b in zip(cached.high_res_features, fresh.high_res_features):
        torch.testing.assert_close(a, b, atol=0 if dtype == "float32" else 1e-2, rtol=0 if dtype == "float32" else 1e-3)
    a = first.predict(fresh, points=[[80, 60]])
    b = second.predict(cached, points=[[80, 60]])
    if dtype == "float32":
        np.testing.assert_array_equal(a.masks, b.masks)
        np.testing.assert_array_equal(a.logits, b.logits)


def test_zoo_lists_the_four_official_sam2_checkpoints():
    expected = {
        "sam2.1_hiera_tiny": (156_008_466, "7402e0d864fa82708a20fbd15bc84245c2f26dff0eb43a4b5b93452deb34be69"),
        "sam2.1_hiera_small": (184_416_285, "6d1aa6f30de5c92224f8172114de081d104bbd23dd9dc5c58996f0cad5dc4d38"),
        "sam2.1_hiera_base_plus": (323_606_802, "a2345aede8715ab1d5d31b4a509fb160c5a4af1970f199d9054ccfb746c004c5"),
        "sam2.1_hiera_large": (898_083_611, "2647878d5dfa5098f2f8649825738a9345572bae2d4350a2468587ece47dd318"),
    }
    for name, (size, sha) in expected.items():
        info = zoo.model_info(name)
        assert (info.size, info.sha256, info.family) == (size, sha, "sam2")
        assert info.url == f"https://dl.fbaipublicfiles.com/segment_anything_2/092824/{name}.pt"
        assert SAM2_CONFIGS[info.config_name].name == name


def test_load_model_reads_a_sam2_checkpoint_without_a_name(checkpoint):
    model = zoo.load_model(None, checkpoint)
    assert isinstance(model, Sam2) and model.config.embed_dim == SMALL_SAM2.embed_dim
    assert model.model_id.startswith("custom:file:")


def test_sam2_checkpoint_under_a_sam1_name_is_a_clear_error(checkpoint):
    with pytest.raises(SamError, match="custom SAM 2 model"):
        zoo.load_model("vit_b", checkpoint)


@pytest.mark.slow
def test_segment_command_with_sam2_1_hiera_tiny_gives_the_official_best_mask(sam2_tiny_checkpoint, tmp_path, capsys):
    rng = np.random.default_rng(5)
    image = rng.integers(0, 256, (300, 420, 3), dtype=np.uint8)
    image[80:220, 120:300] = (30, 200, 90)
    path = tmp_path / "scene.png"
    Image.fromarray(image).save(path)
    official = official_image_predictor(load_official_sam2(SAM2_CONFIGS["sam2.1_hiera_tiny"], sam2_tiny_checkpoint))
    official.set_image(image)

    for args, kwargs in (
        (["--point", "200,150"], dict(point_coords=np.array([[200.0, 150.0]]), point_labels=np.array([1]),
                                      multimask_output=True)),
        (["--box", "110,70,310,230", "--point", "150,100,0"],
         dict(box=np.array([110.0, 70.0, 310.0, 230.0]), point_coords=np.array([[150.0, 100.0]]),
              point_labels=np.array([0]), multimask_output=False)),
    ):
        out = tmp_path / "mask.png"
        code, stdout, err = run_cli(["segment", path, *args, "--out", out, "--model", "sam2.1_hiera_tiny",
                                     "--checkpoint", sam2_tiny_checkpoint], capsys)
        assert code == 0, err
        logits, scores, _ = official.predict(**kwargs, return_logits=True)
        best = int(np.argmax(scores))
        mask = read_image(out) == 255
        expected = logits[best] > 0
        assert not ((mask != expected) & (np.abs(logits[best]) > TOL)).any()
        assert f"score {scores[best]:.4f}" in stdout


@pytest.mark.parametrize("option", [["--precision", "bf16"], ["--compile"]])
def test_unavailable_precision_or_compile_is_one_error_line(checkpoint, tmp_path, capsys, option):
    path = tmp_path / "image.png"
    Image.fromarray(_image()).save(path)
    out = tmp_path / "mask.png"
    code, _, err = run_cli(["segment", path, "--point", "80,60", "--out", out, "--checkpoint", checkpoint, *option],
                           capsys)
    assert code == 2
    assert err.startswith("error:") and "SAM 2.1" in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


def test_export_refuses_sam2_with_one_error_line(checkpoint, tmp_path, capsys):
    code, _, err = run_cli(["export", "onnx", "--checkpoint", checkpoint, "--out", tmp_path / "onnx"], capsys)
    assert code == 2, err
    assert err.startswith("error:") and "ONNX export is not available for SAM 2.1 models yet" in err
    assert not (tmp_path / "onnx").exists()


def test_finetune_refuses_sam2_before_training(checkpoint, tmp_path):
    from sam_core.train.finetune import finetune

    label = np.zeros((130, 210), np.int32)
    label[30:90, 50:120] = 1
    model = load_checkpoint(build_sam2(SMALL_SAM2), checkpoint)
    with pytest.raises(SamError, match="fine-tuning is not available for SAM 2.1 models yet"):
        finetune(model, [_image()], [label], epochs=1, checkpoint_path=tmp_path / "tuned.pt")
    assert not (tmp_path / "tuned.pt").exists()
