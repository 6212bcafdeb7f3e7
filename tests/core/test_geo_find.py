"""``geo find`` / :func:`sam_core.geo.find.find_raster`: SAM 3 concept queries tile by tile on real GeoTIFFs,
read back from real GeoPackages, with a small random-weight SAM 3 checkpoint (mechanics: the window each
tile reads, the seam join, exemplars in map coordinates and other CRSs, attributes, CRS, resume, cancel,
errors); ``demo-concepts`` for behaviour (it finds the circles when asked for "circle")."""

from __future__ import annotations

import numpy as np
import pyogrio.raw
import pytest
import shapely
from affine import Affine
from rasterio.crs import CRS
from rasterio.features import rasterize

from helpers.cli import run_cli
from helpers.georasters import known_scene, read_output, write_raster
from helpers.official_sam3 import SMALL_SAM3, write_sam3_checkpoint
from sam_core.concepts import ConceptPredictor, load_concept_model
from sam_core.errors import SamError
from sam_core.geo.find import find_raster
from sam_core.geo.pipeline import TileStore
from sam_core.geo.raster import open_raster
from sam_core.geo.settings import TilingSettings
from sam_core.progress import CancelToken, Cancelled
from sam_core.tiling import TileGrid, merge_tile_masks, records_to_pieces, remove_overlaps

pytestmark = pytest.mark.usefixtures("single_thread")

UTM = CRS.from_epsg(32633)
TRANSFORM = Affine(10.0, 0.0, 400000.0, 0.0, -10.0, 5600000.0)  # pixel (col, row) -> UTM metres
SHAPE = (200, 220)  # rows, cols: 4 tiles of 128 with overlap 32
FIELDS = ["id", "class", "score", "area", "area_m2", "tile", "n_tiles"]


@pytest.fixture(scope="module")
def sam3_file(tmp_path_factory):
    return write_sam3_checkpoint(SMALL_SAM3, tmp_path_factory.mktemp("sam3geo") / "sam3.pt", seed=1)


@pytest.fixture(scope="module")
def raster(tmp_path_factory):
    image, _ = known_scene(SHAPE)
    return write_raster(tmp_path_factory.mktemp("find") / "scene.tif", image, TRANSFORM, UTM)


class CountingPredictor(ConceptPredictor):
    """A ConceptPredictor that counts the images it encodes."""

    encoded = 0

    def encode(self, image):
        self.encoded += 1
        return super().encode(image)


@pytest.fixture(scope="module")
def model(sam3_file):
    return load_concept_model(checkpoint=sam3_file)


@pytest.fixture(scope="module")
def shared(model):
    """One predictor for the references and the runs that need not count encodings (its embedding cache
    answers a window seen before)."""
    return ConceptPredictor(model)


def to_map(x0, y0, x1, y1):
    """A working-grid pixel box -> (xmin, ymin, xmax, ymax) in UTM metres."""
    (ax, ay), (bx, by) = TRANSFORM @ (x0, y0), TRANSFORM @ (x1, y1)
    return min(ax, bx), min(ay, by), max(ax, bx), max(ay, by)


def expected_pieces(predictor, raster, tile_size, overlap, text=None, boxes=(), threshold=0.0, **grid_options):
    """What the documented rules give: ConceptPredictor.find on each tile's window (exemplars in the tiles
    that hold them whole), joined by merge_tile_masks, overlaps removed by remove_overlaps.
    ``grid_options``: open_raster's resolution and extent."""
    with open_raster(raster, **grid_options) as view:
        grid = TileGrid(view.height, view.width, tile_size, overlap)
        per_tile = {}
        for tile in grid:
            local = [(x0 - tile.x0, y0 - tile.y0, x1 - tile.x0, y1 - tile.y0) for x0, y0, x1, y1 in boxes
                     if tile.contains_box(x0, y0, x1, y1)]
            if text is None and not local:
                continue
            rgb, _ = view.read(tile.y0, tile.x0, tile.y1, tile.x1)
            found = predictor.find(predictor.encode(rgb), text=text, exemplars=local, threshold=threshold)
            per_tile[tile.index] = records_to_pieces(
                tile, [{"segmentation": m, "predicted_iou": s} for m, s in zip(found.masks, found.scores)])
        return remove_overlaps(merge_tile_masks(grid, per_tile))


