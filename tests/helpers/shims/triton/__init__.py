"""Test-only stand-in for ``triton``: ``sam3.model.edt`` (used only by SAM 3's video tracker) decorates
a kernel with ``triton.jit`` at import time. Calling such a kernel raises: no tracker test uses it."""

from triton import language  # noqa: F401


def jit(fn=None, **_kwargs):
    def wrap(kernel):
        def unavailable(*args, **kwargs):
            raise RuntimeError("triton kernels are not available in the test stand-in")

        return unavailable

    return wrap(fn) if fn is not None else wrap
