"""Tiles as tasks on a real Dask LocalCluster (2 worker processes on 127.0.0.1): same polygons as one process."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from affine import Affine
from rasterio.crs import CRS

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from helpers.deterministic import ColourComponents  # noqa: E402
from helpers.georasters import known_scene, read_output, write_raster  # noqa: E402

from sam_core.distributed import GeneratorSpec, cluster, worker_generator  # noqa: E402
from sam_core.errors import SamError  # noqa: E402
from sam_core.geo import automask_raster  # noqa: E402
from sam_core.geo.settings import TilingSettings  # noqa: E402

pytest.importorskip("dask.distributed")

UTM = CRS.from_epsg(32633)
TRANSFORM = Affine(10.0, 0.0, 400000.0, 0.0, -10.0, 5600000.0)


def _pid(_item, generator):
    import os

    return os.getpid(), id(worker_generator(generator))


def test_local_cluster_gives_the_same_polygons_as_one_process(tmp_path):
    image, _ = known_scene()
    raster = write_raster(tmp_path / "scene.tif", image, TRANSFORM, UTM)
    single = tmp_path / "single.gpkg"
    automask_raster(raster, single, generator=ColourComponents(), tiling=TilingSettings(tile_size=128, overlap=32))
    parallel = tmp_path / "parallel.gpkg"
    result = automask_raster(raster, parallel, generator=ColourComponents(),
                             tiling=TilingSettings(tile_size=128, overlap=32), workers=2)
    assert result.tiles_done == 12
    a_geoms, a_attrs, a_crs = read_output(single)
    b_geoms, b_attrs, b_crs = read_output(parallel)
    assert a_crs == b_crs == UTM
    assert len(a_geoms) == len(b_geoms) == 6
    for a, b in zip(a_geoms, b_geoms):
        assert a.equals_exact(b, 0.0)
    for name in a_attrs:
        np.testing.assert_array_equal(a_attrs[name], b_attrs[name])


def test_each_worker_loads_the_model_once_and_an_existing_cluster_can_be_joined(small_vit_checkpoint, tmp_path):
    from sam_core.distributed import run_tasks

    spec = GeneratorSpec.create("demo", small_vit_checkpoint, None, {"points_per_side": 4})
    assert spec.model.name is None and spec.model.infers_config  # a checkpoint file: configuration from its weights
    assert spec == GeneratorSpec.create("demo", small_vit_checkpoint, None, {"points_per_side": 4})
    with cluster(workers=2) as client:
        seen = [result for _, result in run_tasks(client, _pid, range(6), broadcast=spec)]
        image, _ = known_scene()
        raster = write_raster(tmp_path / "scene.tif", image, TRANSFORM, UTM)
        joined = automask_raster(raster, tmp_path / "joined.gpkg", generator=ColourComponents(),
                                 tiling=TilingSettings(tile_size=128, overlap=32), scheduler=client.scheduler.address)
        assert joined.count == 6 and read_output(tmp_path / "joined.gpkg")[2] == UTM
    by_worker: dict = {}
    for pid, generator_id in seen:
        by_worker.setdefault(pid, set()).add(generator_id)
    assert all(len(ids) == 1 for ids in by_worker.values())  # one generator (one model) per worker process
    assert sum(1 for _ in seen) == 6


def test_cluster_arguments_are_checked(monkeypatch):
    import sam_core.distributed

    monkeypatch.setattr(sam_core.distributed, "CONNECT_TIMEOUT", 2)
    with pytest.raises(SamError, match="either"):
        with cluster(workers=2, scheduler="tcp://127.0.0.1:1"):
            pass
    with pytest.raises(SamError, match="at least 1"):
        with cluster(workers=0):
            pass
    with pytest.raises(SamError, match="cannot reach"):
        with cluster(scheduler="tcp://127.0.0.1:9"):
            pass