def assert_same_objects(path, pieces, text):
    geoms, attrs, crs = read_output(path)
    assert crs == UTM
    assert list(attrs) == FIELDS
    assert len(geoms) == len(pieces) > 0
    assert set(attrs["class"]) == {text}
    masks = [rasterize([(g, 1)], out_shape=SHAPE, transform=TRANSFORM).astype(bool) for g in geoms]
    wanted = [p.window(0, 0, *SHAPE) for p in pieces]
    for mask, score, area, geometry in zip(masks, attrs["score"], attrs["area"], geoms):
        match = [i for i, w in enumerate(wanted) if np.array_equal(w, mask)]
        assert len(match) == 1
        assert score == pytest.approx(pieces[match[0]].predicted_iou, abs=1e-9)
        assert area == pytest.approx(geometry.area) and area == pytest.approx(mask.sum() * 100.0)
    assert np.all((attrs["score"] >= 0) & (attrs["score"] <= 1))


def test_one_tile_equals_the_concept_predictor_on_the_same_window(model, shared, raster, tmp_path):
    predictor = CountingPredictor(model)
    reference = shared.find(shared.encode(known_scene(SHAPE)[0]), text="square",
                                             threshold=0.0)
    threshold = float((reference.scores[5] + reference.scores[6]) / 2)
    out = tmp_path / "one.gpkg"
    result = find_raster(raster, out, text="square", threshold=threshold, predictor=predictor,
                         tiling=TilingSettings(tile_size=256, overlap=0))
    assert (result.tiles_total, result.tiles_searched, predictor.encoded) == (1, 1, 1)
    pieces = expected_pieces(shared, raster, 256, 0, text="square", threshold=threshold)
    assert len(pieces) <= 6
    assert_same_objects(out, pieces, "square")
    assert not TileStore.folder_for(out).exists()


def test_tiles_are_encoded_once_and_joined_across_seams(model, shared, raster, tmp_path):
    predictor = CountingPredictor(model)
    out = tmp_path / "tiles.gpkg"
    result = find_raster(raster, out, text="square", threshold=0.0, predictor=predictor,
                         tiling=TilingSettings(tile_size=128, overlap=32))
    assert (result.tiles_total, result.tiles_searched, predictor.encoded) == (4, 4, 4)
    pieces = expected_pieces(shared, raster, 128, 32, text="square")
    assert_same_objects(out, pieces, "square")


class PerfectFinder:
    """A stand-in for a perfect concept model (same protocol as ConceptPredictor): every connected region
    of one colour in the window is an instance, score 0.9, wherever the tile cuts it."""

    model_id = "perfect"

    def check_text(self, text):
        return text

    def encode(self, rgb):
        return rgb

    def find(self, rgb, text=None, exemplars=(), threshold=0.5):
        from scipy import ndimage

        from sam_core.concepts import Findings

        masks = []
        for colour in np.unique(rgb.reshape(-1, 3), axis=0):
            if colour.any():
                labels, count = ndimage.label((rgb == colour).all(axis=-1))
                masks += [labels == i for i in range(1, count + 1)]
        return Findings(masks=np.array(masks, dtype=bool).reshape(-1, *rgb.shape[:2]), boxes=np.zeros((len(masks), 4)),
                        scores=np.full(len(masks), 0.9))


def test_nothing_found_is_an_empty_layer_with_the_fields(shared, raster, tmp_path):
    out = tmp_path / "none.gpkg"
    result = find_raster(raster, out, text="square", threshold=1.0, predictor=shared,
                         tiling=TilingSettings(tile_size=256, overlap=0))
    geoms, attrs, crs = read_output(out)
    assert result.count == 0 and geoms == [] and list(attrs) == FIELDS and crs == UTM


