"""Fixtures for the napari plugin tests (run under Xvfb: napari needs OpenGL).

The widget is opened the way napari's Plugins menu opens it: ``add_plugin_dock_widget`` with the
manifest's names, which hands the plugin a ``PublicOnlyProxy`` of the viewer.
"""

from __future__ import annotations

import os

import pytest
import torch

PLUGIN, WIDGET = "sam-suite", "Segment Anything"


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def notes():
    """Messages of napari notifications shown during the test, as (severity, message)."""
    from napari.utils.notifications import notification_manager

    seen = []

    def record(event):
        notification = event if hasattr(event, "message") else event.value
        seen.append((str(notification.severity), str(notification.message)))

    notification_manager.notification_ready.connect(record)
    yield seen
    notification_manager.notification_ready.disconnect(record)


@pytest.fixture
def choose_file(monkeypatch):
    """``choose_file(path)``: the next file dialog the plugin opens answers ``path``; returns the calls seen."""
    from qtpy.QtWidgets import QFileDialog

    calls = []

    def choose(path):
        def answer(*args, **kwargs):
            calls.append(args)
            return str(path), ""

        monkeypatch.setattr(QFileDialog, "getOpenFileName", staticmethod(answer))
        return calls

    return choose


@pytest.fixture
def make_widget(make_napari_viewer, tmp_path, small_vit_checkpoint, choose_file):
    """Factory: ``make_widget(image=None, model="small", show=False, **add_image_kwargs) -> (viewer, widget)``.

    The widget comes from the plugin manager. ``model`` is ``"small"`` (a random-weight small
    checkpoint, for mechanics, chosen as a user does: "local checkpoint file…" and the file dialog),
    another checkpoint file (a ``Path``, chosen the same way) or a zoo name such as ``"demo"``.
    ``show`` shows the window (needed to click on the canvas). The embedding cache lives in the
    test's tmp_path.
    """
    from qtpy.QtWidgets import QApplication

    def factory(image=None, model="small", show=False, **kwargs):
        viewer = make_napari_viewer(show=show)
        if image is not None:
            viewer.add_image(image, name="image", **kwargs)
        _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, WIDGET)
        widget.cache_edit.setText(str(tmp_path / "cache"))
        names = [widget.model_combo.itemText(i) for i in range(widget.model_combo.count())]
        if model == "small" or isinstance(model, os.PathLike):
            choose_file(small_vit_checkpoint if model == "small" else model)
            widget.model_combo.setCurrentIndex(names.index("local checkpoint file…"))
        else:
            widget.model_combo.setCurrentIndex(names.index(model))
        QApplication.processEvents()
        return viewer, widget

    return factory
