"""Image series in napari: a folder of images (or the open image layers) annotated one image at a time.

The panel shows ``image 12 of 200: name``, with previous / next buttons. Moving on saves the shown
image's ``SAM objects`` (label TIFF + manifest, :mod:`sam_core.series`; an image without objects is
saved empty and counts as done), then shows the other image with its saved labels and classes, and
computes the embeddings of the next images in the background (into the predictor's embedding cache,
so the next image's first click decodes at once; the panel's Cancel stops it). A folder reopened
with the same labels folder resumes at the image that was shown, with every saved label back.
Closing napari (or the dock of the panel) saves the shown image first. Only committed objects are
saved (prompts and an uncommitted preview belong to no image).

An image that cannot be read is skipped with a warning that names it and says why (the manifest
records the reason); an empty folder or a labels folder that cannot be written is refused with a
message when the series is opened; a save that fails keeps the image on screen (nothing is lost).
"""

from __future__ import annotations

import threading
import weakref
from collections import defaultdict
from typing import TYPE_CHECKING, Any, Callable, List, Optional, Tuple

import numpy as np
from napari.utils.notifications import show_error, show_info, show_warning
from qtpy.QtCore import QEvent, QObject
from qtpy.QtWidgets import (QFileDialog, QFormLayout, QGroupBox, QHBoxLayout, QLabel, QLineEdit, QPushButton,
                            QSpinBox)

from napari_sam import classes as class_table
from napari_sam.image_access import ImageAccess, unwrap
from napari_sam.layers import OBJECTS_NAME
from napari_sam.workers import as_sentence
from sam_core.errors import SamError
from sam_core.progress import Cancelled

if TYPE_CHECKING:
    from napari_sam.widget import SamWidget
    from napari_sam.workers import Job
    from sam_core.series import Series

#: The name a non-empty ``SAM objects`` layer gets when a series opens on top of it (it is kept).
BEFORE_SERIES_NAME = f"{OBJECTS_NAME} (before the series)"


