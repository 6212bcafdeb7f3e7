"""Linking automatic masks across slices joins fragments to the 3D object they are part of (issue 14)."""

from __future__ import annotations

import numpy as np

from sam_core.volume import link_slices


def _disc(shape, centre, radius):
    rows, cols = np.ogrid[: shape[0], : shape[1]]
    return (rows - centre[0]) ** 2 + (cols - centre[1]) ** 2 <= radius ** 2


def _sphere_slices(depth=12, size=64):
    """Per-slice labels of one sphere as automatic masks may come: the disc of each slice, plus, at
    both caps, a second small piece of the same sphere segmented as an object of its own."""
    slices = []
    for z in range(depth):
        radius = np.sqrt(max(0.0, 5.5 ** 2 - (z - 5.5) ** 2)) * 3
        labels = np.zeros((size, size), np.int32)
        labels[_disc((size, size), (32, 32), radius)] = 1
        slices.append(labels)
    slices[0][32, 30:34] = 2  # a few pixels of the bottom cap, inside the sphere's next slice
    slices[-1][[31, 33], 32] = 3  # scattered pixels of the top cap
    slices[5][40:44, 28:36] = 4  # a piece inside the sphere's outline on its neighbouring slices
    return slices


def test_cap_fragments_join_their_sphere():
    linked = link_slices(_sphere_slices())
    assert set(np.unique(linked)) == {0, 1}
    assert (linked[0][32, 30:34] == 1).all() and (linked[5][40:44, 28:36] == 1).all()


def test_separate_objects_and_stacked_objects_stay_apart():
    slices = _sphere_slices()
    for z, labels in enumerate(slices):
        labels[_disc(labels.shape, (10, 10), 6)] = 7  # a column elsewhere: its own object
    for z in range(6, 12):  # a thin object on top of a wide one: its lower end lies inside the wide one
        slices[z][(slices[z] != 0) & (slices[z] != 7)] = 0
        slices[z][_disc((64, 64), (32, 32), 3)] = 8
    for z in range(0, 6):
        slices[z][_disc((64, 64), (32, 32), 14)] = 1
    linked = link_slices(slices)
    ids = set(np.unique(linked)) - {0}
    assert len(ids) == 3  # the wide one, the thin one above it, the column
    assert linked[3, 32, 32] != linked[8, 32, 32] and linked[3, 10, 10] == linked[9, 10, 10]


def test_ids_count_from_one_in_order_of_appearance():
    slices = _sphere_slices()
    slices[2][_disc((64, 64), (8, 56), 4)] = 9
    linked = link_slices(slices)
    assert set(np.unique(linked)) == {0, 1, 2}
    assert linked[0, 32, 32] == 1 and linked[2, 8, 56] == 2

