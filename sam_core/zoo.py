"""The model zoo: names -> configuration, address, byte size and SHA-256; load a model by name or file.

Official checkpoints download on first use into :func:`sam_core.weights.checkpoint_dir` (verified
before use). A file placed in that folder by hand under its official name, or passed as a path, is
used without network. ``demo`` is the small model shipped inside the package.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Optional, Union

from sam_core import weights
from sam_core.errors import SamError
from sam_core.progress import CancelToken, ProgressFn

if TYPE_CHECKING:
    import torch

    from sam_core.models.sam import Sam

PathLike = Union[str, "os.PathLike[str]"]

_DATA = Path(__file__).resolve().parent / "data"


@dataclass(frozen=True)
class ModelInfo:
    """One known model. ``url``/``size``/``sha256`` are None for a model bundled inside the package."""

    name: str
    config_name: str
    url: Optional[str]
    size: Optional[int]
    sha256: Optional[str]
    description: str
    filename: str
    bundled: Optional[Path] = None
    # recommended automatic-mask settings (points_per_side, pred_iou_thresh, stability_score_thresh):
    # SAM's defaults; for demo (256-pixel input, less confident predicted IoU) those its quality was measured at
    automask: tuple[int, float, float] = (32, 0.88, 0.95)
    # "sam": points, boxes, automatic masks; "sam2": SAM 2.1 (sam_core.models.sam2), image prompts through
    # the same Predictor; "sam3": concept queries (text, exemplar boxes) through sam_core.concepts and the
    # 'find' command, and points and boxes through the same Predictor with its interactive head
    # (sam_core.models.sam3.interactive)
    family: str = "sam"
    # a download needing a Hugging Face token (--token or HF_TOKEN) for a repository with accepted terms
    gated: bool = False


@dataclass(frozen=True)
class ModelStatus:
    """Whether a model is available here: ``path`` is where it is, or where a download will put it."""

    name: str
    description: str
    size: Optional[int]
    present: bool
    path: Optional[Path]
    note: str = ""


MODELS: dict[str, ModelInfo] = {
    "demo": ModelInfo(
        name="demo",
        config_name="demo",
        url=None,
        size=None,
        sha256=None,
        description="small model trained by this project on generated images, for trying the tools and for tests (not for real data)",
        filename="demo.pt",
        bundled=_DATA / "demo.pt",
        automask=(16, 0.5, 0.8),
    ),
    "vit_t": ModelInfo(
        name="vit_t",
        config_name="vit_t",
        url="https://github.com/ChaoningZhang/MobileSAM/raw/f706ad9c4eb7f219c00d9050e46328518ffb65d2/weights/mobile_sam.pt",
        size=40_728_226,
        sha256="6dbb90523a35330fedd7f1d3dfc66f995213d81b29a5ca8108dbcdd4e37d6c2f",
        description="MobileSAM (TinyViT encoder): fast on a laptop CPU",
        filename="mobile_sam.pt",
    ),
    "vit_b": ModelInfo(
        name="vit_b",
        config_name="vit_b",
        url="https://dl.fbaipublicfiles.com/segment_anything/sam_vit_b_01ec64.pth",
        size=375_042_383,
        sha256="ec2df62732614e57411cdcf32a23ffdf28910380d03139ee0f4fcbe91eb8c912",
        description="SAM ViT-B (Meta): the usual choice",
        filename="sam_vit_b_01ec64.pth",
    ),
    "vit_l": ModelInfo(
        name="vit_l",
        config_name="vit_l",
        url="https://dl.fbaipublicfiles.com/segment_anything/sam_vit_l_0b3195.pth",
        size=1_249_524_607,
        sha256="3adcc4315b642a4d2101128f611684e8734c41232a17c648ed1693702a49a622",
        description="SAM ViT-L (Meta): more accurate, slower",
        filename="sam_vit_l_0b3195.pth",
    ),
    "vit_h": ModelInfo(
        name="vit_h",
        config_name="vit_h",
        url="https://dl.fbaipublicfiles.com/segment_anything/sam_vit_h_4b8939.pth",
        size=2_564_550_879,
        sha256="a7bf3b02f3ebf1267aba913ff637d9a2d5c33d3173bb679e46d9f338c26f262e",
        description="SAM ViT-H (Meta): most accurate, slowest (a GPU helps)",
        filename="sam_vit_h_4b8939.pth",
    ),
    # No size or SHA-256 is published for sam3.pt that we could find: the file is checked by loading
    # it (every detector weight present with its shape), not by hash.
    "sam3": ModelInfo(
        name="sam3",
        config_name="sam3",
        url="https://huggingface.co/facebook/sam3/resolve/main/sam3.pt",
        size=None,
        sha256=None,
        description="SAM 3 (Meta): finds every instance of a phrase or exemplar box ('find'), and takes "
                    "points and boxes; gated on Hugging Face (token), 848 M parameters, a GPU helps",
        filename="sam3.pt",
        family="sam3",
        gated=True,
    ),
}

TOKEN_ENV = "HF_TOKEN"


def gated_help(info: ModelInfo, dest: Path) -> str:
    """How to get a gated model: accept its terms, make a token, or place the file by hand."""
    page = info.url.split("/resolve/")[0] if info.url else ""
    return (f"{info.name} is gated: sign in at {page}, accept its licence, create a read token at "
            f"https://huggingface.co/settings/tokens and set the {TOKEN_ENV} environment variable to it (or run "
            f"'python -m sam_core download {info.name} --token TOKEN' once); or download {info.filename} yourself "
            f"and put it in {dest.parent} (or pass --checkpoint FILE)")

_SAM2_BASE = "https://dl.fbaipublicfiles.com/segment_anything_2/092824/"
# SAM 2.1 (Meta, 2024-09-28 release); automatic masks with SAM2AutomaticMaskGenerator's defaults
for _name, _size, _sha, _what in (
    ("sam2.1_hiera_tiny", 156_008_466, "7402e0d864fa82708a20fbd15bc84245c2f26dff0eb43a4b5b93452deb34be69",
     "SAM 2.1 Hiera-T (Meta): image prompts; fast"),
    ("sam2.1_hiera_small", 184_416_285, "6d1aa6f30de5c92224f8172114de081d104bbd23dd9dc5c58996f0cad5dc4d38",
     "SAM 2.1 Hiera-S (Meta): image prompts"),
    ("sam2.1_hiera_base_plus", 323_606_802, "a2345aede8715ab1d5d31b4a509fb160c5a4af1970f199d9054ccfb746c004c5",
     "SAM 2.1 Hiera-B+ (Meta): image prompts; more accurate, slower"),
    ("sam2.1_hiera_large", 898_083_611, "2647878d5dfa5098f2f8649825738a9345572bae2d4350a2468587ece47dd318",
     "SAM 2.1 Hiera-L (Meta): image prompts; most accurate, slowest (a GPU helps)"),
):
    MODELS[_name] = ModelInfo(name=_name, config_name=_name, url=_SAM2_BASE + _name + ".pt", size=_size, sha256=_sha,
                              description=_what, filename=_name + ".pt", automask=(32, 0.8, 0.95), family="sam2")
MODELS["demo2"] = ModelInfo(
    name="demo2",
    config_name="demo2",
    url=None,
    size=None,
    sha256=None,
    description="small SAM 2.1 trained by this project on generated movies and volumes, for trying propagation "
                "and for tests (not for real data)",
    filename="demo2.pt",
    bundled=_DATA / "demo2.pt",
    automask=(16, 0.5, 0.8),
    family="sam2",
)

MODELS["demo-concepts"] = ModelInfo(
    name="demo-concepts",
    config_name="demo-concepts",
    url=None,
    size=None,
    sha256=None,
    description="small SAM 3 trained by this project on generated shapes (circle, square, triangle, star, ring, "
                "cross), for trying 'find' and for tests (not for real data; no points and boxes; its held-out "
                "figures are in benchmarks/RESULTS.md)",
    filename="demo_concepts.pt",
    bundled=_DATA / "demo_concepts.pt",
    family="sam3",
)


def model_info(name: str) -> ModelInfo:
    """The zoo entry for ``name``; an unknown name raises :class:`SamError` listing the known ones."""
    info = MODELS.get(name)
    if info is None:
        raise SamError(f"unknown model {name!r}; known models: {', '.join(MODELS)} (or pass a checkpoint file)")
    return info


# ---------------------------------------------------------------------------------------------------
# devices


def available_devices() -> list[str]:
    """Device names usable here, e.g. ``["cpu", "cuda:0", "mps"]``."""
    import torch

    names = ["cpu"]
    if torch.cuda.is_available():
        names += [f"cuda:{index}" for index in range(torch.cuda.device_count())]
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        names.append("mps")
    return names


def resolve_device(device: Union[str, "torch.device", None] = None) -> "torch.device":
    """A torch device from a name: None or ``"cpu"`` (default), ``"cuda"``, ``"cuda:N"``, ``"mps"``, ``"auto"``.

    ``"auto"`` picks CUDA, then MPS, then CPU. A device that is not available raises
    :class:`SamError` naming the available ones.
    """
    import torch

    if device is None:
        return torch.device("cpu")
    text = str(device).strip().lower()
    if text in ("", "cpu"):
        return torch.device("cpu")
    available = available_devices()
    if text == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("mps" if "mps" in available else "cpu")
    try:
        parsed = torch.device(text)
    except (RuntimeError, ValueError) as error:
        raise SamError(f"unknown device {device!r}; available here: {', '.join(available)} (or 'auto')") from error
    if parsed.type == "cuda":
        if not torch.cuda.is_available():
            raise SamError(f"device {device!r} is not available: no CUDA GPU here; available: {', '.join(available)}")
        if parsed.index is not None and parsed.index >= torch.cuda.device_count():
            raise SamError(f"device {device!r} does not exist; available: {', '.join(available)}")
        return parsed
    if parsed.type == "mps":
        if "mps" not in available:
            raise SamError(f"device {device!r} is not available: no Apple MPS here; available: {', '.join(available)}")
        return parsed
    raise SamError(f"device {device!r} is not supported; available here: {', '.join(available)} (or 'auto')")


# ---------------------------------------------------------------------------------------------------
# checkpoints


def _missing_bundled(info: ModelInfo) -> str:
    return (
        f"the bundled model {info.name!r} is not in this installation ({info.bundled} is missing); "
        f"use an official model such as 'vit_t' or 'vit_b', or pass a checkpoint file"
    )


def find_checkpoint(name: str, cache_dir: Optional[PathLike] = None) -> Optional[Path]:
    """The verified checkpoint file of zoo model ``name`` if it is here, else None. No network.

    A file in the checkpoint folder under its official name (downloaded, or placed there by hand) is
    checked against the official SHA-256 once (the result is recorded beside it). A file there that
    does not match raises :class:`SamError` rather than being used or overwritten.
    """
    info = model_info(name)
    if info.bundled is not None:
        return info.bundled if info.bundled.is_file() else None
    path = weights.checkpoint_dir(cache_dir) / info.filename
    if not path.is_file():
        return None
    if (info.size is not None and path.stat().st_size != info.size) or (
            info.sha256 is not None and not weights.verify_file(path, info.sha256)):
        raise SamError(
            f"{path} is not the official {name} checkpoint (its size or SHA-256 differs: incomplete or "
            f"corrupted?). Delete it to download it again, or pass it as a checkpoint file to use it as it is."
        )
    return path


def ensure_checkpoint(
    name: str,
    cache_dir: Optional[PathLike] = None,
    progress: Optional[ProgressFn] = None,
    download: bool = True,
    cancel: Optional[CancelToken] = None,
    token: Optional[str] = None,
) -> Path:
    """The checkpoint file of zoo model ``name``, downloaded (and verified) into the folder if missing.

    With ``download=False`` a missing file raises :class:`SamError` saying how to get it. A gated
    model needs a Hugging Face ``token`` (else the ``HF_TOKEN`` environment variable).
    """
    info = model_info(name)
    found = find_checkpoint(name, cache_dir)
    if found is not None:
        return found
    if info.bundled is not None or info.url is None:
        raise SamError(_missing_bundled(info))
    dest = weights.checkpoint_dir(cache_dir) / info.filename
    if not download:
        raise SamError(
            f"model {name!r} is not downloaded yet; run 'python -m sam_core download {name}', or put "
            f"{info.url} in {dest.parent} as {dest.name}"
        )
    if info.gated:
        token = token or os.environ.get(TOKEN_ENV) or None
        if not token:
            raise SamError(f"model {name!r} needs a Hugging Face token to download: {gated_help(info, dest)}")
        return weights.download(info.url, dest, sha256=info.sha256, size=info.size, progress=progress,
                                cancel=cancel, token=token, access_help=gated_help(info, dest))
    return weights.download(info.url, dest, sha256=info.sha256, size=info.size, progress=progress, cancel=cancel)


def check_prompt_model(name: str) -> None:
    """:class:`SamError` unless zoo model ``name`` takes points and boxes (SAM, SAM 2.1, and SAM 3 through
    its interactive head do)."""
    if model_info(name).family not in ("sam", "sam2", "sam3"):
        raise SamError(f"model {name!r} does not take points and boxes; use one of "
                       f"{', '.join(n for n, i in MODELS.items() if i.family in ('sam', 'sam2', 'sam3'))}")


def automask_defaults(name: Optional[str]) -> dict:
    """Recommended automatic-mask settings for zoo model ``name``, as generator keyword arguments:
    ``points_per_side``, ``pred_iou_thresh`` and ``stability_score_thresh``. SAM's defaults (32, 0.88,
    0.95) for any other model or checkpoint; (16, 0.5, 0.8) for ``demo``."""
    info = MODELS.get(name) if name else None
    points, pred_iou, stability = info.automask if info else ModelInfo.automask
    return {"points_per_side": points, "pred_iou_thresh": pred_iou, "stability_score_thresh": stability}


def list_models(cache_dir: Optional[PathLike] = None) -> list[ModelStatus]:
    """Every zoo model and whether its file is here (no network, and no hashing of unverified files)."""
    statuses = []
    for info in MODELS.values():
        if info.bundled is not None:
            present = info.bundled.is_file()
            note = "" if present else _missing_bundled(info)
            statuses.append(ModelStatus(info.name, info.description, info.size or _size(info.bundled), present, info.bundled, note))
            continue
        path = weights.checkpoint_dir(cache_dir) / info.filename
        present, note = False, ""
        if path.is_file():
            known = weights.cached_sha256(path)
            if (info.size is not None and path.stat().st_size != info.size) or (
                    known is not None and info.sha256 is not None and known != info.sha256):
                note = "the file there is not the official one (size or SHA-256 differs): delete it and download again"
            else:
                present = True
        elif path.with_name(path.name + ".part").is_file():
            note = "partly downloaded: 'download' resumes it"
        statuses.append(ModelStatus(info.name, info.description, info.size, present, path, note))
    return statuses


def _size(path: Path) -> Optional[int]:
    return path.stat().st_size if path.is_file() else None


# ---------------------------------------------------------------------------------------------------
# loading


def _file_identity(path: Path) -> str:
    """A short stable id of a checkpoint file given by path: its resolved path, size and mtime."""
    stat = path.stat()
    text = f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}"
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def load_model(
    name: Optional[str] = "demo",
    checkpoint: Optional[PathLike] = None,
    *,
    device: Union[str, "torch.device", None] = None,
    cache_dir: Optional[PathLike] = None,
    download: bool = True,
    progress: Optional[ProgressFn] = None,
) -> "Sam":
    """A SAM or SAM 2.1 model (``sam_core.models.sam2.Sam2``), or SAM 3's interactive head
    (``sam_core.models.sam3.interactive.Sam3Interactive``, for zoo model ``sam3`` or a SAM 3 file), in
    eval mode on ``device`` (default CPU), with ``model.model_id`` set.

    With ``checkpoint`` (a file path) that file is loaded with no network; its configuration is
    ``name``'s if given, else inferred from the weights. Without it, zoo model ``name`` (None:
    ``demo``) is loaded, downloaded first if needed (``download=False`` forbids that). ``model.model_id`` identifies the
    weights (name plus SHA-256, or file identity) for embedding cache keys.
    """
    from sam_core.models.build import load_checkpoint, read_state_dict, skip_parameter_init

    if name is not None:
        check_prompt_model(name)
    torch_device = resolve_device(device)
    if (name is not None and model_info(name).family == "sam3") or (
            name is None and checkpoint is not None and _is_sam3_file(Path(checkpoint).expanduser())):
        return _load_sam3_interactive(name, checkpoint, torch_device, cache_dir, download, progress)
    if checkpoint is not None:
        path = Path(checkpoint).expanduser()
        if not path.is_file():
            raise SamError(f"checkpoint file {path} does not exist")
        state = read_state_dict(path)
        config = _config(name, state)
        model_id = f"{config.name}:file:{_file_identity(path)}"
    else:
        name = name or "demo"
        info = model_info(name)
        path = ensure_checkpoint(name, cache_dir, progress=progress, download=download)
        state = read_state_dict(path)
        config = _config(name, state)
        digest = info.sha256 or weights.file_sha256(path)
        model_id = f"{name}:sha256:{digest[:16]}"
    with skip_parameter_init():  # the checkpoint replaces every parameter: no random values first
        network = _build(config)
    model = load_checkpoint(network, state, take=True)  # the tensors just read become the model's
    model.to(torch_device).eval()
    model.model_id = model_id
    return model


def _is_sam3_file(path: Path) -> bool:
    """Whether ``path`` is a SAM 3 checkpoint (read lazily: only the key names)."""
    import torch

    from sam_core.models.sam3.config import is_sam3_state

    try:
        data = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # not a file torch reads lazily: not an official sam3.pt, the SAM loaders report it
        return False
    if isinstance(data, dict) and isinstance(data.get("model"), dict):
        data = data["model"]
    return isinstance(data, dict) and is_sam3_state(data)


def _load_sam3_interactive(name: Optional[str], checkpoint: Optional[PathLike], device: "torch.device",
                           cache_dir: Optional[PathLike], download: bool, progress: Optional[ProgressFn]) -> "torch.nn.Module":
    """SAM 3's interactive (point and box) model from a file or zoo model ``name``, with ``model_id``
    set (never equal to the concept model's: their embeddings differ)."""
    from sam_core.models.sam3.build import read_sam3_state_dict
    from sam_core.models.sam3.interactive import load_sam3_interactive

    if checkpoint is not None:
        path = Path(checkpoint).expanduser()
        if not path.is_file():
            raise SamError(f"checkpoint file {path} does not exist")
    else:
        path = ensure_checkpoint(name, cache_dir, progress=progress, download=download)
    model = load_sam3_interactive(read_sam3_state_dict(path))
    model.to(device).eval()
    model.model_id = f"sam3-interactive:file:{_file_identity(path)}"
    return model


def _config(name: Optional[str], state: dict):
    """The configuration of zoo model ``name``; without a name, read from the weights (SAM or SAM 2.1)."""
    from sam_core.models.config import get_config, infer_config
    from sam_core.models.sam2 import get_sam2_config, infer_sam2_config, is_sam2_state_dict

    if name is None:
        return infer_sam2_config(state) if is_sam2_state_dict(state) else infer_config(state)
    info = model_info(name)
    return get_sam2_config(info.config_name) if info.family == "sam2" else get_config(info.config_name)


def _build(config) -> "torch.nn.Module":
    """A network with random weights for a SAM or SAM 2.1 configuration."""
    from sam_core.models.build import build_sam
    from sam_core.models.sam2 import Sam2Config, build_sam2

    return build_sam2(config) if isinstance(config, Sam2Config) else build_sam(config)
