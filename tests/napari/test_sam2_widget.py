"""The napari plugin with a SAM 2.1 checkpoint (image mode): chosen as a user does ("local checkpoint
file…" and the file dialog), a click on the canvas gives three candidates, and "Segment image / slice"
runs SAM 2.1's automatic masks. The click's mask equals sam_core's Predictor on the same checkpoint."""

from __future__ import annotations

import numpy as np
import pytest
from napari_util import click, click_canvas, wait_for

from napari_sam.samples import make_cells_2d
from napari_sam.session import POINTS_NAME, PREVIEW_NAME


@pytest.fixture(scope="module")
def sam2_checkpoint(tmp_path_factory):
    from helpers.sam2_checkpoints import SMALL_SAM2, write_official_sam2_checkpoint

    return write_official_sam2_checkpoint(SMALL_SAM2, tmp_path_factory.mktemp("sam2napari") / "small_sam2.pt")


def test_click_and_automatic_masks_with_a_sam2_checkpoint(make_napari_viewer, qtbot, choose_file, sam2_checkpoint,
                                                          tmp_path, notes):
    from qtpy.QtWidgets import QApplication

    from sam_core.cache import EmbeddingCache
    from sam_core.predictor import Predictor

    image, _ = make_cells_2d((96, 112), count=3)
    viewer = make_napari_viewer(show=True)
    viewer.add_image(image, name="image")
    _, widget = viewer.window.add_plugin_dock_widget("sam-suite", "Segment Anything")
    widget.cache_edit.setText(str(tmp_path / "cache"))
    names = [widget.model_combo.itemText(i) for i in range(widget.model_combo.count())]
    assert any(name.startswith("sam2.1_hiera_tiny") for name in names)  # the zoo's SAM 2.1 models are offered
    choose_file(sam2_checkpoint)
    widget.model_combo.setCurrentIndex(names.index("local checkpoint file…"))
    QApplication.processEvents()

    click(qtbot, widget.start_button)
    wait_for(qtbot, widget)
    click_canvas(qtbot, viewer, viewer.layers["image"], (48, 40))
    wait_for(qtbot, widget)
    assert widget.candidate_label.text().startswith("candidate 1/3")
    preview = np.asarray(viewer.layers[PREVIEW_NAME].data) > 0

    predictor = Predictor(None, checkpoint=sam2_checkpoint, cache=EmbeddingCache(directory=tmp_path / "cache"))
    points = np.asarray(viewer.layers[POINTS_NAME].data)[:, ::-1]  # (row, col) -> (x, y)
    assert len(points) == 1
    expected = predictor.predict(predictor.encode(image), points=points, labels=[1]).masks[0]
    assert (preview == expected).mean() > 0.999

    widget.points_per_side_spin.setValue(4)
    widget.pred_iou_spin.setValue(0.0)
    widget.stability_spin.setValue(0.0)
    click(qtbot, widget.auto_button)
    wait_for(qtbot, widget)
    layer = viewer.layers["SAM automatic (image)"]
    assert layer.data.shape == image.shape[:2] and layer.data.max() > 0
    assert notes[-1][1] == f"Automatic segmentation: {len(np.unique(layer.data)) - 1} object(s)."
