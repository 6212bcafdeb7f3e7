"""Embedding cache: memory LRU bounded in bytes, on-disk store across processes, damaged files, float16."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from sam_core.cache import EmbeddingCache, cache_key, embedding_nbytes
from sam_core.errors import SamError
from sam_core.imaging import Preparation
from sam_core.predictor import Embedding, Predictor

RNG = np.random.default_rng(11)


def _embedding(key: str, channels: int = 8, side: int = 16, valid=None) -> Embedding:
    return Embedding(
        features=torch.randn(1, channels, side, side),
        original_size=(40, 50),
        input_size=(51, 64),
        model_id="test-model",
        preparation=Preparation(value_range=(0, 10), channels=(0,)),
        key=key,
        valid=valid,
    )


def _image(seed=0):
    return np.random.default_rng(seed).integers(0, 256, (40, 50, 3), dtype=np.uint8)


def test_cache_key_depends_on_pixels_shape_dtype_model_and_preparation():
    image = _image()
    key = cache_key(image, "m")
    assert key == cache_key(image.copy(), "m")
    assert key == cache_key(np.asfortranarray(image), "m")
    changed = image.copy()
    changed[5, 5, 1] ^= 1
    assert key != cache_key(changed, "m")
    assert key != cache_key(image.reshape(50, 40, 3), "m")
    assert key != cache_key(image.astype(np.uint16), "m")
    assert key != cache_key(image, "other")
    assert key != cache_key(image, "m", Preparation(value_range=(0, 100)))
    assert key == cache_key(image, "m", Preparation())


def test_memory_lru_is_bounded_in_bytes():
    one = embedding_nbytes(_embedding("a"))
    cache = EmbeddingCache(memory_bytes=int(2.5 * one))
    for key in "abc":
        cache.put(key, _embedding(key))
    assert len(cache) == 2 and cache.memory_used <= cache.memory_bytes
    assert cache.get("a") is None and cache.get("b") is not None
    cache.put("d", _embedding("d"))  # b was used last, so c goes
    assert cache.get("c") is None and cache.get("b") is not None and cache.get("d") is not None
    cache.put("huge", _embedding("huge", channels=64))  # bigger than the whole budget: not kept
    assert cache.get("huge") is None and len(cache) == 2
    cache.clear()
    assert len(cache) == 0 and cache.memory_used == 0


def test_disk_round_trip_float32_exact_and_float16_halves(tmp_path):
    valid = RNG.random((40, 50)) > 0.3
    embedding = _embedding("k1", valid=valid)
    exact = EmbeddingCache(directory=tmp_path / "f32", dtype="float32")
    exact.put("k1", embedding)
    loaded = EmbeddingCache(directory=tmp_path / "f32", dtype="float32").get("k1")
    assert torch.equal(loaded.features, embedding.features)
    assert loaded.original_size == (40, 50) and loaded.input_size == (51, 64)
    assert loaded.model_id == "test-model" and loaded.key == "k1"
    assert loaded.preparation == embedding.preparation
    np.testing.assert_array_equal(loaded.valid, valid)

    assert EmbeddingCache(directory=tmp_path / "default").dtype == "float32"  # lossless by default
    half = EmbeddingCache(directory=tmp_path / "f16", dtype="float16")
    half.put("k1", embedding)
    size16 = half.path_for("k1").stat().st_size
    size32 = exact.path_for("k1").stat().st_size
    features_bytes = embedding.features.nelement() * 4
    assert size32 - size16 == features_bytes // 2
    assert size16 < 0.55 * size32 + 1024
    loaded16 = EmbeddingCache(directory=tmp_path / "f16").get("k1")
    assert loaded16.features.dtype == torch.float16
    torch.testing.assert_close(loaded16.features.float(), embedding.features, atol=2e-3, rtol=1e-3)


def _damage_cases(path):
    data = path.read_bytes()
    yield "truncated", data[: len(data) - 100]
    flipped = bytearray(data)
    flipped[-10] ^= 0xFF
    yield "flipped byte", bytes(flipped)
    yield "empty", b""
    yield "garbage", b"\x00" * 50
    yield "header only", data[:40]


def test_damaged_file_is_detected_deleted_and_missed(tmp_path):
    cache = EmbeddingCache(directory=tmp_path)
    cache.put("k", _embedding("k"))
    path = cache.path_for("k")
    for name, content in list(_damage_cases(path)):
        path.write_bytes(content)
        fresh = EmbeddingCache(directory=tmp_path)
        assert fresh.get("k") is None, name
        assert not path.exists(), name
        cache.put("k", _embedding("k"))
    # a file renamed to another key is not trusted either
    os.replace(path, cache.path_for("other"))
    assert EmbeddingCache(directory=tmp_path).get("other") is None


def test_writes_are_atomic_no_temp_files_left(tmp_path):
    cache = EmbeddingCache(directory=tmp_path)
    for key in ("a", "b"):
        cache.put(key, _embedding(key))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.samemb", "b.samemb"]


def test_disk_bound_deletes_least_recently_used_files(tmp_path):
    probe = EmbeddingCache(directory=tmp_path / "probe")
    probe.put("x", _embedding("x"))
    one = probe.path_for("x").stat().st_size
    cache = EmbeddingCache(memory_bytes=0, directory=tmp_path / "bounded", disk_bytes=int(2.5 * one))
    for index, key in enumerate("abc"):
        cache.put(key, _embedding(key))
        os.utime(cache.path_for(key), ns=(index * 10**9, index * 10**9))  # distinct ages on any filesystem
    assert sorted(p.name for p in (tmp_path / "bounded").iterdir()) == ["b.samemb", "c.samemb"]
    assert cache.get("b") is not None  # a read makes b the most recently used
    cache.put("d", _embedding("d"))
    assert sorted(p.name for p in (tmp_path / "bounded").iterdir()) == ["b.samemb", "d.samemb"]
    tiny = EmbeddingCache(directory=tmp_path / "tiny", disk_bytes=1)
    tiny.put("only", _embedding("only"))  # the entry just written is always kept
    assert tiny.path_for("only").exists()


def test_bad_settings():
    with pytest.raises(SamError):
        EmbeddingCache(dtype="int8")
    with pytest.raises(SamError):
        EmbeddingCache(memory_bytes=-1)
    with pytest.raises(SamError):
        EmbeddingCache(disk_bytes=-5)


# --- with a predictor -----------------------------------------------------------------------------------


def test_new_predictor_with_same_disk_dir_runs_no_encoder(small_vit_checkpoint, tmp_path):
    image = _image(1)
    first = Predictor(None, checkpoint=small_vit_checkpoint, cache=EmbeddingCache(directory=tmp_path))
    embedding = first.encode(image)
    assert first.encoder_runs == 1
    result = first.predict(embedding, box=[5, 5, 40, 30])

    second = Predictor(None, checkpoint=small_vit_checkpoint, cache=EmbeddingCache(directory=tmp_path, dtype="float16"))
    again = second.encode(image)
    assert second.encoder_runs == 0
    assert again.features.dtype == torch.float32 and again.original_size == embedding.original_size
    reused = second.predict(again, box=[5, 5, 40, 30])
    np.testing.assert_array_equal(reused.masks, result.masks)  # float32 on disk: exactly the same values
    np.testing.assert_array_equal(reused.scores, result.scores)


def test_damaged_disk_entry_is_recomputed(small_vit_checkpoint, tmp_path):
    image = _image(2)
    first = Predictor(None, checkpoint=small_vit_checkpoint, cache=EmbeddingCache(directory=tmp_path, dtype="float32"))
    reference = first.encode(image)
    path = first.cache.path_for(reference.key)
    path.write_bytes(path.read_bytes()[:-64])

    second = Predictor(None, checkpoint=small_vit_checkpoint, cache=EmbeddingCache(directory=tmp_path, dtype="float32"))
    recomputed = second.encode(image)
    assert second.encoder_runs == 1
    assert torch.equal(recomputed.features, reference.features)
    assert path.exists()  # rewritten whole
    third = Predictor(None, checkpoint=small_vit_checkpoint, cache=EmbeddingCache(directory=tmp_path, dtype="float32"))
    assert torch.equal(third.encode(image).features, reference.features) and third.encoder_runs == 0


def test_memory_budget_evicts_and_reencodes(small_vit_checkpoint):
    predictor = Predictor(None, checkpoint=small_vit_checkpoint, cache=EmbeddingCache(memory_bytes=1))
    image = _image(3)
    predictor.encode(image)
    predictor.encode(image)
    assert predictor.encoder_runs == 2  # nothing fits a 1-byte budget
