"""Run ``python -m sam_core`` in-process and a small test image for the command-line tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from sam_core.cli import main


def run_cli(argv, capsys) -> tuple[int, str, str]:
    """Exit code, standard output and standard error of ``sam_core``'s command line on ``argv``."""
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def write_cells_png(folder: Path) -> Path:
    """A 90 x 70 (width x height) noisy RGB PNG with a red 30 x 30 square at x 30..59, y 20..49."""
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (70, 90, 3), dtype=np.uint8)
    image[20:50, 30:60] = (200, 40, 40)
    path = folder / "cells.png"
    Image.fromarray(image).save(path)
    return path
