"""The demo training's BatchNorm recalibration: statistics from training scenes, nothing else changes."""

from __future__ import annotations

import torch

from sam_core.models.build import build_sam
from sam_core.models.config import CONFIGS
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
