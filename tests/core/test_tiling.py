"""Tile grids, seam merging and tiled decoding, checked against images of known objects."""

from __future__ import annotations

import random
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from helpers.deterministic import ColourComponents, ColourPredictor  # noqa: E402

from sam_core.errors import SamError  # noqa: E402
from sam_core.masks import mask_iou  # noqa: E402
from sam_core.tiling import (  # noqa: E402
    MaskPiece,
    TiledPredictor,
    TileGrid,
    automask_tiled,
    border_edges,
    cut_edges,
    drop_duplicates,
    has_cut,
    merge_tile_masks,
    pieces_to_labels,
    records_to_pieces,
    remove_overlaps,
)


iou = mask_iou  # sam_core's one mask IoU

def disk(shape, cy, cx, r):
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r


def scene(shape=(300, 340)):
    """Known objects: one crossing a 4-tile corner, two touching across a seam, one in a tile's middle,
    a long bar across three tiles, a ring with a hole."""
    image = np.zeros(shape + (3,), dtype=np.uint8)
    objects = {}
    objects["corner_disk"] = disk(shape, 112, 112, 40)
    left = np.zeros(shape, bool)
    left[20:70, 180:212] = True
    right = np.zeros(shape, bool)
    right[20:70, 212:250] = True
    objects["touch_left"], objects["touch_right"] = left, right
    objects["small"] = disk(shape, 250, 40, 12)
    bar = np.zeros(shape, bool)
    bar[200:215, 60:330] = True
    objects["bar"] = bar
    objects["ring"] = disk(shape, 255, 200, 30) & ~disk(shape, 255, 200, 12)
    colours = [(200, 30, 30), (30, 200, 30), (30, 30, 200), (200, 200, 30), (30, 200, 200), (200, 30, 200)]
    for (name, mask), colour in zip(objects.items(), colours):
        image[mask] = colour
    return image, objects


def test_grid_covers_image_last_tiles_flush_and_cores_partition():
    grid = TileGrid(1000, 700, tile_size=256, overlap=64)
    assert grid.shape == (5, 4)
    cover = np.zeros((1000, 700), int)
    owners = np.zeros((1000, 700), int)
    for tile in grid:
        assert tile.height == 256 and tile.width == 256
        cover[tile.slices] += 1
        cx0, cy0, cx1, cy1 = tile.core
        assert tile.y0 <= cy0 < cy1 <= tile.y1 and tile.x0 <= cx0 < cx1 <= tile.x1
        owners[cy0:cy1, cx0:cx1] += 1
    assert cover.min() >= 1
    assert (owners == 1).all()
    assert max(t.y1 for t in grid) == 1000 and max(t.x1 for t in grid) == 700
    # neighbours overlap by at least the overlap
    assert grid[1].x0 == 192 and grid[0].x1 - grid[1].x0 == 64
    assert grid[0].inner_edges == (False, False, True, True)


def test_small_image_is_one_tile_and_bad_parameters_are_user_errors():
    grid = TileGrid(100, 80, tile_size=1024, overlap=128)
    assert len(grid) == 1 and (grid[0].height, grid[0].width) == (100, 80)
    assert grid[0].inner_edges == (False, False, False, False)
    with pytest.raises(SamError, match="overlap"):
        TileGrid(100, 100, tile_size=64, overlap=64)
    with pytest.raises(SamError, match="tile size"):
        TileGrid(100, 100, tile_size=4, overlap=0)


def test_prompt_goes_to_the_most_centred_tile():
    grid = TileGrid(600, 600, tile_size=256, overlap=128)
    # a point at x=200 lies in tiles starting at 0 and 128; it is more centred in the second
    tile = grid.best_tile(200, 40, 201, 41)
    assert (tile.x0, tile.y0) == (128, 0)
    assert tile.margin(200, 40, 201, 41) == pytest.approx(72 - 1 + 1)
    assert grid.best_tile(10, 10, 500, 20) is None  # wider than any tile


