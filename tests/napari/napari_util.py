"""Helpers shared by the napari tests: what a user does (buttons, canvas clicks, keys) and checks."""

from __future__ import annotations

import numpy as np
import pytest


def demo_available() -> bool:
    from sam_core import zoo

    return zoo.model_info("demo").bundled.is_file()


needs_demo = pytest.mark.skipif(not demo_available(), reason="the bundled demo model is not trained yet")


def wait_for(qtbot, widget, timeout=60000):
    """Wait until the widget's background work (jobs and preview decodes) is done."""
    qtbot.waitUntil(lambda: not widget.session.busy, timeout=timeout)


def click(qtbot, button):
    """Press a QPushButton (or tick a QCheckBox) with the mouse."""
    from qtpy.QtCore import QPoint, Qt
    from qtpy.QtWidgets import QCheckBox

    assert button.isEnabled(), button.text()
    if isinstance(button, QCheckBox):  # on its box, at the left: the middle of a wide row may be empty
        qtbot.mouseClick(button, Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier,
                         QPoint(8, button.height() // 2))
    else:
        qtbot.mouseClick(button, Qt.MouseButton.LeftButton)


def canvas(viewer):
    return viewer.window._qt_viewer.canvas.native


def click_canvas(qtbot, viewer, layer, data_yx):
    """Left-click on the canvas of a shown viewer where ``layer`` has the data coordinates ``data_yx``
    (row, col of the displayed plane; a 2D view). Returns the screen position clicked."""
    from qtpy.QtCore import QPoint, Qt

    widget = canvas(viewer)
    scale = np.asarray(layer.scale, float)[-2:]
    translate = np.asarray(layer.translate, float)[-2:]
    world = np.asarray(data_yx, float) * scale + translate
    camera = viewer.scene.camera if hasattr(viewer, "scene") else viewer.camera  # napari >= 0.9: scene
    centre = np.asarray(camera.center, float)[-2:]
    screen = (world - centre) * camera.zoom
    pos = QPoint(int(round(widget.width() / 2 + screen[1])), int(round(widget.height() / 2 + screen[0])))
    qtbot.mouseClick(widget, Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier, pos)
    return pos


def press(qtbot, viewer, key):
    """Press Shift + ``key`` (a letter) on the canvas, as the session's keys are bound."""
    from qtpy.QtCore import Qt

    qtbot.keyClick(canvas(viewer), getattr(Qt.Key, f"Key_{key.upper()}"), Qt.KeyboardModifier.ShiftModifier)


def iou(a, b) -> float:
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    return float(np.logical_and(a, b).sum() / max(1, np.logical_or(a, b).sum()))


def rectangle(r0, c0, r1, c1, lead=()):
    """The four corners of a rectangle for a Shapes layer, with leading stack coordinates ``lead``."""
    lead = list(lead)
    return np.array([lead + [r0, c0], lead + [r0, c1], lead + [r1, c1], lead + [r1, c0]], dtype=float)
