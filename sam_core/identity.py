"""Which weights a model holds: the id that embeddings, cache keys and exported files carry.

A model loaded by :func:`sam_core.zoo.load_model` has ``model_id`` (zoo name plus SHA-256, or the
checkpoint file's identity). Any other model (built in code, fine-tuned in memory) is identified by a
hash of its image encoder's weights, which is what an embedding depends on.
"""

from __future__ import annotations

import hashlib
from typing import Iterator

import torch

__all__ = ["model_id", "weights_id"]


def model_id(model: torch.nn.Module) -> str:
    """``model.model_id`` when the model has one, else :func:`weights_id`."""
    return getattr(model, "model_id", None) or weights_id(model)


def weights_id(model: torch.nn.Module) -> str:
    """``"weights:<hex>"``: a hash of the image encoder's state dict (names and bytes; int8-quantized
    layers by their dequantized weights)."""
    digest = hashlib.blake2b(digest_size=16)
    for name, value in sorted(model.image_encoder.state_dict().items()):
        digest.update(name.encode())
        for chunk in _state_bytes(value):
            digest.update(chunk)
    return f"weights:{digest.hexdigest()}"


def _state_bytes(value: object) -> Iterator[bytes]:
    """The bytes of a state-dict entry: a tensor, or the (weight, bias) of an int8-quantized layer."""
    if isinstance(value, torch.Tensor):
        if value.is_quantized:
            value = value.dequantize()
        yield value.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()
    elif isinstance(value, (tuple, list)):
        for item in value:
            yield from _state_bytes(item)
    elif value is not None:
        yield repr(value).encode()
