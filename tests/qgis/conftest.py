"""Fixtures of the QGIS tests: the plugin on sys.path, Processing, the engine Python, small checkpoints.

These tests run in QGIS's own Python (Debian's python3-qgis, venv ``.venv-qgis``), which has no torch:
the engine runs from ``SAM_ENGINE_PYTHON`` (default: the project's ``.venv``). Checkpoints and test
rasters are made with that Python too.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.append("/usr/share/qgis/python/plugins")

if not os.environ.get("SAM_ENGINE_PYTHON") and (ROOT / ".venv" / "bin" / "python").is_file():
    os.environ["SAM_ENGINE_PYTHON"] = str(ROOT / ".venv" / "bin" / "python")

SHARED_DATA = ROOT.parent / "shared" / "data"


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
