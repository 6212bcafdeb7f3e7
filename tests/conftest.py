"""Shared fixtures: random-weight checkpoints in the official format, built once per test session."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from helpers.checkpoints import SMALL_TINY_VIT, SMALL_VIT, write_official_checkpoint  # noqa: E402
from helpers.demo import require_demo  # noqa: E402


@pytest.fixture(autouse=True)
def _torch_threads_restored():
    """No test leaks torch's thread count into the next one: whatever a test sets is restored after it."""
    import torch

    threads = torch.get_num_threads()
    yield
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def single_thread():
    """torch on one thread for a module (``pytestmark = pytest.mark.usefixtures("single_thread")``),
    restored after it: small models run faster without OpenMP start-up and spinning."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def demo_checkpoint() -> Path:
    """The committed demo model; a missing file FAILS the test that needs it (see ``helpers.demo``)."""
    return require_demo()


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


@pytest.fixture(scope="session")
def sam2_tiny_checkpoint(checkpoint_dir) -> Path:
    """Random-weight checkpoint of the full-size official ``sam2.1_hiera_tiny`` (about 156 MB, seed 0,
    every parameter randomized, ``{"model": state_dict}`` as the official files)."""
    from helpers.sam2_checkpoints import write_official_sam2_checkpoint
    from sam_core.models.sam2 import SAM2_CONFIGS

    return write_official_sam2_checkpoint(SAM2_CONFIGS["sam2.1_hiera_tiny"], checkpoint_dir / "sam2.1_hiera_tiny.pt")
