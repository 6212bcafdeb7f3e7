"""What sam_core sees of a napari Image layer: spatial axes, slices, channels and contrast.

napari arrays are (..., row, col) = (..., y, x). The last two non-channel axes are the image plane;
axes before them are *stack axes*: (z), (t) or (t, z). A channel axis is the RGB(A) axis of an RGB
layer, or an axis the user names for multichannel data. Slices are read one at a time with
``np.asarray(data[index])``, so dask and zarr backed layers stay lazy; multiscale layers use their
full-resolution level.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional, Sequence, Tuple

import numpy as np

from sam_core.errors import SamError
from sam_core.imaging import Preparation

MAX_STACK_AXES = 2


def unwrap(obj: Any) -> Any:
    """The napari object behind ``obj``.

    napari hands plugin widgets a ``PublicOnlyProxy`` of the viewer, and every attribute or item read
    through it (``viewer.layers[name]``) returns a *new* proxy of the same layer, so ``is`` between
    two reads is never true. Compare and keep layers unwrapped; other objects pass through unchanged.
    """
    return getattr(obj, "__wrapped__", obj)


@dataclass
class ImageAccess:
    """Read access to ``layer``'s data for the model.

    channel_axis: data axis holding channels of a non-RGB layer (None: no channel axis).
    channels: channel indices the model sees (1 or 3; None: all of an RGB(A) layer).
    """

    layer: Any
    channel_axis: Optional[int] = None
    channels: Optional[Tuple[int, ...]] = None

    def __post_init__(self) -> None:
        self.layer = unwrap(self.layer)
        data = self.layer.data[0] if getattr(self.layer, "multiscale", False) else self.layer.data
        self.data = data
        shape = tuple(int(s) for s in data.shape)
        self.rgb = bool(getattr(self.layer, "rgb", False))
        if self.rgb:
            self._channel = len(shape) - 1
        elif self.channel_axis is not None:
            axis = int(self.channel_axis)
            if not -len(shape) <= axis < len(shape):
                raise SamError(f"channel axis {axis} does not exist: the layer has {len(shape)} axes")
            self._channel = axis % len(shape)
        else:
            self._channel = None
        self.spatial_shape = tuple(s for i, s in enumerate(shape) if i != self._channel)
        if len(self.spatial_shape) < 2:
            raise SamError(f"layer {self.layer.name!r} has shape {shape}: an image needs at least two axes")
        if len(self.spatial_shape) > 2 + MAX_STACK_AXES:
            raise SamError(
                f"layer {self.layer.name!r} has {len(self.spatial_shape)} non-channel axes {self.spatial_shape}: "
                "supported are 2D (y, x), 3D (z or t, y, x) and 4D (t, z, y, x). "
                "Take a sub-stack first, or name the channel axis."
            )
        if min(shape) == 0:
            raise SamError(f"layer {self.layer.name!r} is empty (shape {shape})")
        if self._channel is not None and self._channel >= len(shape) - 2 and not self.rgb:
            raise SamError("the channel axis must not be one of the last two (image plane) axes")
        if self.channels is not None:
            count = shape[self._channel] if self._channel is not None else 1
            bad = [c for c in self.channels if not 0 <= c < count]
            if bad:
                raise SamError(f"channel(s) {bad} do not exist: the layer has {count} channel(s)")

    # ------------------------------------------------------------------------------------ geometry

    @property
    def plane_shape(self) -> Tuple[int, int]:
        """(rows, cols) of one image plane."""
        return self.spatial_shape[-2], self.spatial_shape[-1]

    @property
    def stack_shape(self) -> Tuple[int, ...]:
        """Sizes of the stack axes (empty for a 2D image)."""
        return self.spatial_shape[:-2]

    def _spatial_axes(self) -> list:
        return [i for i in range(len(self.data.shape)) if i != self._channel]

    def _layer_axes(self) -> list:
        """Indices into the layer's world-facing axes (RGB layers have no channel axis there)."""
        if self.rgb:
            return list(range(len(self.spatial_shape)))
        return self._spatial_axes()

    @property
    def scale(self) -> Tuple[float, ...]:
        """The layer's scale for the spatial axes (world units per pixel)."""
        scale = np.asarray(self.layer.scale, dtype=float)
        return tuple(float(scale[i]) for i in self._layer_axes())

    @property
    def translate(self) -> Tuple[float, ...]:
        """The layer's translate for the spatial axes (world units)."""
        translate = np.asarray(self.layer.translate, dtype=float)
        return tuple(float(translate[i]) for i in self._layer_axes())

    def stack_index(self, world_point: Sequence[float]) -> Tuple[int, ...]:
        """The stack indices shown at ``world_point`` (the viewer's ``dims.point``)."""
        if not self.stack_shape:
            return ()
        data_point = np.asarray(self.layer.world_to_data(world_point), dtype=float)
        coords = [data_point[i] for i in self._layer_axes()]
        return tuple(int(np.clip(np.round(c), 0, n - 1)) for c, n in zip(coords[: len(self.stack_shape)], self.stack_shape))

    # ------------------------------------------------------------------------------------ pixels

    def plane(self, stack_index: Tuple[int, ...] = ()) -> np.ndarray:
        """One image plane (Y, X) or (Y, X, C), read lazily."""
        if len(stack_index) != len(self.stack_shape):
            raise SamError(f"a slice needs {len(self.stack_shape)} stack indices, got {stack_index}")
        return np.asarray(self.lazy_plane(stack_index))

    def lazy_plane(self, stack_index: Tuple[int, ...] = ()) -> Any:
        """One image plane (Y, X[, C]) as a lazy array (dask/zarr stay unread until sliced)."""
        key = self._key(stack_index)
        plane = self.data[tuple(key)]
        if self._channel is not None and not self.rgb:
            channel_pos = sum(1 for k in key[: self._channel] if isinstance(k, slice))
            plane = np.moveaxis(plane, channel_pos, -1) if isinstance(plane, np.ndarray) else _moveaxis(plane, channel_pos)
        return plane

    def intensity(self) -> np.ndarray:
        """All pixels as (..., Y, X) or, with channels, (..., Y, X, C) (every channel, read in full)."""
        data = np.asarray(self.data)
        if self._channel is not None:
            data = np.moveaxis(data, self._channel, -1)
        return data

    def _key(self, stack_index: Tuple[int, ...]) -> list:
        spatial = self._spatial_axes()
        stack_axes = spatial[: len(self.stack_shape)]
        key: list = [slice(None)] * len(self.data.shape)
        for axis, index in zip(stack_axes, stack_index):
            key[axis] = int(index)
        return key

    def preparation(self) -> Preparation:
        """The :class:`Preparation` for what the user sees: the layer's contrast limits as value range."""
        lo, hi = (float(v) for v in self.layer.contrast_limits)
        value_range = (lo, hi) if hi > lo else None
        return Preparation(value_range=value_range, channels=self.channels)

    def volume(self, stack_index: Tuple[int, ...], axis: int = -1) -> "StackView":
        """A lazy (N, Y, X[, C]) view along stack axis ``axis`` (default the last, z) at ``stack_index``."""
        if not self.stack_shape:
            raise SamError("this is a 2D image: there is no stack to propagate through")
        return StackView(self, tuple(stack_index), axis % len(self.stack_shape))


def _moveaxis(array: Any, source: int) -> Any:
    """Move axis ``source`` last on a dask array (or read other array types)."""
    try:
        import dask.array as da

        if isinstance(array, da.Array):
            return da.moveaxis(array, source, -1)
    except ImportError:
        pass
    return np.moveaxis(np.asarray(array), source, -1)


class StackView:
    """(N, Y, X[, C]) slices of an :class:`ImageAccess` along one stack axis, the others fixed."""

    def __init__(self, access: ImageAccess, stack_index: Tuple[int, ...], axis: int) -> None:
        self.access = access
        self.base = list(stack_index)
        self.axis = axis
        first = access.plane(tuple(stack_index))
        self.shape = (access.stack_shape[axis],) + first.shape
        self.dtype = first.dtype

    def index(self, i: int) -> Tuple[int, ...]:
        """The full stack index of slice ``i``."""
        full = list(self.base)
        full[self.axis] = int(i)
        return tuple(full)

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, i: int) -> np.ndarray:
        return self.access.plane(self.index(i))
