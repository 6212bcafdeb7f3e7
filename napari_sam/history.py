"""Edits of the ``SAM objects`` labels that can be undone: commits, and any other change of pixels.

An edit remembers the pixels it changed (``np.nonzero`` of the labels array) and their old values;
undo writes the old values back, newest edit first.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, List, Optional, Tuple

import numpy as np


@dataclass
class Edit:
    """One undoable change: ``where`` (index arrays), the ``old`` values there, and what it was."""

    where: Tuple[np.ndarray, ...]
    old: np.ndarray
    description: str
    ids: Tuple[int, ...] = ()
    #: Called after the pixels are restored (e.g. to restore a lineage kept beside the labels).
    on_undo: Optional[Callable[[], None]] = None


class EditHistory:
    """Applies edits to a labels layer and undoes them (newest first)."""

    def __init__(self) -> None:
        self._edits: List[Edit] = []

    def __len__(self) -> int:
        return len(self._edits)

    def clear(self) -> None:
        self._edits.clear()

    def apply(self, layer: Any, new: np.ndarray, description: str, ids: Tuple[int, ...] = (),
              on_undo: Optional[Callable[[], None]] = None) -> Optional[Edit]:
        """Make ``layer.data`` equal to ``new`` (same shape), remembering the pixels that change;
        ``on_undo`` runs when the edit is undone.

        Returns the edit, or None when nothing changes.
        """
        data = layer.data
        where = np.nonzero(np.asarray(data) != new)
        if not len(where[0]):
            return None
        edit = Edit(where, np.asarray(data[where]).copy(), description, ids, on_undo)
        data[where] = new[where]
        self._edits.append(edit)
        layer.refresh()
        return edit

    def commit(self, layer: Any, objects: np.ndarray, overwrite: bool) -> Tuple[int, ...]:
        """Write the objects of ``objects`` (labels: each value > 0 one object) into ``layer`` under new
        ids (max + 1, max + 2, ... in the order of their values), as one edit; other objects' pixels
        are kept unless ``overwrite``. Returns the new ids (empty when no pixel is left to write)."""
        data = layer.data
        objects = np.asarray(objects)
        free = objects > 0 if overwrite else (objects > 0) & (np.asarray(data) == 0)
        values = np.unique(objects[free])
        if not len(values):
            return ()
        base = int(data.max()) + 1
        new_ids = tuple(range(base, base + len(values)))
        where = np.nonzero(free)
        self._edits.append(Edit(where, np.asarray(data[where]).copy(), "commit", new_ids))
        data[where] = base + np.searchsorted(values, objects[where])
        layer.refresh()
        return new_ids

    def undo(self, layer: Any) -> Optional[Edit]:
        """Undo the newest edit in ``layer``; returns it (None when there is nothing to undo)."""
        if not self._edits:
            return None
        edit = self._edits.pop()
        layer.data[edit.where] = edit.old
        layer.refresh()
        if edit.on_undo is not None:
            edit.on_undo()
        return edit
