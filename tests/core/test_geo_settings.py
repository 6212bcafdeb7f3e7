"""Settings of the raster runs are declared once (sam_core.geo.settings) and reach the command line and the
engine's requests from there (issue 16 item 3: a new option is added in one place)."""

from __future__ import annotations

import argparse
from dataclasses import fields

import pytest

from sam_core.cli import geo_cmd
from sam_core.engine import _COMMAND_PARAMS, _check_params
from sam_core.errors import SamError
from sam_core.geo.settings import FIND_TILING, OutputSettings, TilingSettings


def _geo_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser()
    geo_cmd.register(parser.add_subparsers(dest="command"))
    return parser


def test_every_setting_is_a_command_line_option_and_an_engine_parameter():
    parser = _geo_parser()
    args = parser.parse_args(["geo", "automask", "in.tif", "out.gpkg"])
    for cls in (TilingSettings, OutputSettings):
        for f in fields(cls):
            assert getattr(args, f.name) == f.default, f.name
            assert f.name in _COMMAND_PARAMS["automask_raster"], f.name
    assert set(FIND_TILING) <= set(_COMMAND_PARAMS["find_raster"])
    assert "repair_seams" not in _COMMAND_PARAMS["find_raster"]


def test_options_become_the_settings_objects():
    args = _geo_parser().parse_args([
        "geo", "automask", "in.tif", "out.gpkg", "--tile-size", "512", "--overlap", "64", "--extent", "1,2,3,4",
        "--resolution", "10,20", "--seam-iou", "0.7", "--no-repair-seams", "--min-area", "5", "--bands", "4,3,2"])
    assert geo_cmd.settings_from_args(TilingSettings, args) == TilingSettings(
        bands="4,3,2", tile_size=512, overlap=64, resolution=[10.0, 20.0], extent=[1.0, 2.0, 3.0, 4.0], seam_iou=0.7,
        repair_seams=False)
    assert geo_cmd.settings_from_args(OutputSettings, args) == OutputSettings(min_area=5.0)
    bad = _geo_parser().parse_args(["geo", "automask", "in.tif", "out.gpkg", "--extent", "1,2,3"])
    with pytest.raises(SamError, match="--extent needs 4 numbers"):
        geo_cmd.settings_from_args(TilingSettings, bad)


def test_the_engine_checks_each_settings_type_by_its_kind():
    params = {"raster": "in.tif", "output": "out.gpkg", "tile_size": 512.0, "extent": [1, 2, 3, 4], "repair_seams": False}
    checked = _check_params("automask_raster", params)
    assert checked["tile_size"] == 512 and isinstance(checked["tile_size"], int)
    assert checked["extent"] == (1.0, 2.0, 3.0, 4.0)
    with pytest.raises(SamError, match="parameter 'repair_seams' must be true or false"):
        _check_params("automask_raster", {"raster": "in.tif", "output": "o.gpkg", "repair_seams": "no"})
    with pytest.raises(SamError, match="unknown parameter.*repair_seams"):
        _check_params("find_raster", {"raster": "in.tif", "output": "o.gpkg", "repair_seams": True})
