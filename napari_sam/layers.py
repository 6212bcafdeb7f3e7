"""The napari layers a session owns, created with the image's scale and translate.

* ``SAM points``  Points: clicks; feature ``label`` is ``positive`` (green) or ``negative`` (red).
* ``SAM boxes``   Shapes: rectangles (the last one on a slice is the box prompt).
* ``SAM preview`` Labels: the current object (value 1) on every slice where it is segmented; in
  "one object per prompt" mode one value per object (1, 2, ... in prompt order).
* ``SAM objects`` Labels: committed objects, one id each (kept across sessions on the same geometry).

Data are (..., row, col), like the image's spatial axes.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, Optional, Tuple

import numpy as np
import pandas as pd

from napari_sam.image_access import ImageAccess, unwrap

POINTS_NAME = "SAM points"
BOXES_NAME = "SAM boxes"
PREVIEW_NAME = "SAM preview"
OBJECTS_NAME = "SAM objects"

POSITIVE, NEGATIVE = "positive", "negative"


class SessionLayers:
    """Creates, replaces and holds the session's layers in ``viewer``; binds keys on them only."""

    def __init__(self, viewer: Any) -> None:
        self.viewer = viewer
        self.points: Any = None
        self.boxes: Any = None
        self.preview: Any = None
        self.objects: Any = None

    def fits(self, access: ImageAccess) -> bool:
        """True when the layers exist and have ``access``'s spatial shape."""
        return self.preview is not None and tuple(self.preview.data.shape) == access.spatial_shape

    def make(self, access: ImageAccess, keys: Dict[str, Callable[[], Any]],
             on_prompts_changed: Callable[[Any], None]) -> None:
        """(Re)create the layers for ``access``'s image; ``keys`` (napari key -> action) are bound on each."""
        from napari.layers import Labels, Points, Shapes

        shape = access.spatial_shape
        ndim = len(shape)
        kw = {"scale": access.scale, "translate": access.translate}
        self.objects = self._objects_layer(shape, kw)
        self.preview = self._replace(PREVIEW_NAME, Labels(np.zeros(shape, np.int32), name=PREVIEW_NAME, opacity=0.6, **kw))
        self.boxes = self._replace(
            BOXES_NAME,
            Shapes(ndim=ndim, name=BOXES_NAME, face_color="transparent", edge_color="yellow", edge_width=2, **kw),
        )
        features = pd.DataFrame({"label": pd.Categorical([], categories=[POSITIVE, NEGATIVE])})
        self.points = self._replace(
            POINTS_NAME,
            Points(
                np.zeros((0, ndim)), ndim=ndim, name=POINTS_NAME, features=features, face_color="label",
                face_color_cycle={POSITIVE: "lime", NEGATIVE: "red"}, size=8, **kw,
            ),
        )
        self.points.feature_defaults["label"] = POSITIVE
        self.points.mode = "add"
        self.points.events.data.connect(on_prompts_changed)
        self.boxes.events.data.connect(on_prompts_changed)
        for layer in (self.points, self.boxes, self.preview, self.objects):
            for key, action in keys.items():
                # overwrite: the objects layer is kept across sessions and already holds these keys
                layer.bind_key(key, lambda _layer, action=action: action(), overwrite=True)

    def clear_prompts(self) -> None:
        """Remove every point and box (no data events) and empty the preview."""
        with self.points.events.data.blocker(), self.boxes.events.data.blocker():
            self.points.data = np.zeros((0, self.points.ndim))
            self.boxes.data = []
        self.preview.data[...] = 0
        self.preview.refresh()

    def set_preview_plane(self, index: Tuple[int, ...], mask: Optional[np.ndarray]) -> None:
        """Show ``mask`` (or nothing) on the preview's slice ``index`` (stack indices; () in 2D)."""
        self.preview.data[index] = 0 if mask is None else np.asarray(mask, dtype=np.int32)
        self.preview.refresh()

    def _replace(self, name: str, layer: Any) -> Any:
        """Put ``layer`` in the viewer instead of the layer called ``name``; returns ``layer`` itself."""
        if name in self.viewer.layers:
            self.viewer.layers.remove(name)
        self.viewer.add_layer(layer)
        return layer

    def _objects_layer(self, shape: Tuple[int, ...], kw: dict) -> Any:
        """The committed objects layer: reused when it fits the image, and never deleted with objects in it."""
        from napari.layers import Labels

        if OBJECTS_NAME in self.viewer.layers:
            old = unwrap(self.viewer.layers[OBJECTS_NAME])
            same = tuple(old.data.shape) == shape and np.allclose(old.scale, kw["scale"]) \
                and np.allclose(old.translate, kw["translate"])
            if same:
                return old
            if np.any(old.data):
                old.name = f"{OBJECTS_NAME} (previous image)"  # napari keeps names unique
        return self._replace(OBJECTS_NAME, Labels(np.zeros(shape, np.int32), name=OBJECTS_NAME, **kw))
