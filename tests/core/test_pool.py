"""One model specification (ModelSpec, with the checkpoint rule inside it) and one predictor pool."""

from __future__ import annotations

import argparse
import pickle

import pytest

from sam_core.errors import SamError
from sam_core.pool import ModelSpec, PredictorPool


def test_the_checkpoint_rule_lives_in_model_spec(tmp_path):
    file = str(tmp_path / "model.pth")
    assert ModelSpec.of().name == "demo" and not ModelSpec.of().infers_config
    assert ModelSpec.of(None, file).name is None and ModelSpec.of(None, file).infers_config
    # demo names the bundled file: with another file it names no configuration
    assert ModelSpec.of("demo", file) == ModelSpec.of(None, file)
    assert ModelSpec.of("vit_t", file).name == "vit_t"  # an official configuration for this file's weights
    assert ModelSpec.of("", "").name == "demo"
    assert ModelSpec.of("vit_b", file, device="cpu", precision="bf16").label == "vit_b: model.pth"
    with pytest.raises(SamError, match="model name or a checkpoint"):
        ModelSpec(name=None)


def test_specs_are_pool_keys_and_travel_to_workers(tmp_path):
    spec = ModelSpec.of(None, tmp_path / "m.pth", device="cpu", cache_dir=tmp_path)
    assert pickle.loads(pickle.dumps(spec)) == spec
    assert {spec: 1}[ModelSpec.of(None, str(tmp_path / "m.pth"), device="cpu", cache_dir=str(tmp_path))] == 1
    assert spec.with_cache(None) != spec and spec.with_cache(None).cache_dir is None


def test_the_pool_builds_each_predictor_once_and_drops_the_least_recently_used(small_vit_checkpoint, tmp_path):
    pool = PredictorPool(size=2)
    a = ModelSpec.of(None, small_vit_checkpoint)
    b = a.with_cache(tmp_path / "embeddings")
    c = ModelSpec.of(None, small_vit_checkpoint, precision="exact")
    first = pool.get(a)
    assert pool.get(a) is first and pool.loads == 1
    on_disk = pool.get(b)  # another embedding cache on the same network: no second load
    assert on_disk is not first and on_disk.model is first.model and pool.loads == 1
    assert on_disk.cache.directory == tmp_path / "embeddings" and first.cache.directory is None
    exact = pool.get(c)
    assert exact.model.precision == "exact" and first.model.precision != "exact" and pool.loads == 2
    pool.get(a)  # a's network is now the most recently used
    d = ModelSpec.of(None, small_vit_checkpoint, device="cpu")
    pool.get(d)
    assert pool.loads == 3 and len(pool) == 2
    assert a in pool and b in pool and d in pool and c not in pool  # c's network was the least recently used
    pool.clear()
    assert len(pool) == 0 and a not in pool


def test_the_pool_reports_a_missing_checkpoint_and_refuses_other_keys(tmp_path):
    pool = PredictorPool()
    with pytest.raises(SamError, match="does not exist"):
        pool.get(ModelSpec.of(None, tmp_path / "missing.pth"))
    with pytest.raises(TypeError, match="ModelSpec"):
        pool.get(("demo", None, None))
    with pytest.raises(SamError, match="at least one"):
        PredictorPool(size=0)


def test_the_command_line_describes_its_model_with_a_spec(small_vit_checkpoint, tmp_path):
    from sam_core.cli.options import add_model_args, load_predictor, model_name, model_spec

    parser = argparse.ArgumentParser()
    add_model_args(parser, precision=True)
    args = parser.parse_args(["--checkpoint", str(small_vit_checkpoint), "--precision", "exact"])
    assert model_spec(args) == ModelSpec.of(None, small_vit_checkpoint, precision="exact")
    assert model_name(args) is None and model_name(parser.parse_args([])) == "demo"
    predictor = load_predictor(args, cache_dir=tmp_path)
    assert predictor.model.precision == "exact" and predictor.cache.directory == tmp_path
