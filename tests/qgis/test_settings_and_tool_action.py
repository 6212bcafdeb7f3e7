"""The engine settings dialog and the plugin's map-tool action."""

from __future__ import annotations

import os
import sys

from conftest import wait_until
from qgis.core import QgsProject, QgsRasterLayer, QgsVectorLayer

from qgis_sam import settings
from qgis_sam.engine_client import EngineClient
from qgis_sam.setup_dialog import CPU_TORCH_INDEX, EngineSetupDialog, install_steps, venv_python


def test_install_steps_create_a_venv_and_pip_install_into_it(tmp_path):
    python = venv_python(str(tmp_path / "env"))
    for cpu_torch in (False, True):
        commands = [c for _, c in install_steps("/usr/bin/python3", str(tmp_path / "env"), "sam-suite[geo]", cpu_torch)]
        assert commands[0] == ["/usr/bin/python3", "-m", "venv", str(tmp_path / "env")]
        assert commands[-2] == [python, "-m", "pip", "install", "sam-suite[geo]"]
        assert commands[-1][:2] == [python, "-c"] and "import sam_core" in commands[-1][2]
        cpu_step = [python, "-m", "pip", "install", "torch", "--index-url", CPU_TORCH_INDEX]
        assert (cpu_step in commands) == cpu_torch
        if cpu_torch:  # the CPU build goes in first, so that the package keeps it
            assert commands.index(cpu_step) < len(commands) - 2


def test_create_environment_refuses_bad_fields_with_a_message(qgis_app, tmp_path):
    dialog = EngineSetupDialog()
    dialog.base_edit.setText(str(tmp_path / "no_python"))
    dialog.create_environment()
    assert not dialog.running and "does not exist" in dialog.log_view.toPlainText()
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "thesis.docx").write_text("precious")
    dialog.base_edit.setText(sys.executable)
    dialog.folder_edit.setText(str(tmp_path / "data"))
    dialog.create_environment()
    assert not dialog.running and "not empty" in dialog.log_view.toPlainText()
    assert os.listdir(tmp_path / "data") == ["thesis.docx"]
    dialog.reject()


def test_dialog_creates_an_environment_that_serves_the_plugin(qgis_app, tmp_path, monkeypatch):
    """The whole first-run path: a real venv, pip installing this source tree into it, the check, and an
    engine request answered by the new environment. Offline, pip finds packages in the machine's local
    wheel folders; torch is pinned to the CPU wheel there (the CPU index is not reachable)."""
    constraints = tmp_path / "constraints.txt"
    constraints.write_text("torch==2.13.0\n")
    monkeypatch.setenv("PIP_CONSTRAINT", str(constraints))
    dialog = EngineSetupDialog()
    folder = tmp_path / "sam_engine"
    dialog.base_edit.setText(sys.executable)
    dialog.folder_edit.setText(str(folder))
    dialog.torch_combo.setCurrentIndex(1)  # PyPI's default (here: the local wheel)
    assert dialog.package_edit.text().endswith("[geo]")
    dialog.create_environment()
    assert dialog.running
    assert wait_until(lambda: not dialog.running, 900)
    log = dialog.log_view.toPlainText()
    assert "engine is ready" in log, log[-3000:]
    assert dialog.progress.value() == dialog.progress.maximum()
    python = venv_python(str(folder))
    assert dialog.python_edit.text() == python and dialog.use_existing.isChecked()
    dialog.accept()
    try:
        assert settings.value("engine_python") == python
        monkeypatch.delenv("SAM_ENGINE_PYTHON", raising=False)
        client = EngineClient(lambda: settings.value("engine_python"))
        try:
            info = client.request("info")
        finally:
            client.stop()
        assert info["torch"].startswith("2.13.0")
        assert [m["present"] for m in info["models"] if m["name"] == "demo"] == [True]  # the bundled weights
    finally:
        settings.set_value("engine_python", settings.DEFAULTS["engine_python"])


def test_dialog_checks_a_python_and_saves_settings(qgis_app):
    dialog = EngineSetupDialog()
    dialog.python_edit.setText(os.environ["SAM_ENGINE_PYTHON"])
    dialog.test_python()
    assert wait_until(lambda: not dialog.running, 120)
    assert "sam_core" in dialog.log_view.toPlainText() and "engine is ready" in dialog.log_view.toPlainText()
    dialog.model_combo.setCurrentText("vit_t")
    dialog.tile_spin.setValue(512)
    dialog.accept()
    assert settings.value("engine_python") == os.environ["SAM_ENGINE_PYTHON"]
    assert settings.value("model") == "vit_t" and settings.value("tile_size") == 512
    for key in ("engine_python", "model", "tile_size"):
        settings.set_value(key, settings.DEFAULTS[key])


def test_dialog_reports_a_python_without_sam_core(qgis_app):
    dialog = EngineSetupDialog()
    dialog.python_edit.setText("/usr/bin/python3")
    dialog.test_python()
    assert wait_until(lambda: not dialog.running, 60)
    text = dialog.log_view.toPlainText()
    assert "No module named" in text and "stopped" in text
    dialog.reject()


def test_action_needs_a_raster_layer_and_starts_the_tool_on_it(qgis_iface, scene, without_provider):
    import qgis_sam

    plugin = qgis_sam.classFactory(qgis_iface)
    plugin.initGui()
    try:
        vector = QgsVectorLayer("Point?crs=EPSG:4326", "points", "memory")
        QgsProject.instance().addMapLayer(vector)
        qgis_iface.setActiveLayer(vector)
        assert plugin.start_map_tool(True) is None
        assert not plugin.segment_action.isChecked()

        raster = QgsRasterLayer(str(scene[0]), "scene")
        QgsProject.instance().addMapLayer(raster)
        qgis_iface.setActiveLayer(raster)
        tool = plugin.start_map_tool(True)
        assert tool is not None and tool.layer is raster
        assert qgis_iface.mapCanvas().mapTool() is tool
        assert plugin.segment_action.isChecked()
    finally:
        plugin.unload()
        QgsProject.instance().removeAllMapLayers()
    assert qgis_iface.mapCanvas().mapTool() is None
