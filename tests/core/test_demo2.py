"""``demo2``, the project's own SAM 2.1: it loads strictly, is small, runs through ``propagate`` and
``segment``; its generator and training script are seeded. The held-out quality targets of issue 17
are asserted, and the shipped weights miss them (a strict xfail, see benchmarks/RESULTS.md)."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
import torch

from helpers.cli import run_cli
from helpers.demo import require_demo
from sam_core import zoo
from sam_core.models.build import read_state_dict
from sam_core.models.sam2 import SAM2_CONFIGS, Sam2, build_sam2
from sam_core.train import train_demo2
from sam_core.train.prompts import interior_point
from sam_core.train.quality import propagation_quality
from sam_core.train.sequences import generate_sequence

HELD_OUT_SEED = 2000  # the training used seed 0; benchmarks/quality_demo2.py uses 1000
MAX_BYTES = 15 * 1024 * 1024
# issue 17's held-out targets: from one click on frame 0, mean IoU over 8 frames; absent frames reported absent
MOVING_MIN, BLOBS_MIN, ABSENT_MIN = 0.8, 0.8, 0.9


@pytest.fixture(scope="module")
def demo2() -> Sam2:
    require_demo("demo2")
    return zoo.load_model("demo2")


def test_demo2_is_bundled_loads_strictly_and_is_small():
    path = require_demo("demo2")
    assert path.stat().st_size < MAX_BYTES
    state = read_state_dict(path)
    assert set(state) == set(build_sam2("demo2").state_dict())  # every weight, no other
    model = zoo.load_model("demo2")
    assert isinstance(model, Sam2) and model.config == SAM2_CONFIGS["demo2"] and model.image_size == 256
    assert model.model_id.startswith("demo2:sha256:")
    assert zoo.load_model(None, path).config == SAM2_CONFIGS["demo2"]  # recognised from the file alone
    assert "demo2" in [m.name for m in zoo.list_models() if m.present]


@pytest.mark.slow
@pytest.mark.xfail(strict=True, reason="demo2 misses issue 17's IoU targets: held-out mean IoU 0.61 on moving objects "
                   "and 0.71 through 3D blobs (targets 0.8; 96% of absent frames reported absent, target 90%); "
                   "benchmarks/RESULTS.md, README 'Volumes and movies'")
@pytest.mark.usefixtures("single_thread")
def test_demo2_tracks_held_out_movies_volumes_and_leaving_objects(demo2):
    moving = propagation_quality(demo2, [generate_sequence((HELD_OUT_SEED, 1, i), kind="movie") for i in range(3)])
    blobs = propagation_quality(demo2, [generate_sequence((HELD_OUT_SEED, 2, i), kind="volume") for i in range(3)])
    leaving = [s for s in (generate_sequence((HELD_OUT_SEED, 3, i), kind="movie", exits=True) for i in range(4))
               if s.present(1)[0]]
    exits = propagation_quality(demo2, leaving, object_ids=[[1]] * len(leaving))
    summary = f"moving {moving}, blobs {blobs}, leaving {exits}"
    assert moving.objects >= 6 and blobs.objects >= 6 and exits.absent_frames >= 4, summary
    assert moving.iou >= MOVING_MIN, summary
    assert blobs.iou >= BLOBS_MIN, summary
    assert exits.absent_found >= ABSENT_MIN, summary


@pytest.mark.usefixtures("single_thread")
def test_propagate_cli_with_demo2(demo2, tmp_path, capsys):
    sequence = generate_sequence((HELD_OUT_SEED, 4, 0), kind="volume", n_objects=3)
    stack = tmp_path / "volume.tif"
    tifffile.imwrite(stack, sequence.frames, photometric="rgb")
    obj = max(sequence.object_ids, key=lambda i: (sequence.labels[0] == i).sum())
    x, y = interior_point(sequence.labels[0] == obj)
    out = tmp_path / "labels.tif"
    code, _, err = run_cli(["propagate", stack, "--model", "demo2", "--frame", 0, "--point", f"{x:g},{y:g}",
                            "--out", out], capsys)
    assert code == 0, err
    labels = tifffile.imread(out)
    assert labels.shape == sequence.labels.shape
    assert set(np.unique(labels)) <= {0, 1} and labels.dtype == np.uint16


@pytest.mark.usefixtures("single_thread")
def test_segment_cli_with_demo2(demo2, tmp_path, capsys):
    from PIL import Image

    sequence = generate_sequence((HELD_OUT_SEED, 5, 0), kind="movie", n_objects=3)
    image = tmp_path / "frame.png"
    Image.fromarray(sequence.frames[0]).save(image)
    obj = max(sequence.object_ids, key=lambda i: (sequence.labels[0] == i).sum())
    x, y = interior_point(sequence.labels[0] == obj)
    out = tmp_path / "mask.png"
    code, _, err = run_cli(["segment", image, "--model", "demo2", "--point", f"{x:g},{y:g}", "--out", out], capsys)
    assert code == 0, err
    assert np.asarray(Image.open(out)).shape == sequence.labels[0].shape


def test_sequences_are_seeded_and_objects_move_leave_and_end():
    a = generate_sequence((7, 0), kind="movie", exits=True)
    b = generate_sequence((7, 0), kind="movie", exits=True)
    np.testing.assert_array_equal(a.frames, b.frames)
    np.testing.assert_array_equal(a.labels, b.labels)
    assert a.frames.shape == (8, 256, 256, 3) and a.frames.dtype == np.uint8 and a.labels.shape == (8, 256, 256)
    leaving = [generate_sequence((7, i), kind="movie", exits=True) for i in range(4)]
    for s in leaving:  # object 1 is in the field at first and gone at the end
        present = s.present(1)
        assert present[0] and not present[-1], present
    movies = [generate_sequence((8, i), kind="movie") for i in range(4)]
    moved = [np.argwhere(s.labels[0] == i).mean(0) - np.argwhere(s.labels[-1] == i).mean(0)
             for s in movies for i in s.object_ids if s.present(i)[[0, -1]].all()]
    assert max(np.hypot(*d) for d in moved) > 10
    volumes = [generate_sequence((9, i), kind="volume") for i in range(4)]
    areas = [(s.labels == i).reshape(8, -1).sum(1) for s in volumes for i in s.object_ids]
    assert any(np.ptp(a) > 200 for a in areas)  # sections grow and shrink through the slices
    with pytest.raises(ValueError, match="unknown kind"):
        generate_sequence(0, kind="film")


def test_a_degenerate_shape_draw_is_drawn_again():
    # this seed draws a polygon of nearly collinear corners (no pixels) for the object that leaves;
    # it used to stop a training run with a bare ValueError in the data worker
    sequence = generate_sequence((6, 457, 1), frames=4, kind="movie", exits=True)
    assert sequence.present(1)[0] and not sequence.present(1)[-1]


def test_training_is_seeded_and_writes_a_loadable_checkpoint(tmp_path):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        outs = [tmp_path / f"run{i}" / "demo2.pt" for i in range(3)]
        for out, stop in zip(outs, (2, 2, 1)):
            out.parent.mkdir()
            train_demo2.train(out, image_steps=1, steps=4, stop_after=stop, frames=2, objects=1, prompted=1,
                              scenes=1, warmup=1, workers=0, loss_size=32, log_every=100)
    finally:
        torch.set_num_threads(threads)
    first, second, image_stage = (read_state_dict(out) for out in outs)
    assert all(torch.equal(first[k], second[k]) for k in first)  # same seed, same weights
    assert torch.load(outs[0].with_name("demo2.pt.state"), weights_only=True)["step"] == 2  # both stages ran
    model = zoo.load_model(None, outs[0])  # strict loading, configuration recognised from the weights
    assert model.config == SAM2_CONFIGS["demo2"]
    skips = [k for k in first if k.startswith(("sam_mask_decoder.conv_s0.", "sam_mask_decoder.conv_s1."))]
    assert len(skips) == 4 and all(not image_stage[k].any() for k in skips)  # held at zero in the image stage
    assert all(first[k].any() for k in skips)  # and trained in the second
    with pytest.raises(ValueError, match="stop_after"):
        train_demo2.train(outs[0], image_steps=1, steps=2, stop_after=4)
    # a longer recipe continues from weights (here with a zero learning rate: they come out unchanged)
    continued = tmp_path / "continued.pt"
    train_demo2.main(["--init", str(outs[0]), "--out", str(continued), "--image-steps", "0", "--steps", "1",
                      "--lr", "0", "--frames", "2", "--objects", "1", "--prompted", "1", "--scenes", "1",
                      "--workers", "0", "--loss-size", "32", "--threads", str(torch.get_num_threads())])
    again = read_state_dict(continued)
    assert all(torch.equal(first[k], again[k]) for k in first)
