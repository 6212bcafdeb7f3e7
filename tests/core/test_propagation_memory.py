"""Bounded memory in propagation: frames are read lazily, one at a time, and their image features
are kept in an LRU within a byte budget - through a 300-frame lazy Dask stack with a tiny SAM 2.1
at 64 px. Also the frame sources (arrays, TIFF) and their errors."""

from __future__ import annotations

import dataclasses

import dask
import dask.array as da
import numpy as np
import pytest
import tifffile
import torch

from helpers.sam2_checkpoints import SMALL_SAM2
from sam_core.errors import SamError
from sam_core.frames import open_frames
from sam_core.models.sam2 import build_sam2
from sam_core.propagation import DEFAULT_FEATURE_BUDGET, FeatureCache, VideoSession, features_nbytes

pytestmark = pytest.mark.usefixtures("single_thread")

TINY = dataclasses.replace(SMALL_SAM2, name="tiny_64px", image_size=64)
COUNT, HEIGHT, WIDTH = 300, 24, 32


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_sam2(TINY)


def _lazy_stack(reads: dict):
    """A (300, 24, 32) uint8 Dask stack; each frame is made when computed, ``reads`` counts how often."""

    def make(index: int) -> np.ndarray:
        reads[index] = reads.get(index, 0) + 1
        return np.random.default_rng(index).integers(0, 256, (HEIGHT, WIDTH), dtype=np.uint8)

    frames = [da.from_delayed(dask.delayed(make)(i), shape=(HEIGHT, WIDTH), dtype=np.uint8) for i in range(COUNT)]
    return da.stack(frames)


@pytest.mark.slow  # about 8 s: propagates through all 300 frames
def test_300_frame_dask_stack_is_read_lazily_within_the_feature_budget(model):
    reads: dict = {}
    stack = _lazy_stack(reads)
    frames = open_frames(stack)
    assert reads == {}  # opening reads nothing
    probe = VideoSession(model, open_frames(stack[:1]))
    per_frame = features_nbytes(probe.cache.get(0))
    reads.clear()
    budget = 4 * per_frame + per_frame // 2  # room for 4 frames' features
    session = VideoSession(model, frames, feature_budget=budget)

    session.add_prompt(150, 1, points=[[10, 12]])
    session.add_prompt(150, 2, box=[5, 5, 25, 20])
    assert sum(reads.values()) == 1
    held = []
    results = []
    for result in session.propagate("both"):
        held.append(len(session.cache))
        assert session.cache.nbytes <= budget
        results.append(result.frame)
    assert results == list(range(150, COUNT)) + list(range(150, -1, -1))
    assert max(held) <= 4 and session.cache.peak_entries <= 4 and session.cache.peak_bytes <= budget
    # every frame read once: the prompted frame is not read again when the passes reach it
    assert sorted(reads) == list(range(COUNT)) and set(reads.values()) == {1}
    assert frames.reads == COUNT and session.cache.computed == COUNT
    assert session.labels(0).shape == (HEIGHT, WIDTH)


def test_frames_keep_one_copy_of_the_memory_position_encoding(model):
    # the official predictor keeps one maskmem_pos_enc for all frames; a copy per frame would grow
    # by 1 MiB a frame at 1024 px (64 channels x 64 x 64 float32)
    frames = open_frames(np.random.default_rng(2).integers(0, 256, (12, HEIGHT, WIDTH), dtype=np.uint8))
    session = VideoSession(model, frames)
    session.add_prompt(0, 1, points=[[10, 12]])
    one = session.stored_nbytes
    assert len(list(session.propagate("forward"))) == 12
    per_frame = (session.stored_nbytes - one) / 11
    pos_bytes = TINY.mem_dim * (TINY.image_size // 16) ** 2 * 4
    assert one - per_frame == pos_bytes  # the first frame's copy, shared by the 11 tracked frames
    assert per_frame < one


def test_default_feature_budget_is_2_gb():
    assert DEFAULT_FEATURE_BUDGET == 2 * 1024 ** 3


def test_feature_cache_drops_the_least_recently_used_frame(model):
    frames = open_frames(np.random.default_rng(0).integers(0, 256, (5, 20, 20, 3), dtype=np.uint8))
    session = VideoSession(model, frames)
    per_frame = features_nbytes(session.cache.get(0))
    cache = FeatureCache(session._features, budget=2 * per_frame)
    for index in (0, 1, 0, 2, 0, 1):  # 2 pushes out 1 (0 was used since); 1 is computed again
        cache.get(index)
    assert cache.computed == 4 and len(cache) == 2 and cache.peak_entries == 2
    with pytest.raises(SamError, match="positive"):
        FeatureCache(session._features, budget=0)


def test_frames_from_arrays_and_multipage_tiff(tmp_path, model):
    volume = np.random.default_rng(1).normal(1000, 200, (3, 20, 30)).astype(np.float32)  # stretched per frame
    frames = open_frames(volume)
    assert (frames.count, frames.height, frames.width) == (3, 20, 30)
    x = frames.model_input(1, TINY.image_size, model.preprocess)
    assert x.shape == (1, 3, 64, 64) and torch.isfinite(x).all()
    path = tmp_path / "stack.tif"
    tifffile.imwrite(path, volume)
    from_tiff = open_frames(path)
    assert from_tiff.count == 3
    np.testing.assert_array_equal(from_tiff.read(2), volume[2])


def test_frame_source_errors(tmp_path):
    mixed = tmp_path / "mixed.tif"
    tifffile.imwrite(mixed, np.zeros((20, 30), np.uint8))
    tifffile.imwrite(mixed, np.zeros((20, 31), np.uint8), append=True)
    with pytest.raises(SamError, match="different sizes"):
        open_frames(mixed)
    with pytest.raises(SamError, match=r"\(T, Y, X\)"):
        open_frames(np.zeros((20, 30)))
    with pytest.raises(SamError, match="does not exist"):
        open_frames(tmp_path / "missing")
    with pytest.raises(SamError, match="frame 3 is not in"):
        open_frames(np.zeros((3, 8, 8))).check_index(3)


def test_a_sam_model_cannot_propagate(tmp_path):
    from sam_core.models.build import build_sam
    from sam_core.models.config import get_config

    with pytest.raises(SamError, match="needs a SAM 2.1 model"):
        VideoSession(build_sam(get_config("vit_t")), open_frames(np.zeros((2, 8, 8))))
