"""The model zoo: official entries, checkpoints found / downloaded / placed by hand, devices, loading, CLI."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from helpers.checkpoints import SMALL_VIT
from helpers.http_server import FileServer, closed_port_url
from sam_core import weights, zoo
from sam_core.cli import main
from sam_core.errors import SamError
from sam_core.models import config as config_module
from sam_core.models.build import read_state_dict

ROOT = Path(__file__).resolve().parents[2]

OFFICIAL = {
    "vit_b": ("https://dl.fbaipublicfiles.com/segment_anything/sam_vit_b_01ec64.pth", 375_042_383,
              "ec2df62732614e57411cdcf32a23ffdf28910380d03139ee0f4fcbe91eb8c912"),
    "vit_l": ("https://dl.fbaipublicfiles.com/segment_anything/sam_vit_l_0b3195.pth", 1_249_524_607,
              "3adcc4315b642a4d2101128f611684e8734c41232a17c648ed1693702a49a622"),
    "vit_h": ("https://dl.fbaipublicfiles.com/segment_anything/sam_vit_h_4b8939.pth", 2_564_550_879,
              "a7bf3b02f3ebf1267aba913ff637d9a2d5c33d3173bb679e46d9f338c26f262e"),
    "vit_t": ("https://github.com/ChaoningZhang/MobileSAM/raw/f706ad9c4eb7f219c00d9050e46328518ffb65d2/weights/mobile_sam.pt",
              40_728_226, "6dbb90523a35330fedd7f1d3dfc66f995213d81b29a5ca8108dbcdd4e37d6c2f"),
}


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def folder(tmp_path, monkeypatch):
    """An empty checkpoint folder set through the environment."""
    path = tmp_path / "checkpoints"
    monkeypatch.setenv(weights.CHECKPOINTS_ENV, str(path))
    return path


@pytest.fixture
def server(monkeypatch):
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    srv = FileServer().start()
    yield srv
    srv.stop()


@pytest.fixture
def small_config(monkeypatch):
    monkeypatch.setitem(config_module.CONFIGS, SMALL_VIT.name, SMALL_VIT)
    return SMALL_VIT


def patch_entry(monkeypatch, name: str, data: bytes, url: str, config_name: str = "vit_b") -> zoo.ModelInfo:
    """Point zoo entry ``name`` at ``url`` serving ``data``."""
    info = zoo.ModelInfo(
        name=name, config_name=config_name, url=url, size=len(data), sha256=sha(data),
        description="test entry", filename=f"{name}_test.pth",
    )
    monkeypatch.setitem(zoo.MODELS, name, info)
    return info


# --- the zoo's entries ------------------------------------------------------------------------------


def test_official_entries_are_exact():
    for name, (url, size, digest) in OFFICIAL.items():
        info = zoo.MODELS[name]
        assert (info.url, info.size, info.sha256, info.config_name) == (url, size, digest, name)
        assert info.filename == url.rsplit("/", 1)[1]
        assert info.bundled is None
    assert zoo.MODELS["demo"].bundled == ROOT / "sam_core" / "data" / "demo.pt"
    assert {n for n, i in zoo.MODELS.items() if i.family == "sam"} <= set(config_module.CONFIGS)


def test_unknown_name_lists_the_known_ones(folder):
    for call in (lambda: zoo.ensure_checkpoint("vit_x"), lambda: zoo.load_model("vit_x")):
        with pytest.raises(SamError) as info:
            call()
        assert "vit_x" in str(info.value) and all(name in str(info.value) for name in zoo.MODELS)


# --- devices ----------------------------------------------------------------------------------------


def test_resolve_device():
    assert zoo.resolve_device(None) == torch.device("cpu")
    assert zoo.resolve_device("cpu") == torch.device("cpu")
    assert zoo.resolve_device(torch.device("cpu")) == torch.device("cpu")
    assert str(zoo.resolve_device("auto")).split(":")[0] in {"cpu", "cuda", "mps"}
    assert "cpu" in zoo.available_devices()
    for bad in ("gpu0", "xla"):
        with pytest.raises(SamError, match="available"):
            zoo.resolve_device(bad)


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA GPU is present")
def test_missing_cuda_is_a_user_error():
    for name in ("cuda", "cuda:1"):
        with pytest.raises(SamError) as info:
            zoo.resolve_device(name)
        assert "not available" in str(info.value) and "cpu" in str(info.value)
    assert zoo.resolve_device("auto").type in {"cpu", "mps"}


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU")
def test_cuda_when_present():
    assert zoo.resolve_device("cuda").type == "cuda"
    assert zoo.resolve_device("cuda:0") == torch.device("cuda:0")
    assert zoo.resolve_device("auto").type == "cuda"
    with pytest.raises(SamError):
        zoo.resolve_device(f"cuda:{torch.cuda.device_count()}")


# --- finding and downloading checkpoints ------------------------------------------------------------


def test_ensure_checkpoint_downloads_once(folder, server, monkeypatch):
    data = os.urandom(300_000)
    server.files["/m.pth"] = data
    info = patch_entry(monkeypatch, "vit_b", data, server.url("/m.pth"))
    seen = []
    path = zoo.ensure_checkpoint("vit_b", progress=lambda d, t, m: seen.append(d))
    assert path == folder / info.filename and path.read_bytes() == data
    assert seen[-1] == len(data)
    assert zoo.ensure_checkpoint("vit_b") == path
    assert zoo.find_checkpoint("vit_b") == path
    assert len(server.requests) == 1  # the second call used the file


def test_file_placed_by_hand_is_used_without_network(folder, monkeypatch):
    data = os.urandom(50_000)
    info = patch_entry(monkeypatch, "vit_b", data, closed_port_url())
    folder.mkdir()
    (folder / info.filename).write_bytes(data)
    assert zoo.find_checkpoint("vit_b") == folder / info.filename
    assert weights.cached_sha256(folder / info.filename) == info.sha256  # verified once, recorded
    assert zoo.ensure_checkpoint("vit_b") == folder / info.filename


def test_wrong_file_placed_by_hand_is_refused_and_kept(folder, monkeypatch):
    data = os.urandom(50_000)
    info = patch_entry(monkeypatch, "vit_b", data, closed_port_url())
    folder.mkdir()
    wrong = os.urandom(50_000)
    (folder / info.filename).write_bytes(wrong)
    with pytest.raises(SamError, match="not the official"):
        zoo.ensure_checkpoint("vit_b")
    assert (folder / info.filename).read_bytes() == wrong
    status = {s.name: s for s in zoo.list_models()}["vit_b"]
    assert not status.present and "not the official" in status.note


def test_offline_download_names_address_and_folder(folder, monkeypatch):
    url = closed_port_url("/sam_vit_b_01ec64.pth")
    patch_entry(monkeypatch, "vit_b", b"x" * 10, url)
    with pytest.raises(SamError) as info:
        zoo.ensure_checkpoint("vit_b")
    assert url in str(info.value) and str(folder) in str(info.value)


def test_no_download_when_forbidden(folder, monkeypatch):
    patch_entry(monkeypatch, "vit_b", b"x" * 10, closed_port_url())
    with pytest.raises(SamError, match="python -m sam_core download vit_b"):
        zoo.ensure_checkpoint("vit_b", download=False)


def test_folder_argument_beats_environment(folder, server, tmp_path, monkeypatch):
    data = os.urandom(1000)
    server.files["/m.pth"] = data
    info = patch_entry(monkeypatch, "vit_t", data, server.url("/m.pth"), config_name="vit_t")
    path = zoo.ensure_checkpoint("vit_t", cache_dir=tmp_path / "elsewhere")
    assert path == tmp_path / "elsewhere" / info.filename
    assert not folder.exists()


def test_list_models_reports_presence(folder, monkeypatch):
    data = os.urandom(1000)
    info = patch_entry(monkeypatch, "vit_l", data, closed_port_url())
    folder.mkdir()
    (folder / info.filename).write_bytes(data)
    (folder / (zoo.MODELS["vit_h"].filename + ".part")).write_bytes(b"partial")
    statuses = {s.name: s for s in zoo.list_models()}
    assert list(statuses) == list(zoo.MODELS)
    assert statuses["vit_l"].present and statuses["vit_l"].path == folder / info.filename
    assert not statuses["vit_b"].present and statuses["vit_b"].path == folder / zoo.MODELS["vit_b"].filename
    assert statuses["vit_b"].size == 375_042_383
    assert "partly downloaded" in statuses["vit_h"].note


def test_missing_bundled_demo_is_explained(monkeypatch, tmp_path):
    info = zoo.MODELS["demo"]
    monkeypatch.setitem(zoo.MODELS, "demo", zoo.ModelInfo(**{**info.__dict__, "bundled": tmp_path / "demo.pt"}))
    with pytest.raises(SamError, match="not in this installation"):
        zoo.load_model("demo")
    status = {s.name: s for s in zoo.list_models()}["demo"]
    assert not status.present and "not in this installation" in status.note


# --- loading ----------------------------------------------------------------------------------------


def same_weights(model: torch.nn.Module, checkpoint: Path) -> bool:
    expected = read_state_dict(checkpoint)
    actual = model.state_dict()
    return set(actual) == set(expected) and all(torch.equal(actual[k].cpu(), expected[k]) for k in expected)


def test_load_model_from_a_checkpoint_file(small_vit_checkpoint, small_config):
    model = zoo.load_model(None, small_vit_checkpoint)
    assert model.config == SMALL_VIT and not model.training
    assert next(model.parameters()).device == torch.device("cpu")
    assert same_weights(model, small_vit_checkpoint)
    assert model.model_id.startswith("small_vit:file:")
    assert zoo.load_model(None, small_vit_checkpoint).model_id == model.model_id


def test_load_model_infers_an_unknown_configuration(small_vit_checkpoint):
    model = zoo.load_model(None, small_vit_checkpoint)
    assert model.config.embed_dim == SMALL_VIT.embed_dim and model.config.image_size == SMALL_VIT.image_size
    assert same_weights(model, small_vit_checkpoint)


def test_load_model_with_the_wrong_name_or_file(small_vit_checkpoint, tmp_path):
    with pytest.raises(SamError, match="vit_t"):
        zoo.load_model("vit_t", small_vit_checkpoint)
    with pytest.raises(SamError, match="missing.pth"):
        zoo.load_model(None, tmp_path / "missing.pth")
    not_a_checkpoint = tmp_path / "notes.pth"
    torch.save({"weight": torch.zeros(3)}, not_a_checkpoint)
    with pytest.raises(SamError, match="notes.pth"):
        zoo.load_model(None, not_a_checkpoint)


def test_load_model_downloads_a_zoo_entry(folder, server, small_vit_checkpoint, small_config, monkeypatch):
    data = small_vit_checkpoint.read_bytes()
    server.files["/small.pth"] = data
    info = patch_entry(monkeypatch, "vit_b", data, server.url("/small.pth"), config_name=SMALL_VIT.name)
    model = zoo.load_model("vit_b", device="cpu")
    assert (folder / info.filename).read_bytes() == data
    assert same_weights(model, small_vit_checkpoint)
    assert model.model_id == f"vit_b:sha256:{info.sha256[:16]}"


def test_load_bundled_demo(small_vit_checkpoint, small_config, monkeypatch):
    info = zoo.MODELS["demo"]
    monkeypatch.setitem(
        zoo.MODELS, "demo",
        zoo.ModelInfo(**{**info.__dict__, "config_name": SMALL_VIT.name, "bundled": small_vit_checkpoint}),
    )
    model = zoo.load_model()
    assert same_weights(model, small_vit_checkpoint)
    assert model.model_id == f"demo:sha256:{sha(small_vit_checkpoint.read_bytes())[:16]}"
    assert {s.name: s for s in zoo.list_models()}["demo"].present


# --- command line -----------------------------------------------------------------------------------


def test_models_command(folder, monkeypatch, capsys):
    data = os.urandom(1000)
    info = patch_entry(monkeypatch, "vit_t", data, closed_port_url(), config_name="vit_t")
    folder.mkdir()
    (folder / info.filename).write_bytes(data)
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    lines = {line.split()[0]: line for line in out.splitlines() if line and not line.startswith(" ")}
    assert "present" in lines["vit_t"] and "missing" in lines["vit_b"] and "375.0 MB" in lines["vit_b"]
    assert str(folder / info.filename) in out and str(folder) in out
    assert main(["models", "--cache-dir", str(folder.parent / "other")]) == 0
    assert str(folder.parent / "other") in capsys.readouterr().out


def test_download_command(folder, server, monkeypatch, capsys):
    data = os.urandom(200_000)
    server.files["/m.pth"] = data
    info = patch_entry(monkeypatch, "vit_b", data, server.url("/m.pth"))
    other = folder.parent / "other"
    assert main(["download", "vit_b", "--cache-dir", str(other)]) == 0
    out = capsys.readouterr().out
    assert out.strip() == str(other / info.filename)
    assert (other / info.filename).read_bytes() == data


def test_download_command_errors(folder, monkeypatch, capsys):
    assert main(["download", "nope"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: unknown model 'nope'") and len(err.strip().splitlines()) == 1
    url = closed_port_url("/sam_vit_b_01ec64.pth")
    patch_entry(monkeypatch, "vit_b", b"x" * 100, url)
    assert main(["download", "vit_b", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert url in err and str(folder) in err and "Traceback" not in err
    assert not any(folder.glob("*.pth"))


def test_models_command_in_a_new_process(tmp_path):
    env = dict(os.environ, SAM_CORE_CHECKPOINTS=str(tmp_path / "ckpt"))
    done = subprocess.run(
        [sys.executable, "-m", "sam_core", "models"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    for name in zoo.MODELS:
        assert name in done.stdout
    assert str(tmp_path / "ckpt") in done.stdout


def test_recommended_automask_settings():
    from sam_core.zoo import automask_defaults

    sam = {"points_per_side": 32, "pred_iou_thresh": 0.88, "stability_score_thresh": 0.95}
    assert automask_defaults("demo") == {"points_per_side": 16, "pred_iou_thresh": 0.5, "stability_score_thresh": 0.8}
    assert automask_defaults("vit_b") == automask_defaults("vit_t") == sam
    assert automask_defaults(None) == automask_defaults("custom") == sam


def test_generator_parameters_left_out_are_the_models():
    from sam_core.distributed import GeneratorSpec

    assert GeneratorSpec.create("demo").params == {"points_per_side": 16, "pred_iou_thresh": 0.5,
                                                   "stability_score_thresh": 0.8}
    spec = GeneratorSpec.create("vit_b", params={"points_per_side": 8, "box_nms_thresh": 0.5})
    assert spec.params == {"points_per_side": 8, "pred_iou_thresh": 0.88, "stability_score_thresh": 0.95,
                           "box_nms_thresh": 0.5}
    # a checkpoint file (no zoo model): SAM's defaults
    assert GeneratorSpec.create("demo", checkpoint="x.pth").params["pred_iou_thresh"] == 0.88
