"""torchvision.transforms.ToTensor / Resize / Normalize on what Meta's ``sam2`` gives them (a NumPy
uint8 (H, W, 3) image, then (3, H, W) float tensors), as torchvision computes them. Scriptable, because
``sam2.utils.transforms`` wraps Resize and Normalize in ``torch.jit.script``."""

from typing import List

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


class ToTensor:
    """(H, W, C) uint8 array -> (C, H, W) float32 in [0, 1] (torchvision: ``.to(float32).div(255)``)."""

    def __call__(self, pic):
        array = np.asarray(pic)
        if array.ndim == 2:
            array = array[:, :, None]
        tensor = torch.from_numpy(array.transpose((2, 0, 1))).contiguous()
        if tensor.dtype == torch.uint8:
            return tensor.to(dtype=torch.get_default_dtype()).div(255)
        return tensor


class Resize(nn.Module):
    """Resize a (C, H, W) float tensor to ``size`` (h, w): bilinear, antialiased, half-pixel centres
    (torchvision >= 0.17 on tensors)."""

    def __init__(self, size: List[int]) -> None:
        super().__init__()
        self.size = [int(s) for s in size]

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        out = F.interpolate(img.unsqueeze(0), size=self.size, mode="bilinear", align_corners=False, antialias=True)
        return out.squeeze(0)


class Normalize(nn.Module):
    """(tensor - mean) / std per channel, as torchvision's ``normalize``."""

    def __init__(self, mean: List[float], std: List[float]) -> None:
        super().__init__()
        self.mean = [float(m) for m in mean]
        self.std = [float(s) for s in std]

    def forward(self, tensor: torch.Tensor) -> torch.Tensor:
        mean = torch.tensor(self.mean, dtype=tensor.dtype, device=tensor.device).view(-1, 1, 1)
        std = torch.tensor(self.std, dtype=tensor.dtype, device=tensor.device).view(-1, 1, 1)
        return tensor.sub(mean).div(std)
