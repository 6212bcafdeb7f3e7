"""The plugin zip: one top folder qgis_sam/ with metadata, licence, icon and modules, and nothing else."""

from __future__ import annotations

import subprocess
import sys
import zipfile

from conftest import ROOT


def test_build_zip(tmp_path):
    (ROOT / "qgis_sam" / "__pycache__").mkdir(exist_ok=True)  # present after any import; must stay out
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "build_qgis_zip.py"), "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    path = tmp_path / "qgis_sam-0.1.0.zip"
    assert done.stdout.strip() == str(path)
    names = zipfile.ZipFile(path).namelist()
    assert {name.split("/")[0] for name in names} == {"qgis_sam"}
    for required in ("metadata.txt", "__init__.py", "LICENSE", "icon.png", "plugin.py", "provider.py",
                     "engine_client.py", "map_tool.py", "algorithms/automask_raster.py"):
        assert f"qgis_sam/{required}" in names
    assert not [name for name in names if "__pycache__" in name or name.endswith(".pyc")]
    assert not list(tmp_path.glob(".*.part"))
