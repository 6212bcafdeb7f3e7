"""The settings dialog's check says which precision ``auto`` runs on the chosen device, and why (issue 21
item 4): the line comes from the engine's Python (sam_core.describe_auto)."""

from __future__ import annotations

import os
import subprocess

from conftest import wait_until
from qgis.PyQt.QtCore import Qt
from qgis.PyQt.QtTest import QTest

from qgis_sam.setup_dialog import EngineSetupDialog


def _engine_says(code: str) -> str:
    python = os.environ["SAM_ENGINE_PYTHON"]
    return subprocess.run([python, "-c", code], capture_output=True, text=True, check=True, timeout=300).stdout.strip()


def _check(dialog: EngineSetupDialog) -> str:
    dialog.log_view.clear()
    QTest.mouseClick(dialog.test_button, Qt.LeftButton)
    assert wait_until(lambda: not dialog.running, 120)
    text = dialog.log_view.toPlainText()
    assert "engine is ready" in text
    return text


def test_checking_a_python_names_the_precision_auto_runs_on_the_device(qgis_app):
    on_cpu = _engine_says("import sam_core; print(sam_core.describe_auto('cpu'))")
    assert on_cpu.startswith("auto runs ")
    dialog = EngineSetupDialog()
    dialog.python_edit.setText(os.environ["SAM_ENGINE_PYTHON"])
    dialog.device_combo.setCurrentIndex(0)  # the default: the CPU
    assert f"precision: {on_cpu}" in _check(dialog)
    dialog.device_combo.setCurrentText("cpu")
    assert f"precision: {on_cpu}" in _check(dialog)
    dialog.device_combo.setCurrentText("cuda")
    has_cuda = _engine_says("import torch; print(torch.cuda.is_available())") == "True"
    expected = (_engine_says("import sam_core; print(sam_core.describe_auto('cuda'))") if has_cuda else
                f"cuda is not available in this Python (choose cpu); on cpu {on_cpu}")
    assert f"precision: {expected}" in _check(dialog)
    dialog.reject()