class SeriesController:
    """The open series of one widget: saving, moving, resuming, computing ahead (the panel holds the
    buttons)."""

    def __init__(self, widget: "SamWidget") -> None:
        self.widget = widget
        self.viewer = widget.viewer
        self.session = widget.session
        self.series: Optional["Series"] = None
        #: The position whose labels the ``SAM objects`` layer holds (None: nothing shown yet).
        self.shown: Optional[int] = None
        #: The image layer of the shown image (unwrapped); ``owned``: the series added it (folder series).
        self.layer: Any = None
        self.owned = False
        #: How many images after the shown one get their embeddings computed in the background.
        self.ahead = 2
        self.on_change: List[Callable[[str], None]] = []
        self._ahead_job: Optional["Job"] = None
        self._superseded = threading.Event()

    # ----------------------------------------------------------------------------------- opening

    def open_folder(self, folder: str, output: Optional[str] = None) -> bool:
        """Open the images of ``folder`` (sorted by name); labels in ``output`` (default
        ``<folder>/sam-labels``). Resumes a series saved there. False (with a message) when it cannot."""
        from sam_core.series import open_folder

        return self._open(lambda: open_folder(folder, output or None), owned=True)

    def open_layers(self, output: str) -> bool:
        """Make the open image layers (in the layer list's order) a series with labels in ``output``."""
        from napari.layers import Image

        from sam_core.series import open_names

        names = [layer.name for layer in self.viewer.layers if isinstance(layer, Image)]
        if not names:
            self.session.fail("There are no image layers: open some images first, or open an image folder.")
            return False
        if not output:
            self.session.fail("Choose a folder for the labels of the image layers first.")
            return False
        return self._open(lambda: open_names(names, output), owned=False)

    def _open(self, make: Callable[[], "Series"], owned: bool) -> bool:
        if not self.save():
            return False
        try:
            series = make()
        except SamError as error:
            self.session.fail(as_sentence(error))
            return False
        self._stop_ahead()
        if self.series is None and OBJECTS_NAME in self.viewer.layers:
            objects = unwrap(self.viewer.layers[OBJECTS_NAME])
            if np.any(objects.data):  # work from before the series: kept, under another name
                objects.name = BEFORE_SERIES_NAME
        self.series, self.shown, self.owned = series, None, owned
        if not owned:
            self.layer = None
        if series.class_names:
            self.widget.classes_edit.setText(", ".join(series.class_names))
        resumed = series.done
        shown = self._go_from(series.position, 1, save=False)
        if shown is None:  # nothing readable from the resumed image on: look before it
            shown = self._go_from(series.position - 1, -1, save=False)
        if not shown:
            if shown is None:
                self.session.fail(f"No image of {series.folder or 'the series'} can be read (see the warnings).")
            self.series = None
            self._emit()
            return False
        if resumed:
            show_info(f"Series resumed at {series.describe()} ({resumed} of {len(series)} images saved in {series.output}).")
        return True

    # ----------------------------------------------------------------------------------- moving

    def go(self, step: int) -> bool:
        """Save the shown image, then show the image ``step`` away (+1 next, -1 previous), skipping
        images that cannot be read. False (with a message) at either end or when saving fails."""
        if self.series is None:
            self.session.fail("Open an image folder (or use the open image layers) first.")
            return False
        start = self.series.position + step
        if not 0 <= start < len(self.series):
            show_info("This is the last image of the series." if step > 0 else "This is the first image of the series.")
            return False
        return bool(self._go_from(start, 1 if step > 0 else -1, save=True))

    def _go_from(self, index: int, direction: int, save: bool) -> Optional[bool]:
        """Show the first readable image from ``index`` on in ``direction`` (saving the shown one first
        when ``save``); None when no image there can be read, False when it could not be shown."""
        series = self.series
        while 0 <= index < len(series):
            try:
                image = self._read(index)
                break
            except SamError as error:
                series.mark_unreadable(index, str(error))
                show_warning(f"Skipped {series.images[index].name}: {as_sentence(error)}")
                index += direction
        else:
            show_info("No readable image is left in that direction.")
            return None
        if save and not self.save():
            return False
        return self._show(index, image)

    def _read(self, index: int) -> Any:
        """The pixels of image ``index`` (folder series) or its layer (layer series)."""
        series = self.series
        if series.folder is not None:
            return series.read(index)
        name = series.images[index].name
        if name not in self.viewer.layers:
            raise SamError(f"the layer {name!r} is no longer open")
        return unwrap(self.viewer.layers[name])

    def _show(self, index: int, image: Any) -> bool:
        from napari.layers import Image

        from sam_core.series import display_range

        series = self.series
        name = series.images[index].name
        old = self.layer if self.owned else None
        if series.folder is not None:
            limits = display_range(image)
            layer = Image(image, name=name, **({"contrast_limits": limits} if limits else {}))
            position = _layer_position(self.viewer, old)
            self.viewer.layers.insert(position, layer)  # below the SAM layers, where the last image was
        else:
            layer = image
        self.widget.image_combo.setCurrentText(layer.name)
        if not self.widget.start():
            if series.folder is not None:
                self.viewer.layers.remove(layer.name)
            return False
        if old is not None and old is not layer and old.name in self.viewer.layers:
            self.viewer.layers.remove(old.name)
        self.layer, self.shown = unwrap(layer), index
        series.move_to(index)
        self._load_labels(index)
        try:
            series.write_manifest()
        except SamError as error:
            show_error(f"The series position could not be saved: {as_sentence(error)}")
        self._emit()
        self._compute_ahead()
        return True

    def _load_labels(self, index: int) -> None:
        """Put image ``index``'s saved labels and classes into ``SAM objects`` (empty when none)."""
        series, objects = self.series, self.session.objects_layer
        try:
            labels = series.load_labels(index)
        except SamError as error:
            show_error(as_sentence(error))
            labels = None
        if labels is not None and labels.shape != tuple(objects.data.shape):
            show_error(f"The saved labels of {series.images[index].name} have shape {labels.shape}, the image "
                       f"{tuple(objects.data.shape)}: they are not shown (the file stays in {series.output}).")
            labels = None
        objects.data = labels if labels is not None else np.zeros(objects.data.shape, np.int32)
        class_table.set_classes(objects, list(class_table.object_classes(objects)), None)
        by_class = defaultdict(list)
        for object_id, name in series.images[index].classes.items():
            by_class[name].append(object_id)
        for name, ids in by_class.items():
            class_table.set_classes(objects, ids, name)
        self.session.history.clear()  # undo never reaches back into another image

    # ----------------------------------------------------------------------------------- saving

    def save(self) -> bool:
        """Save the shown image's objects (label TIFF, classes, manifest); True when saved or nothing
        to save, False (with an error message) when writing failed."""
        series, objects = self.series, self.session.objects_layer
        if series is None or self.shown is None or objects is None:
            return True
        access = self.session.access
        if access is None or access.layer is not self.layer:
            return True  # the session moved to an image outside the series: its objects are not this image's
        series.class_names = list(self.session.class_list.names)
        try:
            series.save_labels(self.shown, np.asarray(objects.data), class_table.object_classes(objects))
        except SamError as error:
            show_error(f"The labels of {series.images[self.shown].name} were NOT saved: {as_sentence(error)} "
                       "Choose another labels folder and open the series again.")
            return False
        self._emit()
        return True

    def close(self) -> None:
        """napari (or the panel) closes: stop computing ahead and save the shown image."""
        self._stop_ahead()
        self.save()

    # ----------------------------------------------------------------------------------- ahead

    def _loaders(self) -> List[Tuple[str, Callable[[], Tuple[np.ndarray, Any]]]]:
        from sam_core.series import folder_loader

        series, settings = self.series, self.session.settings
        items = []
        for index in series.ahead(self.ahead):
            name = series.images[index].name
            if series.folder is not None:
                load = folder_loader(series, index, settings.channels)
            else:
                if name not in self.viewer.layers:
                    continue
                try:
                    access = ImageAccess(self.viewer.layers[name], settings.channel_axis, settings.channels)
                except SamError:
                    continue  # reported when the image is shown
                if access.stack_shape:
                    continue  # stacks are encoded slice by slice when shown
                load = _layer_loader(access)
            items.append((name, _untiled(load, name, settings.tile_above)))
        return items

    def _compute_ahead(self) -> None:
        """Encode the next images in the background (a session job: the panel's Cancel stops it)."""
        from sam_core.series import encode_ahead

        self._stop_ahead()
        items = self._loaders()
        if not items or not self.session.check_model():
            return
        session, superseded = self.session, threading.Event()
        self._superseded = superseded

        def job(progress: Any, cancel: Any) -> Any:
            try:
                return encode_ahead(session.predictor(progress, cancel), items, progress, cancel, session.lock)
            except Cancelled:
                if superseded.is_set():
                    return None  # a newer image took over: not the user's cancel, no message
                raise

        self._ahead_job = session.run(job, "SAM embeddings of the next images", lambda result: None)

    def _stop_ahead(self) -> None:
        job = self._ahead_job
        if job is not None and job.running:
            self._superseded.set()
            job.cancel()
        self._ahead_job = None

    def _emit(self) -> None:
        text = self.describe()
        for listener in self.on_change:
            listener(text)

    def describe(self) -> str:
        """``image 3 of 5: name (2 saved)``, or that no series is open."""
        if self.series is None or self.shown is None:
            return "No series open."
        return f"{self.series.describe()} ({self.series.done} saved)"


