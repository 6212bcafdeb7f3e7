"""``python -m sam_core automask``: label images, COCO RLE records, and user mistakes (one line, no file)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from helpers.cli import run_cli as _run, write_cells_png
from sam_core import masks as M
from sam_core.automask import AutomaticMaskGenerator, masks_to_labels
from sam_core.predictor import Predictor

ROOT = Path(__file__).resolve().parents[2]
# Low thresholds: random weights give few confident masks.
PARAMS = ["--points-per-side", "6", "--pred-iou-thresh", "0", "--stability-thresh", "0", "--box-nms-thresh", "1.0"]


@pytest.fixture()
def image_png(tmp_path):
    return write_cells_png(tmp_path)


def _expected(checkpoint, image, **overrides):
    params = dict(points_per_side=6, pred_iou_thresh=0.0, stability_score_thresh=0.0, box_nms_thresh=1.0)
    params.update(overrides)
    return AutomaticMaskGenerator(Predictor(None, checkpoint=checkpoint), **params).generate(image)


@pytest.mark.parametrize("name", ["labels.tif", "labels.png"])
def test_label_image(name, image_png, small_vit_checkpoint, tmp_path, capsys):
    out = tmp_path / "out" / name
    code, stdout, err = _run(["automask", image_png, "--out", out, "--checkpoint", small_vit_checkpoint, "--quiet", *PARAMS], capsys)
    assert code == 0, err
    labels = tifffile.imread(out) if name.endswith(".tif") else np.array(Image.open(out))
    image = np.array(Image.open(image_png))
    records = _expected(small_vit_checkpoint, image)
    assert len(records) > 0 and f"{len(records)} masks" in stdout
    assert labels.shape == (70, 90)
    assert np.array_equal(labels, masks_to_labels(records))
    assert [p.name for p in out.parent.iterdir()] == [name]  # no temporary file left


def test_json_records(image_png, small_vit_checkpoint, tmp_path, capsys):
    out = tmp_path / "records.json"
    code, _, err = _run(["automask", image_png, "--out", out, "--checkpoint", small_vit_checkpoint, "--quiet",
                         "--min-region-area", "10", *PARAMS], capsys)
    assert code == 0, err
    records = json.loads(out.read_text())
    image = np.array(Image.open(image_png))
    expected = _expected(small_vit_checkpoint, image, min_mask_region_area=10)
    assert len(records) == len(expected) > 0
    for record, reference in zip(records, expected):
        assert set(record) == {"segmentation", "area", "bbox", "predicted_iou", "point_coords", "stability_score", "crop_box"}
        assert record["segmentation"]["size"] == [70, 90]
        assert isinstance(record["segmentation"]["counts"], str)
        assert np.array_equal(M.rle_to_mask(record["segmentation"]), reference["segmentation"])
        assert record["area"] == reference["area"] and record["bbox"] == reference["bbox"]


def test_16bit_tiff_with_range_and_nodata(small_vit_checkpoint, tmp_path, capsys):
    rng = np.random.default_rng(1)
    image = rng.integers(1000, 3000, (60, 80), dtype=np.uint16)
    image[:, :10] = 0  # a nodata band: never part of a mask
    source = tmp_path / "gray16.tif"
    tifffile.imwrite(source, image)
    out = tmp_path / "labels.tif"
    code, _, err = _run(["automask", source, "--out", out, "--checkpoint", small_vit_checkpoint, "--quiet",
                         "--range", "1000,3000", "--nodata", "0", *PARAMS], capsys)
    assert code == 0, err
    labels = tifffile.imread(out)
    assert labels.shape == (60, 80)
    assert (labels[:, :10] == 0).all()


@pytest.mark.parametrize(
    "case",
    ["missing image", "unreadable image", "bad suffix", "unknown model", "bad checkpoint", "bad threshold",
     "bad channels", "out is a folder"],
)
def test_user_mistakes_exit_nonzero_one_line_no_output(case, image_png, small_vit_checkpoint, tmp_path, capsys):
    out = tmp_path / "result" / "labels.tif"
    ckpt = ["--checkpoint", small_vit_checkpoint]
    argv = {
        "missing image": ["automask", tmp_path / "nope.png", "--out", out, *ckpt],
        "unreadable image": ["automask", tmp_path / "bad.png", "--out", out, *ckpt],
        "bad suffix": ["automask", image_png, "--out", tmp_path / "result" / "labels.jpg", *ckpt],
        "unknown model": ["automask", image_png, "--out", out, "--model", "vit_z"],
        "bad checkpoint": ["automask", image_png, "--out", out, "--checkpoint", tmp_path / "bad.png"],
        "bad threshold": ["automask", image_png, "--out", out, *ckpt, "--pred-iou-thresh", "2"],
        "bad channels": ["automask", image_png, "--out", out, *ckpt, "--channels", "a,b"],
        "out is a folder": ["automask", image_png, "--out", tmp_path, *ckpt],
    }[case]
    (tmp_path / "bad.png").write_bytes(b"not an image at all")
    code, stdout, err = _run(argv, capsys)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err
    assert not (tmp_path / "result").exists() or not any((tmp_path / "result").iterdir())


def test_as_a_process(image_png, small_vit_checkpoint, tmp_path):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    out = tmp_path / "labels.png"
    done = subprocess.run(
        [sys.executable, "-m", "sam_core", "automask", str(image_png), "--out", str(out),
         "--checkpoint", str(small_vit_checkpoint), *PARAMS],
        capture_output=True, text=True, env=env, cwd=ROOT, timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert out.exists()
    failed = subprocess.run(
        [sys.executable, "-m", "sam_core", "automask", str(tmp_path / "missing.png"), "--out", str(out),
         "--checkpoint", str(small_vit_checkpoint)],
        capture_output=True, text=True, env=env, cwd=ROOT, timeout=300,
    )
    assert failed.returncode == 2
    assert failed.stderr.strip().count("\n") == 0 and "Traceback" not in failed.stderr
