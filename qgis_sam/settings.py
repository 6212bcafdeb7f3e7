"""The plugin's settings (QgsSettings under ``qgis_sam/``) and the one engine client they configure."""

from __future__ import annotations

import os
import threading
from typing import Any, Optional

from qgis.core import Qgis, QgsMessageLog, QgsSettings

from .bundle import plugin_version
from .engine_client import ENV_VAR, EngineClient

LOG_TAG = "Segment Anything"
# SAM, then SAM 2.1 (image mode: points, boxes, automatic masks), then the project's small SAM 2.1 (demo2);
# new names go at the end, as scripts pass indexes
MODEL_NAMES = ("demo", "vit_t", "vit_b", "vit_l", "vit_h",
               "sam2.1_hiera_tiny", "sam2.1_hiera_small", "sam2.1_hiera_base_plus", "sam2.1_hiera_large", "demo2")
# The models that find objects by name (SAM 3 concepts): sam_core.concepts.concept_models(), which the engine
# answers to "concept_models" (a test keeps the two equal); new names go at the end
CONCEPT_MODEL_NAMES = ("sam3", "demo-concepts")

_PREFIX = "qgis_sam/"
DEFAULTS: dict[str, Any] = {
    "engine_python": "",   # interpreter that has sam_core installed
    "model": "demo",       # model of the map tool
    "checkpoint": "",      # optional checkpoint file of the map tool
    "concept_model": "sam3",  # model of the map tool's "Find all" (one of CONCEPT_MODEL_NAMES)
    "concept_checkpoint": "",  # optional SAM 3 checkpoint file of "Find all"
    "device": "",          # "" = the engine's default (CPU); "cuda", "mps"
    "tile_size": 1024,     # pixels
    "overlap": 128,        # pixels
    "output_gpkg": "",     # "" = segment_anything.gpkg in the project's folder (or home); see map_tool
    "export_resolution": 0.0,  # map units per pixel for non-file rasters; 0 = the canvas's
}


def value(key: str) -> Any:
    """A setting, converted to the type of its default."""
    default = DEFAULTS[key]
    raw = QgsSettings().value(_PREFIX + key, default)
    if raw is None:
        return default
    try:
        return type(default)(raw)
    except (TypeError, ValueError):
        return default


def set_value(key: str, new: Any) -> None:
    if key not in DEFAULTS:
        raise KeyError(key)
    QgsSettings().setValue(_PREFIX + key, new)


def engine_python() -> Optional[str]:
    """The engine interpreter: ``SAM_ENGINE_PYTHON`` if set, else the configured one, else None."""
    return os.environ.get(ENV_VAR, "").strip() or value("engine_python") or None


def log(message: str, level: Qgis.MessageLevel = Qgis.MessageLevel.Info) -> None:
    """Write to QGIS's log panel (thread-safe)."""
    QgsMessageLog.logMessage(message, LOG_TAG, level)


def device() -> Optional[str]:
    return value("device") or None


_client: Optional[EngineClient] = None
_client_lock = threading.Lock()


def client() -> EngineClient:
    """The plugin's engine client (shared by the map tool and the Processing algorithms)."""
    global _client
    with _client_lock:
        if _client is None:
            _client = EngineClient(python=lambda: value("engine_python"), log=lambda text: log(text),
                                   version=plugin_version())
        return _client


def stop_client() -> None:
    """Stop the engine process, if any (plugin unload, settings change)."""
    with _client_lock:
        current = _client
    if current is not None:
        current.stop()
