"""ONNX export of SAM (the onnxruntime backend that runs the files is :mod:`sam_core.onnx_backend`).

:func:`export_onnx` writes into one folder:

``decoder.onnx``
    Prompt encoder + mask decoder + mask upscaling, with the inputs and outputs of the official
    ``SamOnnxModel`` (``segment_anything/utils/onnx.py``, exported without ``return_single_mask``), so
    tools written for the official decoder run it unchanged. Inputs, all float32:

    - ``image_embeddings`` (1, C, h, w): the encoder's output.
    - ``point_coords`` (B, N, 2): (x, y) pixels of the RESIZED model input (the original image's
      coordinates scaled by :func:`sam_core.imaging.to_input_coords`). A box is two points, its
      corners (x0, y0) and (x1, y1), labelled 2 and 3. Without a box, add one padding point (0, 0)
      labelled -1, as the official model expects.
    - ``point_labels`` (B, N): 1 positive, 0 negative, 2 / 3 box corners, -1 padding.
    - ``mask_input`` (B, 1, 4h, 4w): low-resolution logits of a previous prediction (zeros if none).
    - ``has_mask_input`` (1,): 1 when ``mask_input`` is used, else 0.
    - ``orig_im_size`` (2,): (H, W) of the original image.

    Outputs: ``masks`` (B, 4, H, W) logits at the original size (a pixel is in the mask where the
    logit is > 0), ``iou_predictions`` (B, 4), ``low_res_masks`` (B, 4, 4h, 4w). Candidate 0 is the
    single-mask output, candidates 1..3 the three multimask outputs. Differences from the official
    model: the number of objects B is dynamic as well as the number of points N (many objects decode
    in one call); N may be 0 (a mask input alone).
``encoder.onnx``
    The image encoder in float32: input ``image`` (1, 3, S, S), the resized RGB image normalised with
    the model's ``pixel_mean`` / ``pixel_std`` and zero-padded to S x S (what ``Sam.preprocess``
    gives); output ``image_embeddings`` (1, C, S / 16, S / 16).
``encoder.int8.onnx`` (``quantize_encoder=True``)
    The same encoder with onnxruntime's dynamic int8 quantization of its matrix products (weights int8
    per output channel on a 7-bit range, which avoids the saturation of 8-bit products on x86 CPUs
    without VNNI; activations quantized per call).

Each file carries its model's identity and preprocessing constants in the ONNX metadata
(``sam_core.*`` keys), so :class:`sam_core.onnx_backend.OnnxPredictor` needs nothing but the folder. Files are built in a
temporary folder beside the output and moved into place only when every part succeeded.

The export uses PyTorch's TorchScript-based ONNX exporter (``dynamo=False``), which keeps the image
size and the point count dynamic, at opset 17.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, Optional, Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn

from sam_core.errors import SamError
from sam_core.identity import model_id
from sam_core.progress import CancelToken, ProgressFn, check, report

if TYPE_CHECKING:
    from sam_core.models.sam import Sam

PathLike = Union[str, "os.PathLike[str]"]

DECODER_FILE = "decoder.onnx"
ENCODER_FILE = "encoder.onnx"
INT8_ENCODER_FILE = "encoder.int8.onnx"

OPSET = 17
FORMAT_VERSION = "1"
DECODER_INPUTS = ("image_embeddings", "point_coords", "point_labels", "mask_input", "has_mask_input", "orig_im_size")
DECODER_OUTPUTS = ("masks", "iou_predictions", "low_res_masks")

# Above this many bytes of weights a file keeps its tensors in a ``.data`` file beside it (protobuf
# cannot hold 2 GB; only vit_h's encoder is that large).
_EXTERNAL_DATA_BYTES = 1_800_000_000

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ExportedFiles:
    """The files :func:`export_onnx` wrote; ``encoder`` / ``encoder_int8`` are None when not asked for."""

    folder: Path
    decoder: Path
    encoder: Optional[Path]
    encoder_int8: Optional[Path]


# --- the networks as exported ---------------------------------------------------------------------


class OnnxDecoder(nn.Module):
    """Prompt encoder + mask decoder + upscaling of ``sam`` in the official ``SamOnnxModel``'s form.

    See the module docstring for inputs and outputs. Numerically the same operations as
    ``Sam.prompt_encoder``, ``Sam.mask_decoder.predict_masks`` and ``Sam.postprocess_masks``.
    """

    def __init__(self, sam: "Sam") -> None:
        super().__init__()
        self.prompt_encoder = sam.prompt_encoder
        self.mask_decoder = sam.mask_decoder
        self.image_size = int(sam.image_size)
        with torch.no_grad():
            self.register_buffer("dense_pe", sam.prompt_encoder.get_dense_pe().detach().clone())

    def _embed_points(self, coords: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        encoder = self.prompt_encoder
        embedding = encoder.pe_layer.forward_with_coords(coords + 0.5, (self.image_size, self.image_size))
        labels = labels.unsqueeze(-1)
        embedding = embedding * (labels != -1)
        embedding = embedding + encoder.not_a_point_embed.weight * (labels == -1)
        for i in range(encoder.num_point_embeddings):
            embedding = embedding + encoder.point_embeddings[i].weight * (labels == i)
        return embedding

    def _embed_masks(self, mask_input: torch.Tensor, has_mask_input: torch.Tensor) -> torch.Tensor:
        encoder = self.prompt_encoder
        dense = has_mask_input * encoder.mask_downscaling(mask_input)
        return dense + (1 - has_mask_input) * encoder.no_mask_embed.weight.reshape(1, -1, 1, 1)

    def _upscale(self, masks: torch.Tensor, orig_im_size: torch.Tensor) -> torch.Tensor:
        size = self.image_size
        masks = F.interpolate(masks, (size, size), mode="bilinear", align_corners=False)
        original = orig_im_size.to(torch.float32)
        resized = torch.floor(original * (size / torch.max(original)) + 0.5).to(torch.int64)
        masks = masks[..., : resized[0], : resized[1]]
        original = orig_im_size.to(torch.int64)
        return F.interpolate(masks, size=(original[0], original[1]), mode="bilinear", align_corners=False)

    def forward(
        self,
        image_embeddings: torch.Tensor,
        point_coords: torch.Tensor,
        point_labels: torch.Tensor,
        mask_input: torch.Tensor,
        has_mask_input: torch.Tensor,
        orig_im_size: torch.Tensor,
    ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        sparse = self._embed_points(point_coords, point_labels)
        dense = self._embed_masks(mask_input, has_mask_input)
        low_res, iou = self.mask_decoder.predict_masks(image_embeddings, self.dense_pe, sparse, dense)
        return self._upscale(low_res, orig_im_size), iou, low_res


# --- export -----------------------------------------------------------------------------------------


def export_onnx(
    model: Union["Sam", str, None],
    folder: PathLike,
    *,
    checkpoint: Optional[PathLike] = None,
    encoder: bool = True,
    quantize_encoder: bool = False,
    progress: Optional[ProgressFn] = None,
    cancel: Optional[CancelToken] = None,
) -> ExportedFiles:
    """Export ``model`` (a loaded ``Sam``, or a zoo name with an optional ``checkpoint`` file) to ``folder``.

    Writes ``decoder.onnx``, and with ``encoder`` ``encoder.onnx``, and with ``quantize_encoder``
    ``encoder.int8.onnx`` (see the module docstring). Everything is built in a temporary folder
    inside ``folder`` and moved into place at the end; on an error or a cancel nothing is changed.
    Encoder files left in ``folder`` by an earlier export are removed when this export writes none,
    so that a folder never mixes two models. The encoder is always exported in float32, whatever
    precision the model runs in (an int8-quantized PyTorch encoder cannot be exported).
    """
    if quantize_encoder and not encoder:
        raise SamError("the int8 encoder is made from the float32 encoder: do not turn the encoder off")
    if isinstance(model, str):
        from sam_core import zoo

        zoo.model_info(model)  # an unknown name fails before anything is loaded or created
    with _output_folder(folder) as out:
        sam = _load(model, checkpoint)
        from sam_core.models.sam2 import refuse_sam2

        refuse_sam2(sam, "ONNX export")
        from sam_core.models.precision import QUANTIZED

        if getattr(sam, "precision", "fp32") in QUANTIZED:
            raise SamError("this model's encoder is quantized to int8 in PyTorch; load it in fp32 to export "
                           "(use quantize_encoder / --quantize-encoder for an int8 ONNX encoder)")
        _export_parts(sam, out, encoder, quantize_encoder, progress, cancel)
    return ExportedFiles(
        folder=out,
        decoder=out / DECODER_FILE,
        encoder=out / ENCODER_FILE if encoder else None,
        encoder_int8=out / INT8_ENCODER_FILE if quantize_encoder else None,
    )


def _export_parts(
    sam: "Sam",
    out: Path,
    encoder: bool,
    quantize_encoder: bool,
    progress: Optional[ProgressFn],
    cancel: Optional[CancelToken],
) -> None:
    """Build every asked-for part in a staging folder inside ``out``, then move them all into ``out``."""
    metadata = _metadata(sam)
    steps = 1 + int(encoder) + int(quantize_encoder)
    with _staging(out) as stage:
        check(cancel)
        report(progress, 0, steps, "exporting the decoder")
        staged = {DECODER_FILE: export_decoder(sam, stage / "decoder" / DECODER_FILE, metadata=metadata)}
        report(progress, 1, steps, "exported the decoder")
        if encoder:
            check(cancel)
            report(progress, 1, steps, "exporting the image encoder")
            staged[ENCODER_FILE] = export_encoder(sam, stage / "encoder" / ENCODER_FILE, metadata=metadata)
            report(progress, 2, steps, "exported the image encoder")
        if quantize_encoder:
            check(cancel)
            report(progress, 2, steps, "quantizing the image encoder to int8")
            staged[INT8_ENCODER_FILE] = quantize_encoder_file(
                staged[ENCODER_FILE], stage / "int8" / INT8_ENCODER_FILE
            )
            report(progress, 3, steps, "quantized the image encoder")
        check(cancel)
        for name, path in staged.items():
            _publish(path, out / name)
        if INT8_ENCODER_FILE not in staged:
            _remove_model_file(out / INT8_ENCODER_FILE)
        if ENCODER_FILE not in staged:
            _remove_model_file(out / ENCODER_FILE)


def export_decoder(sam: "Sam", path: PathLike, *, metadata: Optional[dict] = None, opset: int = OPSET) -> Path:
    """Write the decoder of ``sam`` (see the module docstring) to ``path`` (not atomic: use a staging folder)."""
    decoder = OnnxDecoder(sam).eval()
    device = sam.device
    side = sam.prompt_encoder.image_embedding_size
    low = sam.prompt_encoder.mask_input_size
    example = (
        torch.zeros((1, sam.prompt_encoder.embed_dim, *side), device=device),
        torch.full((2, 3, 2), sam.image_size / 2, device=device),
        torch.ones((2, 3), device=device),
        torch.zeros((2, 1, *low), device=device),
        torch.zeros(1, device=device),
        torch.tensor([float(sam.image_size)] * 2, device=device),
    )
    dynamic = {
        "point_coords": {0: "num_objects", 1: "num_points"},
        "point_labels": {0: "num_objects", 1: "num_points"},
        "mask_input": {0: "num_objects"},
        "masks": {0: "num_objects", 2: "height", 3: "width"},
        "iou_predictions": {0: "num_objects"},
        "low_res_masks": {0: "num_objects"},
    }
    values = dict(metadata or _metadata(sam), **{"sam_core.part": "decoder"})
    with _official_decoder_operations(sam):
        return _export(decoder, example, Path(path), DECODER_INPUTS, DECODER_OUTPUTS, dynamic, values, opset)


@contextlib.contextmanager
def _official_decoder_operations(sam: "Sam") -> Iterator[None]:
    """Trace the mask decoder's official operations: its fused forms choose by the prompt count, which
    the exported graph leaves dynamic."""
    modules = [m for m in sam.mask_decoder.modules() if hasattr(m, "fused")]
    fused = [m.fused for m in modules]
    for module in modules:
        module.fused = False
    try:
        yield
    finally:
        for module, value in zip(modules, fused):
            module.fused = value


def export_encoder(sam: "Sam", path: PathLike, *, metadata: Optional[dict] = None, opset: int = OPSET) -> Path:
    """Write the image encoder of ``sam`` in float32 to ``path`` (not atomic: use a staging folder)."""
    size = sam.image_size
    example = (torch.zeros((1, 3, size, size), device=sam.device),)
    values = dict(metadata or _metadata(sam), **{"sam_core.part": "encoder", "sam_core.precision": "fp32"})
    with _float32_encoder(sam):
        return _export(sam.image_encoder, example, Path(path), ("image",), ("image_embeddings",), None, values, opset)


def quantize_encoder_file(encoder_path: PathLike, path: PathLike) -> Path:
    """Write a dynamically int8-quantized copy of an exported ``encoder.onnx`` to ``path``.

    Weights of the matrix products are int8 per output channel on a 7-bit range (``reduce_range``):
    full 8-bit weights saturate the 16-bit intermediate sums of x86 CPUs without VNNI and lose accuracy.
    """
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    source = Path(encoder_path)
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    external = source.stat().st_size + sum(p.stat().st_size for p in source.parent.glob("*.data")) > _EXTERNAL_DATA_BYTES
    with _quiet_quantizer():
        quantize_dynamic(
            source,
            target,
            weight_type=QuantType.QInt8,
            op_types_to_quantize=["MatMul"],
            per_channel=True,
            reduce_range=True,
            use_external_data_format=external,
        )
    proto = onnx.load(str(target))
    _set_metadata(proto, {**_read_metadata(onnx.load(str(source), load_external_data=False)),
                          "sam_core.precision": "int8"})
    _save(proto, target)
    return target


def _export(
    module: nn.Module,
    example: tuple,
    path: Path,
    input_names: Tuple[str, ...],
    output_names: Tuple[str, ...],
    dynamic_axes: Optional[dict],
    metadata: dict,
    opset: int,
) -> Path:
    import onnx

    raw = path.parent / "raw" / path.name
    raw.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings(), torch.no_grad():
        # The TorchScript exporter warns about its deprecation and about traced int() conversions,
        # which are what keep the output size dynamic here.
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module,
            example,
            str(raw),
            input_names=list(input_names),
            output_names=list(output_names),
            dynamic_axes=dynamic_axes,
            opset_version=opset,
            do_constant_folding=True,
            dynamo=False,
        )
    proto = onnx.load(str(raw))
    _set_metadata(proto, metadata)
    _save(proto, path)
    shutil.rmtree(raw.parent, ignore_errors=True)
    return path


def _save(proto, path: Path) -> None:
    import onnx

    weights = sum(len(t.raw_data) for t in proto.graph.initializer)
    if weights > _EXTERNAL_DATA_BYTES:
        for stale in path.parent.glob(f"{path.name}*.data"):
            stale.unlink()
        onnx.save_model(proto, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=f"{path.name}.data")
    else:
        onnx.save_model(proto, str(path))


def _metadata(sam: "Sam") -> dict:
    return {
        "sam_core.format": FORMAT_VERSION,
        "sam_core.model_id": model_id(sam),
        "sam_core.config": sam.config.name,
        "sam_core.image_size": str(int(sam.image_size)),
        "sam_core.pixel_mean": json.dumps([float(v) for v in sam.pixel_mean.flatten().tolist()]),
        "sam_core.pixel_std": json.dumps([float(v) for v in sam.pixel_std.flatten().tolist()]),
        "sam_core.mask_threshold": str(float(sam.mask_threshold)),
    }


def _set_metadata(proto, values: dict) -> None:
    existing = {p.key: p for p in proto.metadata_props}
    for key, value in values.items():
        if key in existing:
            existing[key].value = str(value)
        else:
            entry = proto.metadata_props.add()
            entry.key, entry.value = key, str(value)


def _read_metadata(proto) -> dict:
    return {p.key: p.value for p in proto.metadata_props if p.key.startswith("sam_core.")}


def _load(model: Union["Sam", str, None], checkpoint: Optional[PathLike]) -> "Sam":
    from sam_core import zoo

    if model is None or isinstance(model, str):
        return zoo.load_model(model, checkpoint)
    if checkpoint is not None:
        raise SamError("give either a loaded model or a checkpoint file, not both")
    return model.eval()


@contextlib.contextmanager
def _float32_encoder(sam: "Sam") -> Iterator[None]:
    """Run the image encoder without autocast while exporting (bf16 / fp16 models export in fp32)."""
    encoder = sam.image_encoder
    dtype = getattr(encoder, "compute_dtype", None)
    encoder.compute_dtype = None
    try:
        yield
    finally:
        encoder.compute_dtype = dtype


@contextlib.contextmanager
def _quiet_quantizer() -> Iterator[None]:
    """onnxruntime's quantizer logs advice on the root logger for every call; keep it for real problems."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


