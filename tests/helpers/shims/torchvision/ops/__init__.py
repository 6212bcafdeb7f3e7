from .boxes import batched_nms, box_area, masks_to_boxes, nms  # noqa: F401
from .roi_align import RoIAlign, roi_align  # noqa: F401
