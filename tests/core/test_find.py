"""``python -m sam_core find``: SAM 3 concept queries from the command line (records equal to Meta's
Sam3Processor on a small random-weight checkpoint), the ``sam3`` zoo entry's gated download, and
user mistakes (one ``error:`` line, exit code 2, no output file)."""

from __future__ import annotations

import json
import threading
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
import tifffile
import torch
from PIL import Image

from helpers.cli import run_cli
from helpers.official_sam3 import SMALL_SAM3, cpu_only, official_sam3, write_sam3_checkpoint
from sam_core import masks as M
from sam_core import zoo
from sam_core.automask import masks_to_labels


@pytest.fixture(scope="module")
def sam3_file(tmp_path_factory):
    return write_sam3_checkpoint(SMALL_SAM3, tmp_path_factory.mktemp("sam3cli") / "sam3.pt", seed=1)


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    """A 80 x 120 (height x width) PNG with two red squares and a blue disc on a gradient."""
    yy, xx = np.mgrid[0:80, 0:120]
    rgb = np.stack([xx * 2.0, yy * 3.0, np.full_like(xx, 90.0)], axis=-1)
    rgb[10:35, 10:35] = (210, 30, 30)
    rgb[45:70, 70:95] = (210, 30, 30)
    rgb[(yy - 20) ** 2 + (xx - 90) ** 2 < 12 ** 2] = (30, 40, 220)
    path = tmp_path_factory.mktemp("scene") / "scene.png"
    Image.fromarray(rgb.astype(np.uint8)).save(path)
    return path


def _reference(sam3_file, scene, text=None, exemplars=(), negatives=()):
    from sam3.model.sam3_image_processor import Sam3Processor

    model = official_sam3(SMALL_SAM3)
    state = torch.load(sam3_file, map_location="cpu", weights_only=True)["model"]
    model.load_state_dict({k[len("detector."):]: v for k, v in state.items()})
    image = Image.open(scene).convert("RGB")
    width, height = image.size
    processor = Sam3Processor(model.eval(), resolution=SMALL_SAM3.image_size, device="cpu", confidence_threshold=-1.0)

    def normalized(box):
        x0, y0, x1, y1 = box
        return [(x0 + x1) / 2 / width, (y0 + y1) / 2 / height, (x1 - x0) / width, (y1 - y0) / height]

    with cpu_only(), torch.inference_mode():
        state = processor.set_image(image)
        if text is not None:
            state = processor.set_text_prompt(text, state)
        for box in exemplars:
            state = processor.add_geometric_prompt(normalized(box), True, state)
        for box in negatives:
            state = processor.add_geometric_prompt(normalized(box), False, state)
    order = torch.argsort(state["scores"], descending=True, stable=True)
    return state["masks"][order, 0].numpy(), state["boxes"][order].numpy(), state["scores"][order].numpy()


@pytest.mark.parametrize("prompt", ["text", "exemplar and negative"])
def test_records_equal_sam3_processor_above_the_threshold(prompt, sam3_file, scene, tmp_path, capsys):
    if prompt == "text":
        options, kwargs = ["--text", "red square"], {"text": "red square"}
    else:
        options = ["--exemplar", "10,10,35,35", "--negative", "78,8,102,32"]
        kwargs = {"exemplars": [(10, 10, 35, 35)], "negatives": [(78, 8, 102, 32)]}
    masks, boxes, scores = _reference(sam3_file, scene, **kwargs)
    threshold = float(np.round((scores[7] + scores[8]) / 2, 6))  # 8 instances above it
    out = tmp_path / "found.json"
    code, stdout, err = run_cli(["find", scene, *options, "--threshold", threshold, "--out", out,
                                 "--checkpoint", sam3_file], capsys)
    assert code == 0, err
    records = json.loads(out.read_text())
    assert len(records) == int((scores > threshold).sum()) == 8 and "8 instances" in stdout
    for record, mask, box, score in zip(records, masks, boxes, scores):
        assert abs(record["score"] - score) <= 1e-3
        x, y, w, h = record["bbox"]
        assert np.abs(np.array([x, y, x + w, y + h]) - box).max() <= 1.0
        ours = M.rle_to_mask(record["segmentation"])
        union = np.logical_or(ours, mask).sum()
        assert (np.logical_and(ours, mask).sum() / union if union else 1.0) >= 0.99
        assert record["area"] == int(ours.sum()) and record["class"] == kwargs.get("text", "exemplar")


def test_label_image_has_one_id_per_instance(sam3_file, scene, tmp_path, capsys):
    records_path, labels_path = tmp_path / "r.json", tmp_path / "labels.tif"
    common = ["--text", "square", "--threshold", "0.3", "--checkpoint", sam3_file]
    assert run_cli(["find", scene, *common, "--out", records_path], capsys)[0] == 0
    assert run_cli(["find", scene, *common, "--out", labels_path], capsys)[0] == 0
    records = json.loads(records_path.read_text())
    labels = tifffile.imread(labels_path)
    assert labels.shape == (80, 120) and len(records) > 0
    np.testing.assert_array_equal(labels, masks_to_labels(records, shape=(80, 120)))


def _error(argv, capsys, out):
    code, stdout, err = run_cli(argv, capsys)
    assert code == 2 and err.startswith("error: ") and err.count("\n") == 1, err
    assert not out.exists()
    return err