def _layer_position(viewer: Any, layer: Any) -> int:
    """Where ``layer`` is in the layer list (0: bottom, also when it is None or gone)."""
    if layer is None:
        return 0
    names = [item.name for item in viewer.layers]
    return names.index(layer.name) if layer.name in names else 0


def _layer_loader(access: ImageAccess) -> Callable[[], Tuple[np.ndarray, Any]]:
    preparation = access.preparation()  # read on the GUI thread: the layer's contrast limits

    def load() -> Tuple[np.ndarray, Any]:
        return access.plane(()), preparation

    return load


def _untiled(load: Callable[[], Tuple[np.ndarray, Any]], name: str, tile_above: int) -> Callable[[], Tuple[np.ndarray, Any]]:
    """``load``, refusing images the session tiles (their tiles are encoded when the image is shown)."""
    def checked() -> Tuple[np.ndarray, Any]:
        image, preparation = load()
        if max(image.shape[:2]) > tile_above:
            raise SamError(f"{name} is larger than {tile_above} pixels: its tiles are encoded when it is shown")
        return image, preparation

    return checked


class SeriesPanel(QGroupBox):
    """The panel: open a folder or use the open layers, labels folder, position, previous / next."""

    def __init__(self, widget: "SamWidget") -> None:
        super().__init__("Image series")
        self.widget = widget
        self.controller = SeriesController(widget)
        self.controller.on_change.append(self._show_position)
        self._watched: Optional[weakref.ref] = None
        form = QFormLayout(self)
        self.output_edit = QLineEdit()
        self.output_edit.setPlaceholderText("empty: a 'sam-labels' folder inside the image folder")
        self.output_edit.setToolTip("Where each image's labels (TIFF) and the series manifest are saved; "
                                    "open the same folder again to resume.")
        form.addRow("Labels folder", self.output_edit)
        self.open_folder_button = QPushButton("Open image folder…")
        self.open_folder_button.setToolTip("Go through the images of a folder (sorted by name), one at a time; "
                                           "resumes where a saved series stopped.")
        self.open_folder_button.clicked.connect(lambda: self.open_folder())
        self.use_layers_button = QPushButton("Use open image layers")
        self.use_layers_button.setToolTip("Go through the open image layers one at a time (labels saved in the "
                                          "labels folder).")
        self.use_layers_button.clicked.connect(lambda: self.use_layers())
        row = QHBoxLayout()
        row.addWidget(self.open_folder_button)
        row.addWidget(self.use_layers_button)
        form.addRow(row)
        self.position_label = QLabel("No series open.")
        self.position_label.setWordWrap(True)
        form.addRow(self.position_label)
        self.previous_button = QPushButton("◀ Previous image")
        self.previous_button.setToolTip("Save this image's objects, then show the previous image.")
        self.previous_button.clicked.connect(lambda: self.controller.go(-1))
        self.next_button = QPushButton("Next image ▶")
        self.next_button.setToolTip("Save this image's objects, then show the next image.")
        self.next_button.clicked.connect(lambda: self.controller.go(1))
        row2 = QHBoxLayout()
        row2.addWidget(self.previous_button)
        row2.addWidget(self.next_button)
        form.addRow(row2)
        self.save_button = QPushButton("Save this image's labels")
        self.save_button.setToolTip("Moving on and closing napari save too.")
        self.save_button.clicked.connect(lambda: self._save())
        form.addRow(self.save_button)
        self.ahead_spin = QSpinBox()
        self.ahead_spin.setRange(0, 20)
        self.ahead_spin.setValue(self.controller.ahead)
        self.ahead_spin.setToolTip("How many of the next images get their embeddings computed in the background.")
        self.ahead_spin.valueChanged.connect(lambda value: setattr(self.controller, "ahead", int(value)))
        form.addRow("Compute ahead (images)", self.ahead_spin)
        widget.installEventFilter(self)  # the panel taken out of napari's window (its dock closed): save

    def open_folder(self, folder: Optional[str] = None) -> bool:
        """Ask for the image folder (unless ``folder``), then open it as a series."""
        if folder is None:
            folder = QFileDialog.getExistingDirectory(self, "Image folder", "")
            if not folder:
                return False
        self._watch_close()
        return self.controller.open_folder(folder, self.output_edit.text().strip() or None)

    def use_layers(self) -> bool:
        """The open image layers as a series; asks for the labels folder when none is typed."""
        output = self.output_edit.text().strip()
        if not output:
            output = QFileDialog.getExistingDirectory(self, "Folder for the labels", "")
            if not output:
                return False
            self.output_edit.setText(output)
        self._watch_close()
        return self.controller.open_layers(output)

    def _save(self) -> None:
        if self.controller.series is None:
            self.widget.session.fail("Open an image folder (or use the open image layers) first.")
        elif self.controller.save():
            show_info(f"Saved the labels of {self.controller.series.current.name}.")

    def _show_position(self, text: str) -> None:
        self.position_label.setText(text)

    def _watch_close(self) -> None:
        """Save the shown image when napari's window closes (its close event, before anything is torn down)."""
        window = self.window()
        if window is not self and (self._watched is None or self._watched() is not window):
            window.installEventFilter(self)
            self._watched = weakref.ref(window)  # a weak reference: the panel never keeps napari's window alive

    def eventFilter(self, watched: QObject, event: QEvent) -> bool:  # noqa: N802 (Qt's name)
        kind = event.type()
        if self._watched is not None and watched is self._watched() and kind == QEvent.Type.Close:
            self.controller.close()
        elif watched is self.widget and kind == QEvent.Type.ParentChange and self.widget.parent() is None:
            self.controller.close()
        return False
