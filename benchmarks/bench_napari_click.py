"""napari click -> preview, where a biologist waits: the plugin opened as napari's Plugins menu opens it
(``add_plugin_dock_widget("sam-suite", "Segment Anything")``), the image encoded with its "Compute
embeddings" button, then left clicks on the canvas; each is timed from the mouse click until the
``SAM preview`` layer shows the new mask and the canvas has been drawn. Two images: a 1024 x 1024
image (one cached embedding) and a 4096 x 4096 image (the plugin tiles it: 1024 px tiles, 128 px
overlap, all tiles encoded first). Run under Xvfb (napari needs OpenGL)::

    xvfb-run -a -s "-screen 0 1280x1024x24" python benchmarks/bench_napari_click.py          # vit_t
    xvfb-run -a -s "-screen 0 1280x1024x24" python benchmarks/bench_napari_click.py --quick  # small config: seconds

Baselines in the same process, on the same embedding and the same points, without the GUI: sam_core's
library call (``Predictor.predict``; the tiled image: ``TiledPredictor.predict``) and, on the cached
image, the official ``SamPredictor.predict`` (MobileSAM's for vit_t) given the same embedding. The
model is a random-weight checkpoint in official format chosen as a user does ("local checkpoint file…").
Times are the median of ``--repeats`` clicks after one warm-up click, with the process CPU time (user +
system, all threads: napari's drawing included) per click; peak MB is the process's peak resident
memory during the clicks above what it held before them.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

import common

sys.path.insert(0, str(common.ROOT / "tests" / "napari"))


def _wait(app, done, timeout: float = 1800.0) -> None:
    from qtpy.QtWidgets import QApplication

    deadline = time.perf_counter() + timeout
    while not done():
        if time.perf_counter() > deadline:
            raise TimeoutError("the plugin did not finish in time")
        QApplication.processEvents()
        time.sleep(0.001)


def _checkpoint(name: str, folder: Path) -> tuple[Path, object]:
    """A random checkpoint of ``name`` (a zoo name, or ``small``: the tests' small ViT) and its config."""
    if name == "small":
        from helpers.checkpoints import SMALL_VIT, write_official_checkpoint

        return write_official_checkpoint(SMALL_VIT, folder / "small_vit.pth", seed=0), SMALL_VIT
    from sam_core.models import get_config

    return common.checkpoint(name, folder), get_config(name)


def _official_predictor(config, path: Path):
    from helpers.checkpoints import load_official
    from helpers.official import mobile_sam, segment_anything

    package = mobile_sam() if config.encoder == "tiny_vit" else segment_anything()
    return package.SamPredictor(load_official(config, path))


def _measure_clicks(app, viewer, widget, points_yx, repeats: int) -> dict:
    """Click each of ``points_yx`` (row, col) on the canvas; seconds from the click to the drawn preview."""
    from napari_util import click_canvas
    from qtpy.QtTest import QTest
    from qtpy.QtWidgets import QApplication

    session = widget.session
    shown = []
    original = session.layers.set_preview_plane

    def set_preview_plane(index, mask):
        original(index, mask)
        shown.append(mask is not None)

    session.layers.set_preview_plane = set_preview_plane  # instrumentation: when the preview changes
    image = viewer.layers["image"]
    walls, cpus = [], []
    before = common.rss_mb()
    common.reset_peak_rss()
    try:
        for i, yx in enumerate(points_yx[: repeats + 1]):
            count = len(shown)
            cpu0, t0 = os.times(), time.perf_counter()
            click_canvas(QTest, viewer, image, yx)
            _wait(app, lambda: len(shown) > count and shown[-1] and not session.busy)
            viewer.window._qt_viewer.canvas.native.repaint()  # the canvas draws the new preview
            QApplication.processEvents()
            wall, cpu1 = time.perf_counter() - t0, os.times()
            if i:  # the first click is the warm-up
                walls.append(wall)
                cpus.append((cpu1.user - cpu0.user) + (cpu1.system - cpu0.system))
    finally:
        session.layers.set_preview_plane = original
    return {"median_s": float(np.median(walls)), "best_s": float(min(walls)), "cpu_s": float(np.median(cpus)),
            "peak_above_mb": common.window_peak_rss_mb() - before, "clicks": len(walls),
            "points": len(viewer.layers["SAM points"].data)}


def _library_baselines(widget, config, path: Path, tiled: bool, repeats: int) -> dict:
    """The same prompts (all points on the layer) through sam_core's library call, and for one cached
    image through the official predictor on the same embedding."""
    session = widget.session
    prompts = session.prompts()
    xy, labels = prompts.points, prompts.labels
    predictor = session.predictor(None, None)
    preparation = session.access.preparation()
    rows = {}
    if tiled:
        tiles = session.embeddings.tiled_predictor(predictor, preparation)
        rows["sam_core TiledPredictor.predict"] = common.timed(lambda: tiles.predict(points=xy, labels=labels), repeats)
        return rows
    embedding = predictor.encode(session.access.plane(()), preparation=preparation)
    rows["sam_core Predictor.predict"] = common.timed(lambda: predictor.predict(embedding, xy, labels), repeats)
    official = _official_predictor(config, path)
    official.features, official.is_image_set = embedding.features.float(), True
    official.original_size, official.input_size = tuple(embedding.original_size), tuple(embedding.input_size)
    rows["official SamPredictor.predict"] = common.timed(
        lambda: official.predict(point_coords=xy, point_labels=labels, multimask_output=True), repeats)
    return rows


def _run_case(app, name: str, side: int, folder: Path, args) -> dict:
    import napari
    from napari_util import click
    from qtpy.QtWidgets import QFileDialog

    path, config = _checkpoint(name, folder)
    QFileDialog.getOpenFileName = staticmethod(lambda *a, **k: (str(path), ""))  # the user picks the file
    viewer = napari.Viewer(show=True)
    image = np.random.default_rng(side).integers(0, 256, (side, side, 3), dtype=np.uint8)
    viewer.add_image(image, name="image", rgb=True)
    _, widget = viewer.window.add_plugin_dock_widget("sam-suite", "Segment Anything")
    widget.cache_edit.setText(str(folder / f"cache{side}"))
    names = [widget.model_combo.itemText(i) for i in range(widget.model_combo.count())]
    widget.model_combo.setCurrentIndex(names.index("local checkpoint file…"))
    if args.quick:  # small tiles, so that the small "large" image is tiled too
        settings = widget.session.settings
        settings.tile_above, settings.tile_size, settings.tile_overlap = side // 2 if side > args.small else side, 128, 16
    viewer.window._qt_viewer.canvas.native.resize(1024, 1024)
    viewer.reset_view()
    app.processEvents()
    click(_Bot, widget.start_button)
    t0 = time.perf_counter()
    click(_Bot, widget.compute_button)
    _wait(app, lambda: not widget.session.busy)
    encode_s = time.perf_counter() - t0
    tiled = widget.session.embeddings.tiled()
    rng = np.random.default_rng(1)
    points = [tuple(p) for p in rng.uniform(0.3, 0.7, size=(args.repeats + 1, 2)) * side]
    clicks = _measure_clicks(app, viewer, widget, points, args.repeats)
    baselines = _library_baselines(widget, config, path, tiled, args.repeats)
    viewer.close()
    return {"image": f"{side}x{side}", "model": name, "tiled": tiled, "encode_all_s": encode_s,
            "click_to_preview": clicks, "baselines": baselines}


class _Bot:
    """What napari_util.click needs of pytest-qt's qtbot: a mouse click on a widget."""

    @staticmethod
    def mouseClick(*args):
        from qtpy.QtTest import QTest

        QTest.mouseClick(*args)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="vit_t", help="vit_t (default), vit_b, ... or small (the tests' small ViT)")
    parser.add_argument("--sizes", default="1024,4096", help="image sides (default 1024,4096)")
    parser.add_argument("--repeats", type=int, default=3, help="timed clicks per image after one warm-up click")
    parser.add_argument("--quick", action="store_true", help="small config, 256 and 512 px images (tiled at 256)")
    parser.add_argument("--json", default=None, help="also write the results to this file")
    args = parser.parse_args(argv)
    args.small = 0
    if args.quick:
        args.model, args.sizes, args.repeats, args.small = "small", "256,512", 2, 256
    from qtpy.QtWidgets import QApplication

    from napari._qt.qt_event_loop import get_qapp

    app = get_qapp()
    assert isinstance(app, QApplication)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for side in (int(v) for v in args.sizes.split(",")):
            rows.append(_run_case(app, args.model, side, Path(tmp), args))
    print(common.machine(), f"model {args.model}, median of {args.repeats} clicks after a warm-up")
    print(f"{'image':17}{'path':40}{'wall s':>9}{'CPU s':>9}{'peak MB':>9}")
    for row in rows:
        label = f"{row['image']}{' tiled' if row['tiled'] else ''}"
        c = row["click_to_preview"]
        print(f"{label:17}{'napari click -> drawn preview':40}{c['median_s']:9.3f}{c['cpu_s']:9.3f}{c['peak_above_mb']:9.0f}")
        for name, timing in row["baselines"].items():
            print(f"{'':17}{name + ' (no GUI)':40}{timing['median_s']:9.3f}{common.cpu_s(timing):9.3f}")
        print(f"{'':17}(encoding before the clicks, Compute embeddings: {row['encode_all_s']:.1f} s)")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
