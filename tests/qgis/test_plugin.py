"""Plugin load and unload in real QGIS, and the provider without a GUI."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

from conftest import ROOT, wait_until
from qgis.core import QgsApplication
from qgis.PyQt.QtWidgets import QToolBar

ALGORITHMS = {"sam:automask_raster", "sam:segment_prompts", "sam:encode_raster", "sam:find_objects"}


def test_metadata_declares_what_the_plugin_repository_needs():
    import configparser

    meta = configparser.ConfigParser()
    meta.read(ROOT / "qgis_sam" / "metadata.txt")
    general = meta["general"]
    assert general["qgisMinimumVersion"] == "3.22"
    for key in ("name", "description", "about", "author", "email", "repository", "tracker", "icon"):
        assert general.get(key), key
    assert "sam_core" in general["about"] and "torch" in general["about"]
    assert general["hasProcessingProvider"] == "yes"
    assert (ROOT / "qgis_sam" / general["icon"]).is_file()
    assert (ROOT / "qgis_sam" / "LICENSE").is_file()


def test_load_and_unload_leave_nothing_behind(qgis_app, qgis_iface, without_provider):
    import qgis_sam
    from qgis_sam import settings

    registry = QgsApplication.processingRegistry()
    assert registry.providerById("sam") is None
    toolbars_before = set(qgis_iface.mainWindow().findChildren(QToolBar))
    qgis_iface.addPluginToRasterMenu.reset_mock()
    qgis_iface.removePluginRasterMenu.reset_mock()

    plugin = qgis_sam.classFactory(qgis_iface)
    plugin.initGui()
    provider = registry.providerById("sam")
    assert provider is not None
    assert {alg.id() for alg in provider.algorithms()} == ALGORITHMS
    added_toolbars = set(qgis_iface.mainWindow().findChildren(QToolBar)) - toolbars_before
    assert [bar.objectName() for bar in added_toolbars] == ["SegmentAnythingToolbar"]
    menu_actions = [call.args[1] for call in qgis_iface.addPluginToRasterMenu.call_args_list]
    assert len(menu_actions) == 2

    # start the engine so that unload has a process to stop
    settings.client().request("hello")
    pid = settings.client().pid
    assert pid is not None

    plugin.unload()
    wait_until(lambda: not (set(qgis_iface.mainWindow().findChildren(QToolBar)) - toolbars_before), 5)
    assert registry.providerById("sam") is None
    removed = [call.args[1] for call in qgis_iface.removePluginRasterMenu.call_args_list]
    assert removed == menu_actions
    assert not (set(qgis_iface.mainWindow().findChildren(QToolBar)) - toolbars_before)
    assert settings.client().pid is None
    assert not os.path.exists(f"/proc/{pid}") or open(f"/proc/{pid}/stat").read().split()[2] == "Z"


def test_provider_registers_without_iface(tmp_path):
    """A QgsApplication without GUI or iface (as in scripts and qgis_process) gets the three algorithms."""
    script = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(ROOT)!r})
        sys.path.append("/usr/share/qgis/python/plugins")
        from qgis.core import QgsApplication
        app = QgsApplication([], False)
        app.initQgis()
        from processing.core.Processing import Processing
        Processing.initialize()
        import qgis_sam
        plugin = qgis_sam.classFactory(None)
        plugin.initProcessing()
        ids = sorted(alg.id() for alg in QgsApplication.processingRegistry().providerById("sam").algorithms())
        print(",".join(ids))
        plugin.unload()
        print(QgsApplication.processingRegistry().providerById("sam") is None)
        app.exitQgis()
    """)
    env = dict(os.environ, QT_QPA_PLATFORM="offscreen")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120)
    lines = done.stdout.strip().splitlines()
    assert lines[-2:] == [",".join(sorted(ALGORITHMS)), "True"], done.stderr
