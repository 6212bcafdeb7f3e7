"""Packaging for PyPI and the napari hub, the one version number, and Windows/macOS readiness on paper.

The sdist and wheel are built with ``python -m build`` (as a release would) and checked with ``twine
check``; the wheel must carry every file of the packages (demo.pt, napari.yaml, the QGIS plugin's
metadata and icon, ...). CI (.ci/run) also installs that wheel into a fresh virtual environment and runs
the README's main command and ``npe2 list`` from it.
"""

from __future__ import annotations

import configparser
import email
import json
import multiprocessing
import os
import re
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import numpy as np
import pytest

import sam_core

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
PACKAGES = ("sam_core", "napari_sam", "qgis_sam")


@pytest.fixture(scope="module")
def dists(tmp_path_factory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("dist")
    done = subprocess.run([sys.executable, "-m", "build", "--outdir", str(out), str(ROOT)],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    return {"wheel": next(out.glob("*.whl")), "sdist": next(out.glob("*.tar.gz"))}


def wheel_metadata(wheel: Path) -> email.message.Message:
    with zipfile.ZipFile(wheel) as archive:
        name = next(n for n in archive.namelist() if n.endswith(".dist-info/METADATA"))
        return email.message_from_bytes(archive.read(name))


def package_files() -> list[str]:
    """Every file of the three packages that git tracks (code and data), as paths in the wheel."""
    listed = subprocess.run(["git", "ls-files", *PACKAGES], cwd=ROOT, capture_output=True, text=True, check=True)
    return [line for line in listed.stdout.splitlines() if line]


def test_one_version_number_read_everywhere():
    import importlib.metadata

    import napari_sam

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "version" not in project["project"] and "version" in project["project"]["dynamic"]
    assert project["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "sam_core.__version__"}
    assert napari_sam.__version__ == sam_core.__version__
    assert importlib.metadata.version("sam-suite") == sam_core.__version__
    plugin_metadata = configparser.ConfigParser(interpolation=None)
    plugin_metadata.read(ROOT / "qgis_sam" / "metadata.txt")
    assert "version" not in plugin_metadata["general"]  # written into the zip by scripts/build_qgis_zip.py
    literal = re.compile(r"""__version__\s*=\s*["']""")
    defined = [str(path.relative_to(ROOT)) for package in PACKAGES for path in (ROOT / package).rglob("*.py")
               if literal.search(path.read_text(encoding="utf-8"))]
    assert defined == ["sam_core/__init__.py"]
    changelog = (ROOT / "CHANGELOG.md").read_text()
    assert re.search(rf"^## {re.escape(sam_core.__version__)}\b", changelog, re.MULTILINE)


def test_sdist_and_wheel_pass_twine_check(dists):
    done = subprocess.run([sys.executable, "-m", "twine", "check", "--strict", str(dists["wheel"]),
                           str(dists["sdist"])], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.count("PASSED") == 2
    assert dists["wheel"].name == f"sam_suite-{sam_core.__version__}-py3-none-any.whl"


def test_the_wheel_carries_every_file_the_code_reads(dists):
    names = set(zipfile.ZipFile(dists["wheel"]).namelist())
    missing = [path for path in package_files() if path not in names]
    assert not missing, missing
    for data in ("sam_core/data/demo.pt", "sam_core/data/example.png", "napari_sam/napari.yaml",
                 "qgis_sam/metadata.txt", "qgis_sam/icon.png"):
        assert data in names
    assert any(name.endswith(".dist-info/licenses/LICENSE") for name in names)
    assert not [name for name in names if name.startswith(("tests/", "benchmarks/", "scripts/"))]


def test_metadata_for_pypi_and_the_napari_hub(dists):
    meta = wheel_metadata(dists["wheel"])
    classifiers = meta.get_all("Classifier")
    assert "Framework :: napari" in classifiers
    assert {"Programming Language :: Python :: 3.10", "Programming Language :: Python :: 3.11"} <= set(classifiers)
    assert any(c.startswith("Operating System :: Microsoft :: Windows") for c in classifiers)
    assert any(c.startswith("Operating System :: MacOS") for c in classifiers)
    assert meta["License-Expression"] == "Apache-2.0" and meta["License-File"] == "LICENSE"
    urls = dict(value.split(", ", 1) for value in meta.get_all("Project-URL"))
    assert {"Homepage", "Source", "Bug Tracker", "Documentation", "Changelog"} <= set(urls)
    assert meta["Requires-Python"] == ">=3.10"
    entry_points = zipfile.ZipFile(dists["wheel"]).read(f"sam_suite-{sam_core.__version__}.dist-info/entry_points.txt")
    assert b"[napari.manifest]" in entry_points and b"napari_sam:napari.yaml" in entry_points
    import yaml

    config = yaml.safe_load((ROOT / ".napari-hub" / "config.yml").read_text())
    assert config["summary"] and config["authors"] and config["labels"]["terms"]
    assert {"Bug Tracker", "Documentation", "Source Code", "User Support"} <= set(config["project_urls"])
    assert "pip install" in (ROOT / ".napari-hub" / "DESCRIPTION.md").read_text()


def test_npe2_validates_the_manifest_and_lists_the_plugin():
    done = subprocess.run([str(BIN / "npe2"), "validate", "sam-suite"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and "valid" in done.stdout, done.stdout + done.stderr
    listed = subprocess.run([str(BIN / "npe2"), "list", "-f", "json"], capture_output=True, text=True, timeout=300)
    plugins = {item["name"]: item for item in json.loads(listed.stdout)}
    assert plugins["sam-suite"]["version"] == sam_core.__version__


# -- Windows and macOS readiness -----------------------------------------------------------------------
# The code paths that start or run processes: the engine process and its client, the QGIS first-run
# dialog, the Dask workers. None may rely on fork, POSIX signals, /tmp or a shell.
PROCESS_CODE = ["sam_core/engine.py", "sam_core/distributed.py", "sam_core/__main__.py", "qgis_sam/engine_client.py",
                "qgis_sam/setup_dialog.py", "qgis_sam/engine_setup.py", "qgis_sam/bundle.py", "qgis_sam/settings.py"]
POSIX_ONLY = [
    (r"\bos\.fork\b|\bos\.forkpty\b|[\"']fork[\"']", "fork (Windows has none; macOS defaults to spawn)"),
    (r"\bos\.(setsid|setpgrp|killpg|getpgid|kill)\b|\bpreexec_fn\b|\bstart_new_session\b", "POSIX process calls"),
    (r"\bsignal\.(SIGKILL|SIGHUP|SIGUSR1|SIGUSR2|SIGALRM|SIGCHLD|alarm|pause|setitimer)\b", "POSIX-only signals"),
    (r"[\"']/tmp\b", "a fixed /tmp path (use tempfile)"),
    (r"\bshell\s*=\s*True\b|\bos\.system\(|\bos\.popen\(", "a shell command"),
    (r"^\s*import (fcntl|termios|pwd|grp|resource)\b", "a POSIX-only module at import time"),
]


def test_process_code_avoids_posix_only_calls():
    found = []
    for name in PROCESS_CODE:
        text = (ROOT / name).read_text(encoding="utf-8")
        for pattern, what in POSIX_ONLY:
            for match in re.finditer(pattern, text, re.MULTILINE):
                found.append(f"{name}:{text.count(chr(10), 0, match.start()) + 1}: {match.group(0).strip()}: {what}")
    assert not found, "\n".join(found)


def _in_a_spawned_process(raster: str, output: str, folder: str, report: str) -> None:
    """Runs in a process started with ``spawn`` (as on Windows and macOS): the first-run dialog's set-up
    steps (its commands and folder bookkeeping, without Qt), the QGIS plugin's engine client starting the
    engine and asking it to segment, and a local Dask cluster (workers started with spawn) making automatic
    masks of a raster."""
    import dask

    from qgis_sam.engine_client import EngineClient
    from qgis_sam.engine_setup import begin_folder, check_command, finish_folder, install_steps
    from sam_core.geo import automask_raster
    from sam_core.geo.settings import GeneratorSpec, TilingSettings

    created, _ = begin_folder(folder)
    description, create_venv = install_steps(sys.executable, folder, "unused", cpu_torch=False)[0]
    venv = subprocess.run(create_venv, capture_output=True, text=True, timeout=300)
    check = subprocess.run(check_command(sys.executable), capture_output=True, text=True, timeout=300)
    venv_made = Path(folder, "pyvenv.cfg").is_file()
    finish_folder(folder, ok=False, created=created)  # as after a failed set-up: nothing left

    client = EngineClient(sys.executable, version=sam_core.__version__)
    try:
        info = client.request("info")
        segment = client.request("segment_at", {"raster": raster, "model": "demo", "points": [[500040.5, 3999959.5]],
                                                "labels": [1]})  # map coordinates of pixel (40, 40)
    finally:
        client.stop()
    with dask.config.set({"distributed.worker.multiprocessing-method": "spawn"}):
        result = automask_raster(raster, output, generator=GeneratorSpec.create("demo"),
                                 tiling=TilingSettings(tile_size=64, overlap=16), workers=1)
    Path(report).write_text(json.dumps({
        "start_method": multiprocessing.get_start_method(), "venv": [venv.returncode, venv_made],
        "check": [check.returncode, check.stdout], "folder_left": os.path.exists(folder),
        "version": info["version"], "segment": segment, "tiles": result.tiles_done}))


@pytest.mark.slow  # about 15 s: spawns fresh interpreters for the set-up steps, the engine and Dask workers
def test_setup_steps_engine_and_dask_workers_run_from_spawned_processes(tmp_path):
    import rasterio
    from rasterio.transform import from_origin

    image = np.full((3, 96, 96), 40, np.uint8)
    image[:, 24:56, 24:56] = np.array([220, 60, 50], np.uint8)[:, None, None]
    raster = tmp_path / "scene.tif"
    with rasterio.open(raster, "w", driver="GTiff", width=96, height=96, count=3, dtype="uint8",
                       crs="EPSG:32633", transform=from_origin(500000, 4000000, 1, 1)) as dst:
        dst.write(image)
    report = tmp_path / "report.json"
    child = multiprocessing.get_context("spawn").Process(
        target=_in_a_spawned_process,
        args=(str(raster), str(tmp_path / "masks.gpkg"), str(tmp_path / "sam_engine"), str(report)))
    child.start()
    child.join(600)
    assert child.exitcode == 0 and report.is_file()
    result = json.loads(report.read_text())
    assert result["start_method"] == "spawn"
    assert result["venv"] == [0, True] and not result["folder_left"]
    assert result["check"][0] == 0 and result["check"][1].startswith(f"sam_core {sam_core.__version__}")
    assert result["version"] == sam_core.__version__
    polygons = result["segment"]["polygons"]
    assert len(polygons) == 1 and 700 <= polygons[0]["area"] <= 1300  # the 32 x 32 square
    assert result["tiles"] == 4
    assert (tmp_path / "masks.gpkg").is_file()
