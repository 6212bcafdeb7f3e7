"""Automatic masks of the shown image or slice, or of a whole stack (linked in 3D).

Results go to the segmented image's own ``SAM automatic (<image name>)`` labels layer, one per
image, kept when another image is segmented.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, List, Optional, Tuple

import numpy as np
from napari.utils.notifications import show_info

from napari_sam.image_access import ImageAccess

if TYPE_CHECKING:
    from napari_sam.session import SamSession
    from napari_sam.workers import Job

AUTO_NAME = "SAM automatic"


def _renamed(progress: Any, unit: str) -> Any:
    """``progress`` with its messages replaced by ``"<unit> done/total"``."""
    if progress is None:
        return None
    return lambda done, total, message="": progress(done, total, f"{unit} {done}/{total}")


class AutomaticSegmentation:
    """Runs sam_core's automatic mask generator for a session; remembers each image's result layer."""

    def __init__(self, session: "SamSession") -> None:
        self.session = session
        self._layers: List[Tuple[Any, Any]] = []  # (image layer, its SAM automatic layer)

    def layer_of(self, access: ImageAccess) -> Optional[Any]:
        """The ``SAM automatic`` layer of ``access``'s image if it is in the viewer, else None."""
        shape = access.spatial_shape
        for image, layer in self._layers:
            if image is access.layer and layer in self.session.viewer.layers and tuple(layer.data.shape) == shape:
                return layer
        return None

    def result_layer(self, access: ImageAccess) -> Any:
        """The ``SAM automatic`` layer of ``access``'s image: reused while it is in the viewer, else new
        (also where ``Find all`` puts what it finds: see :mod:`napari_sam.concepts`)."""
        from napari.layers import Labels

        layer = self.layer_of(access)
        if layer is not None:
            return layer
        viewer = self.session.viewer
        layer = Labels(np.zeros(access.spatial_shape, np.int32), name=f"{AUTO_NAME} ({access.layer.name})",
                       scale=access.scale, translate=access.translate)
        viewer.add_layer(layer)
        self._layers = [(i, l) for i, l in self._layers if l in viewer.layers]
        self._layers.append((access.layer, layer))
        return layer

    def run(self, whole_stack: bool = False, params: Optional[dict] = None, link_iou: float = 0.3,
            on_done: Optional[Callable[[np.ndarray], None]] = None) -> Optional["Job"]:
        """Segment the shown image/slice (or the whole stack along its last stack axis)."""
        from sam_core import volume as V
        from sam_core.automask import AutomaticMaskGenerator, masks_to_labels

        session = self.session
        if not session.ready():
            return None
        access = session.access
        params = dict(params or {})
        preparation = access.preparation()
        here = session.current_index()
        whole_stack = whole_stack and bool(access.stack_shape)
        tiled = session.embeddings.tiled()
        s = session.settings

        def job(progress: Any, cancel: Any) -> Tuple[Tuple[int, ...], np.ndarray]:
            generator = AutomaticMaskGenerator(session.predictor(progress, cancel), **params)

            def segment(image: np.ndarray, **options: Any) -> np.ndarray:
                with session.lock:
                    records = generator.generate(image, preparation=preparation, **options)
                return masks_to_labels(records, image.shape[:2])

            if tiled:
                from sam_core.imaging import prepare_image
                from sam_core.tiling import automask_tiled, pieces_to_labels, remove_overlaps

                rgb, _ = prepare_image(access.plane(()), preparation)
                pieces = automask_tiled(rgb, generator, tile_size=s.tile_size, overlap=s.tile_overlap,
                                        progress=progress, cancel=cancel)
                return (), pieces_to_labels(remove_overlaps(pieces), rgb.shape[:2])
            if whole_stack:
                axis = len(here) - 1
                stack = access.volume(here, axis)
                labels = V.automask_volume(segment, stack, min_iou=link_iou, progress=progress, cancel=cancel)
                return here[:axis], labels
            return here, segment(access.plane(here), progress=_renamed(progress, "point batch"), cancel=cancel)

        def finished(result: Tuple[Tuple[int, ...], np.ndarray]) -> None:
            index, labels = result
            layer = self.result_layer(access)  # the image segmented, even if another is chosen now
            layer.data[index] = labels
            layer.refresh()
            show_info(f"Automatic segmentation: {int(len(np.unique(labels)) - 1)} object(s).")
            if on_done is not None:
                on_done(labels)

        return session.run(job, "SAM automatic", finished)
