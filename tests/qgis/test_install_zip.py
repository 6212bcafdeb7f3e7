"""The plugin installed as users install it: the zip built by scripts/build_qgis_zip.py, installed into a
fresh QGIS profile by QGIS's own "Install from ZIP" code, in the real QGIS application (``qgis`` under
Xvfb), set up through the first-run dialog, used, and removed again.

Each test starts QGIS with a new profile folder and a driver script (``qgis --code``) that runs inside
QGIS, clicks what a user clicks, and writes what it saw to a JSON file that the test then checks.
Offline: pip takes torch and the geo libraries from the machine's local wheels, as the end-to-end test in
test_settings_and_tool_action.py does (torch pinned to the local CPU wheel, 2.13.0).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from conftest import ROOT, engine_python, iou
from qgis.core import QgsGeometry, QgsVectorLayer

DRIVER_HEAD = r'''
import json, os, sys, time, traceback
import qgis.utils
from qgis.core import QgsApplication, QgsSettings
from qgis.PyQt.QtCore import QTimer
from qgis.PyQt.QtWidgets import QApplication, QDialogButtonBox, QPushButton, QToolBar

ARGS = json.loads(%r)
result = {}


def save():
    with open(ARGS["result"] + ".part", "w") as handle:
        json.dump(result, handle)
    os.replace(ARGS["result"] + ".part", ARGS["result"])


def guarded(function):
    def run():
        try:
            function()
        except Exception:
            result["error"] = traceback.format_exc()
            save()
            QgsApplication.exit(1)
    return run


def install_from_zip():
    """What Plugins > Manage and Install Plugins > Install from ZIP does."""
    import pyplugin_installer

    pyplugin_installer.instance().installFromZipFile(ARGS["zip"])
    result["installed_folder"] = os.path.isdir(os.path.join(qgis.utils.home_plugin_path, "qgis_sam"))
    result["active"] = "qgis_sam" in qgis.utils.active_plugins
    result["enabled"] = QgsSettings().value("PythonPlugins/qgis_sam", False, bool)
    result["plugin_file"] = sys.modules["qgis_sam"].__file__
    result["metadata"] = {key: qgis.utils.pluginMetadata("qgis_sam", key) for key in ("version", "supportsQt6")}
'''

SET_UP_AND_RUN = r'''
def set_up():
    install_from_zip()
    bar = qgis.utils.iface.messageBar()
    offers = [button for button in bar.findChildren(QPushButton) if button.text() == "Set up…"]
    result["offers"] = len(offers)
    QTimer.singleShot(300, guarded(drive_dialog))
    offers[0].click()  # the first-run offer opens the dialog (modal: returns when it closes)
    QTimer.singleShot(0, guarded(run_automask))


def drive_dialog():
    dialog = QApplication.activeModalWidget()
    result["dialog"] = type(dialog).__name__
    result["package"] = dialog.package_edit.text()
    result["folder"] = dialog.folder_edit.text()
    dialog.torch_combo.setCurrentIndex(1)  # PyPI's default (here: the machine's local wheel)
    dialog.create_button.click()
    started = time.monotonic()

    def wait():
        if dialog.running and time.monotonic() - started < ARGS["timeout"]:
            QTimer.singleShot(500, guarded(wait))
            return
        result["log"] = dialog.log_view.toPlainText()[-6000:]
        result["python"] = dialog.python_edit.text()
        dialog.buttons.button(QDialogButtonBox.StandardButton.Ok).click()

    QTimer.singleShot(500, guarded(wait))


def run_automask():
    import processing

    settings = sys.modules["qgis_sam.settings"]
    result["engine_python"] = settings.value("engine_python")
    result["info"] = settings.client().request("info")
    processing.run("sam:automask_raster", {"INPUT": ARGS["raster"], "MODEL": "demo", "OUTPUT": ARGS["output"]})
    result["done"] = True
    save()
    QgsApplication.exit(0)


QTimer.singleShot(500, guarded(set_up))
'''

INSTALL_AND_REMOVE = r'''
def install_then_remove():
    QgsSettings().setValue("qgis_sam/engine_python", ARGS["engine_python"])
    install_from_zip()
    settings = sys.modules["qgis_sam.settings"]
    settings.client().request("hello")
    result["engine_pid"] = settings.client().pid
    result["toolbar_before"] = bool(toolbars())
    result["modules_before"] = sorted(name for name in sys.modules if name.split(".")[0] == "qgis_sam")
    result["provider_before"] = QgsApplication.processingRegistry().providerById("sam") is not None
    import pyplugin_installer

    pyplugin_installer.instance().uninstallPlugin("qgis_sam", quiet=True)
    QTimer.singleShot(1500, guarded(look))


def toolbars():
    return [bar for bar in qgis.utils.iface.mainWindow().findChildren(QToolBar)
            if bar.objectName() == "SegmentAnythingToolbar"]


def look():
    import threading
    from qgis.core import QgsApplication as App

    result["modules"] = sorted(name for name in sys.modules if name.split(".")[0] == "qgis_sam")
    result["plugins"] = "qgis_sam" in qgis.utils.plugins or "qgis_sam" in qgis.utils.active_plugins
    result["sys_path"] = [entry for entry in sys.path if "qgis_sam" in entry]
    result["provider"] = App.processingRegistry().providerById("sam") is not None
    result["toolbars"] = len(toolbars())
    actions = [action.text() for menu in qgis.utils.iface.rasterMenu().findChildren(type(qgis.utils.iface.rasterMenu()))
               for action in menu.actions()]
    result["menu_actions"] = [text for text in actions if "Segment" in text or "Engine settings" in text]
    result["threads"] = [thread.name for thread in threading.enumerate() if thread.name.startswith("sam-engine")]
    result["folder_left"] = os.path.exists(os.path.join(qgis.utils.home_plugin_path, "qgis_sam"))
    pid = result["engine_pid"]
    try:
        with open(f"/proc/{pid}/stat") as handle:
            result["engine_state"] = handle.read().split()[2]
    except OSError:
        result["engine_state"] = "gone"
    result["done"] = True
    save()
    QgsApplication.exit(0)


QTimer.singleShot(500, guarded(install_then_remove))
'''


@pytest.fixture(scope="module")
def plugin_zip(tmp_path_factory) -> Path:
    """The zip as the release script builds it (engine wheel inside)."""
    out = tmp_path_factory.mktemp("zip")
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "build_qgis_zip.py"), "--out", str(out)],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    path = Path(done.stdout.strip())
    assert any(name.startswith("qgis_sam/engine/sam_suite-") for name in zipfile.ZipFile(path).namelist())
    return path


def run_qgis(tmp_path: Path, body: str, args: dict, env: dict, timeout: float) -> dict:
    """Start the real QGIS with a fresh profile folder under ``tmp_path`` and the driver ``body``; return
    the driver's JSON result."""
    qgis = shutil.which("qgis")
    if qgis is None:
        pytest.fail("the QGIS application is needed (apt-get install qgis; .ci/run installs it)")
    args = dict(args, result=str(tmp_path / "result.json"))
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER_HEAD % json.dumps(args) + body)
    environment = {name: value for name, value in os.environ.items()
                   if name not in ("SAM_ENGINE_PYTHON", "PYTHONPATH", "QT_QPA_PLATFORM")}
    environment.update(env)
    done = subprocess.run([qgis, "--profiles-path", str(tmp_path / "profiles"), "--nologo", "--noversioncheck",
                           "--code", str(driver)], capture_output=True, text=True, timeout=timeout, env=environment,
                          cwd=str(tmp_path))  # not the checkout: the engine must import the installed sam_core
    result_file = Path(args["result"])
    assert result_file.is_file(), f"QGIS exited ({done.returncode}) without a result:\n{done.stderr[-3000:]}"
    result = json.loads(result_file.read_text())
    assert "error" not in result, result["error"]
    return result


