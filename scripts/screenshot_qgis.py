"""Screenshot of the QGIS plugin at work: a raster, its automatic segmentation and a clicked object.

Run with QGIS's Python under a display (Xvfb in CI), the engine from a Python with sam_core::

    SAM_ENGINE_PYTHON=.venv/bin/python xvfb-run -a -s "-screen 0 1280x1024x24" \\
        /usr/bin/python3 scripts/screenshot_qgis.py --raster tests/data/RGB.byte.tif --tile-size 256 \\
        --project-crs EPSG:3857 --show-tiles --click 236985,2798415 --out docs/qgis.png

(the picture in the README: Landsat in UTM shown in a Web Mercator project, 256-pixel tiles; objects cut
at a tile border are segmented again whole, so no outline stops on the dashed tile borders)

Without a raster it generates a small scene of coloured objects (the kind the bundled ``demo`` model
knows). The window shows QGIS's layer tree and map canvas with the polygons of
``sam:automask_raster``, the map tool's markers and preview of one click, and the plugin's toolbar.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.append("/usr/share/qgis/python/plugins")


def generate_scene(path: str) -> list[tuple[float, float]]:
    """Write a 3-band GeoTIFF (EPSG:32633, 1 m pixels) of coloured objects; return object centres (map x, y)."""
    import numpy as np
    from osgeo import gdal, osr

    rng = np.random.default_rng(3)
    height, width = 360, 520
    image = np.empty((3, height, width), np.float32)
    for band, level in enumerate((112, 124, 98)):
        image[band] = level + rng.normal(0, 7, (height, width))
    yy, xx = np.mgrid[0:height, 0:width]
    objects = [((90, 110), (50, 70), (214, 64, 52)), ((250, 120), (45, 45), (52, 84, 200)),
               ((120, 300), (38, 58), (230, 200, 40)), ((270, 330), (50, 40), (40, 150, 72)),
               ((170, 450), (70, 32), (180, 90, 200))]
    centres = []
    origin_x, origin_y = 455000.0, 5110000.0
    for index, ((cy, cx), (ry, rx), colour) in enumerate(objects):
        if index % 2:
            mask = (abs(yy - cy) <= ry) & (abs(xx - cx) <= rx)
        else:
            mask = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1.0
        for band in range(3):
            image[band][mask] = colour[band] + rng.normal(0, 5, int(mask.sum()))
        centres.append((origin_x + cx + 0.5, origin_y - cy - 0.5))
    driver = gdal.GetDriverByName("GTiff")
    dataset = driver.Create(path, width, height, 3, gdal.GDT_Byte)
    dataset.SetGeoTransform((origin_x, 1.0, 0.0, origin_y, 0.0, -1.0))
    srs = osr.SpatialReference()
    srs.ImportFromEPSG(32633)
    dataset.SetProjection(srs.ExportToWkt())
    for band in range(3):
        dataset.GetRasterBand(band + 1).WriteArray(np.clip(image[band], 0, 255).astype(np.uint8))
    dataset = None
    return centres


def tile_borders(raster, tile_size: int, overlap: int):
    """A line layer of the inner tile borders of the engine's grid (same rule as sam_core.tiling.grid)."""
    import math

    from qgis.core import QgsFeature, QgsGeometry, QgsPointXY, QgsVectorLayer
    from qgis.PyQt.QtCore import Qt
    from qgis.PyQt.QtGui import QColor

    def starts(length: int) -> list[int]:
        if length <= tile_size:
            return [0]
        count = math.ceil((length - tile_size) / (tile_size - overlap)) + 1
        return [min(i * (tile_size - overlap), length - tile_size) for i in range(count)]

    width, height = raster.width(), raster.height()
    extent = raster.extent()
    px, py = extent.width() / width, extent.height() / height
    xs = sorted({s for s in starts(width) if s > 0} | {s + tile_size for s in starts(width) if s + tile_size < width})
    ys = sorted({s for s in starts(height) if s > 0} | {s + tile_size for s in starts(height) if s + tile_size < height})
    layer = QgsVectorLayer(f"LineString?crs={raster.crs().authid()}", "tile borders", "memory")
    features = []
    for x in xs:
        mx = extent.xMinimum() + x * px
        feature = QgsFeature()
        feature.setGeometry(QgsGeometry.fromPolylineXY([QgsPointXY(mx, extent.yMinimum()), QgsPointXY(mx, extent.yMaximum())]))
        features.append(feature)
    for y in ys:
        my = extent.yMaximum() - y * py
        feature = QgsFeature()
        feature.setGeometry(QgsGeometry.fromPolylineXY([QgsPointXY(extent.xMinimum(), my), QgsPointXY(extent.xMaximum(), my)]))
        features.append(feature)
    layer.dataProvider().addFeatures(features)
    symbol = layer.renderer().symbol()
    symbol.setColor(QColor(255, 255, 255, 150))
    symbol.setWidth(0.3)
    symbol.symbolLayer(0).setPenStyle(Qt.PenStyle.DashLine)
    return layer


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--raster", help="GeoTIFF to show (default: a generated scene)")
    parser.add_argument("--click", help="map x,y (raster CRS) of the object to click (default: the first object)")
    parser.add_argument("--model", default="demo")
    parser.add_argument("--checkpoint", default="")
    parser.add_argument("--tile-size", type=int, default=1024)
    parser.add_argument("--overlap", type=int, default=128)
    parser.add_argument("--project-crs", default="", help="CRS of the project and canvas (default: the raster's)")
    parser.add_argument("--show-tiles", action="store_true", help="draw the tile borders as dashed lines")
    parser.add_argument("--pred-iou-thresh", type=float, default=None, help="automask threshold (default: the model's)")
    parser.add_argument("--stability-thresh", type=float, default=None, help="automask threshold (default: the model's)")
    parser.add_argument("--out", default=str(ROOT / "docs" / "qgis.png"))
    args = parser.parse_args(argv)

    from qgis.core import (
        QgsApplication,
        QgsCoordinateReferenceSystem,
        QgsCoordinateTransform,
        QgsPointXY,
        QgsProject,
        QgsRasterLayer,
        QgsVectorLayer,
    )
    from qgis.gui import QgsLayerTreeMapCanvasBridge, QgsLayerTreeView, QgsMapCanvas
    from qgis.core import QgsLayerTreeModel
    from qgis.PyQt.QtCore import QEvent, QPoint, Qt
    from qgis.PyQt.QtGui import QColor, QIcon
    from qgis.PyQt.QtWidgets import QAction, QMainWindow, QSplitter, QToolBar

    app = QgsApplication([], True)
    app.initQgis()
    from processing.core.Processing import Processing

    Processing.initialize()
    import processing

    from qgis_sam import settings
    from qgis_sam.map_tool import SamMapTool
    from qgis_sam.provider import ICON, register_provider

    register_provider()
    settings.set_value("model", args.model)
    settings.set_value("checkpoint", args.checkpoint)
    settings.set_value("tile_size", args.tile_size)
    workdir = tempfile.mkdtemp(prefix="sam_screenshot_")
    raster_path = args.raster
    centres = []
    if raster_path is None:
        raster_path = os.path.join(workdir, "scene.tif")
        centres = generate_scene(raster_path)
    raster = QgsRasterLayer(raster_path, Path(raster_path).stem)
    if not raster.isValid():
        print(f"error: cannot open {raster_path}", file=sys.stderr)
        return 2
    project = QgsProject.instance()
    crs = QgsCoordinateReferenceSystem(args.project_crs) if args.project_crs else raster.crs()
    project.setCrs(crs)
    project.addMapLayer(raster)

    params = {"INPUT": raster, "MODEL": args.model, "TILE_SIZE": args.tile_size, "OVERLAP": args.overlap,
              "PRED_IOU_THRESH": args.pred_iou_thresh, "STABILITY_THRESH": args.stability_thresh,
              "OUTPUT": os.path.join(workdir, "segments.gpkg")}  # None: the model's thresholds
    if args.checkpoint:
        params["CHECKPOINT"] = args.checkpoint
    result = processing.run("sam:automask_raster", params)
    segments = QgsVectorLayer(result["OUTPUT"], "sam:automask_raster segments", "ogr")
    symbol = segments.renderer().symbol()
    symbol.setColor(QColor(0, 220, 255, 60))
    symbol.symbolLayer(0).setStrokeColor(QColor(0, 240, 255))
    symbol.symbolLayer(0).setStrokeWidth(0.5)
    project.addMapLayer(segments)
    if args.show_tiles:
        project.addMapLayer(tile_borders(raster, args.tile_size, args.overlap))

    window = QMainWindow()
    window.setWindowTitle(f"QGIS {app.applicationVersion() if hasattr(app, 'applicationVersion') else ''} — "
                         "Segment Anything")
    toolbar = QToolBar("Segment Anything")
    toolbar.setIconSize(toolbar.iconSize() * 1.3)
    segment_action = QAction(QIcon(ICON), "Segment on the map", window)
    segment_action.setCheckable(True)
    toolbar.addAction(segment_action)
    toolbar.addAction(QAction("Engine settings…", window))
    window.addToolBar(toolbar)
    splitter = QSplitter()
    tree = QgsLayerTreeView()
    tree_model = QgsLayerTreeModel(project.layerTreeRoot(), tree)
    tree.setModel(tree_model)
    canvas = QgsMapCanvas()
    canvas.setCanvasColor(Qt.white)
    bridge = QgsLayerTreeMapCanvasBridge(project.layerTreeRoot(), canvas)  # noqa: F841 (keeps layers in sync)
    splitter.addWidget(tree)
    splitter.addWidget(canvas)
    splitter.setSizes([260, 1020])
    window.setCentralWidget(splitter)
    window.resize(1280, 800)
    window.show()
    canvas.setDestinationCrs(crs)
    to_canvas = QgsCoordinateTransform(raster.crs(), crs, project)
    canvas.setExtent(to_canvas.transformBoundingBox(raster.extent()))
    canvas.refresh()

    def settle(predicate=lambda: False, seconds: float = 120.0) -> None:
        import time

        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            app.processEvents()
            app.sendPostedEvents(None, QEvent.DeferredDelete)
            if predicate():
                return
            time.sleep(0.02)

    settle(seconds=1.0)
    tool = SamMapTool(canvas, raster, settings.client())
    tool.setAction(segment_action)
    canvas.setMapTool(tool)
    click = tuple(float(v) for v in args.click.split(",")) if args.click else (centres[0] if centres else None)
    if click is not None:
        pixel = canvas.getCoordinateTransform().transform(to_canvas.transform(QgsPointXY(*click)))
        tool.add_point(QPoint(round(pixel.x()), round(pixel.y())), 1)
        settle(lambda: not tool.busy and tool.task is None)
    canvas.refresh()
    settle(lambda: not canvas.isDrawing(), 30)
    settle(seconds=1.0)
    window.statusBar().showMessage(
        f"{segments.featureCount()} polygons from sam:automask_raster ({args.model}); map tool preview of one click "
        f"(orange); raster {raster.crs().authid() or raster.crs().description()}, project {crs.authid()}, "
        f"{args.tile_size}-pixel tiles")
    settle(seconds=0.5)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    ok = window.grab().save(args.out)
    settings.stop_client()
    tool.cleanup()
    project.removeAllMapLayers()
    print(args.out if ok else "error: could not save the screenshot", flush=True)
    # exitQgis() after a GUI session with canvases and tasks can crash on the way out; nothing is left to save
    os._exit(0 if ok else 1)


if __name__ == "__main__":
    raise SystemExit(main())
