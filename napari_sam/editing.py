"""Editing the committed objects: accept automatic results, delete, merge, split and refine.

Every edit computes new labels with ``sam_core.labels`` and applies them through the session's
:class:`~napari_sam.history.EditHistory`, so each one is a single undo step. Ids are object values
of the ``SAM objects`` layer (or of the image's ``SAM automatic`` layer, for accepting).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Optional, Sequence, Tuple

import numpy as np
from napari.utils.notifications import show_info

from napari_sam.layers import POSITIVE
from sam_core.errors import SamError

if TYPE_CHECKING:
    from napari_sam.session import SamSession


class ObjectEditor:
    """Edits of ``session``'s objects; the object being refined is remembered until commit or clear."""

    def __init__(self, session: "SamSession") -> None:
        self.session = session
        #: (object id, stack index) while an object is being refined: Commit redraws it.
        self.refining: Optional[Tuple[int, Tuple[int, ...]]] = None

    def _objects(self):
        layer = self.session.layers.objects
        if layer is None:
            raise SamError("start a session first (Start / reset session)")
        return layer

    def _apply(self, new: np.ndarray, description: str, ids: Tuple[int, ...] = ()) -> bool:
        if self.session.history.apply(self._objects(), new, description, ids) is None:
            show_info("Nothing changed.")
            return False
        return True

    def accept(self, ids: Optional[Sequence[int]] = None) -> Tuple[int, ...]:
        """Copy the shown image's automatic objects (all, or those with ``ids``) into the objects, each
        under a new id, in one undo step; committed objects keep their pixels unless ``overwrite``."""
        session = self.session
        layer = session.automatic_segmentation.layer_of(session.access) if session.access is not None else None
        if layer is None:
            raise SamError("no automatic result for this image: press 'Segment image / slice' first")
        automatic = np.asarray(layer.data)
        if ids is not None:
            from sam_core.labels import _check_ids

            automatic = np.where(np.isin(automatic, _check_ids(automatic, ids)), automatic, 0)
        new_ids = session.history.commit(self._objects(), automatic, session.overwrite)
        session.label_new(new_ids)
        if not new_ids:
            show_info("Nothing to accept: no automatic object is left on free pixels.")
        else:
            show_info(f"Accepted {len(new_ids)} automatic object(s) as ids {new_ids[0]} to {new_ids[-1]}.")
        return new_ids

    def delete(self, ids: Sequence[int]) -> bool:
        """Remove the objects ``ids``."""
        from sam_core.labels import delete

        return self._apply(delete(np.asarray(self._objects().data), ids), "delete", tuple(ids))

    def merge(self, ids: Sequence[int]) -> bool:
        """Join the objects ``ids`` (two or more) under the smallest id."""
        from sam_core.labels import merge

        return self._apply(merge(np.asarray(self._objects().data), ids), "merge", (min(ids),))

    def split(self) -> Optional[int]:
        """Carve the preview (from a click inside an object) out of the object it covers most, as a new
        object; returns the new id. Clears the prompts."""
        from sam_core.labels import split

        session = self.session
        preview = np.asarray(session.layers.preview.data) > 0
        if not preview.any():
            raise SamError("click inside the object to split first: the preview shows the part to split off")
        new, object_id, new_id = split(np.asarray(self._objects().data), preview)
        self._apply(new, "split", (new_id,))
        session.label_new([new_id])
        session.clear()
        show_info(f"Object {object_id} split: the new part is object {new_id}.")
        return new_id

    def start_refine(self, object_id: int) -> None:
        """Refine object ``object_id`` on the shown slice: its outline becomes the prompt (a box around it
        and its centre point, as propagation uses a mask), more clicks correct it, Commit redraws it."""
        from sam_core.labels import _check_ids
        from sam_core.volume import prompts_from_mask

        session = self.session
        objects = self._objects()
        here = session.current_index()
        plane = np.asarray(objects.data[here])
        object_id = _check_ids(np.asarray(objects.data), [object_id])[0]
        if not (plane == object_id).any():
            raise SamError(f"object {object_id} is not on this slice: go to a slice where it is")
        points, _, box = prompts_from_mask(plane == object_id)
        session.clear()
        ndim = len(session.access.spatial_shape)
        x, y = points[0]
        x0, y0, x1, y1 = box
        lead = [float(i) for i in here]
        self.refining = (object_id, here)
        points_layer = session.layers.points
        with points_layer.events.data.blocker():
            points_layer.add(np.array([lead + [y, x]], float).reshape(1, ndim))
            features = points_layer.features.copy()
            features.loc[len(features) - 1, "label"] = POSITIVE
            points_layer.features = features
            points_layer.refresh_colors()
        corners = [lead + [y0, x0], lead + [y0, x1], lead + [y1, x1], lead + [y1, x0]]
        session.layers.boxes.add_rectangles(np.array(corners, float), edge_color="yellow")
        show_info(f"Refining object {object_id}: add points to correct it, then Commit.")

    def finish_refine(self) -> Optional[int]:
        """Redraw the object being refined as the preview (one undo step); returns its id."""
        from sam_core.labels import replace_object

        object_id, here = self.refining
        self.refining = None
        session = self.session
        data = np.asarray(self._objects().data)
        new = np.array(data, copy=True)
        new[here] = replace_object(data[here], object_id, np.asarray(session.layers.preview.data[here]) > 0,
                                   session.overwrite)
        self._apply(new, "refine", (object_id,))
        session.clear()
        return object_id


def parse_ids(text: str) -> Tuple[int, ...]:
    """Object ids from text such as ``3, 5 7``; raises SamError with what to type."""
    parts = text.replace(",", " ").split()
    try:
        return tuple(int(part) for part in parts)
    except ValueError:
        raise SamError(f"object ids are whole numbers separated by commas (e.g. 3, 5), got {text!r}") from None
