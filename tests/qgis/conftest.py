"""Fixtures of the QGIS tests: the plugin on sys.path, Processing, the engine Python, small checkpoints.

These tests run in QGIS's own Python (Debian's python3-qgis, venv ``.venv-qgis``), which has no torch:
the engine runs from ``SAM_ENGINE_PYTHON`` (default: the project's ``.venv``). Checkpoints and test
rasters are made with that Python too.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.append("/usr/share/qgis/python/plugins")

if not os.environ.get("SAM_ENGINE_PYTHON") and (ROOT / ".venv" / "bin" / "python").is_file():
    os.environ["SAM_ENGINE_PYTHON"] = str(ROOT / ".venv" / "bin" / "python")

SHARED_DATA = ROOT / "tests" / "data"  # small copies of ../shared/data, so nothing skips in a fresh clone

# The engine's embedding cache (and any sam_core per-user files) go to a folder of this test session.
_HOME = tempfile.mkdtemp(prefix="sam_qgis_tests_")
os.environ["SAM_CORE_HOME"] = _HOME


def engine_python() -> str:
    python = os.environ.get("SAM_ENGINE_PYTHON")
    if not python:
        pytest.fail("set SAM_ENGINE_PYTHON to a Python with sam_core installed (e.g. the project's .venv)")
    return python


def run_engine_python(code: str, timeout: float = 300) -> str:
    """Run ``code`` in the engine's Python (with tests/ on sys.path); return its stdout."""
    script = "import sys\nsys.path.insert(0, %r)\n" % str(ROOT / "tests") + textwrap.dedent(code)
    done = subprocess.run([engine_python(), "-c", script], capture_output=True, text=True, timeout=timeout,
                          cwd=str(ROOT))
    if done.returncode != 0:
        raise RuntimeError(f"engine Python failed:\n{done.stderr[-3000:]}")
    return done.stdout


@pytest.fixture(scope="session")
def small_checkpoint(tmp_path_factory) -> Path:
    """A random-weight checkpoint (official format) of the small ViT configuration."""
    path = tmp_path_factory.mktemp("checkpoints") / "small_vit.pth"
    run_engine_python(f"""
        from helpers.checkpoints import SMALL_VIT, write_official_checkpoint
        write_official_checkpoint(SMALL_VIT, {str(path)!r}, seed=0)
    """)
    return path


@pytest.fixture(scope="session")
def processing(qgis_processing):
    """QGIS Processing initialised and the Segment Anything provider registered."""
    from qgis_sam.provider import register_provider, unregister_provider

    provider = register_provider()
    yield provider
    unregister_provider()


@pytest.fixture(scope="session", autouse=True)
def stop_engine_at_end():
    yield
    from qgis_sam import settings

    settings.stop_client()
    shutil.rmtree(_HOME, ignore_errors=True)


def wait_until(predicate, timeout: float = 60.0) -> bool:
    """Run Qt's event loop until ``predicate()`` is true or ``timeout`` seconds pass; return its value."""
    import time

    from qgis.core import QgsApplication
    from qgis.PyQt.QtCore import QEvent

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        QgsApplication.processEvents()
        QgsApplication.sendPostedEvents(None, QEvent.DeferredDelete)
        if predicate():
            return True
        time.sleep(0.01)
    QgsApplication.processEvents()
    return bool(predicate())


SCENE_CODE = """
import json
import numpy as np
import rasterio
from rasterio.features import shapes
from rasterio.transform import from_origin
from shapely.geometry import shape
from shapely.ops import unary_union

rng = np.random.default_rng(7)
size = 256
pixel = 2.0
transform = from_origin(500000.0, 4000000.0, pixel, pixel)
yy, xx = np.mgrid[0:size, 0:size]
image = np.empty((3, size, size), np.float32)
for band, level in enumerate((118, 128, 104)):
    image[band] = level + rng.normal(0, 6, (size, size))
objects = [
    ("ellipse", (64, 72), (30, 21), (220, 60, 50)),
    ("ellipse", (184, 80), (24, 24), (40, 70, 200)),
    ("rect", (72, 184), (32, 22), (235, 210, 40)),
    ("rect", (188, 188), (27, 35), (150, 40, 170)),
]
footprints = []
for kind, (cy, cx), (ry, rx), colour in objects:
    if kind == "ellipse":
        mask = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1.0
    else:
        mask = (abs(yy - cy) <= ry) & (abs(xx - cx) <= rx)
    for band in range(3):
        image[band][mask] = colour[band] + rng.normal(0, 4, mask.sum())
    geometry = unary_union([shape(g) for g, v in shapes(mask.astype(np.uint8), mask=mask, transform=transform)])
    x, y = transform * (cx + 0.5, cy + 0.5)
    footprints.append({"wkt": geometry.wkt, "center": [x, y],
                       "box": [x - rx * pixel * 1.1, y - ry * pixel * 1.1, x + rx * pixel * 1.1, y + ry * pixel * 1.1]})
profile = dict(driver="GTiff", width=size, height=size, count=3, dtype="uint8", crs=CRS, transform=transform)
with rasterio.open(PATH, "w", **profile) as dst:
    dst.write(np.clip(image, 0, 255).astype(np.uint8))
print(json.dumps(footprints))
"""


