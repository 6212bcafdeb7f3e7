"""torchvision.transforms.v2.functional.to_image: a PIL image or an array as a (C, H, W) tensor."""

import numpy as np
import torch


def to_image(image):
    if isinstance(image, torch.Tensor):
        return image
    array = np.asarray(image)
    if array.ndim == 2:
        array = array[:, :, None]
    return torch.from_numpy(np.ascontiguousarray(array)).permute(2, 0, 1)
