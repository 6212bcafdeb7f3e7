"""torchvision.transforms.v2, the four transforms Sam3Processor composes, on (..., C, H, W) tensors.

Resize follows torchvision's ``resize_image`` for uint8 input off the native-uint8 path: to float32,
bilinear with antialias (align_corners False), round, back to uint8 (what torchvision does on a GPU
and on CPUs without AVX2).
"""

import torch

from . import functional  # noqa: F401


class Compose:
    def __init__(self, transforms):
        self.transforms = list(transforms)

    def __call__(self, x):
        for transform in self.transforms:
            x = transform(x)
        return x


class ToDtype:
    def __init__(self, dtype, scale=False):
        self.dtype, self.scale = dtype, scale

    def __call__(self, x):
        if x.dtype == self.dtype:
            return x
        if not self.scale:
            return x.to(self.dtype)
        if x.dtype == torch.uint8 and self.dtype.is_floating_point:
            return x.to(self.dtype) / 255.0
        raise NotImplementedError("ToDtype stand-in: only uint8 -> float with scale")


class Resize:
    def __init__(self, size, antialias=True):
        self.size, self.antialias = tuple(size), antialias

    def __call__(self, x):
        if tuple(x.shape[-2:]) == self.size:
            return x
        shape = x.shape
        batch = x.reshape(-1, *shape[-3:])
        out = torch.nn.functional.interpolate(
            batch.float(), size=self.size, mode="bilinear", align_corners=False, antialias=self.antialias
        )
        if x.dtype == torch.uint8:
            out = out.round_().to(torch.uint8)
        return out.reshape(*shape[:-2], *self.size)


class Normalize:
    def __init__(self, mean, std):
        self.mean, self.std = list(mean), list(std)

    def __call__(self, x):
        mean = torch.as_tensor(self.mean, dtype=x.dtype, device=x.device).view(-1, 1, 1)
        std = torch.as_tensor(self.std, dtype=x.dtype, device=x.device).view(-1, 1, 1)
        return (x - mean) / std
