"""Screenshot of the napari plugin: the 2D cell sample, objects segmented by clicks with ``demo``.

Run under Xvfb (napari needs OpenGL)::

    xvfb-run -a -s "-screen 0 1600x1000x24" python scripts/screenshot_napari.py [--out docs/napari.png]

The path a user takes: the widget opened as napari's Plugins menu opens it
(``add_plugin_dock_widget("sam-suite", "Segment Anything")``), the model chosen in its list, *Start*
pressed, then one mouse click on the canvas at the centre of each generated cell (the sample's known
objects), each committed with the *Commit* button; the last click stays as a live preview so that the
prompt layers show too.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(Path(__file__).resolve().parents[1] / "docs" / "napari.png"))
    parser.add_argument("--model", default="demo", help="zoo model name (default demo)")
    parser.add_argument("--checkpoint", default=None, help="a checkpoint file instead of the zoo model")
    args = parser.parse_args(argv)

    import napari
    import numpy as np
    from qtpy.QtCore import QPoint, Qt
    from qtpy.QtTest import QTest
    from qtpy.QtWidgets import QApplication

    from napari_sam.samples import make_cells_2d
    from napari_sam.session import ModelChoice, POINTS_NAME
    from sam_core.volume import prompts_from_mask

    image, labels = make_cells_2d(bit16=True)
    viewer = napari.Viewer(title="Segment Anything in napari")
    viewer.window.resize(1500, 950)
    viewer.add_image(image, name="cells 2D", colormap="gray")
    _, widget = viewer.window.add_plugin_dock_widget("sam-suite", "Segment Anything")
    widget.cache_edit.setText(tempfile.mkdtemp(prefix="sam-embeddings-"))
    if args.checkpoint:
        widget.add_model(ModelChoice(None if args.model == "demo" else args.model, args.checkpoint))
    else:
        names = [widget.model_combo.itemText(i).split(" (")[0] for i in range(widget.model_combo.count())]
        widget.model_combo.setCurrentIndex(names.index(args.model))

    def settle(seconds: float = 0.5) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            QApplication.processEvents()
            time.sleep(0.02)

    def wait() -> None:
        deadline = time.monotonic() + 300
        while widget.session.busy and time.monotonic() < deadline:
            QApplication.processEvents()
            time.sleep(0.02)

    def click_canvas(row: float, col: float) -> None:
        """A left click on the canvas where the image has pixel (row, col) (2D view, scale 1)."""
        canvas = viewer.window._qt_viewer.canvas.native
        camera = viewer.scene.camera if hasattr(viewer, "scene") else viewer.camera  # napari >= 0.9: scene
        centre = np.asarray(camera.center, float)[-2:]
        dy, dx = (np.array([row, col]) - centre) * camera.zoom
        pos = QPoint(int(round(canvas.width() / 2 + dx)), int(round(canvas.height() / 2 + dy)))
        QTest.mouseClick(canvas, Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier, pos)

    settle()
    widget.start_button.click()
    if POINTS_NAME not in viewer.layers:
        return 1
    viewer.reset_view()
    settle()
    ids = [int(i) for i in np.unique(labels) if i]
    for number, object_id in enumerate(ids):
        (x, y), = prompts_from_mask(labels == object_id)[0]
        click_canvas(y, x)
        wait()
        if number < len(ids) - 1:
            widget.commit_button.click()
    for _ in range(20):
        QApplication.processEvents()
        time.sleep(0.05)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    viewer.screenshot(str(out), canvas_only=False)
    committed = len(np.unique(viewer.layers["SAM objects"].data)) - 1
    print(f"wrote {out} ({committed} objects committed, one in preview)")
    viewer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
