"""Helpers shared by the napari tests."""

from __future__ import annotations

import numpy as np
import pytest


def demo_available() -> bool:
    from sam_core import zoo

    return zoo.model_info("demo").bundled.is_file()


needs_demo = pytest.mark.skipif(not demo_available(), reason="the bundled demo model is not trained yet")


def wait_for(qtbot, session, timeout=60000):
    """Wait until the session's workers are done."""
    qtbot.waitUntil(lambda: not session.busy, timeout=timeout)


def iou(a, b) -> float:
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    return float(np.logical_and(a, b).sum() / max(1, np.logical_or(a, b).sum()))


def rectangle(r0, c0, r1, c1, lead=()):
    """The four corners of a rectangle for a Shapes layer, with leading stack coordinates ``lead``."""
    lead = list(lead)
    return np.array([lead + [r0, c0], lead + [r0, c1], lead + [r1, c1], lead + [r1, c0]], dtype=float)
