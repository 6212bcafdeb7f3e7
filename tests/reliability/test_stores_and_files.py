"""Caches, tile stores and hostile files: results never depend on the cache's state, damaged or planted
entries are recomputed and never trusted, no file the project reads back runs code, and images whose
declared size is beyond the memory budget are refused before decoding.
"""

from __future__ import annotations

import json
import os
import pickle
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from PIL import Image

from helpers.cli import run_cli, write_cells_png

ROOT = Path(__file__).resolve().parents[2]
MARKER_NAME = "payload-ran"


class Payload:
    """Unpickling this creates a marker file: proof that code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def _plant_torch(path: Path, marker: Path) -> None:
    torch.save({"image_encoder.x": torch.zeros(1), "mask_decoder.x": torch.zeros(1), "evil": Payload(marker)}, path)


# ----------------------------------------------------------------------------- item 8: cache state


def test_cold_and_warm_cache_give_identical_results(small_vit_checkpoint, tmp_path, capsys):
    """The same command gives the same masks and scores with an empty cache folder and with a filled one."""
    image = write_cells_png(tmp_path)
    argv = ["segment", image, "--point", "45,35", "--all", "--checkpoint", small_vit_checkpoint,
            "--cache-dir", tmp_path / "cache"]
    runs = []
    for name in ("cold", "warm", "warm_again"):
        out = tmp_path / name / "mask.png"
        code, _, err = run_cli([*argv, "--out", out], capsys)
        assert code == 0, err
        scores = [r["score"] for r in json.loads(out.with_suffix(".json").read_text())]
        masks = [np.array(Image.open(out.with_name(f"mask_{i}.png"))) for i in range(len(scores))]
        runs.append((scores, masks))
    for scores, masks in runs[1:]:
        assert scores == runs[0][0]  # exactly: the same values decoded, not merely close ones
        assert all(np.array_equal(a, b) for a, b in zip(masks, runs[0][1]))


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_a_fresh_embedding_decodes_from_the_values_the_cache_returns(dtype, small_vit_checkpoint, tmp_path):
    from sam_core.cache import EmbeddingCache
    from sam_core.predictor import Predictor

    image = np.array(Image.open(write_cells_png(tmp_path)))
    logits = []
    for _ in range(2):  # a new process each time: memory empty, the disk holds the entry
        cache = EmbeddingCache(directory=tmp_path / "c", dtype=dtype)
        predictor = Predictor(None, checkpoint=small_vit_checkpoint, cache=cache)
        embedding = predictor.encode(image)
        logits.append(predictor.predict(embedding, points=np.array([[45.0, 35.0]]), labels=np.array([1])).logits)
    assert np.array_equal(logits[0], logits[1])
    official_like = Predictor(None, checkpoint=small_vit_checkpoint)  # no disk: float32 as the official predictor
    plain = official_like.predict(official_like.encode(image), points=np.array([[45.0, 35.0]]), labels=np.array([1]))
    assert np.array_equal(plain.logits, logits[0]) == (dtype == "float32")  # lossless by default


# ------------------------------------------------------------------- concurrent and damaged caches


def test_three_concurrent_segment_runs_on_one_cache_folder(tmp_path):
    image = write_cells_png(tmp_path)
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    runs = [subprocess.Popen([sys.executable, "-m", "sam_core", "segment", str(image), "--point", "45,35",
                              "--out", str(tmp_path / f"m{i}.png"), "--cache-dir", str(tmp_path / "cache")],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, cwd=ROOT) for i in range(3)]
    for run in runs:
        _, err = run.communicate(timeout=300)
        assert run.returncode == 0, err.decode()
    masks = [np.array(Image.open(tmp_path / f"m{i}.png")) for i in range(3)]
    assert all(np.array_equal(m, masks[0]) for m in masks)
    files = list((tmp_path / "cache").iterdir())
    assert len(files) == 1 and files[0].suffix == ".samemb"  # one entry, no temporary file left


def _damage(kind: str, path: Path, marker: Path) -> None:
    data = path.read_bytes()
    if kind == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "flipped byte":
        path.write_bytes(data[:-100] + bytes([data[-100] ^ 0xFF]) + data[-99:])
    elif kind == "wrong magic":
        path.write_bytes(b"XXXXXXXX" + data[8:])
    elif kind == "huge header length":
        path.write_bytes(data[:8] + (2**32 - 1).to_bytes(4, "little") + data[12:])
    elif kind == "header not JSON":
        path.write_bytes(data[:12] + b"{" * 40 + data[52:])
    elif kind == "pickle":
        path.write_bytes(pickle.dumps(Payload(marker)))
    elif kind == "torch file":
        _plant_torch(path, marker)
    elif kind == "folder":
        path.unlink()
        path.mkdir()
    elif kind == "garbage":
        path.write_bytes(os.urandom(len(data)))


DAMAGE = ["truncated", "empty", "flipped byte", "wrong magic", "huge header length", "header not JSON", "pickle",
          "torch file", "folder", "garbage"]


@pytest.mark.parametrize("kind", DAMAGE)
def test_a_damaged_cache_entry_is_recomputed(kind, small_vit_checkpoint, tmp_path, capsys):
    image = write_cells_png(tmp_path)
    argv = ["segment", image, "--box", "25,15,65,55", "--checkpoint", small_vit_checkpoint, "--cache-dir", tmp_path / "c"]
    assert run_cli([*argv, "--out", tmp_path / "first.png"], capsys)[0] == 0
    (entry,) = (tmp_path / "c").iterdir()
    marker = tmp_path / MARKER_NAME
    _damage(kind, entry, marker)
    code, _, err = run_cli([*argv, "--out", tmp_path / "again.png"], capsys)
    assert code == 0 and "Traceback" not in err, err
    assert np.array_equal(np.array(Image.open(tmp_path / "first.png")), np.array(Image.open(tmp_path / "again.png")))
    assert not marker.exists()


# --------------------------------------------------------------------------------- tile stores


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    from affine import Affine
    from rasterio.crs import CRS

    from helpers.georasters import known_scene, write_raster

    image, _ = known_scene((200, 220))
    return write_raster(tmp_path_factory.mktemp("scene") / "scene.tif", image,
                        Affine(10.0, 0, 400000.0, 0, -10.0, 5600000.0), CRS.from_epsg(32633))


def test_damaged_tile_stores_are_recomputed_and_the_rerun_equals_a_clean_run(scene, small_vit_checkpoint, tmp_path,
                                                                              capsys, monkeypatch):
    from helpers.georasters import read_output
    from sam_core.errors import SamError
    from sam_core.geo import pipeline

    argv = ["geo", "automask", scene, None, "--checkpoint", small_vit_checkpoint, "--tile-size", "128", "--overlap",
            "32", "--points-per-side", "4", "--pred-iou-thresh", "0", "--stability-thresh", "0", "--quiet"]
    clean = tmp_path / "clean.gpkg"
    assert run_cli([*argv[:3], clean, *argv[4:]], capsys)[0] == 0

    out = tmp_path / "out.gpkg"

    def full_disk(*args, **kwargs):
        raise SamError(f"cannot write {out}: No space left on device")

    monkeypatch.setattr(pipeline, "write_features", full_disk)
    code, _, err = run_cli([*argv[:3], out, *argv[4:]], capsys)
    store = tmp_path / ".out.gpkg.tiles"
    tiles = sorted(store.glob("tile_*.npz"))
    assert code == 2 and len(tiles) == 4
    assert f"4 finished tiles are kept in {store}: run the same command again to resume" in err
    monkeypatch.undo()

    marker = tmp_path / MARKER_NAME
    tiles[0].write_bytes(tiles[0].read_bytes()[:50])  # truncated
    tiles[1].write_bytes(os.urandom(300))  # garbage
    with open(tiles[2], "wb") as handle:  # an object array: loading it would unpickle
        np.savez(handle, boxes=np.array([Payload(marker)], dtype=object))
    _plant_torch(tiles[3], marker)
    code, stdout, err = run_cli([*argv[:3], out, *argv[4:]], capsys)
    assert code == 0, err
    assert not marker.exists()
    a, b = read_output(out), read_output(clean)
    assert [g.wkb for g in a[0]] == [g.wkb for g in b[0]]
    assert not store.exists()


# ------------------------------------------------------------------------ no file runs code


def test_every_torch_load_in_the_project_is_weights_only():
    calls, unsafe = 0, []
    for folder in ("sam_core", "napari_sam", "qgis_sam", "benchmarks", "scripts"):
        for path in (ROOT / folder).rglob("*.py"):
            text = path.read_text()
            for match in re.finditer(r"torch\.load\((.*?)\)\s*$", text, flags=re.M | re.S):
                calls += 1
                if "weights_only=True" not in match.group(0).split("\n")[0] + match.group(1)[:300]:
                    unsafe.append(f"{path.relative_to(ROOT)}: {match.group(0)[:80]}")
            for pattern in ("pickle.load(", "pickle.loads(", "allow_pickle=True", "torch.jit.load(", "dill.load"):
                if pattern in text:
                    unsafe.append(f"{path.relative_to(ROOT)}: {pattern}")
    assert calls >= 3 and unsafe == []


def test_a_planted_checkpoint_is_refused_without_running_code_or_advising_weights_only_false(tmp_path, capsys):
    image = write_cells_png(tmp_path)
    marker, evil = tmp_path / MARKER_NAME, tmp_path / "evil.pth"
    _plant_torch(evil, marker)
    code, _, err = run_cli(["segment", image, "--point", "45,35", "--out", tmp_path / "m.png", "--checkpoint", evil], capsys)
    line = err.strip()
    assert code == 2 and line.count("\n") == 0 and "could run code" in line
    assert "weights_only=False" not in line and "weights_only" not in line
    assert not marker.exists()


def test_a_planted_fine_tuning_state_is_refused_without_running_code(tmp_path):
    from sam_core.errors import SamError
    from sam_core.train.finetune import finetune

    rng = np.random.default_rng(0)
    images = [rng.integers(0, 255, (48, 48, 3), np.uint8) for _ in range(2)]
    labels = [np.zeros((48, 48), np.int32) for _ in range(2)]
    for label in labels:
        label[10:30, 12:36] = 1
    out = tmp_path / "tuned.pth"
    torch.save({}, out)  # a checkpoint from an earlier run; its state is read (and refused) first
    marker = tmp_path / MARKER_NAME
    torch.save({"epoch": 1, "fingerprint": Payload(marker)}, out.with_name(out.name + ".state"))
    with pytest.raises(SamError, match="could run code") as error:
        finetune("demo", images, labels, epochs=2, checkpoint_path=out, val_fraction=0.5)
    assert "weights_only" not in str(error.value) and not marker.exists()


# ------------------------------------------------------------------------------ memory budget


def _compressed_tiff_bomb(path: Path, side: int) -> None:
    """A zlib TIFF declaring side x side 8-bit pixels, all zero: a few MB on disk."""
    tile = np.zeros((1024, 1024), np.uint8)
    count = (-(-side // 1024)) ** 2
    tifffile.imwrite(path, (tile for _ in range(count)), shape=(side, side), dtype=np.uint8, tile=(1024, 1024),
                     compression="zlib")


def test_a_compressed_tiff_declaring_40000_squared_pixels_is_refused_before_decoding(tmp_path, capsys):
    bomb = tmp_path / "bomb.tif"
    _compressed_tiff_bomb(bomb, 40000)
    assert bomb.stat().st_size < 8 << 20
    code, _, err = run_cli(["segment", bomb, "--point", "5,5", "--out", tmp_path / "m.png"], capsys)
    line = err.strip()
    assert code == 2 and line.count("\n") == 0
    assert "40000 x 40000" in line and "1,526 MB" in line and "limit of 1,024 MB" in line and "SAM_CORE_MAX_IMAGE_MB" in line


def test_the_budget_is_configurable_and_applies_to_pngs(tmp_path, capsys, monkeypatch):
    big = tmp_path / "big.png"
    Image.fromarray(np.zeros((3000, 4000, 3), np.uint8)).save(big)  # 34 MB decoded
    monkeypatch.setenv("SAM_CORE_MAX_IMAGE_MB", "20")
    code, _, err = run_cli(["automask", big, "--out", tmp_path / "labels.tif"], capsys)
    assert code == 2 and "3000 x 4000 x 3" in err and "limit of 20 MB" in err
    monkeypatch.setenv("SAM_CORE_MAX_IMAGE_MB", "lots")
    code, _, err = run_cli(["automask", big, "--out", tmp_path / "labels.tif"], capsys)
    assert code == 2 and "SAM_CORE_MAX_IMAGE_MB must be a positive number" in err


def test_raster_windows_are_held_to_the_budget_too(scene, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("SAM_CORE_MAX_IMAGE_MB", "0.1")  # the one 200 x 220 RGB window (tile 256) is 0.13 MB
    code, _, err = run_cli(["geo", "automask", scene, tmp_path / "o.gpkg", "--tile-size", "256", "--quiet"], capsys)
    line = err.strip()
    assert code == 2 and line.count("\n") == 0 and "200 x 220 x 3" in line and "choose a smaller tile size" in line
    assert not (tmp_path / "o.gpkg").exists()
