"""The plugin zip: one top folder qgis_sam/ with metadata, licence, icon, modules and the engine wheel of the
same version; metadata.txt's version and changelog come from sam_core.__version__ and CHANGELOG.md."""

from __future__ import annotations

import configparser
import importlib.util
import shutil
import subprocess
import sys
import zipfile

import pytest
from conftest import ROOT


def builder():
    spec = importlib.util.spec_from_file_location("build_qgis_zip", ROOT / "scripts" / "build_qgis_zip.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """(zip path, names in it, process) of one run of the release script."""
    out = tmp_path_factory.mktemp("zip")
    (ROOT / "qgis_sam" / "__pycache__").mkdir(exist_ok=True)  # present after any import; must stay out
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "build_qgis_zip.py"), "--out", str(out)],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    version = builder().project_version()
    path = out / f"qgis_sam-{version}.zip"
    assert done.stdout.strip() == str(path)
    return path, zipfile.ZipFile(path).namelist()


def test_build_zip(built):
    path, names = built
    assert {name.split("/")[0] for name in names} == {"qgis_sam"}
    for required in ("metadata.txt", "__init__.py", "LICENSE", "icon.png", "plugin.py", "provider.py",
                     "engine_client.py", "map_tool.py", "bundle.py", "algorithms/automask_raster.py"):
        assert f"qgis_sam/{required}" in names
    assert not [name for name in names if "__pycache__" in name or name.endswith(".pyc")]
    assert not list(path.parent.glob(".*.part"))


def test_zip_carries_the_engine_wheel_of_its_version(built, tmp_path):
    path, names = built
    version = builder().project_version()
    wheels = [name for name in names if name.startswith("qgis_sam/engine/")]
    assert wheels == [f"qgis_sam/engine/sam_suite-{version}-py3-none-any.whl"]
    with zipfile.ZipFile(path) as archive:
        archive.extract(wheels[0], tmp_path)
    inside = set(zipfile.ZipFile(tmp_path / wheels[0]).namelist())
    assert {"sam_core/__init__.py", "sam_core/engine.py", "sam_core/data/demo.pt", "sam_core/geo/__init__.py"} <= inside
    assert not [name for name in inside if name.startswith("tests/")]


def test_metadata_version_and_changelog_come_from_the_one_version(built, tmp_path):
    path, _ = built
    version = builder().project_version()
    assert version == (ROOT / "sam_core" / "__init__.py").read_text().split('__version__ = "')[1].split('"')[0]
    meta = configparser.ConfigParser(interpolation=None)
    meta.read_string(zipfile.ZipFile(path).read("qgis_sam/metadata.txt").decode("utf-8"))
    general = meta["general"]
    assert general["version"] == version
    assert general["supportsQt6"] == "True"
    changelog = general["changelog"]
    assert changelog.splitlines()[0] == version
    first_entry = next(line for line in (ROOT / "CHANGELOG.md").read_text().splitlines() if line.startswith("- "))
    assert first_entry[2:40] in changelog
    # the source metadata.txt holds neither: one place for the version
    source = configparser.ConfigParser(interpolation=None)
    source.read(ROOT / "qgis_sam" / "metadata.txt")
    assert "version" not in source["general"] and "changelog" not in source["general"]


def test_a_wheel_of_another_version_or_a_missing_changelog_section_is_refused(built, tmp_path):
    path, names = built
    wheel_name = next(name for name in names if name.endswith(".whl"))
    with zipfile.ZipFile(path) as archive:
        archive.extract(wheel_name, tmp_path)
    other = tmp_path / "sam_suite-0.0.1-py3-none-any.whl"
    shutil.copy(tmp_path / wheel_name, other)
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "build_qgis_zip.py"), "--out", str(tmp_path / "out"),
                           "--engine-wheel", str(other)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert done.stderr.startswith("error: ") and "is version 0.0.1" in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())

    changelog = tmp_path / "CHANGELOG.md"
    changelog.write_text("# Changelog\n\n## 0.0.1\n\n- old\n")
    with pytest.raises(ValueError, match="no section '## "):
        builder().changelog_text(builder().project_version(), changelog)
