"""The demo training: the BatchNorm recalibration changes only statistics; a run can stop early on its
learning-rate schedule (how the shipped weights were made) or continue from weights (``--init``)."""

from __future__ import annotations

import pytest
import torch

from sam_core.models.build import build_sam
from sam_core.models.config import CONFIGS
from sam_core.train import train_demo
from sam_core.train.run import balance_at
from sam_core.train.train_demo import recalibrate_batchnorm


def test_recalibration_changes_only_batchnorm_statistics():
    model = build_sam(CONFIGS["demo"]).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    recalibrate_batchnorm(model, seed=0, size=CONFIGS["demo"].image_size, batches=1, batch=2)
    after = model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(k.rsplit(".", 1)[1] in ("running_mean", "running_var", "num_batches_tracked") for k in changed)
    norms = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert all(m.momentum == 0.1 for m in norms) and not model.training


@pytest.mark.slow
def test_stop_after_ends_the_run_on_the_longer_schedule(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(train_demo, "recalibrate_batchnorm", lambda *args, **kwargs: None)  # tested above
    schedule = []
    learning_rate = train_demo.learning_rate  # sam_core.train.run's schedule, as train_demo uses it

    def recording(step, steps, base, warmup):
        schedule.append((step, steps))
        return learning_rate(step, steps, base, warmup)

    monkeypatch.setattr(train_demo, "learning_rate", recording)
    out = tmp_path / "demo.pt"
    train_demo.train(out, steps=6, stop_after=2, batch=1, objects=1, warmup=1, workers=0, log_every=100)
    assert schedule == [(0, 6), (1, 6)]
    assert torch.load(out.with_name("demo.pt.state"), weights_only=True)["step"] == 2
    assert set(torch.load(out, weights_only=True)) == set(build_sam(CONFIGS["demo"]).state_dict())
    with pytest.raises(ValueError, match="stop_after"):
        train_demo.train(out, steps=2, stop_after=3)
    with pytest.raises(SystemExit):
        train_demo.main(["--out", str(out), "--steps", "2", "--stop-after", "3"])
    assert "--stop-after must be between 1 and --steps (2)" in capsys.readouterr().err
    continued = tmp_path / "continued.pt"  # a longer recipe continues from weights (zero learning rate)
    train_demo.main(["--init", str(out), "--out", str(continued), "--steps", "1", "--lr", "0", "--batch", "1",
                     "--objects", "1", "--workers", "0", "--threads", str(torch.get_num_threads())])
    before, after = torch.load(out, weights_only=True), torch.load(continued, weights_only=True)
    statistics = ("running_mean", "running_var", "num_batches_tracked")  # moved by forward passes in training
    assert all(torch.equal(before[k], after[k]) for k in before if not k.endswith(statistics))
    with pytest.raises(SystemExit):
        train_demo.main(["--init", str(tmp_path / "missing.pt"), "--out", str(continued)])
    assert "no such file" in capsys.readouterr().err


def test_class_balance_fades_and_is_off_when_continuing():
    assert [balance_at(step, 4) for step in (0, 2, 4, 8)] == [1.0, 0.5, 0.0, 0.0]
    assert balance_at(0, 4, continuing=True) == 0.0 and balance_at(0, 0) == 0.0
