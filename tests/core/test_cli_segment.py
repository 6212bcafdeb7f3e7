"""``python -m sam_core segment``: outputs, candidates, and every user mistake as one line, no output file."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile

from helpers.cli import run_cli as _run, write_cells_png
from sam_core.io import read_image

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture()
def image_png(tmp_path):
    return write_cells_png(tmp_path)


def test_writes_best_mask_png_of_image_size(image_png, small_vit_checkpoint, tmp_path, capsys):
    out = tmp_path / "out" / "mask.png"
    code, stdout, err = _run(
        ["segment", image_png, "--point", "45,35", "--out", out, "--checkpoint", small_vit_checkpoint], capsys
    )
    assert code == 0, err
    mask = read_image(out)
    assert mask.shape == (70, 90) and mask.dtype == np.uint8
    assert set(np.unique(mask)) <= {0, 255}
    assert "score" in stdout

    # same as the API: best of three candidates for one point alone
    from sam_core.predictor import Predictor

    predictor = Predictor(None, checkpoint=small_vit_checkpoint)
    expected = predictor.predict(predictor.encode(read_image(image_png)), points=[[45, 35]], labels=[1])
    assert expected.masks.shape[0] == 3
    np.testing.assert_array_equal(mask == 255, expected.masks[0])


@pytest.mark.slow
def test_compile_gives_the_same_mask_and_keeps_the_compiled_code(image_png, small_vit_checkpoint, tmp_path, capsys,
                                                                  monkeypatch):
    monkeypatch.setenv("SAM_CORE_HOME", str(tmp_path / "home"))
    for name in ("TORCHINDUCTOR_CACHE_DIR", "TORCHINDUCTOR_FX_GRAPH_CACHE"):
        monkeypatch.setenv(name, "")  # compile_encoder sets them: restored after the test
        monkeypatch.delenv(name)
    masks = []
    for extra in ([], ["--compile"]):
        out = tmp_path / f"mask{len(extra)}.png"
        code, _, err = _run(["segment", image_png, "--point", "45,35", "--out", out, "--checkpoint",
                             small_vit_checkpoint, *extra], capsys)
        assert code == 0, err
        masks.append(read_image(out))
    assert (masks[0] == masks[1]).mean() >= 0.999
    assert any((tmp_path / "home" / "inductor").iterdir())  # reused by the next process


def test_all_candidates_with_scores(image_png, small_vit_checkpoint, tmp_path, capsys):
    out = tmp_path / "m.png"
    code, stdout, err = _run(
        ["segment", image_png, "--point", "45,35,1", "--out", out, "--all", "--checkpoint", small_vit_checkpoint], capsys
    )
    assert code == 0, err
    records = json.loads((tmp_path / "m.json").read_text())
    assert [r["file"] for r in records] == ["m_0.png", "m_1.png", "m_2.png"]
    scores = [r["score"] for r in records]
    assert scores == sorted(scores, reverse=True)
    for record in records:
        assert read_image(tmp_path / record["file"]).shape == (70, 90)
    assert not out.exists()
    # --single and a box plus points give one candidate
    code, _, err = _run(
        ["segment", image_png, "--point", "45,35", "--point", "5,5,0", "--box", "25,15,65,55", "--out", out,
         "--all", "--checkpoint", small_vit_checkpoint], capsys
    )
    assert code == 0, err
    assert len(json.loads((tmp_path / "m.json").read_text())) == 1
    code, _, _ = _run(["segment", image_png, "--point", "45,35", "--single", "--all", "--out", out,
                       "--checkpoint", small_vit_checkpoint], capsys)
    assert code == 0 and len(json.loads((tmp_path / "m.json").read_text())) == 1


def test_cache_dir_keeps_embeddings_between_runs(image_png, small_vit_checkpoint, tmp_path, capsys, monkeypatch):
    from sam_core import predictor as predictor_module

    runs = []
    original = predictor_module.Predictor.encode_rgb

    def counting(self, rgb):
        runs.append(rgb.shape)
        return original(self, rgb)

    monkeypatch.setattr(predictor_module.Predictor, "encode_rgb", counting)
    argv = ["segment", image_png, "--box", "25,15,65,55", "--checkpoint", small_vit_checkpoint,
            "--cache-dir", tmp_path / "emb"]
    assert _run([*argv, "--out", tmp_path / "a.png"], capsys)[0] == 0
    assert _run([*argv, "--out", tmp_path / "b.png"], capsys)[0] == 0
    assert len(runs) == 1
    assert len(list((tmp_path / "emb").iterdir())) == 1
    assert (read_image(tmp_path / "a.png") == read_image(tmp_path / "b.png")).mean() > 0.99


def test_16bit_multichannel_tiff_with_channels_and_range(small_vit_checkpoint, tmp_path, capsys):
    data = np.random.default_rng(1).integers(0, 4000, (60, 80, 5), dtype=np.uint16)
    tifffile.imwrite(tmp_path / "five.tif", data, photometric="minisblack", planarconfig="contig")
    out = tmp_path / "mask.png"
    code, _, err = _run(
        ["segment", tmp_path / "five.tif", "--box", "10,10,50,40", "--channels", "4,2,0", "--range", "0,4000",
         "--out", out, "--checkpoint", small_vit_checkpoint, "--precision", "exact"], capsys
    )
    assert code == 0, err
    assert read_image(out).shape == (60, 80)
    code, _, err = _run(
        ["segment", tmp_path / "five.tif", "--box", "10,10,50,40", "--out", out, "--checkpoint", small_vit_checkpoint],
        capsys,
    )
    assert code == 2 and "5 channels" in err


@pytest.mark.parametrize(
    "case",
    ["missing", "unreadable", "outside", "unknown_model", "bad_checkpoint", "missing_checkpoint", "no_prompt",
     "bad_point", "bad_label", "bad_box", "bad_out", "bad_channel", "bad_range", "bad_precision", "bad_device"],
)
def test_user_mistakes_exit_nonzero_one_line_no_output(case, image_png, small_vit_checkpoint, tmp_path, capsys):
    out = tmp_path / "result.png"
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not a png at all")
    not_ckpt = tmp_path / "weights.pth"
    not_ckpt.write_bytes(b"\x00" * 1000)
    ckpt = ["--checkpoint", small_vit_checkpoint]
    argv = {
        "missing": ["segment", tmp_path / "nope.png", "--point", "5,5", "--out", out, *ckpt],
        "unreadable": ["segment", bad, "--point", "5,5", "--out", out, *ckpt],
        "outside": ["segment", image_png, "--point", "500,5", "--out", out, *ckpt],
        "unknown_model": ["segment", image_png, "--point", "5,5", "--out", out, "--model", "vit_zz"],
        "bad_checkpoint": ["segment", image_png, "--point", "5,5", "--out", out, "--checkpoint", not_ckpt],
        "missing_checkpoint": ["segment", image_png, "--point", "5,5", "--out", out, "--checkpoint", tmp_path / "x.pth"],
        "no_prompt": ["segment", image_png, "--out", out, *ckpt],
        "bad_point": ["segment", image_png, "--point", "5;5", "--out", out, *ckpt],
        "bad_label": ["segment", image_png, "--point", "5,5,7", "--out", out, *ckpt],
        "bad_box": ["segment", image_png, "--box", "1,2,3", "--out", out, *ckpt],
        "bad_out": ["segment", image_png, "--point", "5,5", "--out", tmp_path / "result.jpg", *ckpt],
        "bad_channel": ["segment", image_png, "--point", "5,5", "--channels", "7", "--out", out, *ckpt],
        "bad_range": ["segment", image_png, "--point", "5,5", "--range", "9,1", "--out", out, *ckpt],
        "bad_precision": ["segment", image_png, "--point", "5,5", "--precision", "fp64", "--out", out, *ckpt],
        "bad_device": ["segment", image_png, "--point", "5,5", "--device", "tpu", "--out", out, *ckpt],
    }[case]
    before = sorted(os.listdir(tmp_path))
    code, stdout, err = _run(argv, capsys)
    assert code != 0
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    assert sorted(os.listdir(tmp_path)) == before  # no output, no temporary file


def test_as_a_process(image_png, small_vit_checkpoint, tmp_path):
    out = tmp_path / "mask.png"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    done = subprocess.run(
        [sys.executable, "-m", "sam_core", "segment", str(image_png), "--box", "25,15,65,55", "--out", str(out),
         "--checkpoint", str(small_vit_checkpoint)],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert read_image(out).shape == (70, 90)
    failed = subprocess.run(
        [sys.executable, "-m", "sam_core", "segment", str(tmp_path / "none.png"), "--point", "1,1", "--out",
         str(tmp_path / "x.png"), "--checkpoint", str(small_vit_checkpoint)],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300,
    )
    assert failed.returncode == 2
    assert failed.stderr.strip().count("\n") == 0 and "none.png" in failed.stderr
    assert not (tmp_path / "x.png").exists()
