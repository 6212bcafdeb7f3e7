"""The project's trained models are committed (``demo``: sam_core/data/demo.pt, ``demo-concepts``:
sam_core/data/demo_concepts.pt): tests that need them fail when they are missing, they never skip."""

from __future__ import annotations

from pathlib import Path

import pytest


def require_demo(name: str = "demo") -> Path:
    """The bundled checkpoint of zoo model ``name`` (``demo`` or ``demo-concepts``); ``pytest.fail``
    (not skip) with how to restore it when it is missing."""
    from sam_core import zoo

    path = zoo.model_info(name).bundled
    if path is None or not path.is_file():
        pytest.fail(
            f"the bundled {name} model {path} is missing: it is committed to the repository and never retrained "
            f"in CI; restore it from git (git checkout -- sam_core/data/{path.name if path else name})",
            pytrace=False,
        )
    return path
