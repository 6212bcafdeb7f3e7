"""Measure a model on scenes with known instances, through the public Predictor API.

* ``click``: one positive click at the object's interior point farthest from its border (maximum of
  the distance transform); the best-scoring of the three candidates is taken, as the official
  predictor advises for a single point.
* ``box``: the object's tight box (x0, y0, x1, y1), one mask.
* automatic masks: the fraction of objects found (a mask with IoU >= ``match_iou``) and the fraction
  of masks that match no object (spurious).
* propagation (SAM 2.1, through :class:`sam_core.propagation.VideoSession`): one positive click at
  each object's interior point on the first frame, tracked forward; the mean over objects of the
  IoU averaged over every frame (an empty prediction where the object is absent counts 1), and the
  fraction of the frames where an object is absent on which it is reported absent (object score
  <= 0).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional, Sequence

import numpy as np

from sam_core.masks import mask_iou
from sam_core.progress import CancelToken, ProgressFn, check, report
from sam_core.train.prompts import interior_point, mask_box
from sam_core.train.sequences import prompted_objects
from sam_core.train.synthetic import Scene


@dataclass
class PromptQuality:
    """Mean IoU over objects for a click and for a box, and the number of objects measured."""

    click: float
    box: float
    objects: int


@dataclass
class AutomaskQuality:
    """Recall (objects found / objects) and spurious fraction (unmatched masks / masks)."""

    recall: float
    spurious: float
    objects: int
    masks: int


def prompt_quality(
    predictor: Any,
    scenes: Sequence[Scene],
    max_objects: Optional[int] = None,
    progress: Optional[ProgressFn] = None,
    cancel: Optional[CancelToken] = None,
) -> PromptQuality:
    """Mean IoU of a centre click and of a tight box over every object of ``scenes``.

    ``predictor`` is a :class:`sam_core.predictor.Predictor`; ``max_objects`` limits the objects
    measured per scene (the first ones by label).
    """
    clicks: list[float] = []
    boxes: list[float] = []
    for n, scene in enumerate(scenes):
        check(cancel)
        embedding = predictor.encode(scene.image)
        ids = np.arange(1, scene.num_objects + 1)[:max_objects]
        for obj in ids:
            target = scene.labels == obj
            x, y = interior_point(target)
            click = predictor.predict(embedding, points=np.array([[x, y]]), labels=np.array([1]))
            clicks.append(mask_iou(click.masks[0], target))
            box = predictor.predict(embedding, box=mask_box(target))
            boxes.append(mask_iou(box.masks[0], target))
        report(progress, n + 1, len(scenes), "prompt quality")
    return PromptQuality(float(np.mean(clicks)), float(np.mean(boxes)), len(clicks))


def mask_agreement(reference: Any, predictor: Any, scenes: Sequence[Scene]) -> list[float]:
    """IoU between ``predictor``'s and ``reference``'s first mask for one centre click and one tight box
    on every object of ``scenes`` (click, box, click, box, ...): how far a faster precision moves the
    masks of the same model (both are :class:`sam_core.predictor.Predictor`)."""
    ious: list[float] = []
    for scene in scenes:
        expected_embedding, embedding = reference.encode(scene.image), predictor.encode(scene.image)
        for obj in range(1, scene.num_objects + 1):
            target = scene.labels == obj
            prompts = [{"points": np.array([interior_point(target)]), "labels": np.array([1])},
                       {"box": mask_box(target)}]
            for prompt in prompts:
                expected = reference.predict(expected_embedding, **prompt).masks[0]
                ious.append(mask_iou(predictor.predict(embedding, **prompt).masks[0], expected))
    return ious


def automask_quality(
    generator: Any,
    scenes: Sequence[Scene],
    match_iou: float = 0.5,
    progress: Optional[ProgressFn] = None,
    cancel: Optional[CancelToken] = None,
) -> AutomaskQuality:
    """Recall and spurious fraction of ``generator`` (an ``AutomaticMaskGenerator``) on ``scenes``."""
    found = objects = spurious = masks = 0
    for n, scene in enumerate(scenes):
        check(cancel)
        records = generator.generate(scene.image)
        predicted = [np.asarray(r["segmentation"], bool) for r in records]
        targets = [scene.labels == i for i in range(1, scene.num_objects + 1)]
        matrix = np.array([[mask_iou(p, t) for t in targets] for p in predicted]).reshape(len(predicted), len(targets))
        matched = matrix >= match_iou
        found += int(matched.any(axis=0).sum())
        spurious += int((~matched.any(axis=1)).sum())
        objects += len(targets)
        masks += len(predicted)
        report(progress, n + 1, len(scenes), "automatic masks")
    return AutomaskQuality(found / max(objects, 1), spurious / max(masks, 1), objects, masks)


@dataclass
class MatchCount:
    """Instances meant, instances found (matched one to one at the IoU threshold), masks returned."""

    instances: int = 0
    found: int = 0
    returned: int = 0

    @property
    def recall(self) -> float:
        return self.found / max(self.instances, 1)

    @property
    def precision(self) -> float:
        """Matched masks / masks returned (1.0 when none was returned)."""
        return self.found / self.returned if self.returned else 1.0

    def add(self, predicted: Sequence[np.ndarray], targets: Sequence[np.ndarray], match_iou: float) -> None:
        """Count one query: ``predicted`` masks best first, greedily matched to unmatched ``targets``."""
        free = list(range(len(targets)))
        for mask in predicted:
            ious = [mask_iou(mask, targets[t]) for t in free]
            if ious and max(ious) >= match_iou:
                free.pop(int(np.argmax(ious)))
                self.found += 1
        self.instances += len(targets)
        self.returned += len(predicted)


@dataclass
class ConceptQuality:
    """Text queries (one per word of the vocabulary per scene, words absent from a scene included, so
    that false finds count) and exemplar queries (one box of the first instance of each word shown),
    overall and per word."""

    text: MatchCount
    exemplar: MatchCount
    text_by_word: dict[str, MatchCount]
    exemplar_by_word: dict[str, MatchCount]


def concept_quality(
    predictor: Any,
    scenes: Sequence[Any],
    vocabulary: Sequence[str],
    threshold: float = 0.5,
    match_iou: float = 0.5,
    progress: Optional[ProgressFn] = None,
    cancel: Optional[CancelToken] = None,
) -> ConceptQuality:
    """Recall and precision at mask IoU ``match_iou`` of ``predictor`` (a
    :class:`sam_core.concepts.ConceptPredictor`) at score ``threshold`` on scenes with named instances
    (:class:`sam_core.train.concept_scenes.ConceptScene`). An exemplar box is the instance's tight box
    in pixel edges (x0, y0, x1 + 1, y1 + 1); its targets are every instance of its word, itself too."""
    text = {w: MatchCount() for w in vocabulary}
    exemplar = {w: MatchCount() for w in vocabulary}
    for n, scene in enumerate(scenes):
        check(cancel)
        embedding = predictor.encode(scene.image)
        for word in vocabulary:
            targets = [scene.labels == i for i in scene.instances(word)]
            found = predictor.find(embedding, text=word, threshold=threshold)
            text[word].add(list(found.masks), targets, match_iou)
            if targets:
                x0, y0, x1, y1 = mask_box(targets[0])
                found = predictor.find(embedding, exemplars=[(x0, y0, x1 + 1, y1 + 1)], threshold=threshold)
                exemplar[word].add(list(found.masks), targets, match_iou)
        report(progress, n + 1, len(scenes), "concept quality")

    def total(counts: dict[str, MatchCount]) -> MatchCount:
        return MatchCount(*(sum(getattr(c, f) for c in counts.values()) for f in ("instances", "found", "returned")))

    return ConceptQuality(total(text), total(exemplar), text, exemplar)


@dataclass
class PropagationQuality:
    """Mean over objects of the per-object IoU averaged over frames (``iou``), the fraction of
    absent frames reported absent (``absent_found`` of ``absent_frames``; NaN when none), objects."""

    iou: float
    absent_found: float
    absent_frames: int
    objects: int


def propagation_quality(
    model: Any,
    sequences: Sequence[Any],
    object_ids: Optional[Sequence[Sequence[int]]] = None,
    progress: Optional[ProgressFn] = None,
    cancel: Optional[CancelToken] = None,
) -> PropagationQuality:
    """Track objects of ``sequences`` (:class:`sam_core.train.sequences.Sequence`) from one click on
    frame 0 with a SAM 2.1 ``model``, through :class:`~sam_core.propagation.VideoSession`.

    ``object_ids`` gives the objects to track per sequence (default: every object whose visible part
    on frame 0 is at least twice the generator's smallest object); all of a sequence's objects are
    prompted in one session and propagated forward together.
    """
    from sam_core.frames import open_frames
    from sam_core.propagation import VideoSession

    ious: list[float] = []
    found = absent = 0
    for n, sequence in enumerate(sequences):
        check(cancel)
        ids = list(object_ids[n]) if object_ids is not None else prompted_objects(sequence.labels[0])
        if not ids:
            continue
        session = VideoSession(model, open_frames(sequence.frames))
        for obj in ids:
            x, y = interior_point(sequence.labels[0] == obj)
            session.add_prompt(0, obj, points=[[x, y]], labels=[1])
        per_object: dict[int, list[float]] = {obj: [] for obj in ids}
        for result in session.propagate("forward", cancel=cancel):
            for k, obj in enumerate(result.object_ids):
                target = sequence.labels[result.frame] == obj
                per_object[obj].append(mask_iou(result.masks[k], target))
                if not target.any():
                    absent += 1
                    found += int(not result.present[k])
        ious += [float(np.mean(v)) for v in per_object.values()]
        report(progress, n + 1, len(sequences), "propagation quality")
    return PropagationQuality(float(np.mean(ious)) if ious else float("nan"),
                              found / absent if absent else float("nan"), absent, len(ious))
