"""One rule for every command's output: a missing folder is created, an existing folder is refused, a
read-only folder or a full disk is refused before the work starts, and a disk that fills up meanwhile
ends in one ``error:`` line naming the output, exit code 2, with nothing half-written left behind.

Read-only folders and full disks are real: small tmpfs mounts when running as root (CI runs as root,
and root writes into folders whatever their mode bits say), else a folder without write permission
(read-only) or a skip with the reason (full disk).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from affine import Affine
from PIL import Image
from rasterio.crs import CRS

from helpers.cli import run_cli, write_cells_png
from helpers.folders import mount_tmpfs, read_only_folder, unmount
from helpers.georasters import known_scene, write_raster

ROOT = Path(__file__).resolve().parents[2]
FAST_AUTO = ["--points-per-side", "4", "--pred-iou-thresh", "0", "--stability-thresh", "0"]


@pytest.fixture()
def read_only(tmp_path):
    """A folder nobody (root included) can write into."""
    with read_only_folder(tmp_path / "read_only") as folder:
        yield folder


@pytest.fixture()
def full_disk(tmp_path):
    """A folder on a 64 KB tmpfs that is almost full."""
    folder = tmp_path / "full"
    if not mount_tmpfs(folder, "size=64k"):
        pytest.skip("a full disk needs a small tmpfs mount: not root, or mounting is not permitted here")
    try:
        with open(folder / "filler", "wb") as handle:
            handle.write(b"\0" * (60 << 10))
        yield folder
    finally:
        unmount(folder)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("inputs")
    image = write_cells_png(folder)
    images = folder / "images"
    images.mkdir()
    Image.open(image).save(images / "a.png")
    scene, _ = known_scene((120, 140))
    raster = write_raster(folder / "scene.tif", scene, Affine(10.0, 0, 400000.0, 0, -10.0, 5600000.0), CRS.from_epsg(32633))
    return {"image": image, "images": images, "raster": raster}


def _commands(inputs, checkpoint, out_folder: Path) -> dict[str, list]:
    ckpt = ["--checkpoint", checkpoint]
    tiles = ["--tile-size", "128", "--overlap", "32", "--quiet"]
    return {
        "segment": ["segment", inputs["image"], "--point", "45,35", "--out", out_folder / "mask.png", *ckpt],
        "automask": ["automask", inputs["image"], "--out", out_folder / "labels.tif", *ckpt, *FAST_AUTO, "--quiet"],
        "annotate": ["annotate", inputs["images"], "--out", out_folder / "coco.json", *ckpt, *FAST_AUTO, *tiles],
        "geo automask": ["geo", "automask", inputs["raster"], out_folder / "polygons.gpkg", *ckpt, *FAST_AUTO, *tiles],
    }


COMMANDS = ["segment", "automask", "annotate", "geo automask"]


def _one_error_line(code: int, err: str) -> str:
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    return lines[0]


@pytest.mark.parametrize("command", COMMANDS)
def test_a_missing_output_folder_is_created(command, inputs, small_vit_checkpoint, tmp_path, capsys):
    argv = _commands(inputs, small_vit_checkpoint, tmp_path / "new" / "deeper")[command]
    code, _, err = run_cli(argv, capsys)
    assert code == 0, err
    assert len([p for p in (tmp_path / "new" / "deeper").iterdir() if not p.name.startswith(".")]) == 1


@pytest.fixture()
def no_model(monkeypatch):
    """Fail the test if a model is loaded: the check must come before any work."""
    from sam_core import zoo

    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded before the output was checked")

    monkeypatch.setattr(zoo, "load_model", refuse)


@pytest.mark.parametrize("command", COMMANDS)
def test_an_existing_folder_as_output_is_refused_before_the_work(command, inputs, small_vit_checkpoint, tmp_path, capsys, no_model):
    argv = _commands(inputs, small_vit_checkpoint, tmp_path)[command]
    target = Path(argv[argv.index("--out") + 1]) if "--out" in argv else Path(argv[3])
    target.mkdir()
    line = _one_error_line(*run_cli(argv, capsys)[::2])
    assert "is a folder" in line and str(target) in line


@pytest.mark.parametrize("command", COMMANDS)
def test_a_read_only_folder_is_refused_before_the_work(command, inputs, small_vit_checkpoint, read_only, capsys, no_model):
    argv = _commands(inputs, small_vit_checkpoint, read_only / "sub")[command]
    line = _one_error_line(*run_cli(argv, capsys)[::2])
    assert "read-only" in line or "permission" in line
    assert ".part" not in line and "sam-write-check" not in line  # names the output, not a temporary file


@pytest.mark.parametrize("command", COMMANDS)
def test_a_full_disk_is_refused_before_the_work(command, inputs, small_vit_checkpoint, full_disk, capsys, no_model):
    argv = _commands(inputs, small_vit_checkpoint, full_disk)[command]
    line = _one_error_line(*run_cli(argv, capsys)[::2])
    assert "free" in line and "KB" in line


@pytest.mark.parametrize("command", COMMANDS)
def test_a_disk_that_fills_up_during_the_run_ends_in_one_line(command, inputs, small_vit_checkpoint, full_disk, capsys, monkeypatch):
    """The check before the work passes (as when another program fills the disk meanwhile); the write fails."""
    from sam_core import annotate, fileio
    from sam_core.geo import writer

    for module in (fileio, writer, annotate):
        monkeypatch.setattr(module, "check_output_path", lambda path, **kwargs: Path(path).expanduser())
    with open(full_disk / "filler", "ab") as handle:  # leave a few KB only
        handle.write(b"\0" * (2 << 10))
    argv = _commands(inputs, small_vit_checkpoint, full_disk)[command]
    if command == "segment":  # a mask bigger than the space left
        big = full_disk.parent / "big.png"
        Image.fromarray(np.random.default_rng(0).integers(0, 255, (200, 300, 3), np.uint8)).save(big)
        argv[1] = big
    line = _one_error_line(*run_cli(argv, capsys)[::2])
    output = Path(argv[argv.index("--out") + 1]) if "--out" in argv else Path(argv[3])
    assert output.name in line and ("No space left" in line or "disk is full" in line), line
    assert [p for p in full_disk.rglob("*") if p.name.endswith(".part") or ".part." in p.name] == []  # nothing half-written
    kept = [p for p in full_disk.glob(".*/*") if p.name != "manifest.json"]
    if kept:  # finished tiles or images stay for a rerun, and the message says so
        assert "run the same command again to resume" in line, line


def test_the_rule_lives_in_one_place():
    """Every command that writes a file calls the one check (sam_core.fileio.check_output_path)."""
    sources = {name: (ROOT / "sam_core" / name).read_text() for name in (
        "cli/segment_cmd.py", "cli/automask_cmd.py", "cli/finetune_cmd.py", "cli/export_cmd.py", "annotate.py",
        "geo/writer.py")}
    assert all("check_output_path(" in text for text in sources.values())
