"""ONNX export and the onnxruntime backend: parity with PyTorch (small ViT and TinyViT, random vit_b,
demo), dynamic point and object counts, the int8 encoder, the cache, atomic output, CLI errors."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from sam_core import zoo
from sam_core.cache import EmbeddingCache
from sam_core.errors import SamError
from sam_core.export import DECODER_FILE, ENCODER_FILE, INT8_ENCODER_FILE, export_onnx
from sam_core.onnx_backend import OnnxModel, OnnxPredictor
from sam_core.imaging import to_input_coords
from sam_core.masks import mask_iou
from sam_core.predictor import Predictor
from sam_core.progress import CancelToken, Cancelled

ROOT = Path(__file__).resolve().parents[2]



def _cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.flatten().double(), b.flatten().double()
    return float(a @ b / a.norm() / b.norm())


def _image(height: int, width: int, seed: int = 0) -> np.ndarray:
    """A smooth random colour image (blobs), so that masks have structure."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (height // 8 + 2, width // 8 + 2, 3)).astype(np.uint8)
    from PIL import Image

    return np.array(Image.fromarray(coarse).resize((width, height), Image.BILINEAR))


def _assert_same_prediction(torch_pred, onnx_pred, min_iou: float = 0.99) -> None:
    assert onnx_pred.masks.shape == torch_pred.masks.shape
    for t, o in zip(torch_pred.masks.reshape(-1, *torch_pred.masks.shape[-2:]),
                    onnx_pred.masks.reshape(-1, *onnx_pred.masks.shape[-2:])):
        assert mask_iou(t, o) >= min_iou
    np.testing.assert_allclose(onnx_pred.scores, torch_pred.scores, atol=1e-3)
    np.testing.assert_allclose(onnx_pred.logits, torch_pred.logits, atol=1e-2)


@pytest.fixture(autouse=True)
def one_thread(request):
    """Small models run faster on one torch thread (no OpenMP spinning for tiny operations); vit_b keeps all."""
    threads = torch.get_num_threads()
    if "vit_b" not in request.node.name:
        torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


PROMPTS = [
    dict(points=[(40, 30)]),
    dict(points=[(40, 30), (90, 60)], labels=[1, 0]),
    dict(box=(10, 12, 85, 70)),
    dict(points=[(40, 30)], box=(10, 12, 85, 70)),
    dict(points=[(40, 30), (90, 60)], multimask=True),
]


@pytest.fixture(scope="module")
def small_torch(small_vit_checkpoint) -> Predictor:
    return Predictor(None, checkpoint=small_vit_checkpoint)