def test_instances_cut_by_seams_come_out_whole(raster, tmp_path):
    """known_scene's rectangle across the corner of 4 tiles comes out as one polygon equal to the truth,
    as do the two rectangles that touch (two polygons)."""
    from helpers.georasters import to_map as geometry_to_map

    _, truth = known_scene(SHAPE)
    out = tmp_path / "seams.gpkg"
    find_raster(raster, out, text="shape", predictor=PerfectFinder(), tiling=TilingSettings(tile_size=128, overlap=32))
    geoms, attrs, _ = read_output(out)
    assert len(geoms) == 3
    frame = shapely.box(0, 0, SHAPE[1], SHAPE[0])
    for name, tiles in (("corner", 4), ("touch_left", 1), ("touch_right", 1)):
        wanted = geometry_to_map(truth[name].intersection(frame), TRANSFORM)
        (index,) = [i for i, g in enumerate(geoms) if g.intersection(wanted).area > 0.5 * wanted.area]
        assert geoms[index].symmetric_difference(wanted).area < 1e-6, name
        assert attrs["n_tiles"][index] == tiles and attrs["score"][index] == pytest.approx(0.9)


def test_cli_writes_class_score_area_in_the_raster_crs(sam3_file, raster, tmp_path, capsys):
    out = tmp_path / "cli.gpkg"
    code, stdout, err = run_cli(["geo", "find", raster, out, "--text", "red square", "--threshold", "0.2",
                                 "--tile-size", "128", "--overlap", "32", "--checkpoint", sam3_file, "--quiet"], capsys)
    assert code == 0, err
    assert "polygons from 4 tiles" in stdout and str(out) in stdout
    geoms, attrs, crs = read_output(out)
    assert crs == UTM and list(attrs) == FIELDS and len(geoms) > 0
    assert set(attrs["class"]) == {"red square"} and attrs["score"].min() > 0.2
    assert np.allclose(attrs["area_m2"], attrs["area"]) and all(g.is_valid for g in geoms)
    assert all(shapely.box(400000, 5598000, 402200, 5600000).buffer(1e-6).contains(g) for g in geoms)


def test_exemplars_in_map_coordinates_a_file_in_another_crs_and_points(shared, raster, tmp_path, capsys, sam3_file):
    """An exemplar box in map coordinates is the ConceptPredictor's pixel box; the same box as a polygon
    in EPSG:4326 gives the same polygons; a point is a 32-pixel box centred on it."""
    from rasterio.warp import transform_geom

    pixel_box = (80.0, 76.0, 150.0, 150.0)  # the 'corner' rectangle of known_scene
    settings = TilingSettings(tile_size=256, overlap=0)
    in_map = tmp_path / "map.gpkg"
    find_raster(raster, in_map, exemplars=[to_map(*pixel_box)], threshold=0.0, predictor=shared,
                tiling=settings)
    assert_same_objects(in_map, expected_pieces(shared, raster, 256, 0, boxes=[pixel_box]), "exemplar")

    polygon = shapely.geometry.shape(transform_geom(UTM, "EPSG:4326", shapely.geometry.mapping(shapely.box(*to_map(*pixel_box)))))
    file = tmp_path / "exemplars.gpkg"
    pyogrio.raw.write(str(file), shapely.to_wkb(np.array([polygon], dtype=object)), [np.array([1])], ["n"],
                      driver="GPKG", crs="EPSG:4326", geometry_type="Polygon")
    from_file = tmp_path / "file.gpkg"
    code, _, err = run_cli(["geo", "find", raster, from_file, "--exemplars", file, "--threshold", "0",
                            "--tile-size", "256", "--overlap", "0", "--checkpoint", sam3_file, "--quiet"], capsys)
    assert code == 0, err
    geoms_map, attrs_map, _ = read_output(in_map)
    geoms_file, attrs_file, _ = read_output(from_file)
    # the box comes back from degrees within a fraction of a pixel: the same instances
    assert len(geoms_file) == len(geoms_map)
    assert np.allclose(attrs_file["score"], attrs_map["score"], atol=2e-3)

    point = tmp_path / "point.gpkg"
    cx, cy = TRANSFORM @ (115.0, 113.0)
    find_raster(raster, point, exemplars=str(_points_file(tmp_path, [(cx, cy)])), threshold=0.0,
                predictor=shared, tiling=settings)
    assert_same_objects(point, expected_pieces(shared, raster, 256, 0, boxes=[(99, 97, 131, 129)]),
                        "exemplar")


