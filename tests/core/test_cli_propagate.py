"""``python -m sam_core propagate``: the label stack equals Meta's ``SAM2VideoPredictor`` masks on a
JPEG folder (forward then reverse; a small random checkpoint, and the full-size ``sam2.1_hiera_tiny``
once on 8 frames); multi-page TIFF input; bad input gives one ``error:`` line, exit code 2 and no
output file.

A checkpoint file does not hold the input size or Hiera's attention windows; for the small test
configuration the command reads those from SMALL_SAM2 (``small_config`` below) instead of the
official sizes it assumes for a SAM 2.1 file given without ``--model``."""

from __future__ import annotations

import shutil
import warnings

import numpy as np
import pytest
import tifffile
from PIL import Image

from helpers.cli import run_cli
from helpers.sam2_checkpoints import (SMALL_SAM2, official_video_predictor, spread_object_scores,
                                     write_official_sam2_checkpoint)

FRAMES, HEIGHT, WIDTH = 6, 48, 64
MARGIN = 1e-3


def _movie(count: int = FRAMES) -> np.ndarray:
    """(T, H, W, 3) uint8: a bright disc moving right on a textured background."""
    rng = np.random.default_rng(1)
    background = rng.integers(0, 120, size=(HEIGHT, WIDTH, 3)).astype(np.uint8)
    yy, xx = np.mgrid[:HEIGHT, :WIDTH]
    frames = np.repeat(background[None], count, axis=0)
    for t in range(count):
        frames[t][(yy - 24) ** 2 + (xx - 12 - 7 * t) ** 2 < 80] = (230, 200, 60)
    return frames


@pytest.fixture(autouse=True)
def small_config(monkeypatch):
    """A SAM 2.1 checkpoint given without --model is read with the small test configuration."""
    import sam_core.zoo as zoo
    from sam_core.models.sam2 import is_sam2_state_dict

    original = zoo._config
    monkeypatch.setattr(zoo, "_config", lambda name, state: SMALL_SAM2 if name is None and is_sam2_state_dict(state)
                        else original(name, state))


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    path = write_official_sam2_checkpoint(SMALL_SAM2, tmp_path_factory.mktemp("cliprop") / "small_sam2.pt", seed=5)
    return spread_object_scores(path)


@pytest.fixture(scope="module")
def jpeg_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("jpegs")
    for t, frame in enumerate(_movie()):
        Image.fromarray(frame).save(folder / f"{t:05d}.jpg", quality=90)
    return folder


PROMPTS = ["--frame", 1, "--point", "19,24", "--point", "60,5,0", "--object", 2, "--box", "2,2,30,20",
           "--frame", 3, "--object", 1, "--point", "33,24"]


def _official_labels(checkpoint, folder, config=SMALL_SAM2):
    predictor = official_video_predictor(config, checkpoint)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # hole filling skipped without sam2's CUDA extension
        state = predictor.init_state(str(folder))
        predictor.add_new_points_or_box(state, 1, 1, points=[[19, 24], [60, 5]], labels=[1, 0])
        predictor.add_new_points_or_box(state, 1, 2, box=[2, 2, 30, 20])
        predictor.add_new_points_or_box(state, 3, 1, points=[[33, 24]], labels=[1])
        logits = {}
        for reverse in (False, True):
            for frame, ids, masks in predictor.propagate_in_video(state, reverse=reverse):
                assert list(ids) == [1, 2]
                logits[frame] = masks[:, 0].numpy().copy()
    return logits


def _assert_labels_equal_official(labels, official, count):
    """The label stack (T, H, W) equals the official logits' labels wherever they are decided."""
    assert sorted(official) == list(range(count))
    for t in range(count):
        logits = official[t]
        top = np.sort(logits, axis=0)
        expected = np.where(logits.max(axis=0) > 0, logits.argmax(axis=0) + 1, 0)
        decided = (np.abs(logits) > MARGIN).all(axis=0) & (top[-1] - top[-2] > MARGIN)
        np.testing.assert_array_equal(labels[t][decided], expected[decided], err_msg=f"frame {t}")


def test_propagate_equals_official_video_predictor(checkpoint, jpeg_folder, tmp_path, capsys):
    out = tmp_path / "labels.tif"
    code, stdout, err = run_cli(["propagate", jpeg_folder, *PROMPTS, "--out", out, "--checkpoint", checkpoint], capsys)
    assert code == 0, err
    assert "object 1: present on" in stdout
    labels = tifffile.imread(out)
    assert labels.shape == (FRAMES, HEIGHT, WIDTH) and labels.dtype == np.uint16
    _assert_labels_equal_official(labels, _official_labels(checkpoint, jpeg_folder), FRAMES)
    assert set(np.unique(labels)) == {0, 1, 2}