@pytest.fixture(scope="module")
def small_export(small_torch, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("onnx_small")
    export_onnx(small_torch.model, folder, quantize_encoder=True)
    return folder


# --- small ViT: parity, dynamic shapes, int8, cache --------------------------------------------------


def test_export_writes_the_three_files_with_metadata(small_export, small_torch):
    assert sorted(os.listdir(small_export)) == sorted([DECODER_FILE, ENCODER_FILE, INT8_ENCODER_FILE])
    model = OnnxModel(small_export)
    assert model.model_id == small_torch.model_id
    assert model.image_size == small_torch.image_size == 128
    assert model.low_res_size == small_torch.low_res_size
    assert model.precision == "fp32" and OnnxModel(small_export, int8=True).precision == "int8"
    names = [i.name for i in model.decoder.get_inputs()]
    assert names == ["image_embeddings", "point_coords", "point_labels", "mask_input", "has_mask_input", "orig_im_size"]
    assert [o.name for o in model.decoder.get_outputs()] == ["masks", "iou_predictions", "low_res_masks"]


def test_onnx_encoder_equals_torch(small_export, small_torch):
    image = _image(90, 130)
    onnx_pred = OnnxPredictor(small_export)
    a, b = small_torch.encode(image), onnx_pred.encode(image)
    assert b.original_size == a.original_size and b.input_size == a.input_size
    assert torch.allclose(a.features, b.features, atol=1e-4)


@pytest.mark.parametrize("prompt", PROMPTS, ids=["point", "points", "box", "point+box", "multimask"])
def test_onnx_predictions_equal_torch(small_export, small_torch, prompt):
    image = _image(90, 130)
    onnx_pred = OnnxPredictor(small_export)
    _assert_same_prediction(small_torch.predict(small_torch.encode(image), **prompt),
                            onnx_pred.predict(onnx_pred.encode(image), **prompt))


def test_mask_input_refinement_equals_torch(small_export, small_torch):
    image = _image(100, 70, seed=3)
    onnx_pred = OnnxPredictor(small_export)
    et, eo = small_torch.encode(image), onnx_pred.encode(image)
    first = small_torch.predict(et, points=[(30, 40)])
    for extra in ({}, {"points": [(30, 40), (50, 80)], "labels": [1, 0]}):  # mask alone, mask + clicks
        _assert_same_prediction(small_torch.predict(et, mask_input=first.logits[0], **extra),
                                onnx_pred.predict(eo, mask_input=first.logits[0], **extra))


def test_one_decoder_takes_1_2_and_5_points_and_many_objects(small_export, small_torch):
    """The raw decoder (official inputs) with 1, 2 and 5 points, and a batch of 4 objects."""
    image = _image(96, 120, seed=5)
    embedding = small_torch.encode(image)
    model = OnnxModel(small_export)
    rng = np.random.default_rng(1)
    for count in (1, 2, 5):
        points = rng.uniform(5, 90, (count, 2))
        labels = (np.arange(count) % 2 == 0).astype(int)
        expected = small_torch.predict(embedding, points=points, labels=labels, multimask=True)
        coords = to_input_coords(points, embedding.original_size, model.image_size)
        coords = np.concatenate([coords, [[0.0, 0.0]]])[None]  # the official padding point
        masks, iou, low_res = model.decode(embedding.features.numpy(), coords, np.append(labels, -1)[None],
                                           None, embedding.original_size)
        assert masks.shape == (1, 4, 96, 120) and iou.shape == (1, 4)
        order = np.argsort(-iou[0, 1:], kind="stable")
        np.testing.assert_allclose(iou[0, 1:][order], expected.scores, atol=1e-4)
        for k, mask in zip(order, expected.masks):
            assert mask_iou(masks[0, 1 + k] > 0, mask) >= 0.99
    points = rng.uniform(5, 90, (4, 3, 2))
    _assert_same_prediction(small_torch.predict_batch(embedding, points=points, multimask=True),
                            OnnxPredictor(small_export).predict_batch(embedding, points=points, multimask=True))
    boxes = np.array([[5, 5, 60, 50], [20, 30, 110, 90], [0, 0, 119, 95]])
    _assert_same_prediction(small_torch.predict_batch(embedding, boxes=boxes),
                            OnnxPredictor(small_export).predict_batch(embedding, boxes=boxes))


def test_int8_encoder_is_close_to_fp32(small_export, small_torch):
    image = _image(128, 128, seed=2)
    int8 = OnnxPredictor(small_export, int8=True)
    assert int8.encoder_id.endswith("onnx-int8")
    assert _cosine(int8.encode(image).features, small_torch.encode(image).features) >= 0.99
    assert (small_export / INT8_ENCODER_FILE).stat().st_size < (small_export / ENCODER_FILE).stat().st_size


def test_cache_runs_the_onnx_encoder_once_and_keeps_precisions_apart(small_export, tmp_path):
    image = _image(64, 80, seed=7)
    first = OnnxPredictor(small_export, cache=EmbeddingCache(directory=tmp_path))
    first.encode(image)
    first.encode(image)
    assert first.encoder_runs == 1
    again = OnnxPredictor(small_export, cache=EmbeddingCache(directory=tmp_path))  # a new process would do this
    embedding = again.encode(image)
    assert again.encoder_runs == 0 and embedding.features.dtype == torch.float32
    int8 = OnnxPredictor(small_export, int8=True, cache=EmbeddingCache(directory=tmp_path))
    int8.encode(image)
    assert int8.encoder_runs == 1


def test_torch_embeddings_decode_with_onnx_but_other_models_are_refused(small_export, small_torch,
                                                                       small_tiny_vit_checkpoint):
    image = _image(64, 64)
    onnx_pred = OnnxPredictor(small_export)
    embedding = small_torch.encode(image)
    _assert_same_prediction(small_torch.predict(embedding, points=[(20, 20)]),
                            onnx_pred.predict(embedding, points=[(20, 20)]))
    other = Predictor(None, checkpoint=small_tiny_vit_checkpoint).encode(image)
    with pytest.raises(SamError, match="another model"):
        onnx_pred.predict(other, points=[(20, 20)])
    with pytest.raises(SamError, match="outside the image"):
        onnx_pred.predict(embedding, points=[(200, 20)])


def test_tiny_vit_and_bf16_models_export_in_fp32(small_tiny_vit_checkpoint, tmp_path):
    """TinyViT (vit_t's encoder) exports too; a model running in bf16 exports its encoder in fp32."""
    model = zoo.load_model(None, small_tiny_vit_checkpoint)
    reference = Predictor(model)
    image = _image(80, 128, seed=4)
    expected = reference.encode(image)
    model.set_precision("bf16")
    export_onnx(model, tmp_path)
    assert model.precision == "bf16" and model.image_encoder.compute_dtype == torch.bfloat16
    onnx_pred = OnnxPredictor(tmp_path)
    embedding = onnx_pred.encode(image)
    assert torch.allclose(embedding.features, expected.features, atol=1e-4)
    _assert_same_prediction(reference.predict(expected, points=[(60, 40)]),
                            onnx_pred.predict(embedding, points=[(60, 40)]))


def test_large_models_keep_their_weights_in_a_data_file(small_torch, tmp_path, monkeypatch):
    """Above 2 GB (vit_h's encoder) protobuf cannot hold the weights: they go to ``NAME.onnx.data``."""
    import sam_core.export as export

    monkeypatch.setattr(export, "_EXTERNAL_DATA_BYTES", 0)
    export_onnx(small_torch.model, tmp_path, quantize_encoder=True)
    names = set(os.listdir(tmp_path))
    assert {DECODER_FILE, ENCODER_FILE, f"{ENCODER_FILE}.data", f"{DECODER_FILE}.data"} <= names
    image = _image(64, 64)
    expected = small_torch.encode(image)
    assert torch.allclose(OnnxPredictor(tmp_path).encode(image).features, expected.features, atol=1e-4)
    assert _cosine(OnnxPredictor(tmp_path, int8=True).encode(image).features, expected.features) >= 0.99
    monkeypatch.setattr(export, "_EXTERNAL_DATA_BYTES", 1 << 40)
    export_onnx(small_torch.model, tmp_path, encoder=False)
    assert os.listdir(tmp_path) == [DECODER_FILE]  # no stale data files


# --- files: atomic output, stale files, errors --------------------------------------------------------


def test_cancel_leaves_the_folder_unchanged(small_torch, small_export, tmp_path):
    folder = tmp_path / "export"
    folder.mkdir()
    before = (small_export / DECODER_FILE).read_bytes()
    (folder / DECODER_FILE).write_bytes(before)
    token = CancelToken()

    def progress(done, total, message):
        if done == 1:  # the decoder is built: stop before the encoder
            token.cancel()

    with pytest.raises(Cancelled):
        export_onnx(small_torch.model, folder, progress=progress, cancel=token)
    assert os.listdir(folder) == [DECODER_FILE]
    assert (folder / DECODER_FILE).read_bytes() == before


def test_decoder_only_export_removes_a_stale_encoder(small_torch, small_export, tmp_path):
    for name in (ENCODER_FILE, INT8_ENCODER_FILE):
        (tmp_path / name).write_bytes((small_export / name).read_bytes())
    files = export_onnx(small_torch.model, tmp_path, encoder=False)
    assert files.encoder is None and os.listdir(tmp_path) == [DECODER_FILE]
    with pytest.raises(SamError, match="no image encoder"):
        OnnxPredictor(tmp_path).encode(_image(32, 32))


def test_loading_errors_are_clear(small_export, small_tiny_vit_checkpoint, tmp_path):
    with pytest.raises(SamError, match="no decoder.onnx"):
        OnnxPredictor(tmp_path)
    (tmp_path / DECODER_FILE).write_bytes((small_export / DECODER_FILE).read_bytes())
    with pytest.raises(SamError, match="--quantize-encoder"):
        OnnxPredictor(tmp_path, int8=True)
    other = tmp_path / "other"
    export_onnx(None, other, checkpoint=small_tiny_vit_checkpoint)
    (tmp_path / ENCODER_FILE).write_bytes((other / ENCODER_FILE).read_bytes())
    with pytest.raises(SamError, match="different models"):
        OnnxPredictor(tmp_path)
    (tmp_path / DECODER_FILE).write_bytes(b"not an onnx file")
    with pytest.raises(SamError, match="cannot load"):
        OnnxPredictor(tmp_path)


def _cli(capsys, *args: str) -> tuple[int, str, str]:
    from sam_core.cli import main

    code = main(["export", "onnx", "--quiet", *args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_cli_exports_and_reports_user_mistakes_in_one_line(small_vit_checkpoint, tmp_path, capsys):
    out = tmp_path / "models"
    code, stdout, stderr = _cli(capsys, "--checkpoint", str(small_vit_checkpoint), "--out", str(out), "--quantize-encoder")
    assert code == 0, stderr
    assert stdout.split() == [str(out / DECODER_FILE), str(out / ENCODER_FILE), str(out / INT8_ENCODER_FILE)]
    assert sorted(os.listdir(out)) == sorted([DECODER_FILE, ENCODER_FILE, INT8_ENCODER_FILE])  # no leftovers
    assert OnnxPredictor(out).encode(_image(40, 40)).features.shape[1] == 32

    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    for args, message in [
        (("--model", "vit_z", "--out", str(tmp_path / "new")), "unknown model"),
        (("--checkpoint", str(small_vit_checkpoint), "--out", str(a_file / "sub")), "cannot write to the folder"),
        (("--checkpoint", str(small_vit_checkpoint), "--out", str(a_file)), "is a file"),
        (("--checkpoint", str(tmp_path / "missing.pth"), "--out", str(tmp_path / "new")), "does not exist"),
    ]:
        code, _, stderr = _cli(capsys, *args)
        lines = stderr.strip().splitlines()
        assert code == 2 and len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], stderr
    assert not (tmp_path / "new").exists()  # a failed export creates no folder


def test_cli_as_a_process_prints_one_line_and_no_traceback(tmp_path):
    done = subprocess.run([sys.executable, "-m", "sam_core", "export", "onnx", "--model", "vit_z", "--out", str(tmp_path)],
                          capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 2 and done.stderr.strip().splitlines() == [done.stderr.strip()]
    assert "unknown model" in done.stderr and "Traceback" not in done.stderr


@pytest.mark.skipif(os.name == "nt" or os.geteuid() == 0, reason="root can write into read-only folders")
def test_cli_read_only_folder(small_vit_checkpoint, tmp_path, capsys):
    tmp_path.chmod(0o500)
    try:
        code, _, stderr = _cli(capsys, "--checkpoint", str(small_vit_checkpoint), "--out", str(tmp_path))
    finally:
        tmp_path.chmod(0o700)
    assert code == 2 and "cannot write to the folder" in stderr


# --- full-size vit_b (random weights) and the trained demo -------------------------------------------


@pytest.fixture(scope="session")
def vit_b_export(vit_b_checkpoint, tmp_path_factory):
    """vit_b's torch predictor and its ONNX export (decoder + encoder), built once per session."""
    predictor = Predictor("vit_b", checkpoint=vit_b_checkpoint)
    folder = tmp_path_factory.mktemp("onnx_vit_b")
    export_onnx(predictor.model, folder)
    return predictor, folder


@pytest.mark.slow
def test_vit_b_onnx_equals_torch(vit_b_export):
    predictor, folder = vit_b_export
    image = _image(480, 640, seed=9)
    onnx_pred = OnnxPredictor(folder)
    et, eo = predictor.encode(image), onnx_pred.encode(image)
    assert _cosine(et.features, eo.features) >= 0.9999
    for prompt in ({"points": [(200, 150)]}, {"points": [(200, 150), (420, 300)], "labels": [1, 0]},
                   {"box": (100, 80, 500, 400)}):
        _assert_same_prediction(predictor.predict(et, **prompt), onnx_pred.predict(eo, **prompt))


def test_demo_onnx_equals_torch_on_generated_scenes(tmp_path, demo_checkpoint):
    from sam_core.train.synthetic import generate_scene
    from sam_core.volume import prompts_from_mask

    predictor = Predictor("demo")
    export_onnx(predictor.model, tmp_path, quantize_encoder=True)
    onnx_pred = OnnxPredictor(tmp_path)
    int8 = OnnxPredictor(tmp_path, int8=True)
    ious, int8_ious = [], []
    for seed in range(3):
        scene = generate_scene(seed, size=256)
        et, eo, eq = predictor.encode(scene.image), onnx_pred.encode(scene.image), int8.encode(scene.image)
        assert _cosine(eq.features, et.features) >= 0.99
        for label in range(1, min(scene.num_objects, 4) + 1):
            points, labels, box = prompts_from_mask(scene.labels == label)
            for prompt in ({"points": points, "labels": labels}, {"box": box}):
                expected = predictor.predict(et, **prompt)
                _assert_same_prediction(expected, onnx_pred.predict(eo, **prompt))
                ious.append(mask_iou(expected.masks[0], onnx_pred.predict(eo, **prompt).masks[0]))
                int8_ious.append(mask_iou(expected.masks[0], int8.predict(eq, **prompt).masks[0]))
    assert min(ious) >= 0.99
    assert np.mean(int8_ious) >= 0.9
