"""Fixtures for the napari plugin tests (run under Xvfb: napari needs OpenGL)."""

from __future__ import annotations

import pytest
import torch

from napari_sam.session import ModelChoice


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
def make_widget(make_napari_viewer, tmp_path, small_vit_checkpoint):
    """Factory: ``make_widget(image=None, model="small", **add_image_kwargs) -> (viewer, widget)``.

    ``model`` is ``"small"`` (random-weight small checkpoint, for mechanics) or ``"demo"``. The embedding
    cache lives in the test's tmp_path.
    """
    from napari_sam.widget import SamWidget

    def factory(image=None, model="small", **kwargs):
        viewer = make_napari_viewer()
        if image is not None:
            viewer.add_image(image, name="image", **kwargs)
        widget = SamWidget(viewer)
        widget.cache_edit.setText(str(tmp_path / "cache"))
        if model == "small":
            widget.add_model(ModelChoice(None, str(small_vit_checkpoint), label="small test model"))
        else:
            widget.model_combo.setCurrentIndex([c.name if c else None for c in widget.choices].index(model))
        return viewer, widget

    return factory
