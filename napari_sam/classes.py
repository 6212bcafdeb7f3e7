"""Object classes: a short, editable class list; each committed object gets the current class.

Classes live in the ``SAM objects`` layer's ``features`` table (columns ``index``: object id,
``class``: class name), so they stay with the labels, show in napari's layer tooltip and are
exported with them (``sam_core.labels.write_labels``: CSV ``id,class``).
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence

import pandas as pd

#: The class list a new session starts with.
DEFAULT_CLASSES = ("cell", "nucleus", "background")


def parse_classes(text: str) -> List[str]:
    """Class names from text such as ``cell, nucleus`` (empty names dropped, at most nine: keys 1-9)."""
    return [name.strip() for name in text.split(",") if name.strip()][:9]


def object_classes(layer: Any) -> Dict[int, str]:
    """Object id -> class name from a labels layer's ``features`` (columns ``index`` and ``class``)."""
    features = getattr(layer, "features", None)
    if features is None or "class" not in features or "index" not in features:
        return {}
    return {int(i): str(c) for i, c in zip(features["index"], features["class"]) if isinstance(c, str) and c}


def set_classes(layer: Any, ids: Sequence[int], name: Optional[str]) -> None:
    """Give the objects ``ids`` of labels ``layer`` the class ``name`` (None or "": no class)."""
    known = object_classes(layer)
    for i in ids:
        if name:
            known[int(i)] = str(name)
        else:
            known.pop(int(i), None)
    ordered = sorted(known)
    layer.features = pd.DataFrame({"index": pd.Series(ordered, dtype="int64"),
                                   "class": pd.Series([known[i] for i in ordered], dtype="object")})