def test_tiled_automask_joins_objects_cut_by_seams_and_keeps_neighbours_apart():
    image, objects = scene()
    generator = ColourComponents()
    pieces = automask_tiled(image, generator, tile_size=128, overlap=32)
    assert generator.calls == len(TileGrid(300, 340, 128, 32))
    assert len(pieces) == len(objects)
    full = [p.window(0, 0, 300, 340) for p in pieces]
    for name, mask in objects.items():
        best = max(iou(mask, f) for f in full)
        assert best >= 0.99, name
    # the corner disk was seen by four tiles and is one object; the bar by several tiles
    corner = max(pieces, key=lambda p: iou(p.window(0, 0, 300, 340), objects["corner_disk"]))
    assert len(corner.tiles) == 4
    # the ring keeps its hole
    ring = max(full, key=lambda f: iou(f, objects["ring"]))
    assert not ring[255, 200]


def test_seam_merging_does_not_depend_on_tile_or_record_order():
    image, _ = scene()
    grid = TileGrid(300, 340, 128, 32)
    generator = ColourComponents()
    per_tile = {t.index: records_to_pieces(t, generator.generate(image[t.slices])) for t in grid}
    reference = merge_tile_masks(grid, per_tile)
    rng = random.Random(0)
    for _ in range(3):
        keys = list(per_tile)
        rng.shuffle(keys)
        shuffled = {}
        for k in keys:
            pieces = list(per_tile[k])
            rng.shuffle(pieces)
            shuffled[k] = pieces
        result = merge_tile_masks(grid, shuffled)
        assert len(result) == len(reference)
        for a, b in zip(result, reference):
            assert (a.y0, a.x0, a.tiles) == (b.y0, b.x0, b.tiles)
            assert np.array_equal(a.mask, b.mask)


def test_duplicate_in_overlap_is_dropped_and_distinct_masks_of_one_tile_never_chain():
    grid = TileGrid(100, 200, tile_size=120, overlap=40)
    assert len(grid) == 2
    a, b = grid[0], grid[1]
    obj = np.zeros((100, 200), bool)
    obj[40:60, 85:110] = True  # entirely inside the overlap [80, 120)
    # tile b sees it as two masks (split), tile a as one: the one of a matches only its best partner
    left = obj.copy()
    left[:, 98:] = False
    right = obj & ~left

    def piece(tile, mask):
        return MaskPiece(tile.y0, tile.x0, mask[tile.slices].copy(), 0.9, 0.9, (tile.index,)).trimmed()

    merged = merge_tile_masks(grid, {a.index: [piece(a, obj)], b.index: [piece(b, left), piece(b, right)]})
    assert len(merged) == 2  # one of b's parts joined with a's whole, the other stays separate
    assert sum(len(m.tiles) == 2 for m in merged) == 1
    merged = merge_tile_masks(grid, {a.index: [piece(a, obj)], b.index: [piece(b, obj)]})
    assert len(merged) == 1 and merged[0].area == obj.sum()


def test_tiles_that_disagree_near_a_tile_border_join_without_a_straight_edge_on_it():
    """Tile a sees the object run on up to its right border, tile b sees it from farther inside as a disk:
    near a's border a's vote fades, so the joined object is b's disk, with no straight edge on the border
    (a plain majority or union kept a's part up to the border: an edge on line x = 256)."""
    grid = TileGrid(240, 384, tile_size=256, overlap=128)
    a, b = grid[0], grid[1]
    assert (a.x0, a.x1, b.x0, b.x1) == (0, 256, 128, 384)
    shape = (240, 384)
    seen_by_b = disk(shape, 120, 236, 22)
    seen_by_a = seen_by_b.copy()
    seen_by_a[104:137, 236:256] = True  # a's mask runs on to its border

    def piece(tile, mask):
        return MaskPiece(tile.y0, tile.x0, mask[tile.slices].copy(), 0.9, 0.9, (tile.index,)).trimmed()

    assert border_edges(piece(a, seen_by_a), grid) == [("x", 256)]
    merged = merge_tile_masks(grid, {a.index: [piece(a, seen_by_a)], b.index: [piece(b, seen_by_b)]})
    assert len(merged) == 1
    assert border_edges(merged[0], grid) == []
    assert iou(merged[0].window(0, 0, *shape), seen_by_b) == 1.0


