"""The SAM network in pure PyTorch (ViT and TinyViT encoders, prompt encoder, mask decoder), with
state-dict keys and numerics equal to the official ``segment_anything`` / ``mobile_sam`` models."""

from sam_core.models.build import build_sam, load_checkpoint, read_state_dict, save_checkpoint
from sam_core.models.config import CONFIGS, SamConfig, get_config, infer_config
from sam_core.models.sam import Sam

__all__ = [
    "CONFIGS",
    "Sam",
    "SamConfig",
    "build_sam",
    "get_config",
    "infer_config",
    "load_checkpoint",
    "read_state_dict",
    "save_checkpoint",
]
