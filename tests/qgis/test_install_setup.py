"""Set-up from the bundled engine, and what goes wrong: a zip without its engine or with another version's,
an engine of another version, pip failing, no network. Nothing half-installed is left behind."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest
from conftest import ROOT, engine_python, wait_until

from qgis_sam import engine_setup, setup_dialog
from qgis_sam.bundle import BundleError, engine_package, plugin_version
from qgis_sam.engine_client import EngineClient, EngineVersionMismatch
from qgis_sam.engine_setup import INCOMPLETE_MARKER, failure_report, venv_python
from qgis_sam.setup_dialog import EngineSetupDialog

VERSION = plugin_version()


def fake_plugin(tmp_path: Path, wheels: list[str], version: str = VERSION) -> Path:
    """A plugin folder as the zip installs it: metadata.txt with ``version`` and ``engine/`` with ``wheels``."""
    plugin = tmp_path / "plugins" / "qgis_sam"
    (plugin / "engine").mkdir(parents=True)
    (plugin / "metadata.txt").write_text(f"[general]\nname=Segment Anything\nversion={version}\n")
    for name in wheels:
        (plugin / "engine" / name).write_bytes(b"PK")
    return plugin


def test_the_plugin_version_is_the_engine_version():
    import re

    text = (ROOT / "sam_core" / "__init__.py").read_text()
    assert VERSION == re.search(r'__version__ = "([^"]+)"', text).group(1)


def test_the_bundled_wheel_is_what_pip_installs(tmp_path):
    plugin = fake_plugin(tmp_path, [f"sam_suite-{VERSION}-py3-none-any.whl"])
    assert engine_package(str(plugin)) == f"{plugin / 'engine' / f'sam_suite-{VERSION}-py3-none-any.whl'}[geo]"
    # in this checkout (no wheel beside the plugin) the checkout itself; never an unpublished name
    assert engine_package() == f"{ROOT}[geo]"


def test_a_zip_without_its_engine_or_with_another_version_says_what_to_do(tmp_path):
    with pytest.raises(BundleError, match="carries no engine.*Reinstall the plugin"):
        engine_package(str(fake_plugin(tmp_path / "a", [])))
    with pytest.raises(BundleError, match=f"plugin is version {VERSION} but its bundled engine is "
                                          "sam_suite-0.0.1-py3-none-any.whl.*reinstall the plugin"):
        engine_package(str(fake_plugin(tmp_path / "b", ["sam_suite-0.0.1-py3-none-any.whl"])))


def test_the_dialog_refuses_to_set_up_without_the_bundled_engine(qgis_app, tmp_path, monkeypatch):
    plugin = fake_plugin(tmp_path, ["sam_suite-0.0.1-py3-none-any.whl"])
    monkeypatch.setattr(setup_dialog, "engine_package", lambda: engine_package(str(plugin)))
    dialog = EngineSetupDialog()
    assert dialog.package_edit.text() == ""
    assert "bundled engine is sam_suite-0.0.1" in dialog.log_view.toPlainText()
    dialog.base_edit.setText(sys.executable)
    dialog.folder_edit.setText(str(tmp_path / "env"))
    dialog.create_environment()
    assert not dialog.running and not (tmp_path / "env").exists()
    assert dialog.log_view.toPlainText().count("bundled engine is sam_suite-0.0.1") == 2
    dialog.reject()


def test_an_engine_of_another_version_is_stopped_with_what_to_do():
    client = EngineClient(engine_python(), version="9.9.9")
    try:
        with pytest.raises(EngineVersionMismatch) as error:
            client.request("hello")
    finally:
        client.stop()
    message = str(error.value)
    assert f"is version {VERSION}, the plugin is version 9.9.9" in message
    assert "Create and install" in message and "sam-suite==9.9.9" in message
    same = EngineClient(engine_python(), version=VERSION)
    try:
        assert same.request("hello") is not None
    finally:
        same.stop()


def test_checking_a_python_with_another_engine_version_fails_with_a_message(qgis_app, monkeypatch):
    monkeypatch.setattr(engine_setup, "plugin_version", lambda: "9.9.9")
    dialog = EngineSetupDialog()
    dialog.python_edit.setText(engine_python())
    dialog.test_python()
    assert wait_until(lambda: not dialog.running, 120)
    text = dialog.log_view.toPlainText()
    assert f"this Python has sam_core {VERSION} but the plugin is version 9.9.9" in text
    assert "stopped" in text and "engine is ready" not in text
    dialog.reject()


def test_failure_report_shows_the_last_lines_and_what_to_try():
    pip_output = "\n".join(f"line {i}" for i in range(30)) + "\nERROR: No matching distribution found for torch\n"
    report = failure_report("Installing sam-suite", 1, pip_output)
    assert "exit code 1" in report and "    ERROR: No matching distribution found for torch" in report
    assert "line 18" not in report and "line 19" in report  # the last 12 lines
    assert "What to try" in report and "No network" not in report
    offline = failure_report("Installing PyTorch", 1, "WARNING: Retrying ... NewConnectionError('... "
                                                      "[Errno 111] Connection refused')\nERROR: Could not find")
    assert "No network" in offline and "Create and install' again" in offline


def offline_pip(monkeypatch, tmp_path) -> None:
    """pip with no configuration, no local wheels and an index on a closed port: as without network."""
    empty = tmp_path / "no_wheels"
    empty.mkdir()
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("PIP_INDEX_URL", "http://127.0.0.1:9/simple")
    monkeypatch.setenv("PIP_EXTRA_INDEX_URL", "http://127.0.0.1:9/simple")
    monkeypatch.setenv("PIP_FIND_LINKS", str(empty))
    monkeypatch.setenv("PIP_RETRIES", "1")
    monkeypatch.setenv("PIP_TIMEOUT", "3")
    monkeypatch.delenv("PIP_CONSTRAINT", raising=False)


def run_set_up(folder: Path) -> EngineSetupDialog:
    dialog = EngineSetupDialog()
    dialog.base_edit.setText(sys.executable)
    dialog.folder_edit.setText(str(folder))
    dialog.torch_combo.setCurrentIndex(1)
    dialog.create_environment()
    assert dialog.running
    assert wait_until(lambda: not dialog.running, 600)
    return dialog


def test_no_network_during_set_up_leaves_nothing_behind(qgis_app, tmp_path, monkeypatch):
    offline_pip(monkeypatch, tmp_path)
    folder = tmp_path / "sam_engine"
    dialog = run_set_up(folder)
    text = dialog.log_view.toPlainText()
    assert "No network: pip could not reach the package index" in text, text[-3000:]
    assert "The last lines:" in text and "stopped" in text
    assert "removed the unfinished environment" in text
    assert not folder.exists()
    assert dialog.python_edit.text() != venv_python(str(folder))
    dialog.reject()


def test_a_pip_failure_in_an_existing_environment_marks_it_incomplete_and_the_next_set_up_starts_again(
        qgis_app, tmp_path, monkeypatch):
    folder = tmp_path / "sam_engine"
    monkeypatch.setenv("PIP_NO_INDEX", "1")  # pip finds nothing: a failure that is not the network's
    empty = tmp_path / "no_wheels"
    empty.mkdir()
    monkeypatch.setenv("PIP_FIND_LINKS", str(empty))
    monkeypatch.delenv("PIP_CONSTRAINT", raising=False)
    folder.mkdir()
    (folder / "pyvenv.cfg").write_text("home = /usr/bin\n")  # an environment made earlier
    dialog = run_set_up(folder)
    text = dialog.log_view.toPlainText()
    assert "failed (exit code 1)" in text and "What to try" in text and "No network" not in text, text[-3000:]
    assert "marked incomplete" in text
    assert (folder / INCOMPLETE_MARKER).is_file()
    dialog.reject()
    # next time: the unfinished environment is removed and set up from scratch
    dialog = run_set_up(folder)
    assert "did not finish: removing it and starting again" in dialog.log_view.toPlainText()
    dialog.reject()
    shutil.rmtree(folder, ignore_errors=True)