def test_a_tiles_near_duplicate_with_stray_pixels_is_dropped_before_the_seam_join():
    """One tile sees an object twice: once clean, once with a stray blob far away (box NMS keeps both)."""
    grid = TileGrid(100, 200, tile_size=120, overlap=40)
    a, b = grid[0], grid[1]
    obj = disk((100, 200), 50, 100, 15)  # crosses the seam
    stray = obj | disk((100, 200), 90, 190, 3)
    inner = disk((100, 200), 50, 100, 5)  # a part inside the object: distinct, must stay

    def piece(tile, mask, score):
        return MaskPiece(tile.y0, tile.x0, mask[tile.slices].copy(), score, 0.9, (tile.index,)).trimmed()

    clean, noisy, part = piece(b, obj, 0.95), piece(b, stray, 0.8), piece(b, inner, 0.9)
    for order in ([clean, noisy, part], [part, noisy, clean]):
        kept = drop_duplicates(order)
        assert len(kept) == 2 and all(k is not noisy for k in kept)
    merged = merge_tile_masks(grid, {a.index: [piece(a, obj, 0.9)], b.index: [noisy, part, clean]})
    whole = [m for m in merged if len(m.tiles) == 2]
    assert len(merged) == 2 and len(whole) == 1
    assert iou(whole[0].window(0, 0, 100, 200), obj) == 1.0


def test_overlaps_go_to_the_smaller_object_in_label_images():
    big = MaskPiece(0, 0, np.ones((50, 50), bool), 0.9)
    small = MaskPiece(10, 10, np.ones((10, 10), bool), 0.8)
    labels = pieces_to_labels([big, small], (60, 60))
    assert (labels[10:20, 10:20] == 2).all()
    assert (labels == 1).sum() == 2500 - 100
    disjoint = remove_overlaps([big, small])
    assert disjoint[0].area == 2400 and disjoint[1].area == 100


def test_tiled_predictor_routes_prompts_and_joins_objects_larger_than_a_tile():
    image, objects = scene()
    predictor = ColourPredictor()
    tiled = TiledPredictor(predictor, image, tile_size=128, overlap=32)
    # a small object inside one tile: one tile is encoded (lazily)
    result = tiled.predict(points=[(40, 250)], labels=[1])
    assert len(result.tiles) == 1 and predictor.encoded == 1
    assert result.logits is not None and result.logits.shape == (256, 256)  # of the one tile that decoded it
    assert iou(result.piece.window(0, 0, 300, 340), objects["small"]) == 1.0
    # the bar spans three tiles: decoding grows across the seams and joins
    result = tiled.predict(points=[(100, 207)], labels=[1])
    assert len(result.tiles) >= 3 and result.logits is None  # joined: no one low-resolution frame holds it
    assert iou(result.piece.window(0, 0, 300, 340), objects["bar"]) >= 0.99
    # a box larger than a tile
    result = tiled.predict(box=(55, 195, 335, 220))
    assert iou(result.piece.window(0, 0, 300, 340), objects["bar"]) >= 0.99
    with pytest.raises(SamError, match="outside"):
        tiled.predict(points=[(400, 10)], labels=[1])


def test_encode_all_encodes_every_tile_and_reports_progress():
    image, _ = scene()
    predictor = ColourPredictor()
    tiled = TiledPredictor(predictor, image, tile_size=128, overlap=32)
    seen = []
    assert tiled.encode_all(progress=lambda d, t, m: seen.append((d, t))) == len(tiled.grid)
    assert predictor.encoded == len(tiled.grid)
    assert seen[-1] == (len(tiled.grid), len(tiled.grid))


