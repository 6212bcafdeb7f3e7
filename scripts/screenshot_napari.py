"""Screenshot of the napari plugin: the 2D cell sample, objects segmented by clicks with ``demo``.

Run under Xvfb (napari needs OpenGL)::

    xvfb-run -a -s "-screen 0 1600x1000x24" python scripts/screenshot_napari.py [--out docs/napari.png]

One click at the centre of each generated cell (the sample's known objects), each committed as a new
object; the last click stays as a live preview so that the prompt layers show too.
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
    from qtpy.QtWidgets import QApplication

    from napari_sam.samples import make_cells_2d
    from napari_sam.session import ModelChoice
    from napari_sam.widget import SamWidget
    from sam_core.volume import prompts_from_mask

    image, labels = make_cells_2d(bit16=True)
    viewer = napari.Viewer(title="Segment Anything in napari")
    viewer.window.resize(1500, 950)
    viewer.add_image(image, name="cells 2D", colormap="gray")
    widget = SamWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Segment Anything", area="right")
    widget.cache_edit.setText(tempfile.mkdtemp(prefix="sam-embeddings-"))
    if args.checkpoint:
        widget.add_model(ModelChoice(None if args.model == "demo" else args.model, args.checkpoint))
    else:
        widget.model_combo.setCurrentIndex([c.name if c else None for c in widget.choices].index(args.model))
    if not widget.start():
        return 1
    session = widget.session

    def wait() -> None:
        deadline = time.monotonic() + 300
        while session.busy and time.monotonic() < deadline:
            QApplication.processEvents()
            time.sleep(0.02)

    ids = [int(i) for i in np.unique(labels) if i]
    for number, object_id in enumerate(ids):
        (x, y), = prompts_from_mask(labels == object_id)[0]
        session.points_layer.add([y, x])
        wait()
        if number < len(ids) - 1:
            session.commit()
    viewer.layers.selection.active = session.points_layer
    viewer.reset_view()
    for _ in range(20):
        QApplication.processEvents()
        time.sleep(0.05)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    viewer.screenshot(str(out), canvas_only=False)
    print(f"wrote {out} ({len(ids) - 1} objects committed, one in preview)")
    viewer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
