"""Helpers shared by the napari tests: what a user does (buttons, canvas clicks, keys) and checks."""

from __future__ import annotations

import numpy as np
import pytest


# a test that runs the bundled demo model fails (never skips) when demo.pt is missing (tests/conftest.py)
needs_demo = pytest.mark.usefixtures("demo_checkpoint")


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


def screen_position(viewer, layer, data_yx):
    """Where on the canvas of a shown viewer (2D view) ``layer`` has the data coordinates ``data_yx``
    (row, col of the displayed plane)."""
    from qtpy.QtCore import QPoint

    widget = canvas(viewer)
    scale = np.asarray(layer.scale, float)[-2:]
    translate = np.asarray(layer.translate, float)[-2:]
    world = np.asarray(data_yx, float) * scale + translate
    camera = viewer.scene.camera if hasattr(viewer, "scene") else viewer.camera  # napari >= 0.9: scene
    centre = np.asarray(camera.center, float)[-2:]
    screen = (world - centre) * camera.zoom
    return QPoint(int(round(widget.width() / 2 + screen[1])), int(round(widget.height() / 2 + screen[0])))


def click_canvas(qtbot, viewer, layer, data_yx):
    """Left-click on the canvas where ``layer`` has the data coordinates ``data_yx`` (see screen_position)."""
    from qtpy.QtCore import Qt

    qtbot.mouseClick(canvas(viewer), Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier,
                     screen_position(viewer, layer, data_yx))


def drag_box(qtbot, viewer, layer, corner, opposite, shapes="SAM boxes", shift=False):
    """Draw a rectangle on the Shapes layer named ``shapes`` with the mouse, from ``corner`` to
    ``opposite`` ((row, col) data coordinates of ``layer``): select the layer, press R (napari's
    rectangle tool), drag on the canvas (the press with Shift held when ``shift``)."""
    from qtpy.QtCore import Qt
    from qtpy.QtWidgets import QApplication

    viewer.layers.selection.active = viewer.layers[shapes]
    qtbot.keyClick(canvas(viewer), Qt.Key.Key_R)
    widget = canvas(viewer)
    modifier = Qt.KeyboardModifier.ShiftModifier if shift else Qt.KeyboardModifier.NoModifier
    qtbot.mousePress(widget, Qt.MouseButton.LeftButton, modifier, screen_position(viewer, layer, corner))
    for t in np.linspace(0.2, 1.0, 5):
        qtbot.mouseMove(widget, screen_position(viewer, layer, np.add(corner, t * np.subtract(opposite, corner))))
        QApplication.processEvents()  # napari follows a drag event by event
    qtbot.mouseRelease(widget, Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier,
                       screen_position(viewer, layer, opposite))


def press(qtbot, viewer, key):
    """Press Shift + ``key`` (a letter) on the canvas, as the session's keys are bound."""
    from qtpy.QtCore import Qt

    qtbot.keyClick(canvas(viewer), getattr(Qt.Key, f"Key_{key.upper()}"), Qt.KeyboardModifier.ShiftModifier)


def iou(a, b) -> float:
    """Mask IoU by sam_core's one rule (two empty masks: 1.0)."""
    from sam_core.masks import mask_iou

    return mask_iou(a, b)