def make_scene(path: Path, crs: str) -> list[dict]:
    """A 256x256 3-band GeoTIFF (2 m pixels) with four known objects; returns their footprints (map WKT,
    centre, box) in the raster's CRS."""
    import json

    code = f"CRS = {crs!r}\nPATH = {str(path)!r}\n" + SCENE_CODE
    return json.loads(run_engine_python(code).strip().splitlines()[-1])


# A transverse Mercator CRS without an EPSG code (the output must keep it exactly).
CUSTOM_CRS = "+proj=tmerc +lat_0=0 +lon_0=15.5 +k=0.9996 +x_0=500000 +y_0=0 +ellps=GRS80 +units=m +no_defs"


@pytest.fixture(scope="session")
def scene(tmp_path_factory):
    """(path, footprints) of the generated scene in EPSG:32633."""
    path = tmp_path_factory.mktemp("scene") / "scene.tif"
    return path, make_scene(path, "EPSG:32633")


@pytest.fixture(scope="session")
def custom_crs_scene(tmp_path_factory):
    """(path, footprints) of the generated scene in a CRS without EPSG code."""
    path = tmp_path_factory.mktemp("scene_custom") / "scene_custom.tif"
    return path, make_scene(path, CUSTOM_CRS)


def demo_available() -> bool:
    """Whether the bundled demo model is installed for the engine Python."""
    out = run_engine_python("""
        from sam_core.zoo import list_models
        print([m.present for m in list_models() if m.name == "demo"][0])
    """)
    return out.strip().endswith("True")


@pytest.fixture(scope="session")
def demo_model() -> None:
    """The bundled demo model must be installed for the engine Python: a test that needs it FAILS
    (never skips) when it is missing."""
    if not demo_available():
        pytest.fail("the engine's Python has no bundled demo model (sam_core/data/demo.pt is committed: restore it "
                    "with git checkout -- sam_core/data/demo.pt and reinstall)", pytrace=False)


needs_demo = pytest.mark.usefixtures("demo_model")


def iou(a, b) -> float:
    """Intersection over union of two QgsGeometry polygons."""
    union = a.combine(b).area()
    return a.intersection(b).area() / union if union > 0 else 0.0


@pytest.fixture
def without_provider(qgis_processing):
    """No "sam" provider registered during the test (the plugin registers its own); restored afterwards."""
    from qgis_sam.provider import register_provider, unregister_provider

    from qgis.core import QgsApplication

    had = QgsApplication.processingRegistry().providerById("sam") is not None
    unregister_provider()
    yield
    unregister_provider()
    if had:
        register_provider()


def same_crs(a, b) -> bool:
    """Whether two QgsCoordinateReferenceSystem are the same CRS (a file round trip of a custom CRS may
    rename parts of its WKT, e.g. the conversion's name, without changing the CRS)."""
    return a.isValid() and b.isValid() and a.authid() == b.authid() and a.toProj() == b.toProj()


def virtual_raster(layer):
    """A QGIS virtual raster (no file behind it) computing band 1 of ``layer``: what the plugin must export."""
    from urllib.parse import quote

    from qgis.core import QgsRasterLayer

    e = layer.extent()
    uri = (f"?crs={layer.crs().authid()}&extent={e.xMinimum()},{e.yMinimum()},{e.xMaximum()},{e.yMaximum()}"
           f"&width={layer.width()}&height={layer.height()}&formula={quote(chr(34) + 'r@1' + chr(34))}"
           f"&r:uri={quote(layer.source())}&r:provider=gdal")
    virtual = QgsRasterLayer(uri, "virtual", "virtualraster")
    assert virtual.isValid()
    return virtual
