"""The panel says which precision ``auto`` runs on the chosen device, and why (issue 21 item 4)."""

from __future__ import annotations

import sam_core
import sam_core.zoo


def test_panel_says_what_auto_runs_on_the_chosen_device(make_napari_viewer, monkeypatch):
    # A second device in the list (this machine has only the CPU): describe_auto says what auto would run there.
    monkeypatch.setattr(sam_core.zoo, "available_devices", lambda: ["cpu", "cuda:0"])
    viewer = make_napari_viewer()
    _, widget = viewer.window.add_plugin_dock_widget("sam-suite", "Segment Anything")
    assert widget.device_combo.currentText() == "cpu"
    assert widget.precision_label.text() == sam_core.describe_auto("cpu")
    assert widget.precision_label.text().startswith("auto runs ")
    widget.device_combo.setCurrentText("cuda:0")
    assert widget.precision_label.text() == sam_core.describe_auto("cuda:0")
    assert "on cuda" in widget.precision_label.text()
    widget.device_combo.setCurrentText("cpu")
    assert widget.precision_label.text() == sam_core.describe_auto("cpu")


def test_the_plugin_runs_the_precision_its_panel_names(make_widget, qtbot):
    """After "Compute embeddings" the model in use is at the precision the panel's line names."""
    from napari_util import click, wait_for

    from napari_sam.samples import make_cells_2d
    from sam_core.models import precision

    viewer, widget = make_widget(make_cells_2d((96, 96), count=3, seed=0)[0])
    click(qtbot, widget.compute_button)
    wait_for(qtbot, widget)
    running = widget.session.predictor().model.precision
    assert running == precision.resolve_precision("auto", "cpu")
    assert widget.precision_label.text().startswith(f"auto runs {running} on cpu: ")
