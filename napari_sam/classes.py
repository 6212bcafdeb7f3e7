"""Object classes: a short, editable class list; each committed object gets the current class.

Classes live in the ``SAM objects`` layer's ``features`` table (columns ``index``: object id,
``class``: class name), so they stay with the labels, show in napari's layer tooltip and are
exported with them (``sam_core.labels.write_labels``: CSV ``id,class``).
"""

from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional, Sequence

import numpy as np
import pandas as pd
from napari.utils.notifications import show_error, show_info, show_warning

from sam_core.errors import SamError

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


class ClassList:
    """The class names (keys 1-9 choose one) and the class new objects get (None: no class)."""

    def __init__(self) -> None:
        self.names: List[str] = list(DEFAULT_CLASSES)
        self.current: Optional[str] = None
        #: Called with the current class (or None) whenever it changes.
        self.on_change: List[Callable[[Optional[str]], None]] = []

    def choose(self, number: int) -> Optional[str]:
        """Make class ``number`` (1-based, keys 1-9) the class of new objects."""
        if not 1 <= number <= len(self.names):
            show_warning(f"There is no class {number}: the class list has {len(self.names)} (edit it in the panel).")
            return self.current
        self.current = self.names[number - 1]
        show_info(f"New objects are {self.current!r}.")
        for listener in self.on_change:
            listener(self.current)
        return self.current


def export_labels(layer: Any, path: str) -> Optional[str]:
    """Write labels ``layer`` as a TIFF at ``path`` and its classes as ``<name>.classes.csv`` (id, class);
    returns the CSV's path (None, with an error notification, when writing fails)."""
    from sam_core.labels import write_labels

    try:
        written = write_labels(np.asarray(layer.data), path, classes=object_classes(layer))
    except (SamError, OSError) as error:
        show_error(f"Could not write {path}: {error}")
        return None
    show_info(f"Objects written to {path} and their classes to {written}.")
    return written
