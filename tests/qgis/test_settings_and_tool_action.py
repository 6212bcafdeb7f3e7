"""The engine settings dialog and the plugin's map-tool action."""

from __future__ import annotations

import os

from conftest import wait_until
from qgis.core import QgsProject, QgsRasterLayer, QgsVectorLayer

from qgis_sam import settings
from qgis_sam.setup_dialog import EngineSetupDialog, install_steps, venv_python


def test_install_steps_create_a_venv_and_pip_install_into_it(tmp_path):
    steps = install_steps("/usr/bin/python3", str(tmp_path / "env"), "sam-suite[geo]")
    commands = [command for _, command in steps]
    python = venv_python(str(tmp_path / "env"))
    assert commands[0] == ["/usr/bin/python3", "-m", "venv", str(tmp_path / "env")]
    assert commands[2] == [python, "-m", "pip", "install", "sam-suite[geo]"]
    assert commands[-1][:2] == [python, "-c"] and "import sam_core" in commands[-1][2]


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
