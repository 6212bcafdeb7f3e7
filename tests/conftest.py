"""Shared fixtures: random-weight checkpoints in the official format, built once per test session."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from helpers.checkpoints import SMALL_TINY_VIT, SMALL_VIT, write_official_checkpoint  # noqa: E402


@pytest.fixture(scope="session")
def checkpoint_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("checkpoints")


@pytest.fixture(scope="session")
def small_vit_checkpoint(checkpoint_dir) -> Path:
    """Random-weight checkpoint of ``SMALL_VIT`` (official format, seed 0)."""
    return write_official_checkpoint(SMALL_VIT, checkpoint_dir / "small_vit.pth", seed=0)


@pytest.fixture(scope="session")
def small_tiny_vit_checkpoint(checkpoint_dir) -> Path:
    """Random-weight checkpoint of ``SMALL_TINY_VIT`` (official format, seed 0)."""
    return write_official_checkpoint(SMALL_TINY_VIT, checkpoint_dir / "small_tiny_vit.pth", seed=0)


@pytest.fixture(scope="session")
def vit_b_checkpoint(checkpoint_dir) -> Path:
    """Random-weight checkpoint of the full-size official ``vit_b`` (about 375 MB, seed 0)."""
    from sam_core.models import get_config

    return write_official_checkpoint(get_config("vit_b"), checkpoint_dir / "sam_vit_b.pth", seed=0)


@pytest.fixture(scope="session")
def vit_t_checkpoint(checkpoint_dir) -> Path:
    """Random-weight checkpoint of the full-size MobileSAM ``vit_t`` (about 40 MB, seed 0)."""
    from sam_core.models import get_config

    return write_official_checkpoint(get_config("vit_t"), checkpoint_dir / "mobile_sam.pt", seed=0)
