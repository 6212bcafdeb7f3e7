"""The project's trained ``demo`` model is committed (sam_core/data/demo.pt): tests that need it fail
when it is missing, they never skip."""

from __future__ import annotations

from pathlib import Path

import pytest


def require_demo() -> Path:
    """The bundled demo checkpoint; ``pytest.fail`` (not skip) with how to restore it when it is missing."""
    from sam_core import zoo

    path = zoo.model_info("demo").bundled
    if path is None or not path.is_file():
        pytest.fail(
            f"the bundled demo model {path} is missing: it is committed to the repository and never retrained "
            "in CI; restore it from git (git checkout -- sam_core/data/demo.pt)",
            pytrace=False,
        )
    return path