def test_zip_installs_sets_up_its_engine_and_segments(plugin_zip, tmp_path, scene):
    constraints = tmp_path / "constraints.txt"
    constraints.write_text("torch==2.13.0\n")
    raster, footprints = scene
    output = tmp_path / "segments.gpkg"
    result = run_qgis(tmp_path, SET_UP_AND_RUN,
                      {"zip": str(plugin_zip), "raster": str(raster), "output": str(output), "timeout": 1500},
                      {"PIP_CONSTRAINT": str(constraints), "SAM_CORE_HOME": str(tmp_path / "sam_home")},
                      timeout=1800)
    profile = tmp_path / "profiles" / "profiles" / "default"  # --profiles-path holds profiles/<name>
    plugin_dir = profile / "python" / "plugins" / "qgis_sam"
    # installed into the profile, enabled, and the first-run offer shown
    assert result["installed_folder"] and result["active"] and result["enabled"]
    assert Path(result["plugin_file"]).parent == plugin_dir
    assert result["offers"] == 1 and result["dialog"] == "EngineSetupDialog"
    # the dialog installs the zip's own engine into a folder of the profile
    wheel = next((plugin_dir / "engine").glob("sam_suite-*.whl"))
    assert result["package"] == f"{wheel}[geo]"
    assert Path(result["folder"]) == profile / "sam_engine"
    assert "engine is ready" in result["log"], result["log"]
    assert result["engine_python"] == result["python"] == str(profile / "sam_engine" / "bin" / "python")
    assert not (profile / "sam_engine" / ".sam_setup_incomplete").exists()
    # the engine runs from the new environment with the plugin's version and the bundled demo weights
    info = result["info"]
    assert info["version"] == plugin_zip.name.split("-")[1].removesuffix(".zip")
    assert info["torch"].startswith("2.13.0")
    assert [m["present"] for m in info["models"] if m["name"] == "demo"] == [True]
    site = subprocess.run([result["python"], "-c", "import sam_core; print(sam_core.__file__)"],
                          capture_output=True, text=True, timeout=120, cwd=str(tmp_path))
    assert str(profile / "sam_engine") in site.stdout and str(ROOT) not in site.stdout
    # sam:automask_raster with demo through that engine found the scene's objects
    layer = QgsVectorLayer(str(output), "segments", "ogr")
    assert layer.isValid() and layer.featureCount() > 0
    polygons = [feature.geometry() for feature in layer.getFeatures()]
    found = sum(max(iou(QgsGeometry.fromWkt(item["wkt"]), polygon) for polygon in polygons) >= 0.6
                for item in footprints)
    assert found >= 3, f"{found} of {len(footprints)} objects found"
    del layer


def test_removing_the_plugin_leaves_nothing_in_qgis_python(plugin_zip, tmp_path):
    result = run_qgis(tmp_path, INSTALL_AND_REMOVE, {"zip": str(plugin_zip), "engine_python": engine_python()},
                      {"SAM_CORE_HOME": str(tmp_path / "sam_home")}, timeout=300)
    assert result["active"] and result["engine_pid"] and result["toolbar_before"] and result["provider_before"]
    # QGIS reads the version the zip builder wrote (sam_core.__version__)
    version = plugin_zip.name.split("-")[1].removesuffix(".zip")
    assert result["metadata"] == {"version": version, "supportsQt6": "True"}
    assert {"qgis_sam", "qgis_sam.plugin", "qgis_sam.settings", "qgis_sam.engine_client"} <= set(result["modules_before"])
    assert result["modules"] == []
    assert not result["plugins"] and result["sys_path"] == []
    assert not result["provider"] and result["toolbars"] == 0 and result["menu_actions"] == []
    assert result["threads"] == []
    assert result["engine_state"] in ("gone", "Z")
    assert not result["folder_left"]
