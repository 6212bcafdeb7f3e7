from .boxes import batched_nms, box_area, nms  # noqa: F401
