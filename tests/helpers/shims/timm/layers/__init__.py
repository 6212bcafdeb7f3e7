"""timm.layers: the same stand-ins as timm.models.layers (test-only shim)."""

from timm.models.layers import DropPath, Mlp, to_2tuple, trunc_normal_  # noqa: F401
