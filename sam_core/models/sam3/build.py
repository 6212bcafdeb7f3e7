"""Build SAM 3 and load its weights: ``read_sam3_state_dict(path)``, ``load_sam3(path)``.

The official ``sam3.pt`` holds the image (concept) model under ``detector.`` and the video tracker
under ``tracker.``. Every detector weight our model has must be in the file, with its shape, and the
file may hold no detector weight we do not know, except the parts of the official detector that the
image (concept) model does not run: the tracker's own neck (``backbone.vision_backbone.sam2_convs.``,
for the interactive head), instance-query heads of the decoder (``transformer.decoder.instance_``)
and a mask-prompt encoder (``geometry_encoder.mask_encoder.``). The tracker's weights are not
loaded here: the interactive (point and box) model loads them with its neck
(:func:`sam_core.models.sam3.interactive.load_sam3_interactive`). The rotary tables
(``...attn.freqs_cis``) are computed; a file without them loads too.
"""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path
from typing import Mapping, Optional, Union

import torch

from sam_core.errors import SamError
from sam_core.models.sam3.config import Sam3Config, detector_state, infer_sam3_config, is_sam3_state
from sam_core.models.sam3.model import Sam3

PathLike = Union[str, Path]
_KNOWN_EXTRA = ("backbone.vision_backbone.sam2_convs.", "transformer.decoder.instance_", "geometry_encoder.mask_encoder.")
_COMPUTED = (".attn.freqs_cis",)


def read_sam3_state_dict(path: PathLike) -> dict[str, torch.Tensor]:
    """The tensors of a SAM 3 checkpoint file (official ``sam3.pt``, or a detector-only state dict,
    either plain or under a ``model`` key). Raises :class:`SamError` for a missing, truncated or
    foreign file."""
    from sam_core.models.build import load_failure

    path = Path(path)
    if not path.is_file():
        raise SamError(f"checkpoint file not found: {path}")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, zipfile.BadZipFile, RuntimeError, EOFError, OSError, ValueError) as exc:
        raise SamError(f"{path} is not a SAM 3 checkpoint (cannot read it as a PyTorch state dict: "
                       f"{load_failure(exc)}); if it was downloaded, delete it and download it again") from None
    if isinstance(data, dict) and isinstance(data.get("model"), dict):
        data = data["model"]
    if not (isinstance(data, dict) and all(isinstance(v, torch.Tensor) for v in data.values()) and is_sam3_state(data)):
        raise SamError(f"{path} is not a SAM 3 checkpoint (it holds no SAM 3 text encoder); "
                       f"use the official sam3.pt from https://huggingface.co/facebook/sam3")
    return data


def load_sam3_state(model: Sam3, state_dict: Mapping[str, torch.Tensor]) -> Sam3:
    """Copy the detector weights of ``state_dict`` into ``model`` (strict, see the module notes)."""
    state = detector_state(state_dict)
    expected = model.state_dict()
    missing = [k for k in expected if k not in state and not k.endswith(_COMPUTED)]
    unknown = [k for k in state if k not in expected and not k.startswith(_KNOWN_EXTRA)]
    wrong = [k for k in expected if k in state and tuple(state[k].shape) != tuple(expected[k].shape)]
    if missing or unknown or wrong:
        parts = []
        for label, keys in (("missing", missing), ("unexpected", unknown), ("with other shapes", wrong)):
            if keys:
                parts.append(f"{len(keys)} {label} ({', '.join(keys[:3])}{', ...' if len(keys) > 3 else ''})")
        raise SamError("these SAM 3 weights do not fit the model: " + "; ".join(parts))
    model.load_state_dict({k: state[k] for k in expected if k in state}, strict=False)
    return model


def load_sam3(checkpoint: Union[PathLike, Mapping[str, torch.Tensor]], config: Optional[Sam3Config] = None,
              device: Union[str, torch.device, None] = None) -> Sam3:
    """A SAM 3 model in eval mode with the weights of ``checkpoint`` (a file or a state dict); its
    configuration is inferred from the weights unless given."""
    state = read_sam3_state_dict(checkpoint) if isinstance(checkpoint, (str, Path)) else checkpoint
    config = config or infer_sam3_config(state)
    model = load_sam3_state(Sam3(config), state)
    return model.to(device or "cpu").eval()