@contextlib.contextmanager
def _output_folder(folder: PathLike) -> Iterator[Path]:
    """The output folder, created if missing and checked to be writable; removed again if this
    export created it and fails."""
    out = Path(folder).expanduser()
    if out.exists() and not out.is_dir():
        raise SamError(f"{out} is a file; give a folder for the exported models")
    created = not out.exists()
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=out):
            pass
    except OSError as error:
        raise SamError(f"cannot write to the folder {out} ({error.strerror or error}); choose another folder") from None
    try:
        yield out
    except BaseException:
        if created:
            with contextlib.suppress(OSError):
                out.rmdir()
        raise


@contextlib.contextmanager
def _staging(out: Path) -> Iterator[Path]:
    stage = Path(tempfile.mkdtemp(prefix=".sam-export-", dir=out))
    try:
        yield stage
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def _publish(staged: Path, target: Path) -> None:
    """Move a staged model (and its ``.data`` file, if any) into place; the ``.onnx`` file moves last."""
    data = staged.parent / f"{staged.name}.data"
    if data.exists():
        os.replace(data, target.parent / data.name)
    else:
        (target.parent / f"{target.name}.data").unlink(missing_ok=True)
    os.replace(staged, target)


def _remove_model_file(path: Path) -> None:
    path.unlink(missing_ok=True)
    (path.parent / f"{path.name}.data").unlink(missing_ok=True)