@pytest.mark.parametrize("options, message", [
    (["--text", ""], "the text is empty"),
    (["--text", "nucleus " * 20], "too long: 40 tokens, SAM 3 reads at most 30"),
    (["--text", "cell", "--exemplar", "100,10,130,30"], "outside the image, which is 120 x 80"),
    (["--text", "cell", "--exemplar", "10,10,10,30"], "has no area"),
    (["--negative", "10,10,5,30"], "negative box .* has no area"),
    (["--exemplar", "1,2,3"], "--exemplar needs 4 numbers"),
    (["--text", "cell", "--threshold", "1.5"], "--threshold is a score between 0 and 1"),
    ([], "nothing to find"),
])
def test_bad_input_is_one_error_line_and_no_output(options, message, sam3_file, scene, tmp_path, capsys):
    out = tmp_path / "labels.tif"
    err = _error(["find", scene, *options, "--out", out, "--checkpoint", sam3_file], capsys, out)
    assert __import__("re").search(message, err), err


def test_models_that_cannot_take_concepts_are_named(scene, small_vit_checkpoint, sam3_file, tmp_path, capsys):
    out = tmp_path / "labels.tif"
    err = _error(["find", scene, "--text", "cell", "--model", "vit_b", "--out", out], capsys, out)
    assert "'vit_b' cannot find objects by text" in err and "models that can: sam3" in err
    err = _error(["find", scene, "--text", "cell", "--checkpoint", small_vit_checkpoint, "--out", out], capsys, out)
    assert "point-and-box SAM model" in err and "models that can: sam3" in err
    # segment takes points and boxes with SAM 3's interactive head: a file without it is told to use find
    err = _error(["segment", scene, "--point", "10,10", "--model", "sam3", "--checkpoint", sam3_file,
                  "--out", tmp_path / "m.png"], capsys, tmp_path / "m.png")
    assert "no interactive head" in err and "use 'find'" in err


def test_bad_out_suffix_and_truncated_checkpoint(sam3_file, scene, tmp_path, capsys):
    err = _error(["find", scene, "--text", "cell", "--out", tmp_path / "x.gif", "--checkpoint", sam3_file], capsys, tmp_path / "x.gif")
    assert "--out must end in" in err
    truncated = tmp_path / "sam3.pt"
    truncated.write_bytes(sam3_file.read_bytes()[:10_000])
    out = tmp_path / "labels.tif"
    err = _error(["find", scene, "--text", "cell", "--out", out, "--checkpoint", truncated], capsys, out)
    assert "not a SAM 3 checkpoint" in err and "download it again" in err


# --- the zoo entry and its gated download ----------------------------------------------------------


class _GatedServer:
    """Serves one file at /facebook/sam3/resolve/main/sam3.pt to requests bearing ``token``."""

    def __init__(self, data: bytes, token: str) -> None:
        self.authorizations: list = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                outer.authorizations.append(self.headers.get("Authorization"))
                if self.headers.get("Authorization") != f"Bearer {token}":
                    self.send_error(401, "Unauthorized")
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/facebook/sam3/resolve/main/sam3.pt"


def test_sam3_zoo_entry():
    info = zoo.MODELS["sam3"]
    assert info.filename == "sam3.pt" and info.url == "https://huggingface.co/facebook/sam3/resolve/main/sam3.pt"
    assert info.family == "sam3" and info.gated and info.sha256 is None  # no published hash found


def test_gated_download_needs_a_token_and_sends_it(sam3_file, scene, tmp_path, capsys, monkeypatch):
    server = _GatedServer(sam3_file.read_bytes(), token="good")
    monkeypatch.setitem(zoo.MODELS, "sam3", replace(zoo.MODELS["sam3"], url=server.url))
    monkeypatch.delenv("HF_TOKEN", raising=False)
    cache, out = tmp_path / "ckpt", tmp_path / "labels.tif"
    base = ["find", scene, "--text", "red square", "--out", out, "--cache-dir", cache]
    err = _error(base, capsys, out)
    assert "sam3 is gated" in err and "--token" in err and "HF_TOKEN" in err and str(cache) in err and "--checkpoint" in err
    assert server.authorizations == []  # nothing sent without a token
    err = _error([*base, "--token", "bad"], capsys, out)
    assert "HTTP 401" in err and "accept its licence" in err and not (cache / "sam3.pt").exists()
    monkeypatch.setenv("HF_TOKEN", "good")
    code, stdout, err = run_cli(base, capsys)
    assert code == 0, err
    assert server.authorizations[-1] == "Bearer good" and (cache / "sam3.pt").read_bytes() == sam3_file.read_bytes()
    server.httpd.shutdown()


def test_download_command_takes_the_token(sam3_file, tmp_path, capsys, monkeypatch):
    server = _GatedServer(sam3_file.read_bytes(), token="tok")
    monkeypatch.setitem(zoo.MODELS, "sam3", replace(zoo.MODELS["sam3"], url=server.url))
    monkeypatch.delenv("HF_TOKEN", raising=False)
    cache = tmp_path / "ckpt"
    code, _, err = run_cli(["download", "sam3", "--cache-dir", cache, "--quiet"], capsys)
    assert code == 2 and "sam3 is gated" in err and err.count("\n") == 1
    code, stdout, err = run_cli(["download", "sam3", "--cache-dir", cache, "--quiet", "--token", "tok"], capsys)
    assert code == 0, err
    assert stdout.strip() == str(cache / "sam3.pt") and server.authorizations == ["Bearer tok"]
    server.httpd.shutdown()
