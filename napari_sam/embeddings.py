"""Image embeddings of a session's image: one slice at a time, or all tiles of a large 2D image.

Slices are encoded through the predictor's embedding cache (memory and disk), so a rerun resumes.
"""

from __future__ import annotations

import itertools
from typing import TYPE_CHECKING, Any, Callable, Optional, Tuple

import numpy as np
from napari.utils.notifications import show_info

from sam_core.errors import SamError

if TYPE_CHECKING:
    from napari_sam.prompts import Prompts
    from napari_sam.session import SamSession
    from napari_sam.workers import Job


def slice_text(index: Tuple[int, ...]) -> str:
    """``index`` (stack indices) for people: ``slice 3``, ``slice 1, 3`` or ``image`` (2D)."""
    return "slice " + ", ".join(str(int(i)) for i in index) if index else "image"


class Embeddings:
    """Encodes and decodes ``session``'s image (tiled above ``settings.tile_above`` pixels)."""

    def __init__(self, session: "SamSession") -> None:
        self.session = session
        self._tiled_key: Optional[tuple] = None
        self._tiled_predictor: Any = None

    def tiled(self) -> bool:
        """True for a 2D image whose longest side exceeds ``settings.tile_above`` pixels."""
        access = self.session.access
        return not access.stack_shape and max(access.plane_shape) > self.session.settings.tile_above

    def tiled_predictor(self, predictor: Any, preparation: Any) -> Any:
        """The tiled predictor of this (2D, large) image; tiles are read lazily from the layer's data."""
        from sam_core.tiling import TiledPredictor

        s, access = self.session.settings, self.session.access
        key = (id(predictor), id(access.layer), preparation, s.tile_size, s.tile_overlap)
        if self._tiled_key != key:
            self._tiled_key = key
            self._tiled_predictor = TiledPredictor(
                predictor, access.lazy_plane(()), tile_size=s.tile_size, overlap=s.tile_overlap,
                preparation=preparation,
            )
        return self._tiled_predictor

    def embed(self, predictor: Any, stack_index: Tuple[int, ...], preparation: Any,
              progress: Any = None, cancel: Any = None) -> Any:
        """Encode one slice (through the predictor's cache); a large 2D image: all of its tiles."""
        if self.tiled():
            tiled = self.tiled_predictor(predictor, preparation)
            tiled.encode_all(progress=progress, cancel=cancel)
            return tiled
        image = self.session.access.plane(stack_index)
        finite = image[np.isfinite(image)] if np.issubdtype(image.dtype, np.floating) else image
        if finite.size == 0 or finite.min() == finite.max():
            where = slice_text(stack_index) if stack_index else "the image"
            raise SamError(f"{where} is empty (no valid pixels, or all pixels have one value): nothing to segment")
        return predictor.encode(image, preparation=preparation)

    def decode(self, predictor: Any, prompts: "Prompts", preparation: Any) -> Any:
        """Candidates for one slice's prompts: a ``Prediction`` (tiled images: one candidate, no logits)."""
        from sam_core.predictor import Prediction

        if self.tiled():
            tiled = self.tiled_predictor(predictor, preparation)
            result = tiled.predict(points=prompts.points, labels=prompts.labels, box=prompts.box)
            mask = np.zeros(self.session.access.plane_shape, bool)
            piece = result.piece
            mask[piece.y0 : piece.y0 + piece.mask.shape[0], piece.x0 : piece.x0 + piece.mask.shape[1]] = piece.mask
            return Prediction(masks=mask[None], scores=np.array([result.score], np.float32), logits=None)
        embedding = self.embed(predictor, prompts.stack_index, preparation)
        return predictor.predict(embedding, prompts.points, prompts.labels, prompts.box)

    def decode_each(self, predictor: Any, prompts: "Prompts", preparation: Any) -> np.ndarray:
        """One object per prompt on one slice: every positive point and every box its own object, decoded
        in batches (``sam_core.labels.decode_each``). Returns labels of the plane, ids 1.. in prompt
        order (points first; where objects overlap the earlier one keeps the pixel)."""
        from sam_core.labels import decode_each, paint

        if self.tiled():
            raise SamError("one object per prompt is not available on tiled (very large) images: "
                           "untick it and segment one object at a time")
        embedding = self.embed(predictor, prompts.stack_index, preparation)
        points = None if prompts.points is None else prompts.points[prompts.labels == 1]
        return paint(decode_each(predictor, embedding, points, prompts.boxes))

    def compute(self, all_slices: bool = False, on_done: Optional[Callable[[int], None]] = None) -> Optional["Job"]:
        """Encode the shown slice, or every slice of the stack (cached on disk, so a rerun resumes).

        ``on_done(encoder_runs)`` receives how many times the encoder really ran in this job.
        """
        session = self.session
        if not session.ready():
            return None
        access = session.access
        indices = list(itertools.product(*[range(n) for n in access.stack_shape])) if all_slices \
            else [session.current_index()]
        preparation = access.preparation()

        def job(progress: Any, cancel: Any) -> int:
            from sam_core.progress import check

            predictor = session.predictor(progress, cancel)
            before = predictor.encoder_runs
            for done, index in enumerate(indices):
                check(cancel)
                with session.lock:
                    self.embed(predictor, index, preparation, None, cancel)
                progress(done + 1, len(indices), slice_text(index))
            return predictor.encoder_runs - before

        def finished(runs: int) -> None:
            show_info(f"Embeddings ready ({runs} computed, {len(indices) - runs} from the cache)." if len(indices) > 1
                      else ("Embedding computed." if runs else "Embedding loaded from the cache."))
            if on_done is not None:
                on_done(runs)

        return session.run(job, "SAM embeddings", finished)
