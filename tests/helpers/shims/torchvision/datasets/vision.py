"""torchvision.datasets.vision.VisionDataset: only the name (sam3 imports it; no test uses it)."""

import torch.utils.data


class VisionDataset(torch.utils.data.Dataset):
    def __init__(self, root=None, transforms=None, transform=None, target_transform=None):
        self.root, self.transforms = root, transforms
        self.transform, self.target_transform = transform, target_transform