def _points_file(folder, points):
    path = folder / "points.geojson"
    pyogrio.raw.write(str(path), shapely.to_wkb(np.array([shapely.Point(p) for p in points], dtype=object)),
                      [np.arange(len(points))], ["n"], driver="GeoJSON", crs="EPSG:32633", geometry_type="Point")
    return path


def test_exemplars_follow_the_working_grid_of_an_extent_and_a_resolution(shared, raster, tmp_path):
    """With --extent and --resolution the raster is read on another pixel grid: an exemplar in map
    coordinates lands on that grid's pixels."""
    extent = (400300.0, 5598400.0, 401900.0, 5599800.0)  # 160 x 140 source pixels, 80 x 70 at 20 m
    box = to_map(80, 76, 150, 150)  # known_scene's 'corner' rectangle, in metres
    grid_box = ((box[0] - extent[0]) / 20, (extent[3] - box[3]) / 20, (box[2] - extent[0]) / 20, (extent[3] - box[1]) / 20)
    out = tmp_path / "grid.gpkg"
    result = find_raster(raster, out, exemplars=[box], threshold=0.0, predictor=shared,
                         tiling=TilingSettings(tile_size=128, overlap=0, extent=extent, resolution=20.0))
    assert result.tiles_total == 1
    pieces = expected_pieces(shared, raster, 128, 0, boxes=[grid_box], extent=extent, resolution=20.0)
    geoms, attrs, crs = read_output(out)
    assert crs == UTM and len(geoms) == len(pieces) > 0
    assert sorted(attrs["score"]) == pytest.approx(sorted(p.predicted_iou for p in pieces), abs=1e-9)
    assert all(shapely.box(*extent).buffer(1e-6).contains(g) for g in geoms)


def test_an_exemplar_is_used_in_the_tiles_that_hold_it_whole(model, shared, raster, tmp_path, capsys, sam3_file):
    box = (20.0, 20.0, 60.0, 60.0)  # whole in tile 0 only (tiles start at x, y = 0 and 96)
    predictor = CountingPredictor(model)
    out = tmp_path / "ex.gpkg"
    result = find_raster(raster, out, exemplars=[to_map(*box)], threshold=0.0, predictor=predictor,
                         tiling=TilingSettings(tile_size=128, overlap=32))
    assert (result.tiles_searched, result.tiles_total, predictor.encoded) == (1, 4, 1)
    assert_same_objects(out, expected_pieces(shared, raster, 128, 32, boxes=[box]), "exemplar")
    # with a text every tile is searched; the exemplar sharpens the query where it lies
    both = tmp_path / "both.gpkg"
    result = find_raster(raster, both, text="square", exemplars=[to_map(*box)], threshold=0.0,
                         predictor=shared,
                         tiling=TilingSettings(tile_size=128, overlap=32))
    assert result.tiles_searched == 4
    assert_same_objects(both, expected_pieces(shared, raster, 128, 32, text="square", boxes=[box]),
                        "square")
    code, stdout, _ = run_cli(["geo", "find", raster, tmp_path / "cli.gpkg", "--exemplar", ",".join(map(str, to_map(*box))),
                               "--threshold", "0",
                               "--tile-size", "128", "--overlap", "32", "--checkpoint", sam3_file, "--quiet"], capsys)
    assert code == 0 and "1 of them hold an exemplar and were searched (add --text" in stdout


def test_cancel_keeps_finished_tiles_and_a_rerun_resumes_them(model, shared, raster, tmp_path):
    out = tmp_path / "resume.gpkg"
    settings = TilingSettings(tile_size=128, overlap=32)

    def cancelled_after_two_tiles(text):
        token, calls = CancelToken(), []

        def progress(done, total, message):
            calls.append(done)
            if done == 2:
                token.cancel()

        with pytest.raises(Cancelled):
            find_raster(raster, out, text=text, threshold=0.1, predictor=shared, tiling=settings,
                        progress=progress, cancel=token)
        assert not out.exists()
        assert len(list(TileStore.folder_for(out).glob("tile_*.npz"))) == 2
        return calls

    cancelled_after_two_tiles("circle")
    assert cancelled_after_two_tiles("square")[0] == 0  # another query never reuses the tiles of "circle"
    predictor = CountingPredictor(model)
    result = find_raster(raster, out, text="square", threshold=0.1, predictor=predictor, tiling=settings)
    assert (result.tiles_resumed, predictor.encoded) == (2, 2)
    assert not TileStore.folder_for(out).exists()
    fresh = tmp_path / "fresh.gpkg"
    find_raster(raster, fresh, text="square", threshold=0.1, predictor=shared, tiling=settings)
    assert read_output(out)[1]["score"].tolist() == read_output(fresh)[1]["score"].tolist()
    assert [g.wkt for g in read_output(out)[0]] == [g.wkt for g in read_output(fresh)[0]]


