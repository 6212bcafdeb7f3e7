"""The onnxruntime backend: files written by :func:`sam_core.export.export_onnx` behind the
:class:`~sam_core.predictor.Predictor` API (same coordinates, validation, sorting, cache, preparation).

:class:`OnnxModel` holds the onnxruntime sessions (decoder, and encoder if exported) and the metadata
the export wrote; :class:`OnnxPredictor` is a :class:`~sam_core.predictor.Predictor` on that model.
CPU only.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Optional, Tuple, Union

import numpy as np
import torch

from sam_core.cache import EmbeddingCache
from sam_core.errors import SamError
from sam_core.export import DECODER_FILE, DECODER_INPUTS, DECODER_OUTPUTS, ENCODER_FILE, FORMAT_VERSION, INT8_ENCODER_FILE
from sam_core.imaging import resize_image
from sam_core.predictor import Embedding, Predictor

__all__ = ["OnnxModel", "OnnxPredictor"]

PathLike = Union[str, "os.PathLike[str]"]


class OnnxModel:
    """Exported SAM files loaded in onnxruntime (CPU): the decoder and, if present, an encoder.

    ``folder`` is what :func:`export_onnx` wrote. ``int8`` picks ``encoder.int8.onnx`` instead of
    ``encoder.onnx``. ``threads`` sets onnxruntime's intra-op threads (None: its default, all cores).
    """

    mask_threshold: float = 0.0

    def __init__(self, folder: PathLike, *, int8: bool = False, threads: Optional[int] = None) -> None:
        import onnxruntime as ort

        self.folder = Path(folder).expanduser()
        decoder_path = self.folder / DECODER_FILE
        if not decoder_path.is_file():
            raise SamError(f"no {DECODER_FILE} in {self.folder}; export one with 'python -m sam_core export onnx'")
        encoder_path = self.folder / (INT8_ENCODER_FILE if int8 else ENCODER_FILE)
        if int8 and not encoder_path.is_file():
            raise SamError(f"no {INT8_ENCODER_FILE} in {self.folder}; export with --quantize-encoder")
        options = ort.SessionOptions()
        if threads is not None:
            options.intra_op_num_threads = int(threads)
        providers = ["CPUExecutionProvider"]
        try:
            self.decoder = ort.InferenceSession(str(decoder_path), options, providers=providers)
            self.encoder = (
                ort.InferenceSession(str(encoder_path), options, providers=providers) if encoder_path.is_file() else None
            )
        except Exception as error:  # onnxruntime raises its own exception types for unreadable files
            raise SamError(f"cannot load the ONNX models in {self.folder}: {error}") from None
        meta = self.decoder.get_modelmeta().custom_metadata_map
        if meta.get("sam_core.format") != FORMAT_VERSION:
            raise SamError(f"{decoder_path} was not exported by this version of sam_core; export it again")
        if self.encoder is not None:
            encoder_meta = self.encoder.get_modelmeta().custom_metadata_map
            if encoder_meta.get("sam_core.model_id") != meta["sam_core.model_id"]:
                raise SamError(f"the encoder and the decoder in {self.folder} come from different models; export again")
            self.precision = encoder_meta.get("sam_core.precision", "fp32")
        else:
            self.precision = "int8" if int8 else "fp32"
        self.model_id = meta["sam_core.model_id"]
        self.config_name = meta["sam_core.config"]
        self.image_size = int(meta["sam_core.image_size"])
        self.pixel_mean = np.asarray(json.loads(meta["sam_core.pixel_mean"]), dtype=np.float32)
        self.pixel_std = np.asarray(json.loads(meta["sam_core.pixel_std"]), dtype=np.float32)
        self.mask_threshold = float(meta["sam_core.mask_threshold"])
        self.low_res_size = int(self.decoder.get_inputs()[DECODER_INPUTS.index("mask_input")].shape[-1])

    def eval(self) -> "OnnxModel":
        """Itself: onnxruntime sessions always run inference (the :class:`Predictor` asks its model for this)."""
        return self

    def preprocess(self, resized: np.ndarray) -> np.ndarray:
        """A resized (h, w, 3) uint8 image -> the encoder's (1, 3, S, S) float32 input, as ``Sam.preprocess``."""
        x = (resized.astype(np.float32) - self.pixel_mean) / self.pixel_std
        size = self.image_size
        padded = np.zeros((1, 3, size, size), dtype=np.float32)
        padded[0, :, : x.shape[0], : x.shape[1]] = x.transpose(2, 0, 1)
        return padded

    def encode(self, resized: np.ndarray) -> np.ndarray:
        """The (1, C, h, w) float32 embedding of a resized (h, w, 3) uint8 image."""
        if self.encoder is None:
            raise SamError(f"the export in {self.folder} has no image encoder; export it with the encoder")
        return self.encoder.run(None, {"image": self.preprocess(resized)})[0]

    def decode(
        self,
        features: np.ndarray,
        coords: np.ndarray,
        labels: np.ndarray,
        mask_input: Optional[np.ndarray],
        original_size: Tuple[int, int],
    ) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Run the decoder: coords (B, N, 2) in the model-input frame, labels (B, N) (-1 / 0 / 1 / 2 / 3),
        mask_input (B, 1, low, low) or None. Returns (masks (B, 4, H, W) logits, iou (B, 4), low-res (B, 4, low, low))."""
        batch = coords.shape[0]
        low = self.low_res_size
        feeds = {
            "image_embeddings": np.ascontiguousarray(features, dtype=np.float32),
            "point_coords": np.ascontiguousarray(coords, dtype=np.float32),
            "point_labels": np.ascontiguousarray(labels, dtype=np.float32),
            "mask_input": (
                np.zeros((batch, 1, low, low), np.float32) if mask_input is None
                else np.ascontiguousarray(mask_input, dtype=np.float32)
            ),
            "has_mask_input": np.array([0.0 if mask_input is None else 1.0], dtype=np.float32),
            "orig_im_size": np.asarray(original_size, dtype=np.float32),
        }
        masks, iou, low_res = self.decoder.run(list(DECODER_OUTPUTS), feeds)
        return masks, iou, low_res


class OnnxPredictor(Predictor):
    """A :class:`~sam_core.predictor.Predictor` whose encoder and decoder run the exported ONNX files.

    ``encode``, ``predict``, ``predict_batch`` and ``decode_torch`` behave as the PyTorch predictor's
    (same coordinates, validation, sorting, cache and preparation). ``folder`` is what
    :func:`export_onnx` wrote; ``int8`` uses the quantized encoder. Embeddings of the PyTorch model
    with the same weights (same ``model_id``) are accepted by ``predict``; the cache keeps ONNX
    embeddings apart from PyTorch ones (``encoder_id`` names the ONNX precision). CPU only.
    """

    def __init__(
        self,
        folder: PathLike,
        *,
        int8: bool = False,
        cache: Optional[EmbeddingCache] = None,
        threads: Optional[int] = None,
    ) -> None:
        super().__init__(OnnxModel(folder, int8=int8, threads=threads), cache=cache)

    @property
    def device(self) -> torch.device:
        return torch.device("cpu")

    @property
    def encoder_id(self) -> str:
        return f"{self.model_id}|onnx-{self.model.precision}"

    @property
    def image_size(self) -> int:
        return self.model.image_size

    @property
    def low_res_size(self) -> int:
        return self.model.low_res_size

    def encode_rgb(self, rgb: np.ndarray) -> Tuple[torch.Tensor, Tuple[int, int]]:
        """Run the ONNX encoder on an (H, W, 3) uint8 image (no cache): (features (1, C, h, w), input size)."""
        resized = resize_image(rgb, self.image_size)
        features = self.model.encode(resized)
        self.encoder_runs += 1
        return torch.from_numpy(features), (int(resized.shape[0]), int(resized.shape[1]))

    def decode_torch(
        self,
        embedding: Embedding,
        coords: Optional[torch.Tensor],
        labels: Optional[torch.Tensor],
        boxes: Optional[torch.Tensor] = None,
        mask_input: Optional[torch.Tensor] = None,
        multimask: bool = True,
        upscale: bool = True,
        iou_floor: Optional[float] = None,
    ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """As :meth:`Predictor.decode_torch` (model-input frame, unsorted), run by the ONNX decoder, which
        computes every mask (``iou_floor`` changes nothing here)."""
        self._check_embedding(embedding)
        point_coords, point_labels = _onnx_points(coords, labels, boxes, mask_input)
        features = embedding.features.detach().to("cpu", torch.float32).numpy()
        masks_in = None if mask_input is None else mask_input.detach().to("cpu", torch.float32).numpy()
        masks, iou, low_res = self.model.decode(features, point_coords, point_labels, masks_in, embedding.original_size)
        chosen = slice(1, None) if multimask else slice(0, 1)
        low_res_t = torch.from_numpy(low_res[:, chosen])
        masks_t = torch.from_numpy(masks[:, chosen]) if upscale else low_res_t
        return masks_t, torch.from_numpy(iou[:, chosen]), low_res_t

    def dense_pe(self) -> torch.Tensor:
        raise SamError("the ONNX decoder holds its positional encoding inside the exported file")


def _onnx_points(
    coords: Optional[torch.Tensor],
    labels: Optional[torch.Tensor],
    boxes: Optional[torch.Tensor],
    mask_input: Optional[torch.Tensor],
) -> Tuple[np.ndarray, np.ndarray]:
    """Points and box corners as the ONNX decoder takes them: (B, N, 2) coordinates and (B, N) labels.

    As the PyTorch prompt encoder: a padding point (0, 0) labelled -1 follows the points when there is
    no box; box corners are labelled 2 and 3; a mask input alone gives N = 0.
    """
    parts_xy, parts_label = [], []
    batch = next(len(a) for a in (coords, boxes, mask_input) if a is not None)
    if coords is not None:
        xy = coords.detach().to("cpu", torch.float32).numpy()
        parts_xy.append(xy)
        parts_label.append(labels.detach().to("cpu").numpy().astype(np.float32))
        if boxes is None:
            parts_xy.append(np.zeros((batch, 1, 2), np.float32))
            parts_label.append(np.full((batch, 1), -1.0, np.float32))
    if boxes is not None:
        parts_xy.append(boxes.detach().to("cpu", torch.float32).numpy().reshape(batch, 2, 2))
        parts_label.append(np.tile(np.array([[2.0, 3.0]], np.float32), (batch, 1)))
    if not parts_xy:
        return np.zeros((batch, 0, 2), np.float32), np.zeros((batch, 0), np.float32)
    return np.concatenate(parts_xy, axis=1), np.concatenate(parts_label, axis=1)
