"""Build a SAM network and read / write checkpoints in the official format (a plain state dict)."""

from __future__ import annotations

import os
import pickle
import zipfile
from pathlib import Path
from typing import Mapping, Union

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from sam_core.errors import SamError
from sam_core.fileio import atomic_write
from sam_core.models.config import SamConfig, get_config, infer_config
from sam_core.models.sam import Sam

PathLike = Union[str, "os.PathLike[str]"]
StateDict = Mapping[str, torch.Tensor]


def build_sam(config: SamConfig | str, precision: str = "fp32") -> Sam:
    """A SAM network (random weights, eval mode, on the CPU) for a configuration or its name.

    ``precision`` applies to the image encoder (see :meth:`Sam.set_precision`); to use a GPU, build
    in fp32, load the weights, move the model, then call ``set_precision``.
    """
    if isinstance(config, str):
        config = get_config(config)
    sam = Sam(config).eval()
    return sam.set_precision(precision) if precision != "fp32" else sam


# nn.init functions and the Tensor methods they call that fill a tensor with initial values
_PARAMETER_FILLS = frozenset({
    "uniform_", "normal_", "trunc_normal_", "constant_", "zeros_", "ones_", "zero_", "fill_",
    "kaiming_uniform_", "kaiming_normal_", "xavier_uniform_", "xavier_normal_", "orthogonal_",
})


class skip_parameter_init(TorchFunctionMode):
    """While active (``with skip_parameter_init(): network = build_sam(config)``), building a network
    leaves its parameters uninitialized instead of filling them with random values: for a network whose
    every parameter a checkpoint replaces at once (:func:`load_checkpoint`, strict). Buffers and
    everything else are built as usual. It applies to the calling thread only.
    """

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if getattr(func, "__name__", "") in _PARAMETER_FILLS:
            target = args[0] if args else kwargs.get("tensor")  # nn.init passes the tensor by keyword
            if isinstance(target, nn.Parameter):
                return target
        return func(*args, **kwargs)


def read_state_dict(path: PathLike) -> dict[str, torch.Tensor]:
    """The state dict stored in a checkpoint file (plain, or wrapped as ``{"model": state_dict}``).

    Raises :class:`SamError` naming the file when it is missing or not a SAM checkpoint.
    """
    path = Path(path)
    if not path.is_file():
        raise SamError(f"checkpoint file not found: {path}")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, zipfile.BadZipFile, RuntimeError, EOFError, OSError, ValueError) as exc:
        raise SamError(f"{path} is not a SAM checkpoint (cannot read it as a PyTorch state dict: {load_failure(exc)})") from None
    if isinstance(data, dict) and isinstance(data.get("model"), dict):
        data = data["model"]
    if not (
        isinstance(data, dict)
        and data
        and all(isinstance(v, torch.Tensor) for v in data.values())
        and any(str(k).startswith("image_encoder.") for k in data)
        and any(str(k).startswith(("mask_decoder.", "sam_mask_decoder.")) for k in data)
    ):
        raise SamError(f"{path} is not a SAM checkpoint (it holds no image_encoder / mask_decoder weights)")
    return data


def load_failure(error: BaseException) -> str:
    """Why ``torch.load(..., weights_only=True)`` refused a file, in one line for the user.

    Files holding Python objects besides tensors are refused because loading them could run code;
    PyTorch's own advice to load them anyway is never repeated.
    """
    if isinstance(error, pickle.UnpicklingError) or "weights only" in str(error).lower().replace("_", " "):
        return ("it holds Python objects besides tensors and numbers, which could run code when loaded, so it is "
                "refused; use a file that holds only weights, e.g. one written by torch.save(model.state_dict(), path)")
    return (str(error).strip().splitlines() or [type(error).__name__])[0]


def _describe(state_dict: StateDict) -> str:
    from sam_core.models.sam2.config import infer_sam2_config, is_sam2_state_dict

    if is_sam2_state_dict(state_dict):
        try:
            sam2 = infer_sam2_config(state_dict)
        except SamError:
            return "it looks like an incomplete SAM 2 checkpoint"
        if sam2.name != "custom":
            return f"it looks like {sam2.name!r}"
        return f"it looks like a custom SAM 2 model (Hiera width {sam2.embed_dim}, stages {list(sam2.stages)})"
    try:
        config = infer_config(state_dict)
    except SamError:
        return "it does not look like a SAM checkpoint"
    if config.name != "custom":
        return f"it looks like {config.name!r}"
    if config.encoder == "vit":
        return (f"it looks like a custom ViT model (image_size {config.image_size}, embed_dim {config.embed_dim}, "
                f"depth {config.depth})")
    return f"it looks like a custom TinyViT model (embed dims {config.tiny_embed_dims})"


def _examples(keys: list[str]) -> str:
    shown = ", ".join(keys[:3])
    return shown + (", ..." if len(keys) > 3 else "")


def load_checkpoint(sam: nn.Module, checkpoint: PathLike | StateDict, *, take: bool = False) -> nn.Module:
    """Load weights (a file path or a state dict) into ``sam`` (a :class:`Sam` or a SAM 2.1 ``Sam2``)
    with strict key and shape matching.

    The tensors of a file become the model's own (no copy). Those of a state dict are copied, unless
    ``take`` is true: then the model takes them over (for a state dict read for this model alone, e.g.
    by :func:`read_state_dict`; the caller must not change them afterwards).

    Raises :class:`SamError` summarising missing, unexpected and mis-shaped tensors, and which model
    the checkpoint looks like.
    """
    from_file = isinstance(checkpoint, (str, os.PathLike))
    source = f"checkpoint {checkpoint}" if from_file else "the state dict"
    state_dict = read_state_dict(checkpoint) if from_file else checkpoint
    expected = sam.state_dict()
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    mismatched = sorted(
        k for k in set(expected) & set(state_dict) if tuple(expected[k].shape) != tuple(state_dict[k].shape)
    )
    if missing or unexpected or mismatched:
        problems = []
        if missing:
            problems.append(f"{len(missing)} missing tensors ({_examples(missing)})")
        if unexpected:
            problems.append(f"{len(unexpected)} unexpected tensors ({_examples(unexpected)})")
        if mismatched:
            problems.append(f"{len(mismatched)} tensors of another shape ({_examples(mismatched)})")
        raise SamError(
            f"{source} does not fit the model {sam.config.name!r}: {'; '.join(problems)}; "
            f"{_describe(state_dict)}. Choose the matching model."
        )
    if take or from_file:
        # the model's dtypes and devices stay as they are; the tensors are taken over, not copied
        state_dict = {k: v.to(device=expected[k].device, dtype=expected[k].dtype) for k, v in state_dict.items()}
        sam.load_state_dict(state_dict, strict=True, assign=True)
    else:
        sam.load_state_dict(state_dict, strict=True)
    return sam


def save_checkpoint(model: nn.Module | StateDict, path: PathLike) -> Path:
    """Write weights in the official format (a plain state dict of CPU tensors), atomically."""
    state_dict = model.state_dict() if isinstance(model, nn.Module) else model
    state_dict = {k: v.detach().cpu() for k, v in state_dict.items()}
    with atomic_write(path, "wb") as handle:
        torch.save(state_dict, handle)
    return Path(path)
