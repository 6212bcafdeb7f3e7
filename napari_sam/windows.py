"""CT intensity windows: what the model sees of a CT volume in Hounsfield units.

A window is given by its level (centre) and width, as radiologists write it; the model sees the
value range ``(level - width / 2, level + width / 2)`` stretched to 0..255. In napari a preset sets
the image layer's contrast limits, so that the model sees what the user sees.
"""

from __future__ import annotations

from typing import Dict, Tuple

#: name -> (level, width) in Hounsfield units.
CT_WINDOWS: Dict[str, Tuple[float, float]] = {
    "soft tissue": (40.0, 400.0),
    "lung": (-600.0, 1500.0),
    "bone": (400.0, 1800.0),
}


def window_range(name: str) -> Tuple[float, float]:
    """The value range (low, high) in HU of the CT window ``name`` (see :data:`CT_WINDOWS`)."""
    from sam_core.errors import SamError

    if name not in CT_WINDOWS:
        raise SamError(f"unknown CT window {name!r}; choose one of {', '.join(CT_WINDOWS)}")
    level, width = CT_WINDOWS[name]
    return level - width / 2.0, level + width / 2.0
