"""Engine settings and first-run dialog: choose a Python with sam_core, or create one with pip.

Creating an environment runs the steps of ``engine_setup`` with live output and progress (never
blocking QGIS): a venv, PyTorch (the CPU build, about 200 MB, instead of the several GB of PyPI's
default CUDA build on Linux and Windows), the engine wheel the plugin zip carries with its ``[geo]``
extra (see ``bundle``; torch and the geo libraries come from PyPI), and a check that the engine imports
and has the plugin's version.

A set-up that fails (pip error, no network, cancelled) shows pip's last lines and what to try, and
leaves nothing half-installed: a folder this set-up created is removed; an existing one is marked
incomplete and set up again from scratch next time.
"""

from __future__ import annotations

import os
from typing import Optional

from qgis.core import QgsApplication
from qgis.PyQt.QtCore import QProcess, QProcessEnvironment
from qgis.PyQt.QtWidgets import (
    QButtonGroup,
    QComboBox,
    QDialog,
    QDialogButtonBox,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPlainTextEdit,
    QProgressBar,
    QPushButton,
    QRadioButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from . import settings
from .bundle import BundleError, engine_package
from .engine_client import ENV_VAR, engine_environment
from .engine_setup import (  # noqa: F401 (CPU_TORCH_INDEX: tests and scripts read it here)
    CPU_TORCH_INDEX,
    TORCH_BUILDS,
    begin_folder,
    check_command,
    default_base_python,
    failure_report,
    finish_folder,
    has_nvidia_gpu,
    install_steps,
    is_setup_folder,
    venv_python,
)

def _path_row(edit: QLineEdit, browse) -> QWidget:
    row = QWidget()
    layout = QHBoxLayout(row)
    layout.setContentsMargins(0, 0, 0, 0)
    layout.addWidget(edit)
    button = QPushButton("…")
    button.setMaximumWidth(32)
    button.clicked.connect(browse)
    layout.addWidget(button)
    return row


class EngineSetupDialog(QDialog):
    """Where the engine runs (existing Python or new environment) and the map tool's options."""

    def __init__(self, parent: Optional[QWidget] = None) -> None:
        super().__init__(parent)
        self.setWindowTitle("Segment Anything: engine settings")
        self.setMinimumWidth(620)
        self._process: Optional[QProcess] = None
        self._steps: list[tuple[str, list[str]]] = []
        self._step = 0
        self._creating = False
        self._created_folder = False
        self._output: list[str] = []
        layout = QVBoxLayout(self)
        intro = QLabel(
            "Segment Anything runs its model in a separate Python process, so that QGIS's own Python stays "
            "clean. Choose a Python that has sam_core installed (for example one with a CUDA build of torch), "
            "or let the plugin create a dedicated environment and install sam_core into it.")
        intro.setWordWrap(True)
        layout.addWidget(intro)
        if os.environ.get(ENV_VAR):
            note = QLabel(f"The environment variable {ENV_VAR} is set and takes precedence: {os.environ[ENV_VAR]}")
            note.setWordWrap(True)
            layout.addWidget(note)

        engine_box = QGroupBox("Engine Python")
        form = QFormLayout(engine_box)
        self.use_existing = QRadioButton("Use an existing Python")
        self.create_new = QRadioButton("Create a dedicated environment")
        group = QButtonGroup(self)
        group.addButton(self.use_existing)
        group.addButton(self.create_new)
        self.python_edit = QLineEdit(settings.value("engine_python"))
        form.addRow(self.use_existing)
        form.addRow("Python", _path_row(self.python_edit, self._browse_python))
        self.test_button = QPushButton("Test this Python")
        self.test_button.clicked.connect(self.test_python)
        form.addRow("", self.test_button)
        form.addRow(self.create_new)
        self.base_edit = QLineEdit(default_base_python())
        self.folder_edit = QLineEdit(os.path.join(QgsApplication.qgisSettingsDirPath(), "sam_engine"))
        try:
            package, self._bundle_problem = engine_package(), ""
        except BundleError as error:
            package, self._bundle_problem = "", str(error)
        self.package_edit = QLineEdit(package)
        form.addRow("Base Python (3.10+)", _path_row(self.base_edit, self._browse_base))
        form.addRow("Folder", _path_row(self.folder_edit, self._browse_folder))
        form.addRow("Package", self.package_edit)
        self.torch_combo = QComboBox()
        self.torch_combo.addItems(TORCH_BUILDS)
        self.torch_combo.setCurrentIndex(1 if has_nvidia_gpu() else 0)
        form.addRow("PyTorch", self.torch_combo)
        self.create_button = QPushButton("Create and install")
        self.create_button.clicked.connect(self.create_environment)
        form.addRow("", self.create_button)
        self.progress = QProgressBar()
        self.progress.setRange(0, 1)
        self.progress.setValue(0)
        form.addRow(self.progress)
        self.log_view = QPlainTextEdit()
        self.log_view.setReadOnly(True)
        self.log_view.setMaximumBlockCount(2000)
        self.log_view.setMinimumHeight(120)
        form.addRow(self.log_view)
        if self._bundle_problem:
            self._log(f"== {self._bundle_problem}")
        (self.use_existing if settings.value("engine_python") else self.create_new).setChecked(True)
        layout.addWidget(engine_box)

        tool_box = QGroupBox("Model and map tool")
        tool_form = QFormLayout(tool_box)
        self.model_combo = QComboBox()
        self.model_combo.addItems(settings.MODEL_NAMES)
        self.model_combo.setCurrentText(settings.value("model"))
        tool_form.addRow("Model", self.model_combo)
        self.checkpoint_edit = QLineEdit(settings.value("checkpoint"))
        self.checkpoint_edit.setPlaceholderText("optional: a checkpoint file for this model")
        tool_form.addRow("Checkpoint", _path_row(self.checkpoint_edit, self._browse_checkpoint))
        self.device_combo = QComboBox()
        self.device_combo.addItems(["", "cpu", "cuda", "mps"])
        self.device_combo.setItemText(0, "default (CPU)")
        current = settings.value("device")
        self.device_combo.setCurrentIndex(max(self.device_combo.findText(current), 0) if current else 0)
        self.device_combo.setToolTip("'Test this Python' (or 'Create and install') says which precision 'auto' runs on "
                                     "this device, and why")
        tool_form.addRow("Device", self.device_combo)
        self.tile_spin = QSpinBox()
        self.tile_spin.setRange(64, 8192)
        self.tile_spin.setValue(settings.value("tile_size"))
        tool_form.addRow("Tile size (pixels)", self.tile_spin)
        self.overlap_spin = QSpinBox()
        self.overlap_spin.setRange(0, 4096)
        self.overlap_spin.setValue(settings.value("overlap"))
        tool_form.addRow("Tile overlap (pixels)", self.overlap_spin)
        self.resolution_spin = QDoubleSpinBox()
        self.resolution_spin.setDecimals(6)
        self.resolution_spin.setRange(0.0, 1e9)
        self.resolution_spin.setValue(settings.value("export_resolution"))
        self.resolution_spin.setSpecialValueText("the canvas's")
        tool_form.addRow("Export resolution for web and virtual layers (map units/pixel)", self.resolution_spin)
        self.gpkg_edit = QLineEdit(settings.value("output_gpkg"))
        self.gpkg_edit.setPlaceholderText("empty: segment_anything.gpkg in the project's folder (or home)")
        tool_form.addRow("Committed polygons go to GeoPackage", _path_row(self.gpkg_edit, self._browse_gpkg))
        layout.addWidget(tool_box)

        self.buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Ok | QDialogButtonBox.StandardButton.Cancel)
        self.buttons.accepted.connect(self.accept)
        self.buttons.rejected.connect(self.reject)
        layout.addWidget(self.buttons)

    # -- browsing -----------------------------------------------------------------------------------
    def _browse_python(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Python with sam_core", self.python_edit.text())
        if path:
            self.python_edit.setText(path)
            self.use_existing.setChecked(True)

    def _browse_base(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Base Python", self.base_edit.text())
        if path:
            self.base_edit.setText(path)

    def _browse_folder(self) -> None:
        path = QFileDialog.getExistingDirectory(self, "Folder of the new environment", self.folder_edit.text())
        if path:
            self.folder_edit.setText(path)

    def _browse_checkpoint(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Checkpoint", self.checkpoint_edit.text(),
                                              "Checkpoints (*.pth *.pt);;All files (*)")
        if path:
            self.checkpoint_edit.setText(path)

    def _browse_gpkg(self) -> None:
        path, _ = QFileDialog.getSaveFileName(self, "GeoPackage for committed polygons", self.gpkg_edit.text(),
                                              "GeoPackage (*.gpkg)")
        if path:
            self.gpkg_edit.setText(path)

    # -- processes ----------------------------------------------------------------------------------
    def _log(self, text: str) -> None:
        self.log_view.appendPlainText(text.rstrip())

    def _output_received(self, process: QProcess) -> None:
        text = bytes(process.readAllStandardOutput()).decode("utf-8", "replace")
        self._output.append(text)
        self._log(text)

    def _run_steps(self, steps: list[tuple[str, list[str]]]) -> None:
        if self._process is not None:
            return
        self._steps, self._step = steps, 0
        self.progress.setRange(0, len(steps))
        self.progress.setValue(0)
        self.create_button.setEnabled(False)
        self.test_button.setEnabled(False)
        self._start_step()

    def _start_step(self) -> None:
        description, command = self._steps[self._step]
        self._log(f"== {description}\n$ {' '.join(command)}")
        self._output = []
        process = QProcess(self)
        environment = QProcessEnvironment()
        for name, value in engine_environment().items():
            environment.insert(name, value)
        process.setProcessEnvironment(environment)
        process.setProcessChannelMode(QProcess.ProcessChannelMode.MergedChannels)
        process.readyReadStandardOutput.connect(lambda: self._output_received(process))
        process.finished.connect(self._step_finished)
        process.errorOccurred.connect(self._step_error)
        self._process = process
        process.start(command[0], command[1:])

    def _step_error(self, error) -> None:
        if error == QProcess.ProcessError.FailedToStart:
            self._log(f"could not start {self._steps[self._step][1][0]}")
            self._end_steps(False)

    def _step_finished(self, code: int, status) -> None:
        if self._process is None:
            return
        if code != 0 or status != QProcess.ExitStatus.NormalExit:
            self._output_received(self._process)
            self._log(failure_report(self._steps[self._step][0], code, "".join(self._output)))
            self._end_steps(False)
            return
        self._step += 1
        self.progress.setValue(self._step)
        self._process.deleteLater()
        self._process = None
        if self._step < len(self._steps):
            self._start_step()
        else:
            self._end_steps(True)

    def _end_steps(self, ok: bool) -> None:
        if self._process is not None:
            self._process.deleteLater()
            self._process = None
        self.create_button.setEnabled(True)
        self.test_button.setEnabled(True)
        if self._creating:
            self._finish_folder(ok)
        self._log("== done: the engine is ready" if ok else "== stopped: see the messages above")
        if ok and self._creating:
            self.python_edit.setText(venv_python(self.folder_edit.text()))
            self.use_existing.setChecked(True)

    def _finish_folder(self, ok: bool) -> None:
        message = finish_folder(self.folder_edit.text().strip(), ok, self._created_folder)
        if message:
            self._log(message)

    def _device(self) -> str:
        """The chosen device ("" = the engine's default, the CPU)."""
        return "" if self.device_combo.currentIndex() == 0 else self.device_combo.currentText()

    def test_python(self) -> None:
        """Check (without blocking) that the chosen Python imports sam_core, torch and rasterio."""
        python = self.python_edit.text().strip()
        self.use_existing.setChecked(True)
        self._creating = False
        self._run_steps([("Checking the engine", check_command(python, self._device()))])

    def create_environment(self) -> None:
        """Create the environment and install sam_core into it, step by step with live output."""
        self.create_new.setChecked(True)
        problem = self._environment_problem()
        if problem:
            self._log(f"== cannot create the environment: {problem}")
            return
        folder = self.folder_edit.text().strip()
        try:
            self._created_folder, messages = begin_folder(folder)
        except OSError as error:
            self._log(f"== cannot create the environment: {error}")
            return
        for message in messages:
            self._log(message)
        self._creating = True
        self._run_steps(install_steps(self.base_edit.text().strip(), folder, self.package_edit.text().strip(),
                                      cpu_torch=self.torch_combo.currentIndex() == 0, device=self._device()))

    def _environment_problem(self) -> str:
        """What is wrong with the base Python, folder or package fields ('' when nothing)."""
        base, folder = self.base_edit.text().strip(), self.folder_edit.text().strip()
        if not base or not os.path.isfile(base):
            return f"the base Python {base!r} does not exist: choose a Python 3.10 or newer interpreter"
        if not folder:
            return "choose a folder for the environment"
        if os.path.isdir(folder) and os.listdir(folder) and not is_setup_folder(folder):
            return f"the folder {folder} is not empty and is not a Python environment: choose a new or empty folder"
        if not self.package_edit.text().strip():
            return self._bundle_problem or "the package to install is empty (normally the plugin's engine/*.whl[geo])"
        return ""

    @property
    def running(self) -> bool:
        return self._process is not None

    # -- result -------------------------------------------------------------------------------------
    def accept(self) -> None:
        settings.set_value("engine_python", self.python_edit.text().strip())
        settings.set_value("model", self.model_combo.currentText())
        settings.set_value("checkpoint", self.checkpoint_edit.text().strip())
        settings.set_value("device", self._device())
        settings.set_value("tile_size", self.tile_spin.value())
        settings.set_value("overlap", self.overlap_spin.value())
        settings.set_value("export_resolution", self.resolution_spin.value())
        settings.set_value("output_gpkg", self.gpkg_edit.text().strip())
        super().accept()

    def reject(self) -> None:
        if self._process is not None:
            self._process.kill()
            self._process.waitForFinished(3000)
            self._end_steps(False)
        super().reject()
