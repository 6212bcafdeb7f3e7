"""Fine-tuning the chosen model's mask decoder on the committed objects (sam_core.train.finetune)."""

from __future__ import annotations

import itertools
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Optional

import numpy as np
from napari.utils.notifications import show_info

if TYPE_CHECKING:
    from napari_sam.session import ModelChoice, SamSession
    from napari_sam.workers import Job


def finetune(session: "SamSession", output: str, epochs: int = 5,
             on_done: Optional[Callable[["ModelChoice"], None]] = None) -> Optional["Job"]:
    """Fine-tune on ``session``'s committed objects; writes the checkpoint ``output``.

    Every plane holding committed objects is one training image, prepared as the model sees it
    (contrast limits, channels), with the committed ids as its instance labels. A fresh copy of the
    model is trained (encoder frozen, all planes used for training); ``on_done`` receives the new
    :class:`ModelChoice` (the same configuration, the new file).
    """
    from napari_sam.session import ModelChoice

    if not session.ready():
        return None
    access = session.access
    objects = session.layers.objects.data
    planes = [idx for idx in itertools.product(*[range(n) for n in access.stack_shape]) if objects[idx].any()]
    if not planes:
        session.fail("Commit some objects first: fine-tuning trains on the committed annotations.")
        return None
    if session.embeddings.tiled():
        session.fail("Fine-tuning from a tiled (very large) image is not supported here: "
                     "export crops and run python -m sam_core finetune.")
        return None
    labels = [np.asarray(objects[idx]) for idx in planes]
    preparation = access.preparation()
    base, spec = session.settings.model, session.settings.spec()

    def job(progress: Any, cancel: Any) -> str:
        from sam_core.imaging import prepare_image
        from sam_core.train.finetune import finetune as train

        images = [prepare_image(access.plane(idx), preparation)[0] for idx in planes]
        # a fresh copy, not the pool's, in fp32 (the plugin's auto precision may quantize the encoder)
        model = replace(spec, precision=None).load_model(progress=progress, cancel=cancel)
        train(model, images, labels, epochs=epochs, val_fraction=0.0, checkpoint_path=output,
              resume=False, progress=progress, cancel=cancel)
        return output

    def finished(path: str) -> None:
        choice = ModelChoice(base.name, path, label=f"fine-tuned: {Path(path).name}")
        show_info(f"Fine-tuned model written to {path}; it is now in the model list.")
        if on_done is not None:
            on_done(choice)

    return session.run(job, "SAM fine-tuning", finished)
