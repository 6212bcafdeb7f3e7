"""sam_core: Segment Anything in pure PyTorch, equal to the official implementation.

Data flows one way: image -> embedding -> prompts -> masks -> labels or polygons::

    from sam_core import Predictor
    predictor = Predictor("demo")
    embedding = predictor.encode(image)                   # once per image (cached)
    result = predictor.predict(embedding, points=[(120, 80)], labels=[1])
    result.masks[0]                                      # best candidate, (H, W) bool

Names are imported lazily so that ``import sam_core`` stays cheap (no torch until it is needed).
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    # errors and progress protocol
    "SamError": "sam_core.errors",
    "Cancelled": "sam_core.progress",
    "CancelToken": "sam_core.progress",
    # models and weights
    "SamConfig": "sam_core.models.config",
    "build_sam": "sam_core.models.build",
    "load_model": "sam_core.zoo",
    "list_models": "sam_core.zoo",
    "ensure_checkpoint": "sam_core.zoo",
    "resolve_device": "sam_core.zoo",
    "describe_auto": "sam_core.models.precision",
    # image preparation, prediction, cache
    "prepare_image": "sam_core.imaging",
    "Preparation": "sam_core.imaging",
    "Predictor": "sam_core.predictor",
    "Embedding": "sam_core.types",
    "Prediction": "sam_core.types",
    "Box": "sam_core.types",
    "ModelSpec": "sam_core.pool",
    "PredictorPool": "sam_core.pool",
    "EmbeddingCache": "sam_core.cache",
    "read_image": "sam_core.io",
    "write_mask_png": "sam_core.io",
    "write_label_image": "sam_core.io",
    # automatic masks
    "AutomaticMaskGenerator": "sam_core.automask",
    "masks_to_labels": "sam_core.automask",
    # ONNX export and the onnxruntime backend
    "export_onnx": "sam_core.export",
    "OnnxPredictor": "sam_core.onnx_backend",
    # large images, rasters and datasets
    "TileGrid": "sam_core.tiling",
    "TiledPredictor": "sam_core.tiling",
    "automask_tiled": "sam_core.tiling",
    "annotate_images": "sam_core.annotate",
    # stacks: volumes and time series
    "propagate": "sam_core.volume",
    "fill_between": "sam_core.volume",
    "automask_volume": "sam_core.volume",
    "link_slices": "sam_core.volume",
    # propagation with memory (SAM 2.1)
    "VideoSession": "sam_core.propagation",
    "open_frames": "sam_core.frames",
    # time-lapse tracking, lineage and the Cell Tracking Challenge format
    "Lineage": "sam_core.tracking",
    "track_objects": "sam_core.tracking",
    "write_ctc": "sam_core.tracking",
    "read_ctc": "sam_core.tracking",
    # training: fine-tuning on your own masks, generated scenes
    "finetune": "sam_core.train.finetune",
    "load_pairs": "sam_core.train.finetune",
    "FinetuneResult": "sam_core.train.finetune",
    "generate_scene": "sam_core.train.synthetic",
}

__all__ = sorted(_EXPORTS) + ["__version__"]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'sam_core' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
