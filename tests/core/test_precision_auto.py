"""``auto`` says which precision it runs, and why (issue 21 item 4): ``describe_auto``, the ``models``
command and ``--verbose`` on the commands that load a model."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from sam_core.cli import main
from sam_core.models import precision


@pytest.fixture(params=[False, True], ids=["no-bf16", "bf16"])
def cpu_bf16(request, monkeypatch) -> bool:
    monkeypatch.setattr(precision, "cpu_has_bf16", lambda: request.param)
    return request.param


def test_describe_auto_names_what_auto_runs(cpu_bf16):
    line = precision.describe_auto("cpu")
    expected = "bf16" if cpu_bf16 else "int8-smooth"  # the guarded fast path (test_precision_fast.py)
    assert line.startswith(f"auto runs {expected} on cpu: ")
    assert precision.resolve_precision("auto", "cpu") == expected


def test_models_command_says_what_auto_runs(cpu_bf16, tmp_path, capsys):
    assert main(["models", "--cache-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    expected = "bf16" if cpu_bf16 else "int8-smooth"
    assert f"Precision: auto runs {expected} on cpu: " in out


@pytest.fixture
def image_file(tmp_path):
    path = tmp_path / "image.png"
    rng = np.random.default_rng(0)
    Image.fromarray((rng.random((96, 128, 3)) * 255).astype(np.uint8)).save(path)
    return path


def test_segment_verbose_says_which_precision_ran(cpu_bf16, image_file, tmp_path, capsys):
    out = tmp_path / "mask.png"
    base = ["segment", str(image_file), "--point", "40,30", "--out", str(out)]
    expected = "bf16" if cpu_bf16 else "int8-smooth"  # demo is a TinyViT: int8-smooth keeps one stage's fc1 fp32

    assert main(base + ["--precision", "auto", "--verbose"]) == 0
    err = capsys.readouterr().err
    assert f"model demo on cpu, encoder precision {expected} (auto runs {expected} on cpu: " in err

    assert main(base + ["--verbose"]) == 0
    err = capsys.readouterr().err
    assert f"encoder precision fp32 (the default; auto runs {expected} on cpu: " in err

    assert main(base) == 0
    assert "encoder precision" not in capsys.readouterr().err  # quiet without --verbose
    assert out.is_file()


def test_automask_verbose_says_which_precision_ran(cpu_bf16, image_file, tmp_path, capsys):
    out = tmp_path / "labels.png"
    assert main(["automask", str(image_file), "--out", str(out), "--points-per-side", "4",
                 "--precision", "int8", "--verbose"]) == 0
    assert "model demo on cpu, encoder precision int8 (as asked)" in capsys.readouterr().err
