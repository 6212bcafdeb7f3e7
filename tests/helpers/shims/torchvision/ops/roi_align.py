"""torchvision.ops.roi_align in plain torch: a direct transcription of torchvision's CPU kernel
(bilinear samples averaged over each bin; sampling_ratio <= 0 means ceil(bin size) samples)."""

import math

import torch
from torch import nn


def _bilinear(feature, height, width, y, x):
    if y < -1.0 or y > height or x < -1.0 or x > width:
        return torch.zeros(feature.shape[0], dtype=feature.dtype)
    y = max(y, 0.0)
    x = max(x, 0.0)
    y_low, x_low = int(y), int(x)
    if y_low >= height - 1:
        y_high = y_low = height - 1
        y = float(y_low)
    else:
        y_high = y_low + 1
    if x_low >= width - 1:
        x_high = x_low = width - 1
        x = float(x_low)
    else:
        x_high = x_low + 1
    ly, lx = y - y_low, x - x_low
    hy, hx = 1.0 - ly, 1.0 - lx
    return (hy * hx * feature[:, y_low, x_low] + hy * lx * feature[:, y_low, x_high]
            + ly * hx * feature[:, y_high, x_low] + ly * lx * feature[:, y_high, x_high])


def roi_align(input, boxes, output_size, spatial_scale=1.0, sampling_ratio=-1, aligned=False):
    if isinstance(output_size, int):
        output_size = (output_size, output_size)
    if isinstance(boxes, (list, tuple)):
        boxes = torch.cat([torch.cat([torch.full_like(b[:, :1], i), b], dim=1) for i, b in enumerate(boxes)], dim=0)
    pooled_h, pooled_w = output_size
    channels, height, width = input.shape[1:]
    out = torch.zeros(len(boxes), channels, pooled_h, pooled_w, dtype=input.dtype)
    offset = 0.5 if aligned else 0.0
    for n, roi in enumerate(boxes.tolist()):
        feature = input[int(roi[0])].cpu()
        x0, y0 = roi[1] * spatial_scale - offset, roi[2] * spatial_scale - offset
        x1, y1 = roi[3] * spatial_scale - offset, roi[4] * spatial_scale - offset
        roi_w, roi_h = x1 - x0, y1 - y0
        if not aligned:
            roi_w, roi_h = max(roi_w, 1.0), max(roi_h, 1.0)
        bin_h, bin_w = roi_h / pooled_h, roi_w / pooled_w
        grid_h = sampling_ratio if sampling_ratio > 0 else math.ceil(roi_h / pooled_h)
        grid_w = sampling_ratio if sampling_ratio > 0 else math.ceil(roi_w / pooled_w)
        count = max(grid_h * grid_w, 1)
        for ph in range(pooled_h):
            for pw in range(pooled_w):
                total = torch.zeros(channels, dtype=input.dtype)
                for iy in range(grid_h):
                    y = y0 + ph * bin_h + (iy + 0.5) * bin_h / grid_h
                    for ix in range(grid_w):
                        x = x0 + pw * bin_w + (ix + 0.5) * bin_w / grid_w
                        total = total + _bilinear(feature, height, width, y, x)
                out[n, :, ph, pw] = total / count
    return out.to(input.device)


class RoIAlign(nn.Module):
    def __init__(self, output_size, spatial_scale, sampling_ratio, aligned=False):
        super().__init__()
        self.output_size, self.spatial_scale = output_size, spatial_scale
        self.sampling_ratio, self.aligned = sampling_ratio, aligned

    def forward(self, input, rois):
        return roi_align(input, rois, self.output_size, self.spatial_scale, self.sampling_ratio, self.aligned)
