"""Screenshots of the napari plugin's workflows, taken along the user's path with the bundled models.

Run under Xvfb (napari needs OpenGL)::

    xvfb-run -a -s "-screen 0 1600x1000x24" python scripts/screenshot_napari.py [--workflow NAME] [--out PATH]

Every workflow opens the widget as napari's Plugins menu opens it
(``add_plugin_dock_widget("sam-suite", "Segment Anything")``), chooses the model in its list, presses
*Start*, then works as a user does: mouse clicks on the canvas and on the panel's buttons, keys on the
canvas, text typed into the panel's fields (a file dialog is answered with a temporary path).

Workflows (default output in docs/):

* ``clicks`` (napari.png): the whole window; one click per cell of the 2D sample, each committed.
* ``many`` (napari_many.png): *one object per prompt*, 20 clicks, one *Commit*: 20 ids.
* ``editing`` (napari_editing.png): automatic objects accepted, then two of them merged.
* ``classes`` (napari_classes.png): objects committed under classes chosen with keys 1 and 2.
* ``measurements`` (napari_measurements.png): *Export measurements*, the table in the panel.
* ``volumes`` (napari_volumes.png): one click on the middle slice of the 3D sample, *Propagate*, *Commit*.
* ``automatic`` (napari_automatic.png): *Segment image / slice* on the 2D sample.
* ``sam2`` (sam2_propagation.png): on frame 3 of a generated movie, one click per object with ``demo``
  and *Commit*; then ``demo2`` (SAM 2.1) chosen in the list tracks them with *Propagate*; four frames
  side by side, each id in its colour.
* ``find`` (find.png): ``demo-concepts`` (SAM 3) finds every "circle" of a generated scene (*Find all*).

Apart from ``clicks``, a picture is the canvas beside the panel(s) of that workflow (the dock is
taller than a screen).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np

DOCS = Path(__file__).resolve().parents[1] / "docs"
WORKFLOWS: Dict[str, Tuple[Callable[..., str], str]] = {}
BACKGROUND = (38, 41, 48)  # napari's dark theme


def workflow(name: str, filename: str) -> Callable:
    """Register ``function(scene_factory) -> caption`` as the workflow ``name`` saved as ``filename``."""

    def register(function: Callable[..., str]) -> Callable[..., str]:
        WORKFLOWS[name] = (function, filename)
        return function

    return register


class Scene:
    """A napari viewer showing one image, with the plugin's widget opened and a session started."""

    def __init__(self, image: np.ndarray, model: str, checkpoint: Optional[str] = None, name: str = "image",
                 **layer_kwargs: Any) -> None:
        import napari

        from napari_sam.session import ModelChoice

        self.viewer = napari.Viewer(title="Segment Anything in napari")
        self.viewer.window.resize(1400, 900)
        self.layer = self.viewer.add_image(image, name=name, **layer_kwargs)
        _, self.widget = self.viewer.window.add_plugin_dock_widget("sam-suite", "Segment Anything")
        self.widget.cache_edit.setText(tempfile.mkdtemp(prefix="sam-embeddings-"))
        if checkpoint:
            self.widget.add_model(ModelChoice(None if model == "demo" else model, checkpoint))
        else:
            self.choose_model(model)
        self.settle()
        self.press(self.widget.start_button)
        self.viewer.reset_view()
        self.settle()

    # ------------------------------------------------------------------------------ user actions

    def choose_model(self, model: str) -> None:
        """Choose ``model`` (a zoo name) in the panel's model list."""
        combo = self.widget.model_combo
        names = [combo.itemText(i).split(" (")[0] for i in range(combo.count())]
        if model not in names:
            raise SystemExit(f"error: model {model!r} is not in the plugin's model list ({', '.join(names)})")
        combo.setCurrentIndex(names.index(model))
        self.settle()

    def settle(self, seconds: float = 0.5) -> None:
        """Let Qt draw for ``seconds``."""
        from qtpy.QtWidgets import QApplication

        end = time.monotonic() + seconds
        while time.monotonic() < end:
            QApplication.processEvents()
            time.sleep(0.02)

    def wait(self, timeout: float = 600.0) -> None:
        """Wait until the session's background work (jobs and preview decodes) is done."""
        from qtpy.QtWidgets import QApplication

        deadline = time.monotonic() + timeout
        while self.widget.session.busy and time.monotonic() < deadline:
            QApplication.processEvents()
            time.sleep(0.02)
        self.settle(0.3)

    def press(self, button: Any) -> None:
        """A mouse click on a button of the panel (on a check box: on its box)."""
        from qtpy.QtCore import QPoint, Qt
        from qtpy.QtTest import QTest
        from qtpy.QtWidgets import QCheckBox

        if not button.isEnabled():
            raise SystemExit(f"error: the button {button.text()!r} is disabled")
        where = QPoint(8, button.height() // 2) if isinstance(button, QCheckBox) else button.rect().center()
        QTest.mouseClick(button, Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier, where)
        self.settle(0.2)

    def type(self, field: Any, text: str, enter: bool = False) -> None:
        """Type ``text`` into a line edit of the panel (replacing what is there), then Enter if ``enter``."""
        from qtpy.QtCore import Qt
        from qtpy.QtTest import QTest

        field.clear()
        QTest.keyClicks(field, text)
        if enter:
            QTest.keyClick(field, Qt.Key.Key_Return)
        self.settle(0.2)

    def key(self, key: str) -> None:
        """Press ``key`` (a digit or letter) on the canvas, as the plugin's layer keys are bound."""
        from qtpy.QtCore import Qt
        from qtpy.QtTest import QTest

        QTest.keyClick(self.canvas, getattr(Qt.Key, f"Key_{key.upper()}"))
        self.settle(0.2)

    @property
    def canvas(self) -> Any:
        return self.viewer.window._qt_viewer.canvas.native

    def click(self, row: float, col: float) -> None:
        """A left click on the canvas where the image has data pixel (row, col) of the shown plane (2D view)."""
        from qtpy.QtCore import Qt
        from qtpy.QtTest import QTest

        QTest.mouseClick(self.canvas, Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier,
                         self._position(row, col))

    def _position(self, row: float, col: float) -> Any:
        """Where on the canvas (2D view) the image has data pixel (row, col) of the shown plane."""
        from qtpy.QtCore import QPoint

        scale = np.asarray(self.layer.scale, float)[-2:]
        translate = np.asarray(self.layer.translate, float)[-2:]
        camera = self.viewer.scene.camera if hasattr(self.viewer, "scene") else self.viewer.camera  # napari 0.9: scene
        world = np.array([row, col]) * scale + translate
        dy, dx = (world - np.asarray(camera.center, float)[-2:]) * camera.zoom
        return QPoint(int(round(self.canvas.width() / 2 + dx)), int(round(self.canvas.height() / 2 + dy)))

    def click_objects(self, labels: np.ndarray, commit_each: bool = False) -> int:
        """One click at the centre of each object of ``labels`` (2D, ids 1..N): with ``commit_each``,
        each is committed before the next click. Returns the number of clicks."""
        from sam_core.volume import prompts_from_mask

        ids = [int(i) for i in np.unique(labels) if i]
        for object_id in ids:
            (x, y), = prompts_from_mask(labels == object_id)[0]
            self.click(y, x)
            self.wait()
            if commit_each:
                self.press(self.widget.commit_button)
        return len(ids)

    def panel(self, title: str) -> Any:
        """The panel (group box) of the widget whose title starts with ``title``."""
        from qtpy.QtWidgets import QGroupBox

        for box in self.widget.findChildren(QGroupBox):
            if box.title().startswith(title):
                return box
        raise SystemExit(f"error: the widget has no panel {title!r}")

    def objects(self) -> np.ndarray:
        from napari_sam.session import OBJECTS_NAME

        return np.asarray(self.viewer.layers[OBJECTS_NAME].data)

    # ------------------------------------------------------------------------------ pictures

    def canvas_picture(self, scale: float = 1.5) -> np.ndarray:
        """The canvas drawn at ``scale`` times its size, cut to what it shows (the window is as tall as
        the dock, most of the canvas is empty), as (H, W, 3) uint8."""
        self.settle(0.3)
        picture = np.asarray(self.viewer.screenshot(canvas_only=True, scale=scale, flash=False))[..., :3]
        rows, cols = np.nonzero(picture.max(axis=-1) > 0)
        if not len(rows):
            return picture
        margin = 8
        return picture[max(rows.min() - margin, 0):rows.max() + margin + 1,
                       max(cols.min() - margin, 0):cols.max() + margin + 1]

    def compose(self, path: Path, canvases: List[np.ndarray], panels: List[Any], panel_width: int = 560) -> None:
        """Save the canvas picture(s) side by side, then the ``panels`` (Qt widgets, each at its natural
        height) stacked on the right, as a PNG written to a temporary file and renamed."""
        from PIL import Image

        grabs = [_grab(panel, panel_width) for panel in panels]
        height = max([c.shape[0] for c in canvases] + [sum(g.shape[0] + 6 for g in grabs)])
        width = sum(c.shape[1] + 6 for c in canvases) + (panel_width + 6 if grabs else 0)
        sheet = np.empty((height, width, 3), np.uint8)
        sheet[:] = BACKGROUND
        x = 0
        for picture in canvases:
            top = (height - picture.shape[0]) // 2
            sheet[top:top + picture.shape[0], x:x + picture.shape[1]] = picture
            x += picture.shape[1] + 6
        y = 0
        for grab in grabs:
            sheet[y:y + grab.shape[0], x:x + grab.shape[1]] = grab
            y += grab.shape[0] + 6
        _save(Image.fromarray(sheet), path)

    def close(self) -> None:
        self.viewer.close()


def _grab(widget: Any, width: int) -> np.ndarray:
    """``widget`` drawn at ``width`` pixels and its natural height, as (H, W, 3) uint8."""
    from qtpy.QtGui import QImage

    widget.resize(width, widget.sizeHint().height())
    image = widget.grab().toImage().convertToFormat(QImage.Format.Format_RGB888)
    h, w, line = image.height(), image.width(), image.bytesPerLine()
    data = np.frombuffer(image.constBits().asstring(line * h) if hasattr(image.constBits(), "asstring")
                         else bytes(image.constBits()), np.uint8)
    return data.reshape(h, line)[:, : w * 3].reshape(h, w, 3).copy()


def _save(picture: Any, path: Path, limit: int = 300_000) -> None:
    """Write a PIL image as PNG (a 256-colour PNG when the full-colour one is over ``limit`` bytes)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    picture.save(temporary, format="PNG", optimize=True)
    if temporary.stat().st_size > limit:
        picture.quantize(256).save(temporary, format="PNG", optimize=True)
    os.replace(temporary, path)


# ---------------------------------------------------------------------------------- workflows


def _cells(count: int = 12, shape: Tuple[int, int] = (256, 256), seed: int = 0) -> Tuple[np.ndarray, np.ndarray]:
    from napari_sam.samples import make_cells_2d

    return make_cells_2d(shape, count=count, seed=seed, bit16=True)


@workflow("clicks", "napari.png")
def clicks(open_scene: Callable[..., Scene], out: Path) -> str:
    image, labels = _cells()
    scene = open_scene(image, name="cells 2D", colormap="gray")
    ids = [int(i) for i in np.unique(labels) if i]
    scene.click_objects(np.where(np.isin(labels, ids[:-1]), labels, 0), commit_each=True)
    scene.click_objects(np.where(labels == ids[-1], labels, 0))  # the last stays as a live preview
    scene.settle(1.0)
    scene.viewer.screenshot(str(out), canvas_only=False)
    return f"{len(np.unique(scene.objects())) - 1} objects committed, one in preview"


@workflow("many", "napari_many.png")
def many(open_scene: Callable[..., Scene], out: Path) -> str:
    image, labels = _cells(count=20, seed=4)
    scene = open_scene(image, name="cells 2D", colormap="gray")
    scene.press(scene.widget.each_check)
    clicks = scene.click_objects(labels)  # every click is its own object, decoded together
    before = scene.canvas_picture()
    scene.press(scene.widget.commit_button)
    committed = len(np.unique(scene.objects())) - 1
    scene.compose(out, [before, scene.canvas_picture()], [scene.panel("Prompts")])
    return f"{clicks} clicks, {committed} objects committed in one step"


@workflow("automatic", "napari_automatic.png")
def automatic(open_scene: Callable[..., Scene], out: Path) -> str:
    image, _ = _cells()
    scene = open_scene(image, name="cells 2D", colormap="gray")
    from superqt import QCollapsible

    scene.panel("Automatic segmentation").findChild(QCollapsible).expand(animate=False)  # show the parameters
    scene.press(scene.widget.auto_button)
    scene.wait()
    found = len(np.unique(scene.viewer.layers["SAM automatic (cells 2D)"].data)) - 1
    scene.compose(out, [scene.canvas_picture()], [scene.panel("Automatic segmentation")])
    return f"{found} automatic objects"


@workflow("editing", "napari_editing.png")
def editing(open_scene: Callable[..., Scene], out: Path) -> str:
    image, labels = _cells()
    scene = open_scene(image, name="cells 2D", colormap="gray")
    scene.press(scene.widget.auto_button)
    scene.wait()
    scene.viewer.layers["SAM automatic (cells 2D)"].visible = False  # its copies in SAM objects show instead
    scene.press(scene.widget.accept_all_button)
    accepted = scene.objects().copy()
    (a, b), = _neighbours(accepted)
    before = scene.canvas_picture()
    scene.type(scene.widget.ids_edit, f"{a}, {b}")
    scene.press(scene.widget.merge_button)
    scene.compose(out, [before, scene.canvas_picture()], [scene.panel("Edit objects")])
    return (f"{len(np.unique(accepted)) - 1} automatic objects accepted, {a} and {b} merged: "
            f"{len(np.unique(scene.objects())) - 1} objects")


def _neighbours(labels: np.ndarray, min_area: int = 300) -> List[Tuple[int, int]]:
    """The two objects of ``labels`` (of at least ``min_area`` pixels) whose centroids are closest, as
    [(smaller id, larger id)]."""
    from scipy import ndimage

    ids = [int(i) for i in np.unique(labels) if i and (labels == i).sum() >= min_area]
    centres = np.array(ndimage.center_of_mass(labels > 0, labels, ids))
    distance = np.linalg.norm(centres[:, None] - centres[None], axis=-1) + np.eye(len(ids)) * 1e9
    i, j = np.unravel_index(np.argmin(distance), distance.shape)
    return [tuple(sorted((ids[i], ids[j])))]


@workflow("classes", "napari_classes.png")
def classes(open_scene: Callable[..., Scene], out: Path) -> str:
    from napari.utils.colormaps import DirectLabelColormap

    from napari_sam.classes import object_classes

    image, labels = _cells()
    scene = open_scene(image, name="cells 2D", colormap="gray")
    ids = [int(i) for i in np.unique(labels) if i]
    for number, part in ((1, ids[::2]), (2, ids[1::2])):  # key 1: cell, key 2: nucleus
        scene.key(str(number))
        scene.click_objects(np.where(np.isin(labels, part), labels, 0), commit_each=True)
    layer = scene.viewer.layers["SAM objects"]
    found = object_classes(layer)
    colours = {"cell": "orange", "nucleus": "cyan"}  # shown by class: one colour per class
    layer.colormap = DirectLabelColormap(color_dict={None: "transparent", 0: "transparent",
                                                     **{i: colours.get(c, "white") for i, c in found.items()}})
    scene.compose(out, [scene.canvas_picture()], [scene.panel("Classes")])
    counts = {c: list(found.values()).count(c) for c in sorted(set(found.values()))}
    return f"classes of the committed objects: {counts}"


@workflow("measurements", "napari_measurements.png")
def measurements(open_scene: Callable[..., Scene], out: Path) -> str:
    from qtpy.QtWidgets import QFileDialog

    image, labels = _cells(count=6, seed=2)
    scene = open_scene(image, name="cells 2D", colormap="gray", scale=(0.5, 0.5))
    scene.press(scene.widget.each_check)
    scene.click_objects(labels)
    scene.press(scene.widget.commit_button)
    path = os.path.join(tempfile.mkdtemp(prefix="sam-measurements-"), "measurements.csv")
    QFileDialog.getSaveFileName = staticmethod(lambda *a, **k: (path, ""))  # the user's answer in the dialog
    scene.press(scene.widget.measure_button)
    scene.wait()
    table = scene.widget.measure_table
    table.setMinimumHeight(table.rowHeight(0) * (table.rowCount() + 1) + 30)
    scene.compose(out, [scene.canvas_picture()], [scene.panel("Measurements")], panel_width=760)
    return f"{table.rowCount()} objects measured into {path}"


@workflow("volumes", "napari_volumes.png")
def volumes(open_scene: Callable[..., Scene], out: Path) -> str:
    from napari_sam.samples import make_volume_3d
    from sam_core.volume import prompts_from_mask

    volume, truth = make_volume_3d()
    scene = open_scene(volume, name="volume 3D", colormap="gray")
    middle = volume.shape[0] // 2
    scene.viewer.dims.set_point(0, middle)
    scene.settle()
    (x, y), = prompts_from_mask(truth[middle] == 1)[0]
    scene.click(y, x)
    scene.wait()
    scene.press(scene.widget.propagate_button)
    scene.wait()
    scene.press(scene.widget.commit_button)
    objects = scene.objects()
    slices = int((objects > 0).any(axis=(1, 2)).sum())
    flat = scene.canvas_picture()
    scene.viewer.dims.ndisplay = 3  # the 3D view button; the committed object alone, seen from aside
    scene.layer.visible = False
    camera = scene.viewer.scene.camera if hasattr(scene.viewer, "scene") else scene.viewer.camera
    camera.center = tuple(float(c) for c in np.argwhere(objects > 0).mean(axis=0))
    camera.angles = (0, -35, 70)
    camera.zoom = scene.canvas.width() / 70.0  # the object (about 45 pixels across) fills the view
    solid = scene.canvas_picture()
    scene.compose(out, [flat, solid], [scene.panel("Volume")])
    return f"object propagated over {slices} of {len(volume)} slices"


@workflow("sam2", "sam2_propagation.png")
def sam2(open_scene: Callable[..., Scene], out: Path) -> str:
    from sam_core.train.sequences import generate_sequence

    clip = generate_sequence(53, frames=8, size=256, kind="movie", n_objects=3)  # three moving objects, apart
    scene = open_scene(clip.frames, name="movie", rgb=True)  # demo segments frame 3 (a click each)
    start = 3
    scene.viewer.dims.set_point(0, start)
    scene.settle()
    scene.press(scene.widget.each_check)
    scene.click_objects(clip.labels[start])
    scene.press(scene.widget.commit_button)
    scene.choose_model("demo2")  # then SAM 2.1 tracks the committed objects under their ids
    scene.press(scene.widget.propagate_button)  # memory: every object both ways, into SAM objects
    scene.wait()
    frames = np.linspace(0, len(clip.frames) - 1, 4).round().astype(int)
    pictures = []
    for t in frames:
        scene.viewer.dims.set_point(0, int(t))
        pictures.append(scene.canvas_picture(scale=1.0))
    scene.compose(out, pictures, [])
    objects = scene.objects()
    found = [len(np.unique(objects[t])) - 1 for t in frames]
    return f"objects on frames {list(map(int, frames))}: {found} (truth {[len(np.unique(clip.labels[t])) - 1 for t in frames]})"


@workflow("find", "find.png")
def find(open_scene: Callable[..., Scene], out: Path) -> str:
    from sam_core.train.concept_scenes import generate_concept_scene

    scene_data = next(s for s in (generate_concept_scene((5, i), size=256) for i in range(200))
                      if len(s.instances("circle")) >= 3)
    scene = open_scene(scene_data.image, model="demo-concepts", name="shapes", rgb=True)
    scene.type(scene.widget.find_edit, "circle")
    scene.press(scene.widget.find_button)
    scene.wait()
    found = len(np.unique(scene.viewer.layers["SAM automatic (shapes)"].data)) - 1
    scene.compose(out, [scene.canvas_picture()], [scene.panel("Find objects")])
    return f"{found} instances found for 'circle' ({len(scene_data.instances('circle'))} circles in the scene)"


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workflow", choices=sorted(WORKFLOWS), default="clicks",
                        help="which picture to take (default clicks: docs/napari.png)")
    parser.add_argument("--out", default=None, help="PNG to write (default: the workflow's file in docs/)")
    parser.add_argument("--model", default=None,
                        help="zoo model name (default demo; demo2 for sam2, demo-concepts for find)")
    parser.add_argument("--checkpoint", default=None, help="a checkpoint file instead of the zoo model")
    args = parser.parse_args(argv)

    function, filename = WORKFLOWS[args.workflow]
    out = Path(args.out) if args.out else DOCS / filename
    out.parent.mkdir(parents=True, exist_ok=True)
    opened: List[Scene] = []

    def open_scene(image: np.ndarray, model: str = "demo", **kwargs: Any) -> Scene:
        opened.append(Scene(image, args.model or model, args.checkpoint, **kwargs))
        return opened[-1]

    try:
        caption = function(open_scene, out)
    finally:
        for scene in opened:
            scene.close()
    print(f"wrote {out} ({caption})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
