"""Automatic masks with SAM 2.1: the AutomaticMaskGenerator on a SAM 2.1 predictor equals Meta's
``SAM2AutomaticMaskGenerator`` (sam2==1.1.0) on the same small random-weight checkpoint, made
"structured" as in test_automask (one kernel tap per transposed convolution, hypernetwork outputs
scaled up, weaker high-resolution skips, the mask threshold at a logit quantile) so that masks are
parts of the image: plain, with mask-to-mask refinement (use_m2m), with crops, single-mask output."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from core.test_automask import assert_same_records, scene
from helpers.sam2_checkpoints import SMALL_SAM2, load_official_sam2, official_mask_generator, write_official_sam2_checkpoint
from sam_core import zoo
from sam_core.automask import AutomaticMaskGenerator
from sam_core.errors import SamError
from sam_core.models.build import load_checkpoint
from sam_core.models.sam2 import build_sam2
from sam_core.predictor import Predictor

PARAMS = dict(points_per_side=8, pred_iou_thresh=0.3, stability_score_thresh=0.4, box_nms_thresh=0.9)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    folder = tmp_path_factory.mktemp("sam2amg")
    path = write_official_sam2_checkpoint(SMALL_SAM2, folder / "small_sam2.pt", seed=0)
    state = torch.load(path, map_location="cpu", weights_only=True)
    weights = state["model"]
    for key in ("sam_mask_decoder.output_upscaling.0.weight", "sam_mask_decoder.output_upscaling.3.weight"):
        weight = weights[key].clone()
        weight[:] = weight[:, :, :1, :1]
        weights[key] = weight
    for key in list(weights):
        if key.startswith("sam_mask_decoder.output_hypernetworks_mlps") and ".layers.2." in key:
            weights[key] = weights[key] * 20
        if key.startswith(("sam_mask_decoder.conv_s0.", "sam_mask_decoder.conv_s1.")):
            weights[key] = weights[key] * 0.1
    structured = folder / "structured.pt"
    torch.save(state, structured)
    official = load_official_sam2(SMALL_SAM2, structured)
    model = load_checkpoint(build_sam2(SMALL_SAM2), structured)
    predictor = Predictor(model)
    image = scene(120, 160, 8, seed=0)
    embedding = predictor.encode(image)
    points = np.stack(np.meshgrid(np.linspace(5, 155, 8), np.linspace(5, 115, 8)), -1).reshape(-1, 2)
    coords = torch.as_tensor(predictor.to_input_coords(points, image.shape[:2]), dtype=torch.float)
    low_res, _, _ = predictor.decode_torch(embedding, coords[:, None], torch.ones(len(points), 1, dtype=torch.int),
                                           upscale=False)
    threshold = float(torch.quantile(low_res.flatten()[::7], 0.85))
    model.mask_threshold = threshold  # read by the generator; the official one takes it as mask_threshold
    return official, predictor, image, threshold


@pytest.mark.parametrize("extra", [{}, {"use_m2m": True}, {"crop_n_layers": 1}, {"multimask_output": False, "points_per_side": 16}],
                         ids=["plain", "m2m", "crops", "single-mask"])
def test_equals_official_sam2_generator(setup, extra):
    official, predictor, image, threshold = setup
    params = {**PARAMS, **extra}
    expected = official_mask_generator(official, mask_threshold=threshold, **params).generate(image)
    got = AutomaticMaskGenerator(predictor, **params).generate(image)
    assert_same_records(got, expected, min_count=2)


def test_min_mask_region_area_is_refused_with_sam2(setup):
    _, predictor, _, _ = setup
    with pytest.raises(SamError, match="min_mask_region_area is not available with SAM 2.1"):
        AutomaticMaskGenerator(predictor, min_mask_region_area=10)


def test_zoo_recommends_the_official_sam2_thresholds():
    assert zoo.automask_defaults("sam2.1_hiera_tiny") == {
        "points_per_side": 32, "pred_iou_thresh": 0.8, "stability_score_thresh": 0.95}


@pytest.mark.slow
def test_automask_command_with_sam2_1_hiera_tiny_and_m2m_equals_official(sam2_tiny_checkpoint, tmp_path, capsys):
    import json

    from PIL import Image

    from helpers.cli import run_cli
    from sam_core.models.sam2 import SAM2_CONFIGS

    image = scene(200, 260, 6, seed=2)
    path = tmp_path / "scene.png"
    Image.fromarray(image).save(path)
    out = tmp_path / "records.json"
    options = ["--points-per-side", "4", "--pred-iou-thresh", "0", "--stability-thresh", "0", "--m2m"]
    code, stdout, err = run_cli(["automask", path, "--out", out, "--model", "sam2.1_hiera_tiny", "--checkpoint",
                                 sam2_tiny_checkpoint, "--quiet", *options], capsys)
    assert code == 0, err
    got = json.loads(out.read_text())
    official = load_official_sam2(SAM2_CONFIGS["sam2.1_hiera_tiny"], sam2_tiny_checkpoint)
    expected = official_mask_generator(official, points_per_side=4, pred_iou_thresh=0.0, stability_score_thresh=0.0,
                                       use_m2m=True, output_mode="coco_rle").generate(image)
    for record in got + expected:
        record["segmentation"] = _decode(record["segmentation"])
    assert_same_records(got, expected, min_count=1)


def _decode(rle: dict) -> np.ndarray:
    from pycocotools import mask as mask_utils

    return mask_utils.decode({"size": rle["size"], "counts": rle["counts"]}).astype(bool)


def test_geo_automask_runs_with_a_sam2_checkpoint(tmp_path, capsys):
    """The geo pipeline (tiles, polygons with the raster's CRS) with a SAM 2.1 checkpoint read from the
    weights alone: the command runs end to end and keeps the CRS."""
    import shapely
    from affine import Affine
    from rasterio.crs import CRS

    from helpers.georasters import known_scene, read_output, write_raster
    from sam_core.cli import main

    utm = CRS.from_epsg(32633)
    image, _ = known_scene((200, 220))
    raster = write_raster(tmp_path / "scene.tif", image, Affine(10.0, 0.0, 400000.0, 0.0, -10.0, 5600000.0), utm)
    checkpoint = write_official_sam2_checkpoint(SMALL_SAM2, tmp_path / "small_sam2.pt", seed=0)
    out = tmp_path / "out.gpkg"
    fast = ["--checkpoint", str(checkpoint), "--tile-size", "128", "--overlap", "32", "--quiet"]
    assert main(["geo", "automask", str(raster), str(out), *fast, "--points-per-side", "4", "--pred-iou-thresh", "0",
                 "--stability-thresh", "0", "--m2m"]) == 0
    assert "polygons from 4 tiles" in capsys.readouterr().out
    geoms, _, crs = read_output(out)
    assert crs == utm and len(geoms) > 0 and all(g.is_valid for g in geoms)
    assert all(shapely.box(400000.0, 5598000.0, 402200.0, 5600000.0).buffer(1e-6).contains(g) for g in geoms)
