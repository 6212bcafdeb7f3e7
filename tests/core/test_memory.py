"""Memory: a 300-slice volume never holds more embeddings in RAM than the cache's budget; embeddings are
float16 on disk when asked and a second pass reads them from disk without the encoder."""

from __future__ import annotations

import weakref

import numpy as np
import pytest
import torch

from sam_core.cache import EmbeddingCache, embedding_nbytes
from sam_core.predictor import Predictor
from sam_core.volume import propagate

SLICES = 300


@pytest.fixture(autouse=True)
def one_thread():
    """Small models run faster on one thread (no OpenMP start-up and spinning for tiny operations)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _volume(slices: int = SLICES, side: int = 40) -> np.ndarray:
    """(Z, Y, X) uint8 stack: a disk drifting across noisy slices (every slice differs)."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:side, :side]
    volume = rng.integers(0, 60, (slices, side, side), dtype=np.uint8)
    for z in range(slices):
        cx = 12 + 16 * z / slices
        volume[z][(yy - 20) ** 2 + (xx - cx) ** 2 < 64] = 200
    return volume


def test_300_slices_stay_within_the_memory_budget_and_go_to_disk_as_float16(small_vit_checkpoint, tmp_path):
    volume = _volume()
    probe = Predictor(None, checkpoint=small_vit_checkpoint, cache=EmbeddingCache(memory_bytes=0))
    one = embedding_nbytes(probe.encode(volume[0]))
    budget = 5 * one + one // 2  # five embeddings fit
    cache = EmbeddingCache(memory_bytes=budget, directory=tmp_path, dtype="float16")  # half the disk
    predictor = Predictor(probe.model, cache=cache)

    alive: list = []  # weak references to every embedding handed out (dataclasses are unhashable)
    most_alive = most_used = 0
    for z in range(SLICES):
        embedding = predictor.encode(volume[z])
        most_used = max(most_used, cache.memory_used)
        predictor.predict(embedding, points=[(20, 20)])
        alive.append(weakref.ref(embedding))
        del embedding  # no gc.collect(): an embedding kept alive by a reference cycle counts as held
        alive = [ref for ref in alive if ref() is not None]
        most_alive = max(most_alive, len(alive))
    assert predictor.encoder_runs == SLICES
    assert most_used <= budget and len(cache) == 5
    assert most_alive <= 5  # nothing outside the cache keeps embeddings alive

    files = sorted(tmp_path.glob("*.samemb"))
    assert len(files) == SLICES
    features = probe.encode(volume[0]).features
    assert all(f.stat().st_size < features.nelement() * 2 + 2048 for f in files)  # float16: 2 bytes a value

    again = Predictor(probe.model, cache=EmbeddingCache(memory_bytes=budget, directory=tmp_path))
    for z in range(SLICES):
        embedding = again.encode(volume[z])
        assert embedding.features.dtype == torch.float32
        assert again.cache.memory_used <= budget
    assert again.encoder_runs == 0


def test_propagation_through_300_slices_keeps_the_budget(small_vit_checkpoint):
    """propagate() asks the predictor for one slice at a time; the cache bounds what stays in memory."""
    volume = _volume()
    probe = Predictor(None, checkpoint=small_vit_checkpoint, cache=EmbeddingCache(memory_bytes=0))
    one = embedding_nbytes(probe.encode(volume[0]))
    cache = EmbeddingCache(memory_bytes=3 * one)
    predictor = Predictor(probe.model, cache=cache)
    start = np.zeros(volume.shape[1:], dtype=bool)
    start[14:26, 14:26] = True
    used = []
    result = propagate(predictor, volume, SLICES // 2, start, stop_iou=0.0, stop_stability=0.0, min_overlap=0.0,
                       progress=lambda done, total, message: used.append(cache.memory_used))
    assert result.shape == volume.shape
    assert predictor.encoder_runs >= 1 and used
    assert max(used) <= cache.memory_bytes and len(cache) <= 3
