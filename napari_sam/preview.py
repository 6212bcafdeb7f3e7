"""The preview scheduler: decodes the shown slice's prompts off the GUI thread, newest request wins.

One decode runs at a time; a change while one is decoding queues only the newest request, and
results of older requests (an older *generation*) are dropped. The candidates of the last decode
(a ``sam_core`` ``Prediction``, best first) are kept, with the one shown.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, List, Optional, Tuple

import numpy as np
from napari.utils.notifications import show_info

from napari_sam.workers import Job, start_job

if TYPE_CHECKING:
    from napari_sam.prompts import Prompts
    from napari_sam.session import SamSession


class PreviewScheduler:
    """Previews of ``session``'s prompts in its ``SAM preview`` layer."""

    def __init__(self, session: "SamSession") -> None:
        self.session = session
        self.candidates: Any = None  # Prediction of candidate_slice
        self.candidate_index = 0
        self.candidate_slice: Tuple[int, ...] = ()
        self.generation = 0
        self._pending: Optional[Tuple[int, "Prompts"]] = None
        self._decoding: Optional[Job] = None
        #: Called with the candidates' scores (or None) and the shown candidate's index on every change.
        self.on_candidates: List[Callable[[Optional[np.ndarray], int], None]] = []

    @property
    def busy(self) -> bool:
        """True while a decode runs or waits."""
        return self._decoding is not None or self._pending is not None

    def invalidate(self) -> None:
        """Forget the queued request; results of decodes still running will be dropped."""
        self.generation += 1
        self._pending = None

    def forget(self) -> None:
        """Invalidate and drop the candidates."""
        self.invalidate()
        self.candidates = None
        self.emit()

    def request(self) -> None:
        """Decode the shown slice's prompts (an empty slice clears its preview)."""
        s = self.session
        if s.access is None:
            return
        self.generation += 1
        prompts = s.prompts()
        if prompts is None:
            s.layers.set_preview_plane(s.current_index(), None)
            self.candidates = None
            self.emit()
            return
        if not s.check_model():
            return
        self._pending = (self.generation, prompts)
        if self._decoding is None:
            self._start()

    def _start(self) -> None:
        if self._pending is None:
            return
        generation, prompts = self._pending
        self._pending = None
        s = self.session
        preparation = s.access.preparation()

        each = s.one_per_prompt

        def job(progress: Any, cancel: Any) -> Any:
            predictor = s.predictor(progress, cancel)
            with s.lock:
                if each:
                    return generation, prompts.stack_index, s.embeddings.decode_each(predictor, prompts, preparation)
                prediction = s.embeddings.decode(predictor, prompts, preparation)
            return generation, prompts.stack_index, prediction

        self._decoding = start_job(job, "SAM model", self._on_decoded, self._finished)

    def _finished(self) -> None:
        self._decoding = None
        self._start()

    def _on_decoded(self, result: Tuple[int, Tuple[int, ...], Any]) -> None:
        generation, index, prediction = result
        if generation != self.generation:
            return  # stale: the prompts changed since this request
        if isinstance(prediction, np.ndarray):  # one object per prompt: labels of the slice
            self.candidates = None
            self.session.layers.set_preview_plane(index, prediction)
            self.emit()
            return
        self.candidates = prediction
        self.candidate_slice = index
        self.candidate_index = 0
        self.show_candidate()

    def show_candidate(self) -> None:
        mask = None if self.candidates is None else self.candidates.masks[self.candidate_index]
        self.session.layers.set_preview_plane(self.candidate_slice, mask)
        self.emit()

    def emit(self) -> None:
        scores = None if self.candidates is None else np.asarray(self.candidates.scores)
        for listener in self.on_candidates:
            listener(scores, self.candidate_index)

    def next_candidate(self) -> Optional[float]:
        """Show the next candidate mask of the current prediction; returns its predicted IoU."""
        if self.candidates is None:
            show_info("No candidates yet: add a point or a box.")
            return None
        count = len(self.candidates.scores)
        if count == 1:
            show_info("Only one candidate for these prompts (one point alone gives three).")
        self.candidate_index = (self.candidate_index + 1) % count
        self.show_candidate()
        return float(self.candidates.scores[self.candidate_index])

    def logits_at(self, index: Tuple[int, ...]) -> Optional[np.ndarray]:
        """Low-resolution logits of the shown candidate when it belongs to slice ``index``, else None."""
        if self.candidates is None or self.candidate_slice != index or self.candidates.logits is None:
            return None
        return self.candidates.logits[self.candidate_index]