@pytest.mark.slow
def test_propagate_with_full_size_sam2_1_hiera_tiny_equals_official(sam2_tiny_checkpoint, tmp_path, capsys):
    """Issue 17 item 9: the full-size ``sam2.1_hiera_tiny`` (random weights, its object-score head
    spread so that objects are found) through the command line on 8 JPEG frames, forward then
    backward, against ``SAM2VideoPredictor`` on the same folder."""
    from sam_core.models.sam2 import SAM2_CONFIGS

    folder = tmp_path / "frames"
    folder.mkdir()
    for t, frame in enumerate(_movie(8)):
        Image.fromarray(frame).save(folder / f"{t:05d}.jpg", quality=90)
    checkpoint = spread_object_scores(shutil.copy(sam2_tiny_checkpoint, tmp_path / "sam2.1_hiera_tiny.pt"))
    out = tmp_path / "labels.tif"
    code, stdout, err = run_cli(["propagate", folder, *PROMPTS, "--out", out, "--model", "sam2.1_hiera_tiny",
                                 "--checkpoint", checkpoint], capsys)
    assert code == 0, err
    labels = tifffile.imread(out)
    assert labels.shape == (8, HEIGHT, WIDTH)
    assert "object 1: present on 8 of the 8 frames" in stdout and "object 2: present on 8 of the 8 frames" in stdout
    _assert_labels_equal_official(labels, _official_labels(checkpoint, folder, SAM2_CONFIGS["sam2.1_hiera_tiny"]), 8)
    assert set(np.unique(labels)) == {0, 1, 2}


@pytest.mark.parametrize("direction", ["forward", "backward"])
def test_propagate_multipage_tiff_one_direction(direction, checkpoint, tmp_path, capsys):
    stack = tmp_path / "movie.tif"
    tifffile.imwrite(stack, _movie()[..., 0].astype(np.uint16) * 200)  # 16-bit: the stretch rule
    out = tmp_path / "labels.tif"
    code, stdout, err = run_cli(["propagate", stack, "--object", 7, "--frame", 2, "--box", "10,10,40,40",
                                 "--direction", direction, "--out", out, "--checkpoint", checkpoint], capsys)
    assert code == 0, err
    labels = tifffile.imread(out)
    assert labels.shape == (FRAMES, HEIGHT, WIDTH)
    untracked = labels[:2] if direction == "forward" else labels[3:]
    assert not untracked.any()  # frames on the other side of the prompt are not tracked
    assert set(np.unique(labels)) <= {0, 7}
    assert "object 7: present on" in stdout and f"of the {4 if direction == 'forward' else 3} frames tracked" in stdout


def _bad(tmp_path, checkpoint, case, small_vit_checkpoint, jpeg_folder):
    frames, extra = jpeg_folder, []
    prompts = ["--frame", 1, "--point", "19,24"]
    if case == "frame":
        prompts = ["--frame", FRAMES, "--point", "19,24"]
    elif case == "outside":
        prompts = ["--frame", 1, "--point", f"{WIDTH + 5},24"]
    elif case == "sizes":
        frames = tmp_path / "mixed"
        frames.mkdir()
        Image.new("RGB", (64, 48)).save(frames / "0.jpg")
        Image.new("RGB", (64, 40)).save(frames / "1.jpg")
    elif case == "empty":
        frames = tmp_path / "empty"
        frames.mkdir()
    elif case == "sam1":
        checkpoint = small_vit_checkpoint
    elif case == "sam1-name":
        checkpoint, extra = None, ["--model", "vit_b"]
    elif case == "truncated":
        data = checkpoint.read_bytes()
        checkpoint = tmp_path / "truncated.pt"
        checkpoint.write_bytes(data[: len(data) // 2])
    elif case == "other-size":
        extra = ["--model", "sam2.1_hiera_small"]
    elif case == "no-frame":
        prompts = ["--point", "19,24"]
    elif case == "jpeg-range":
        extra = ["--range", "0,100"]
    argv = ["propagate", frames, *prompts, "--out", tmp_path / "labels.tif", *extra]
    return argv + (["--checkpoint", checkpoint] if checkpoint else [])


@pytest.mark.parametrize("case, words", [
    ("frame", "frame 6 is not in"),
    ("outside", "outside the frame"),
    ("sizes", "frames of different sizes"),
    ("empty", "holds no frames"),
    ("sam1", "SAM 2.1"),
    ("sam1-name", "vit_b cannot propagate"),
    ("truncated", "truncated.pt"),
    ("other-size", "sam2.1_hiera_small"),
    ("no-frame", "give --frame K before"),
    ("jpeg-range", "--range"),
])
def test_propagate_bad_input(case, words, checkpoint, small_vit_checkpoint, jpeg_folder, tmp_path, capsys):
    argv = _bad(tmp_path, checkpoint, case, small_vit_checkpoint, jpeg_folder)
    code, _, err = run_cli(argv, capsys)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert words in lines[0], lines[0]
    if case.startswith("sam1"):
        assert "sam2.1_hiera_tiny" in lines[0]  # says which models can propagate
    assert not (tmp_path / "labels.tif").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".labels")]
