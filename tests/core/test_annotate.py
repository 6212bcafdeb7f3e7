"""Dataset generation: COCO instances for a folder, tiled large images, corrupt images skipped, resume."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from helpers.deterministic import ColourComponents  # noqa: E402
from helpers.georasters import known_scene  # noqa: E402

from sam_core.annotate import annotate_images  # noqa: E402
from sam_core.cli import main  # noqa: E402
from sam_core.errors import SamError  # noqa: E402
from sam_core.masks import rle_to_mask  # noqa: E402
from sam_core.progress import Cancelled, CancelToken  # noqa: E402


@pytest.fixture()
def folder(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    large, objects = known_scene()  # 300 x 340: tiled with tile 128
    Image.fromarray(large).save(images / "a_large.png")
    small = np.zeros((60, 80, 3), np.uint8)
    small[10:30, 10:40] = (10, 200, 90)
    Image.fromarray(small).save(images / "b_small.png")
    (images / "c_corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    (images / "notes.txt").write_text("not an image")
    return images, objects


def test_coco_instances_with_rle_masks_and_scores(folder, tmp_path):
    images, objects = folder
    out = tmp_path / "annotations.json"
    result = annotate_images(images, out, generator=ColourComponents(), tile_size=128, overlap=32)
    assert (result.images, result.annotations) == (2, 7)
    assert [name for name, _ in result.skipped] == ["c_corrupt.png"]
    coco = json.loads(out.read_text())
    assert [i["file_name"] for i in coco["images"]] == ["a_large.png", "b_small.png"]
    assert coco["categories"] == [{"id": 1, "name": "object", "supercategory": "object"}]
    assert coco["info"]["skipped"][0]["file_name"] == "c_corrupt.png"
    large = [a for a in coco["annotations"] if a["image_id"] == 1]
    assert len(large) == len(objects)  # objects crossing tile seams come out whole
    for ann in coco["annotations"]:
        mask = rle_to_mask(ann["segmentation"])
        assert isinstance(ann["segmentation"]["counts"], str)
        assert int(mask.sum()) == ann["area"]
        x, y, w, h = ann["bbox"]
        assert mask[y : y + h, x : x + w].sum() == ann["area"]
        assert ann["iscrowd"] == 0 and ann["predicted_iou"] == pytest.approx(0.95)
    assert [a["id"] for a in coco["annotations"]] == list(range(1, 8))
    assert not (tmp_path / ".annotations.json.parts").exists()


def test_interrupted_run_resumes(folder, tmp_path):
    images, _ = folder
    out = tmp_path / "annotations.json"
    token = CancelToken()

    def stop_after_first(done, total, message):
        if done >= 1:
            token.cancel()

    first = ColourComponents()
    with pytest.raises(Cancelled):
        annotate_images(images, out, generator=first, tile_size=128, overlap=32, progress=stop_after_first, cancel=token)
    assert not out.exists() and first.calls == 12  # the large image's 12 tiles
    second = ColourComponents()
    result = annotate_images(images, out, generator=second, tile_size=128, overlap=32)
    assert result.resumed == 1 and second.calls == 1 and result.annotations == 7


def test_parallel_run_matches_one_process(folder, tmp_path):
    images, _ = folder
    one, two = tmp_path / "one.json", tmp_path / "two.json"
    annotate_images(images, one, generator=ColourComponents(), tile_size=128, overlap=32)
    annotate_images(images, two, generator=ColourComponents(), tile_size=128, overlap=32, workers=2)
    a, b = json.loads(one.read_text()), json.loads(two.read_text())
    assert a["images"] == b["images"] and a["annotations"] == b["annotations"]


def test_cli_runs_a_real_model_and_reports_skipped_images(folder, tmp_path, small_vit_checkpoint, capsys):
    images, _ = folder
    out = tmp_path / "coco.json"
    args = ["annotate", str(images), "--out", str(out), "--checkpoint", str(small_vit_checkpoint), "--quiet",
            "--points-per-side", "4", "--pred-iou-thresh", "0", "--stability-thresh", "0", "--tile-size", "128", "--overlap", "32"]
    assert main(args) == 0
    captured = capsys.readouterr()
    assert "skipped c_corrupt.png" in captured.err and "on 2 images" in captured.out
    coco = json.loads(out.read_text())
    assert len(coco["images"]) == 2
    assert main(["annotate", str(tmp_path / "nothing"), "--out", str(tmp_path / "x.json"), "--quiet"]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_bad_arguments(folder, tmp_path):
    images, _ = folder
    with pytest.raises(SamError, match=".json"):
        annotate_images(images, tmp_path / "out.csv", generator=ColourComponents())
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(SamError, match="no images"):
        annotate_images(empty, tmp_path / "out.json", generator=ColourComponents())
