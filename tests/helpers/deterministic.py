"""Deterministic stand-ins for the model, used by the tiling, geo and dataset tests.

They follow the public interfaces (``generate(rgb) -> records`` of the automatic mask generator,
``encode``/``predict`` of the predictor) so that the pipelines can be checked against known answers
without a trained model. Module-level classes, so that Dask workers can unpickle them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage


def _colour_key(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.ndim == 2:
        return image.astype(np.int64)
    return (image[..., 0].astype(np.int64) << 16) | (image[..., 1].astype(np.int64) << 8) | image[..., 2]


class ColourComponents:
    """One mask per connected region of one colour; black (0, 0, 0) is background.

    Records follow the official format (tile-sized boolean masks, bbox XYWH, scores).
    """

    def __init__(self, min_area: int = 8) -> None:
        self.min_area = min_area
        self.calls = 0

    def generate(self, image: np.ndarray, cancel=None) -> list[dict]:
        self.calls += 1
        key = _colour_key(image)
        records = []
        for colour in np.unique(key):
            if colour == 0:
                continue
            labels, n = ndimage.label(key == colour)
            for k in range(1, n + 1):
                mask = labels == k
                area = int(mask.sum())
                if area < self.min_area:
                    continue
                rows = np.flatnonzero(mask.any(axis=1))
                cols = np.flatnonzero(mask.any(axis=0))
                y, x = np.argwhere(mask)[0]
                records.append(
                    {
                        "segmentation": mask,
                        "area": area,
                        "bbox": [int(cols[0]), int(rows[0]), int(cols[-1] - cols[0] + 1), int(rows[-1] - rows[0] + 1)],
                        "predicted_iou": 0.95,
                        "stability_score": 0.97,
                        "point_coords": [[float(x), float(y)]],
                        "crop_box": [0, 0, image.shape[1], image.shape[0]],
                    }
                )
        return records


@dataclass
class _Prediction:
    masks: np.ndarray
    scores: np.ndarray
    logits: np.ndarray


class ColourPredictor:
    """Predictor stand-in: the object at a positive point (or filling a box) is its colour component."""

    def __init__(self) -> None:
        self.encoded = 0

    def encode(self, image: np.ndarray, preparation=None) -> np.ndarray:
        self.encoded += 1
        return _colour_key(image)

    def predict(self, embedding, points=None, labels=None, box=None, mask_input=None, multimask=True):
        key = embedding
        mask = np.zeros(key.shape, dtype=bool)
        if points is not None and len(points):
            for (x, y), label in zip(np.asarray(points), np.asarray(labels)):
                colour = key[int(y), int(x)]
                if label > 0 and colour != 0:
                    labels_img, _ = ndimage.label(key == colour)
                    mask |= labels_img == labels_img[int(y), int(x)]
        elif box is not None:
            x0, y0, x1, y1 = (int(round(v)) for v in box)
            inside = key[y0:y1, x0:x1]
            colours, counts = np.unique(inside[inside != 0], return_counts=True)
            if len(colours):
                colour = colours[np.argmax(counts)]
                mask[y0:y1, x0:x1] = inside == colour
        count = 3 if multimask else 1
        masks = np.repeat(mask[None], count, axis=0)
        scores = np.linspace(0.9, 0.8, count)
        return _Prediction(masks, scores, np.zeros((count, 256, 256), np.float32))


class DarkRegions:
    """One mask per connected region darker than ``threshold`` (grey mean of RGB): it would happily take a
    black nodata frame for an object, which the pipeline must prevent."""

    def __init__(self, threshold: float = 60.0, min_area: int = 30) -> None:
        self.threshold = threshold
        self.min_area = min_area

    def generate(self, image: np.ndarray, cancel=None) -> list[dict]:
        grey = np.asarray(image, dtype=np.float32).mean(axis=-1)
        labels, n = ndimage.label(grey <= self.threshold)
        records = []
        for k, region in enumerate(ndimage.find_objects(labels), start=1):
            mask = labels == k
            area = int(mask.sum())
            if area < self.min_area:
                continue
            records.append(
                {
                    "segmentation": mask,
                    "area": area,
                    "bbox": [region[1].start, region[0].start, region[1].stop - region[1].start, region[0].stop - region[0].start],
                    "predicted_iou": 0.9,
                    "stability_score": 0.9,
                    "point_coords": [[float(region[1].start), float(region[0].start)]],
                    "crop_box": [0, 0, image.shape[1], image.shape[0]],
                }
            )
        return records
