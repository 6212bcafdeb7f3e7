"""torchvision.transforms.functional.resize / to_pil_image on PIL images, as torchvision does them."""

import numpy as np
from PIL import Image


def to_pil_image(image):
    return Image.fromarray(np.asarray(image))


def resize(image, size, interpolation=None, max_size=None, antialias=True):
    # torchvision passes a PIL image to PIL's resize with bilinear resampling; size is (h, w).
    height, width = size
    return image.resize((int(width), int(height)), Image.BILINEAR)