def test_tiled_predictor_drives_the_real_predictor(small_vit_checkpoint):
    """API check with the real Predictor (random small model): masks come back at full resolution."""
    from sam_core.imaging import Preparation
    from sam_core.predictor import Predictor

    predictor = Predictor(None, checkpoint=small_vit_checkpoint)
    image, _ = scene()
    tiled = TiledPredictor(predictor, image, tile_size=128, overlap=32)
    result = tiled.predict(points=[(150, 150), (20, 20)], labels=[1, 0])
    assert result.piece.mask.dtype == bool and result.tiles
    full = result.piece.window(0, 0, 300, 340)
    assert full.shape == (300, 340)
    assert predictor.encoder_runs == len(tiled.tiles_used) >= 1
    for one in (result, tiled.predict(points=[(150, 150)])):  # logits of the decoding tile, or None when joined
        assert (one.logits is None) == (len(one.tiles) > 1)
        assert one.logits is None or (one.logits.dtype == np.float32 and one.logits.shape == (256, 256))
    result = tiled.predict(box=(10, 10, 330, 290))  # larger than a tile: every tile it covers
    assert len(result.tiles) == len(tiled.grid) and result.logits is None
    # 16-bit data with one fixed value range for all tiles
    grey = (image[..., 0].astype(np.uint16) * 200)
    tiled16 = TiledPredictor(predictor, grey, tile_size=128, overlap=32, preparation=Preparation(value_range=(0, 51000)))
    assert tiled16.predict(points=[(150, 150)]).piece is not None
    # one point range for every predictor: the edges' half pixels (-0.5 and the width/height) are valid
    corners = [(-0.5, -0.5), (340.0, 300.0), (-0.5, 300.0), (340.0, -0.5)]
    small = np.ascontiguousarray(image[:100, :120])
    embedding = predictor.encode(small)
    for x, y in [(-0.5, -0.5), (120.0, 100.0)]:
        predictor.predict(embedding, points=np.array([[x, y]]), labels=np.array([1]))
    for x, y in corners:
        assert tiled.predict(points=[(x, y)]).piece is not None
    for x, y in [(-0.6, 10.0), (10.0, 300.1)]:
        with pytest.raises(SamError, match="outside the image"):
            tiled.predict(points=[(x, y)])


class MissesLeftEdgeObjects(ColourComponents):
    """A generator that finds nothing touching a tile's left side (a neighbour tile that found no partner)."""

    def generate(self, image: np.ndarray) -> list[dict]:
        return [r for r in super().generate(image) if not np.asarray(r["segmentation"])[:, 0].any()]


def seam_scene():
    """A disk across the seam of tiles 0 and 1 (128-pixel tiles, 32 overlap: x 96..128 is shared)."""
    image = np.zeros((200, 300, 3), np.uint8)
    truth = disk((200, 300), 60, 120, 30)
    image[truth] = (200, 30, 30)
    return image, truth


def test_an_object_cut_at_a_seam_without_partner_is_decoded_again_whole():
    image, truth = seam_scene()
    grid = TileGrid(200, 300, 128, 32)
    # without repair: a stub with a straight edge on tile 0's right border (x = 128)
    (stub,) = automask_tiled(image, MissesLeftEdgeObjects(), tile_size=128, overlap=32)
    assert cut_edges(stub, grid.tiles) == [("right", 128)] and has_cut(stub, grid)
    assert iou(stub.window(0, 0, 200, 300), truth) < 0.8
    # with repair: one whole object, no edge on any tile border
    predictor = ColourPredictor()
    (whole,) = automask_tiled(image, MissesLeftEdgeObjects(), tile_size=128, overlap=32, repair=predictor)
    assert iou(whole.window(0, 0, 200, 300), truth) >= 0.99
    assert not has_cut(whole, grid)
    assert predictor.encoded == 1  # one window, centred on the object


def test_repair_leaves_uncut_objects_alone_and_measures_cuts_on_any_border():
    image, objects = scene()
    grid = TileGrid(300, 340, 128, 32)
    plain = automask_tiled(image, ColourComponents(), tile_size=128, overlap=32)
    predictor = ColourPredictor()
    repaired = automask_tiled(image, ColourComponents(), tile_size=128, overlap=32, repair=predictor)
    assert predictor.encoded == 0  # every object was joined across its seams: nothing to decode again
    assert [p.sort_key() for p in plain] == [p.sort_key() for p in repaired]
    # an outline running along a border line is measured whichever side it lies on; the touching
    # rectangles meet on the border x = 212 (a tile there saw the object end: not a cut, not repaired)
    touching = max(plain, key=lambda p: iou(p.window(0, 0, 300, 340), objects["touch_right"]))
    assert border_edges(touching, grid) == [("x", 212)] and has_cut(touching, grid)
    assert border_edges(MaskPiece(0, 0, np.ones((10, 96), bool)), grid) == [("x", 96)]
    assert border_edges(MaskPiece(0, 0, np.ones((10, 95), bool)), grid) == []