@pytest.mark.parametrize("options, message", [
    (["--text", ""], "the text is empty"),
    (["--text", "nucleus " * 20], "too long: 40 tokens, SAM 3 reads at most 30"),
    (["--text", "building", "--model", "vit_b"], "'vit_b' cannot find objects by text or exemplar; models that can: sam3"),
    (["--exemplar", "0,0,10,10"], r"exemplar\(s\) 1 lie outside the raster \(check the exemplars' CRS and extent\)"),
    (["--exemplar", "400100,5598500,401900,5599900"], "does not lie whole in any tile of 128 pixels"),
    (["--text", "building", "--threshold", "2"], "threshold is a score between 0 and 1"),
    ([], "nothing to find"),
])
def test_bad_input_is_one_error_line_and_no_output(options, message, sam3_file, raster, tmp_path, capsys):
    import re

    out = tmp_path / "bad.gpkg"
    code, _, err = run_cli(["geo", "find", raster, out, *options, "--tile-size", "128", "--overlap", "32",
                            "--checkpoint", sam3_file, "--quiet"], capsys)
    assert code == 2 and err.startswith("error: ") and err.count("\n") == 1, err
    assert re.search(message, err), err
    assert not out.exists() and not TileStore.folder_for(out).exists()


def test_an_exemplar_layer_outside_the_raster_is_named(shared, raster, tmp_path):
    far = _points_file(tmp_path, [(100.0, 100.0), (400500.0, 5599500.0)])
    with pytest.raises(SamError, match=r"exemplar\(s\) 1 lie outside the raster"):
        find_raster(raster, tmp_path / "x.gpkg", text="square", exemplars=str(far), predictor=shared)


def test_the_engine_runs_find_raster_with_flat_json(shared, sam3_file, raster, tmp_path):
    """The QGIS engine's request: flat JSON parameters, the same polygons as find_raster; its errors are
    SamErrors (user errors) that name the parameter or the models that can find concepts."""
    from sam_core.concepts import concept_models
    from sam_core.engine import Engine

    engine, events = Engine(), []
    assert engine.run("concept_models", {}, lambda *a: None, CancelToken()) == concept_models()
    params = {"raster": str(raster), "output": str(tmp_path / "engine.gpkg"), "text": "square", "threshold": 0.1,
              "exemplars": [list(to_map(20, 20, 60, 60))], "exemplar_crs": "EPSG:32633", "tile_size": 128,
              "overlap": 32, "model": "sam3", "checkpoint": str(sam3_file)}
    result = engine.run("find_raster", dict(params), lambda *a: events.append(a), CancelToken())
    assert result["tiles_total"] == 4 and result["tiles_searched"] == 4 and events[-1][:2] == (4, 4)
    direct = tmp_path / "direct.gpkg"
    find_raster(raster, direct, text="square", threshold=0.1, exemplars=[to_map(20, 20, 60, 60)], predictor=shared,
                tiling=TilingSettings(tile_size=128, overlap=32))
    assert [g.wkt for g in read_output(params["output"])[0]] == [g.wkt for g in read_output(direct)[0]]
    with pytest.raises(SamError, match="parameter 'text' must be a word or short phrase"):
        engine.run("find_raster", dict(params, text=3), lambda *a: None, CancelToken())
    with pytest.raises(SamError, match="parameter 'exemplars' must be a vector file path"):
        engine.run("find_raster", dict(params, exemplars=[[1, 2]]), lambda *a: None, CancelToken())
    with pytest.raises(SamError, match="'vit_b' cannot find objects by text or exemplar; models that can: sam3"):
        engine.run("find_raster", dict(params, model="vit_b", checkpoint=None), lambda *a: None, CancelToken())
