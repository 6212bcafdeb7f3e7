"""The Segment Anything dock widget: layout only; every action goes to :class:`SamSession`."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Optional, Tuple

import numpy as np
from napari.layers import Image
from qtpy.QtCore import Qt
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFileDialog,
    QFrame,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QProgressBar,
    QPushButton,
    QScrollArea,
    QSpinBox,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)
from superqt import QCollapsible

from napari_sam.concepts import ConceptSearch
from napari_sam.image_access import unwrap
from napari_sam.memory_propagation import DEFAULT_STOP_ABSENT
from napari_sam.readers import prefer_for_medical_files
from napari_sam.series import SeriesPanel
from napari_sam.session import KEYS, ModelChoice, SamSession
from napari_sam.tracking import TrackingPanel
from napari_sam.windows import CT_WINDOWS, window_range
from sam_core.volume import STOP_IOU

_LOCAL_FILE = "local checkpoint file…"
_NO_WINDOW = "layer contrast"


class _signals_blocked:
    """``with _signals_blocked(widget):`` the widget emits no signals inside the block."""

    def __init__(self, widget: QWidget) -> None:
        self.widget = widget

    def __enter__(self) -> None:
        self._was = self.widget.blockSignals(True)

    def __exit__(self, *exc: Any) -> None:
        self.widget.blockSignals(self._was)


def _default_cache_dir() -> str:
    from platformdirs import user_cache_dir

    return os.environ.get("SAM_EMBEDDING_CACHE", os.path.join(user_cache_dir("sam-suite"), "embeddings"))


class SamWidget(QWidget):
    """Set-up, prompts, volume, automatic segmentation and fine-tuning panels for one viewer."""

    def __init__(self, napari_viewer: Any) -> None:
        super().__init__()
        self.viewer = napari_viewer  # from the Plugins menu: napari's PublicOnlyProxy of the viewer
        self.session = SamSession(napari_viewer)
        self.session.on_candidates.append(self._show_scores)
        self.session.on_label.append(self._show_label)
        self.session.on_job.append(self._watch)
        self.session.class_list.on_change.append(self._show_class)
        self.concepts = ConceptSearch(self.session)
        self.concepts.on_example.append(self._on_example)
        self.choices: list = []
        # the panels are taller than most screens: they scroll inside the dock instead of stretching it
        outer = QVBoxLayout(self)
        outer.setContentsMargins(0, 0, 0, 0)
        scroll = QScrollArea()
        scroll.setWidgetResizable(True)
        scroll.setFrameShape(QFrame.Shape.NoFrame)
        scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        content = QWidget()
        layout = QVBoxLayout(content)
        layout.addWidget(self._setup_panel())
        self.series_panel = SeriesPanel(self)  # a folder of images (or the open layers), one at a time
        layout.addWidget(self.series_panel)
        layout.addWidget(self._prompt_panel())
        layout.addWidget(self._volume_panel())
        self.tracking_panel = TrackingPanel(self)  # time-lapse: track, divisions, CTC files
        layout.addWidget(self.tracking_panel)
        layout.addWidget(self._automatic_panel())
        layout.addWidget(self._find_panel())
        layout.addWidget(self._edit_panel())
        layout.addWidget(self._class_panel())
        layout.addWidget(self._measure_panel())
        layout.addWidget(self._finetune_panel())
        keys = "\n".join(f"{key}: {what}" for key, what in KEYS.items())
        help_text = QLabel(
            "Mouse: click on the image with 'SAM points' selected adds a point (positive green, negative red); "
            "draw rectangles on 'SAM boxes'.\nKeys (while a 'SAM ...' layer is selected):\n" + keys
        )
        help_text.setWordWrap(True)
        layout.addWidget(help_text)
        layout.addStretch(1)
        scroll.setWidget(content)
        outer.addWidget(scroll)
        self.viewer.layers.events.inserted.connect(self._refresh_layers)
        self.viewer.layers.events.removed.connect(self._refresh_layers)
        self._refresh_layers()
        prefer_for_medical_files()  # File > Open reads NIfTI/DICOM files with this plugin, without asking

    # ----------------------------------------------------------------------------------- panels

    def _show_precision(self, device: str) -> None:
        """Say which precision ``auto`` (the default) runs on ``device`` and why."""
        try:
            from sam_core import describe_auto

            text = describe_auto(device or "cpu")
        except Exception as error:  # torch missing or the device unusable here: say so instead
            text = f"precision: cannot tell for {device or 'cpu'} ({error})"
        self.precision_label.setText(text)
        self.precision_label.setToolTip(text)

    def _setup_panel(self) -> QGroupBox:
        box = QGroupBox("Set-up")
        form = QFormLayout(box)
        self.image_combo = QComboBox()
        form.addRow("Image", self.image_combo)
        self.model_combo = QComboBox()
        self._fill_models()
        self.model_combo.currentIndexChanged.connect(self._on_model_changed)
        form.addRow("Model", self.model_combo)
        self.device_combo = QComboBox()
        try:
            from sam_core.zoo import available_devices

            self.device_combo.addItems(available_devices())
        except Exception:  # torch missing or broken: CPU is still the choice
            self.device_combo.addItem("cpu")
        form.addRow("Device", self.device_combo)
        self.precision_label = QLabel()
        self.precision_label.setWordWrap(True)
        self.device_combo.currentTextChanged.connect(self._show_precision)
        self._show_precision(self.device_combo.currentText())
        form.addRow(self.precision_label)
        row = QHBoxLayout()
        self.cache_edit = QLineEdit(_default_cache_dir())
        browse = QPushButton("…")
        browse.clicked.connect(self._browse_cache)
        row.addWidget(self.cache_edit)
        row.addWidget(browse)
        form.addRow("Cache folder", row)
        self.channel_axis_spin = QSpinBox()
        self.channel_axis_spin.setRange(-1, 8)
        self.channel_axis_spin.setValue(-1)
        self.channel_axis_spin.setSpecialValueText("none")
        form.addRow("Channel axis", self.channel_axis_spin)
        self.channels_edit = QLineEdit()
        self.channels_edit.setPlaceholderText("e.g. 0 or 2,1,0 (empty: all of RGB)")
        form.addRow("Channels", self.channels_edit)
        self.window_combo = QComboBox()
        self.window_combo.addItems([_NO_WINDOW] + [f"CT {name}" for name in CT_WINDOWS])
        self.window_combo.currentIndexChanged.connect(self._apply_window)
        form.addRow("Intensity window", self.window_combo)
        self.start_button = QPushButton("Start / reset session")
        self.start_button.clicked.connect(lambda: self.start())
        form.addRow(self.start_button)
        self.all_slices_check = QCheckBox("all slices")
        self.compute_button = QPushButton("Compute embeddings")
        self.compute_button.clicked.connect(lambda: self.compute_embeddings())
        row2 = QHBoxLayout()
        row2.addWidget(self.compute_button)
        row2.addWidget(self.all_slices_check)
        form.addRow(row2)
        self.progress_bar = QProgressBar()
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.clicked.connect(lambda: self.session.cancel_all())
        row3 = QHBoxLayout()
        row3.addWidget(self.progress_bar)
        row3.addWidget(self.cancel_button)
        form.addRow(row3)
        return box

    def _prompt_panel(self) -> QGroupBox:
        box = QGroupBox("Prompts")
        layout = QVBoxLayout(box)
        self.label_button = QPushButton("New points: positive (Shift-T)")
        self.label_button.clicked.connect(lambda: self.session.toggle_label())
        self.candidate_label = QLabel("candidates: none")
        self.next_button = QPushButton("Next candidate (Shift-N)")
        self.next_button.clicked.connect(lambda: self.session.next_candidate())
        self.commit_button = QPushButton("Commit (Shift-C)")
        self.commit_button.clicked.connect(lambda: self.session.commit())
        self.undo_button = QPushButton("Undo (Shift-Z)")
        self.undo_button.setToolTip("Undo the last commit or edit of the objects.")
        self.undo_button.clicked.connect(lambda: self.session.undo())
        self.clear_button = QPushButton("Clear prompts (Shift-X)")
        self.clear_button.clicked.connect(lambda: self.session.clear())
        self.overwrite_check = QCheckBox("commit may overwrite other objects")
        self.overwrite_check.toggled.connect(lambda on: setattr(self.session, "overwrite", on))
        self.each_check = QCheckBox("one object per prompt")
        self.each_check.setToolTip("Every positive point and every box becomes its own object (decoded together); "
                                   "Commit adds them all as new ids in one step, Propagate carries each one.")
        self.each_check.toggled.connect(self._set_one_per_prompt)
        for widget in (self.label_button, self.candidate_label, self.next_button, self.commit_button,
                       self.undo_button, self.clear_button, self.overwrite_check, self.each_check):
            layout.addWidget(widget)
        return box

    def _set_one_per_prompt(self, on: bool) -> None:
        self.session.one_per_prompt = bool(on)
        self.session.request_preview()

    def _volume_panel(self) -> QGroupBox:
        box = QGroupBox("Volume / time series")
        form = QFormLayout(box)
        self.first_spin = QSpinBox()
        self.last_spin = QSpinBox()
        for spin in (self.first_spin, self.last_spin):
            spin.setRange(-1, 100000)
            spin.setValue(-1)
            spin.setSpecialValueText("whole stack")
        form.addRow("From slice", self.first_spin)
        form.addRow("To slice", self.last_spin)
        self.stop_iou_spin = QDoubleSpinBox()
        self.stop_iou_spin.setRange(0.0, 1.0)
        self.stop_iou_spin.setSingleStep(0.05)
        self.stop_iou_spin.setValue(STOP_IOU)
        form.addRow("Stop below predicted IoU", self.stop_iou_spin)
        self.stop_absent_check = QCheckBox("stop when the object disappears (SAM 2.1)")
        self.stop_absent_check.setChecked(True)
        self.absent_frames_spin = QSpinBox()
        self.absent_frames_spin.setRange(1, 1000)
        self.absent_frames_spin.setValue(DEFAULT_STOP_ABSENT)
        tip = ("SAM 2.1 propagates every object of the shown frame into SAM objects, each under its id. A frame "
               "where the object score says the object is absent gives it no label; with this option, an object "
               "absent on this many frames in a row gets no label further on in that direction.")
        self.stop_absent_check.setToolTip(tip)
        self.absent_frames_spin.setToolTip(tip)
        self.stop_absent_check.toggled.connect(self.absent_frames_spin.setEnabled)
        form.addRow(self.stop_absent_check)
        form.addRow("after absent frames", self.absent_frames_spin)
        self.propagate_button = QPushButton("Propagate through stack")
        self.propagate_button.clicked.connect(lambda: self.propagate())
        form.addRow(self.propagate_button)
        return box

    def _automatic_panel(self) -> QGroupBox:
        box = QGroupBox("Automatic segmentation")
        layout = QVBoxLayout(box)
        params = QCollapsible("Parameters")
        inner = QWidget()
        form = QFormLayout(inner)
        self.points_per_side_spin = QSpinBox()
        self.points_per_side_spin.setRange(1, 128)
        self.pred_iou_spin = QDoubleSpinBox()
        self.pred_iou_spin.setRange(0.0, 1.0)
        self.pred_iou_spin.setSingleStep(0.01)
        self.stability_spin = QDoubleSpinBox()
        self.stability_spin.setRange(0.0, 1.0)
        self.stability_spin.setSingleStep(0.01)
        self._use_model_defaults(self.choices[self.model_combo.currentIndex()])
        self.min_area_spin = QSpinBox()
        self.min_area_spin.setRange(0, 1_000_000)
        self.link_iou_spin = QDoubleSpinBox()
        self.link_iou_spin.setRange(0.0, 1.0)
        self.link_iou_spin.setValue(0.3)
        form.addRow("Points per side", self.points_per_side_spin)
        form.addRow("Predicted IoU threshold", self.pred_iou_spin)
        form.addRow("Stability threshold", self.stability_spin)
        form.addRow("Min. region area (px)", self.min_area_spin)
        form.addRow("Link slices at IoU", self.link_iou_spin)
        params.addWidget(inner)
        layout.addWidget(params)
        self.auto_button = QPushButton("Segment image / slice")
        self.auto_button.clicked.connect(lambda: self.automatic(False))
        self.auto_volume_button = QPushButton("Segment whole stack (3D labels)")
        self.auto_volume_button.clicked.connect(lambda: self.automatic(True))
        layout.addWidget(self.auto_button)
        layout.addWidget(self.auto_volume_button)
        return box

    def _find_panel(self) -> QGroupBox:
        box = QGroupBox("Find objects (SAM 3)")
        form = QFormLayout(box)
        self.find_edit = QLineEdit()
        self.find_edit.setPlaceholderText("what to find, e.g. cell (Enter finds)")
        self.find_edit.returnPressed.connect(lambda: self.find())
        self.find_button = QPushButton("Find all")
        self.find_button.setToolTip("Every instance of the phrase on the shown image or slice (or the whole stack) "
                                    "goes to the image's SAM automatic layer, one id each; accept them in 'Edit objects'.")
        self.find_button.clicked.connect(lambda: self.find())
        row = QHBoxLayout()
        row.addWidget(self.find_edit)
        row.addWidget(self.find_button)
        form.addRow("Find all", row)
        self.find_stack_check = QCheckBox("whole stack (each slice, ids unique in the stack)")
        form.addRow(self.find_stack_check)
        self.threshold_spin = QDoubleSpinBox()
        self.threshold_spin.setRange(0.0, 1.0)
        self.threshold_spin.setDecimals(3)
        self.threshold_spin.setSingleStep(0.05)
        self.threshold_spin.setValue(0.5)
        self.threshold_spin.setToolTip("Keep instances whose score (0 to 1) is above this.")
        form.addRow("Score threshold", self.threshold_spin)
        self.like_check = QCheckBox("like this one: a box drawn on 'SAM examples' finds all like it")
        self.like_check.toggled.connect(self._set_like_mode)
        self.negative_check = QCheckBox("new example boxes are negative (or hold Shift)")
        self.negative_check.toggled.connect(lambda on: setattr(self.concepts, "negative", bool(on)))
        self.like_button = QPushButton("Find like the examples")
        self.like_button.setToolTip("Every instance like the boxed examples on the shown slice (red boxes: not this).")
        self.like_button.clicked.connect(lambda: self.find(like=True))
        for widget in (self.like_check, self.negative_check, self.like_button):
            form.addRow(widget)
        return box

    def find(self, like: bool = False) -> Any:
        """Find all instances of the typed phrase (or, with ``like``, of the example boxes)."""
        if not self._ensure_started():
            return None
        return self.concepts.find(None if like else self.find_edit.text(), like=like,
                                  whole_stack=self.find_stack_check.isChecked(), threshold=self.threshold_spin.value())

    def _set_like_mode(self, on: bool) -> None:
        if not on:
            return
        if self._ensure_started():
            self.concepts.start_drawing()
        else:
            with _signals_blocked(self.like_check):
                self.like_check.setChecked(False)

    def _on_example(self) -> None:
        if self.like_check.isChecked():
            self.find(like=True)

    def _edit_panel(self) -> QGroupBox:
        box = QGroupBox("Edit objects")
        form = QFormLayout(box)
        self.ids_edit = QLineEdit()
        self.ids_edit.setPlaceholderText("e.g. 3, 5 (hover over an object to see its id)")
        self.ids_edit.setToolTip("Ids of SAM objects (or of SAM automatic objects, to accept some of them).")
        form.addRow("Object ids", self.ids_edit)
        buttons = [
            ("accept_all_button", "Accept all automatic objects", "accept", False,
             "Copy every object of this image's SAM automatic layer into SAM objects, each with a new id."),
            ("accept_button", "Accept listed automatic objects", "accept", True,
             "Copy the automatic objects with the ids typed above into SAM objects."),
            ("delete_button", "Delete listed objects", "delete", True, "Remove the SAM objects typed above."),
            ("merge_button", "Merge listed objects", "merge", True,
             "Join the SAM objects typed above into one (the smallest id)."),
            ("split_button", "Split object at the preview", "split", False,
             "Click inside an object first: the preview becomes a new object carved out of it."),
            ("refine_button", "Refine listed object", "refine", True,
             "Its outline becomes the prompt on this slice; add points to correct it, then Commit."),
        ]
        for attribute, text, action, with_ids, tip in buttons:
            button = QPushButton(text)
            button.setToolTip(tip + " Undo with 'Undo' (Shift-Z).")
            button.clicked.connect(lambda _=False, action=action, with_ids=with_ids: self.edit(action, with_ids))
            setattr(self, attribute, button)
            form.addRow(button)
        return box

    def edit(self, action: str, with_ids: bool = True) -> Any:
        """Run an edit of the objects with the ids typed in the panel (see ``SamSession.edit``)."""
        from napari.utils.notifications import show_error

        from napari_sam.editing import parse_ids
        from sam_core.errors import SamError

        if not self._ensure_started():
            return None
        try:
            ids = parse_ids(self.ids_edit.text()) if with_ids else ()
        except SamError as error:
            show_error(str(error))
            return None
        return self.session.edit(action, ids)

    def _class_panel(self) -> QGroupBox:
        from napari_sam.classes import DEFAULT_CLASSES

        box = QGroupBox("Classes")
        form = QFormLayout(box)
        self.classes_edit = QLineEdit(", ".join(DEFAULT_CLASSES))
        self.classes_edit.setToolTip("Up to nine class names, separated by commas; keys 1-9 choose one "
                                     "(while a SAM layer is selected).")
        self.classes_edit.editingFinished.connect(self._apply_classes)
        form.addRow("Class list", self.classes_edit)
        self.class_label = QLabel("New objects: no class (press 1-9)")
        form.addRow(self.class_label)
        self.set_class_button = QPushButton("Set class of listed objects")
        self.set_class_button.setToolTip("Give the objects typed in 'Object ids' the class of new objects.")
        self.set_class_button.clicked.connect(lambda: self._set_class())
        form.addRow(self.set_class_button)
        self.export_labels_button = QPushButton("Export labels (TIFF + classes CSV)…")
        self.export_labels_button.setToolTip("Write SAM objects as a TIFF and a CSV of id, class beside it.")
        self.export_labels_button.clicked.connect(lambda: self.export_labels())
        form.addRow(self.export_labels_button)
        return box

    def _apply_classes(self) -> None:
        from napari_sam.classes import parse_classes

        self.session.class_list.names = parse_classes(self.classes_edit.text())

    def _show_class(self, name: Optional[str]) -> None:
        self.class_label.setText(f"New objects: {name} (press 1-9)" if name else "New objects: no class (press 1-9)")

    def _set_class(self) -> None:
        from napari.utils.notifications import show_error

        from napari_sam.editing import parse_ids
        from sam_core.errors import SamError

        if not self._ensure_started():
            return
        try:
            ids = parse_ids(self.ids_edit.text())
        except SamError as error:
            show_error(str(error))
            return
        self.session.set_class(ids, self.session.class_list.current)

    def export_labels(self, path: Optional[str] = None) -> Optional[str]:
        """Ask where to save (unless ``path``), then write the objects and their classes."""
        if not self._ensure_started():
            return None
        if path is None:
            path, _ = QFileDialog.getSaveFileName(self, "Export labels", "objects.tif", "TIFF (*.tif *.tiff)")
            if not path:
                return None
        return self.session.export_labels(path)

    def _measure_panel(self) -> QGroupBox:
        box = QGroupBox("Measurements")
        layout = QVBoxLayout(box)
        self.measure_button = QPushButton("Export measurements (CSV)…")
        self.measure_button.setToolTip("Area or volume, centroid, bounding box (in the image's scale units), "
                                       "mean and integrated intensity per channel and class of every committed object.")
        self.measure_button.clicked.connect(lambda: self.measure())
        self.measure_table = QTableWidget(0, 0)
        self.measure_table.setMinimumHeight(120)
        layout.addWidget(self.measure_button)
        layout.addWidget(self.measure_table)
        return box

    def measure(self, path: Optional[str] = None) -> Any:
        """Ask where to save (unless ``path``), then measure the committed objects and show the table."""
        if not self._ensure_started():
            return None
        if path is None:
            path, _ = QFileDialog.getSaveFileName(self, "Measurements", "measurements.csv", "CSV (*.csv)")
            if not path:
                return None
        return self.session.measure(path, on_done=self._show_measurements)

    def _show_measurements(self, table: dict) -> None:
        columns = list(table)
        rows = len(table["label"]) if columns else 0
        self.measure_table.clear()
        self.measure_table.setColumnCount(len(columns))
        self.measure_table.setRowCount(rows)
        self.measure_table.setHorizontalHeaderLabels(columns)
        for c, name in enumerate(columns):
            for r, value in enumerate(table[name]):
                text = f"{value:.4g}" if isinstance(value, (float, np.floating)) else str(value)
                self.measure_table.setItem(r, c, QTableWidgetItem(text))

    def _finetune_panel(self) -> QGroupBox:
        box = QGroupBox("Fine-tune on committed objects")
        form = QFormLayout(box)
        self.epochs_spin = QSpinBox()
        self.epochs_spin.setRange(1, 1000)
        self.epochs_spin.setValue(5)
        form.addRow("Epochs", self.epochs_spin)
        self.finetune_button = QPushButton("Fine-tune and add to model list")
        self.finetune_button.clicked.connect(lambda: self.finetune())
        form.addRow(self.finetune_button)
        return box

    # ----------------------------------------------------------------------------------- models

    def _fill_models(self) -> None:
        from sam_core.zoo import list_models

        self.model_combo.blockSignals(True)
        self.model_combo.clear()
        self.choices = []
        for status in list_models():
            mark = "" if status.present else " (download on first use)"
            self.choices.append(ModelChoice(status.name))
            self.model_combo.addItem(status.name + mark)
        self.choices.append(None)
        self.model_combo.addItem(_LOCAL_FILE)
        self.model_combo.blockSignals(False)
        self.model_combo.setCurrentIndex(0)

    def add_model(self, choice: ModelChoice, select: bool = True) -> None:
        """Add a model (for example a fine-tuned checkpoint) before the 'local file' entry."""
        position = len(self.choices) - 1
        self.choices.insert(position, choice)
        with _signals_blocked(self.model_combo):  # the insert moves the current index: no dialog for that
            self.model_combo.insertItem(position, choice.label)
        if select:
            self.model_combo.setCurrentIndex(position)

    def _on_model_changed(self, index: int) -> None:
        if index >= 0 and self.choices[index] is None:
            path, _ = QFileDialog.getOpenFileName(self, "SAM checkpoint", "", "Checkpoints (*.pth *.pt);;All files (*)")
            if path:
                self.add_model(ModelChoice(None, path))
            else:
                self.model_combo.setCurrentIndex(0)
        elif index >= 0:
            self._use_model_defaults(self.choices[index])

    def _use_model_defaults(self, choice: ModelChoice) -> None:
        """Set the automatic-mask grid and thresholds to those recommended for ``choice``'s zoo model."""
        from sam_core.zoo import automask_defaults

        recommended = automask_defaults(choice.name)
        self.points_per_side_spin.setValue(recommended["points_per_side"])
        self.pred_iou_spin.setValue(recommended["pred_iou_thresh"])
        self.stability_spin.setValue(recommended["stability_score_thresh"])

    def _browse_cache(self) -> None:
        path = QFileDialog.getExistingDirectory(self, "Embedding cache folder", self.cache_edit.text())
        if path:
            self.cache_edit.setText(path)

    # ----------------------------------------------------------------------------------- actions

    def _refresh_layers(self, event: Any = None) -> None:
        current = self.image_combo.currentText()
        self.image_combo.clear()
        names = [layer.name for layer in self.viewer.layers if isinstance(layer, Image)]
        self.image_combo.addItems(names)
        if current in names:
            self.image_combo.setCurrentText(current)

    def _channels(self) -> Optional[Tuple[int, ...]]:
        text = self.channels_edit.text().strip()
        if not text:
            return None
        try:
            return tuple(int(part) for part in text.replace(" ", "").split(","))
        except ValueError:
            return ()

    def apply_settings(self) -> bool:
        """Copy the set-up panel into the session; False (with a notification) for a bad entry."""
        from napari.utils.notifications import show_error

        self._apply_classes()
        s = self.session.settings
        index = self.model_combo.currentIndex()
        choice = self.choices[index] if 0 <= index < len(self.choices) else None
        if choice is None:
            show_error("Choose a model (or a checkpoint file).")
            return False
        s.model = choice
        s.device = self.device_combo.currentText() or "cpu"
        s.cache_dir = self.cache_edit.text().strip() or None
        s.channel_axis = None if self.channel_axis_spin.value() < 0 else self.channel_axis_spin.value()
        channels = self._channels()
        if channels == () or (channels is not None and len(channels) not in (1, 3)):
            show_error("Channels: give one index or three, separated by commas (e.g. 0 or 2,1,0).")
            return False
        s.channels = channels
        return True

    def _image_layer(self) -> Optional[Image]:
        name = self.image_combo.currentText()
        return self.viewer.layers[name] if name in self.viewer.layers else None

    def start(self) -> bool:
        """Start (or restart) a session on the chosen image layer; creates the prompt and output layers."""
        if not self.apply_settings():
            return False
        if not self.session.set_image(self._image_layer()):
            return False
        self.viewer.layers.selection.active = self.session.points_layer
        stack = self.session.access.stack_shape
        if stack:
            self.first_spin.setMaximum(stack[-1] - 1)
            self.last_spin.setMaximum(stack[-1] - 1)
        return True

    def _ensure_started(self) -> bool:
        """Start a session unless one runs on the chosen image (compared unwrapped: see ``unwrap``)."""
        if self.session.access is not None and self.session.access.layer is unwrap(self._image_layer()):
            return self.apply_settings()
        return self.start()

    def _watch(self, job: Any) -> None:
        """Show ``job``'s progress and end in the panel's bar (called before the job starts)."""
        self.progress_bar.setFormat(f"{job.description}: starting")
        self.progress_bar.setValue(0)
        job.listeners.append(self._on_progress)
        job.worker.finished.connect(lambda: self._on_finished(job))

    def _on_progress(self, done: int, total: int, message: str) -> None:
        self.progress_bar.setFormat(f"{message} (%p%)" if message else "%p%")
        self.progress_bar.setMaximum(max(total, 1))
        self.progress_bar.setValue(done)

    def _on_finished(self, job: Any) -> None:
        """The bar says how the job ended: done (full), cancelled or failed (empty)."""
        if job.error is None:
            self.progress_bar.setFormat("done")
            self.progress_bar.setValue(self.progress_bar.maximum())
        else:
            self.progress_bar.setFormat("cancelled" if job.cancelled else "failed (see the notification)")
            self.progress_bar.setValue(0)

    def compute_embeddings(self) -> Any:
        if not self._ensure_started():
            return None
        return self.session.compute_embeddings(self.all_slices_check.isChecked())

    def _show_label(self, label: str) -> None:
        self.label_button.setText(f"New points: {label} (Shift-T)")

    def _show_scores(self, scores: Any, index: int) -> None:
        if scores is None:
            self.candidate_label.setText("candidates: none")
            return
        text = ", ".join(f"[{s:.3f}]" if i == index else f"{s:.3f}" for i, s in enumerate(scores))
        self.candidate_label.setText(f"candidate {index + 1}/{len(scores)}, predicted IoU: {text}")

    def propagate(self) -> Any:
        if not self._ensure_started():
            return None
        first = self.first_spin.value()
        last = self.last_spin.value()
        stop_absent = self.absent_frames_spin.value() if self.stop_absent_check.isChecked() else None
        return self.session.propagate(
            None if first < 0 else first, None if last < 0 else last, stop_iou=self.stop_iou_spin.value(),
            stop_absent=stop_absent,
        )

    def automatic(self, whole_stack: bool) -> Any:
        if not self._ensure_started():
            return None
        params = {
            "points_per_side": self.points_per_side_spin.value(),
            "pred_iou_thresh": self.pred_iou_spin.value(),
            "stability_score_thresh": self.stability_spin.value(),
            "min_mask_region_area": self.min_area_spin.value(),
        }
        return self.session.automatic(whole_stack, params, link_iou=self.link_iou_spin.value())

    def finetune(self, output: Optional[str] = None) -> Any:
        if not self._ensure_started():
            return None
        if output is None:
            import time

            folder = Path(self.cache_edit.text() or ".").expanduser().parent / "finetuned"
            output = str(folder / f"finetuned-{time.strftime('%Y%m%d-%H%M%S')}.pt")
        return self.session.finetune(output, epochs=self.epochs_spin.value(), on_done=self.add_model)

    def _apply_window(self, index: int) -> None:
        name = self.window_combo.currentText()
        layer = self._image_layer()
        if name == _NO_WINDOW or layer is None:
            return
        lo, hi = window_range(name[len("CT "):])
        layer.contrast_limits_range = (min(lo, layer.contrast_limits_range[0]), max(hi, layer.contrast_limits_range[1]))
        layer.contrast_limits = (lo, hi)
