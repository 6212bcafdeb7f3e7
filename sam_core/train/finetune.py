"""Fine-tune a SAM model on a user's own images and instance label images.

    result = finetune(load_model("demo"), images, labels, epochs=10, lr=1e-4)
    result.history[-1].val          # mean IoU per prompt type on the validation images

The image encoder is frozen by default: each image's embedding is computed once through the
engine's :class:`~sam_core.cache.EmbeddingCache` (pass one with a folder to reuse embeddings across
runs), and only the mask decoder trains. ``train_encoder=True`` trains the whole model (the
encoder then runs on every step). Prompts are simulated as in SAM's training
(:mod:`sam_core.train.interactive`); the loss is focal + dice (20:1) plus MSE on the predicted IoU.

Validation images (``val_fraction``, chosen with a fixed seed) are measured before training and
after every epoch with deterministic prompts: ``point`` (one click at the object's interior point),
``point+click`` (then one corrective click at the centre of the largest error, with the previous
logits as mask input) and ``box`` (the tight box).

With ``checkpoint_path``, the weights are written after every epoch, atomically, in the official
format (a plain state dict that the official package loads); the optimizer state, the epoch and the
history go to the sidecar ``<checkpoint_path>.state``. With ``resume`` (default) a rerun continues
after the last finished epoch.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F

from sam_core.errors import SamError
from sam_core.fileio import atomic_write
from sam_core.models.precision import QUANTIZED
from sam_core.progress import CancelToken, ProgressFn, check, report
from sam_core.train.interactive import simulate

PathLike = Union[str, "os.PathLike[str]"]
IMAGE_SUFFIXES = (".png", ".tif", ".tiff", ".jpg", ".jpeg")
VAL_PROMPTS = ("point", "point+click", "box")


@dataclass
class EpochRecord:
    """One line of history: epoch (0 = before training), mean training loss, validation IoU per prompt."""

    epoch: int
    loss: Optional[float]
    val: dict[str, float] = field(default_factory=dict)


@dataclass
class FinetuneResult:
    """The fine-tuned model (eval mode) and the history (first record: before training)."""

    model: Any
    history: list[EpochRecord]
    train_indices: list[int]
    val_indices: list[int]

    @property
    def val_iou(self) -> dict[str, float]:
        """Validation mean IoU per prompt type after the last epoch."""
        return self.history[-1].val


# ------------------------------------------------------------------------------------------ input


def load_pairs(image_dir: PathLike, label_dir: PathLike) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Read image and label files paired by name (same file stem; any of PNG, TIFF, JPEG).

    Raises :class:`SamError` for a missing folder, an empty folder, or file lists that do not pair.
    """
    from sam_core.io import read_image

    folders = []
    for what, folder in (("image", image_dir), ("label", label_dir)):
        path = Path(folder).expanduser()
        if not path.is_dir():
            raise SamError(f"{what} folder not found: {path}")
        files = {p.stem: p for p in sorted(path.iterdir()) if p.suffix.lower() in IMAGE_SUFFIXES}
        if not files:
            raise SamError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in the {what} folder {path}")
        folders.append(files)
    images, labels = folders
    only_images = sorted(set(images) - set(labels))
    only_labels = sorted(set(labels) - set(images))
    if only_images or only_labels:
        parts = []
        if only_images:
            parts.append(f"images without a label file: {', '.join(only_images[:5])}")
        if only_labels:
            parts.append(f"label files without an image: {', '.join(only_labels[:5])}")
        raise SamError("image and label files must pair by name; " + "; ".join(parts))
    stems = sorted(images)
    return [read_image(images[s]) for s in stems], [read_image(labels[s]) for s in stems]


def _check_pairs(images: Sequence[np.ndarray], labels: Sequence[np.ndarray]) -> list[np.ndarray]:
    if len(images) != len(labels):
        raise SamError(f"got {len(images)} images but {len(labels)} label images; give one label image per image")
    if len(images) == 0:
        raise SamError("no training images given")
    checked = []
    for i, (image, label) in enumerate(zip(images, labels)):
        label = np.asarray(label)
        image = np.asarray(image)
        if label.ndim != 2:
            raise SamError(f"label image {i} must be 2D (one instance id per pixel), got shape {label.shape}")
        if not (np.issubdtype(label.dtype, np.integer) or label.dtype == bool):
            raise SamError(f"label image {i} must hold integer instance ids, got {label.dtype}")
        if image.shape[:2] != label.shape:
            raise SamError(f"label image {i} has size {label.shape[1]}x{label.shape[0]} but its image is "
                           f"{image.shape[1]}x{image.shape[0]}; they must match")
        if not (label > 0).any():
            raise SamError(f"label image {i} holds no objects (all pixels are 0); remove it or add labels")
        checked.append(label.astype(np.int64))
    return checked


def _split(n: int, val_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    if not 0.0 <= val_fraction < 1.0:
        raise SamError(f"val_fraction must be in [0, 1), got {val_fraction}")
    order = np.random.default_rng(seed).permutation(n)
    n_val = int(round(val_fraction * n))
    if val_fraction > 0 and n >= 2:
        n_val = min(max(n_val, 1), n - 1)
    else:
        n_val = 0
    return sorted(int(i) for i in order[n_val:]), sorted(int(i) for i in order[:n_val])


# ------------------------------------------------------------------------------------- prepared data


@dataclass
class _Item:
    """One image in the model-input frame: embedding (1, C, h, w) (frozen encoder) or input tensor."""

    features: Optional[torch.Tensor]
    pixels: Optional[torch.Tensor]
    objects: np.ndarray  # (N, S, S) bool targets in the padded model-input frame
    background: np.ndarray  # (S, S) bool, inside the image


def _input_labels(label: np.ndarray, input_size: tuple[int, int], size: int) -> np.ndarray:
    """Nearest-neighbour resize of a label image to the model input (h, w), zero-padded to (size, size)."""
    t = torch.from_numpy(label.astype(np.int64))[None, None].float()
    resized = F.interpolate(t, input_size, mode="nearest")[0, 0].long().numpy()
    out = np.zeros((size, size), np.int64)
    out[: input_size[0], : input_size[1]] = resized
    return out


def _prepare(predictor: Any, images, labels, indices, train_encoder: bool, progress, cancel, done, total):
    from sam_core.imaging import prepare_image, resize_image

    size = predictor.image_size
    items = []
    for i in indices:
        check(cancel)
        if train_encoder:
            rgb, _ = prepare_image(np.asarray(images[i]))
            resized = resize_image(rgb, size)
            pixels = torch.as_tensor(resized).permute(2, 0, 1).float()[None]
            features, input_size = None, (resized.shape[0], resized.shape[1])
        else:
            embedding = predictor.encode(np.asarray(images[i]))
            features, input_size, pixels = embedding.features, embedding.input_size, None
        lab = _input_labels(labels[i], input_size, size)
        ids = np.unique(lab[lab > 0])
        if len(ids) == 0:
            raise SamError(f"label image {i} has no object left at the model's input size {size}; "
                           "its objects are too small")
        inside = np.zeros((size, size), bool)
        inside[: input_size[0], : input_size[1]] = True
        items.append(_Item(features, pixels, np.stack([lab == k for k in ids]), inside & (lab == 0)))
        done += 1
        report(progress, done, total, "embeddings")
    return items, done


def _embeddings(model: Any, items: Sequence[_Item], device: torch.device) -> torch.Tensor:
    if items[0].features is not None:
        return torch.cat([it.features for it in items]).to(device)
    pixels = torch.cat([it.pixels for it in items]).to(device)
    return model.image_encoder(model.preprocess(pixels))


@torch.no_grad()
def evaluate(model: Any, items: Sequence[_Item], device: torch.device, max_objects: int = 64) -> dict[str, float]:
    """Mean IoU per prompt type (see the module docstring) over the objects of ``items``."""
    scores: dict[str, list[float]] = {k: [] for k in VAL_PROMPTS}
    rng = np.random.default_rng(0)
    for item in items:
        emb = _embeddings(model, [item], device)
        targets = item.objects[:max_objects]
        index = np.zeros(len(targets), np.int64)
        n = len(targets)
        point = simulate(model, emb, index, targets, rng, rounds=1, start=np.zeros(n, np.int64),
                         centre_clicks=True, box_noise=0.0)
        box = simulate(model, emb, index, targets, rng, rounds=0, start=np.ones(n, np.int64),
                       centre_clicks=True, box_noise=0.0)
        scores["point"] += [point.iou["point"][0]] * n
        scores["point+click"] += [point.iou["point"][1]] * n
        scores["box"] += [box.iou["box"][0]] * n
    return {k: float(np.mean(v)) for k, v in scores.items()}


# ------------------------------------------------------------------------------------ checkpoints


def _fingerprint(labels: Sequence[np.ndarray], train_idx: Sequence[int], val_idx: Sequence[int], train_encoder: bool) -> str:
    digest = hashlib.sha256()
    for label in labels:
        digest.update(str(label.shape).encode())
        digest.update(np.ascontiguousarray(label).tobytes())
    digest.update(repr((list(train_idx), list(val_idx), train_encoder)).encode())
    return digest.hexdigest()


def _state_path(checkpoint_path: Path) -> Path:
    return checkpoint_path.with_name(checkpoint_path.name + ".state")


def _save(model, optimizer, epoch: int, history: list[EpochRecord], fingerprint: str, path: Path) -> None:
    weights = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    with atomic_write(path) as handle:
        torch.save(weights, handle)
    state = {"epoch": epoch, "optimizer": optimizer.state_dict(), "history": [asdict(h) for h in history],
             "fingerprint": fingerprint}
    with atomic_write(_state_path(path)) as handle:
        torch.save(state, handle)


def _load(model, optimizer, fingerprint: str, path: Path, device) -> Optional[tuple[int, list[EpochRecord]]]:
    from sam_core.models.build import read_state_dict

    state_path = _state_path(path)
    if not (path.is_file() and state_path.is_file()):
        return None
    try:  # weights only: a planted file must never run code
        state = torch.load(state_path, map_location=device, weights_only=True)
        if not isinstance(state, dict):
            raise ValueError("not a dictionary")
    except Exception as error:
        from sam_core.models.build import load_failure

        raise SamError(f"cannot read the fine-tuning state {state_path} ({load_failure(error)}); "
                       "delete it to start over") from None
    if state.get("fingerprint") != fingerprint:
        raise SamError(f"{path} was fine-tuned on other data or settings; choose another output file, "
                       "or start over (resume=False / --no-resume)")
    model.load_state_dict(read_state_dict(path))
    optimizer.load_state_dict(state["optimizer"])
    return int(state["epoch"]), [EpochRecord(**h) for h in state["history"]]


# ----------------------------------------------------------------------------------------- train


def finetune(
    model: Any,
    images: Sequence[np.ndarray],
    labels: Sequence[np.ndarray],
    *,
    epochs: int = 10,
    lr: float = 1e-4,
    train_encoder: bool = False,
    val_fraction: float = 0.2,
    cache: Any = None,
    progress: Optional[ProgressFn] = None,
    cancel: Optional[CancelToken] = None,
    checkpoint_path: Optional[PathLike] = None,
    resume: bool = True,
    objects_per_step: int = 16,
    rounds: Sequence[int] = (1, 2),
    seed: int = 0,
) -> FinetuneResult:
    """Fine-tune ``model`` (a loaded ``Sam`` or a zoo name) on images and instance label images.

    ``images``: arrays that :func:`sam_core.imaging.prepare_image` accepts; ``labels``: (H, W)
    integer arrays of the same size (0 = background, each other value one object). Every input
    error raises :class:`SamError` before training starts. One step takes one image and up to
    ``objects_per_step`` of its objects; corrective rounds are drawn from ``rounds``. ``progress``
    is called per step; ``cancel`` is checked between steps (the last finished epoch stays saved).
    """
    from sam_core.models.sam2 import refuse_sam2
    from sam_core.predictor import Predictor

    if int(epochs) < 0:
        raise SamError(f"epochs must be 0 or more, got {epochs}")
    if float(lr) <= 0:
        raise SamError(f"the learning rate must be positive, got {lr}")
    label_arrays = _check_pairs(images, labels)
    train_idx, val_idx = _split(len(images), val_fraction, seed)
    predictor = Predictor(model, cache=cache)
    model = predictor.model
    refuse_sam2(model, "fine-tuning")
    if getattr(model, "precision", "fp32") in QUANTIZED:
        raise SamError(f"this model's encoder is quantized ({model.precision}), and fine-tuning writes an "
                       "official-format checkpoint of every weight: load the model without a precision (fp32)")
    device = predictor.device
    total = len(images) + epochs * len(train_idx)
    done = 0
    report(progress, done, total, "embeddings")
    train_items, done = _prepare(predictor, images, label_arrays, train_idx, train_encoder, progress, cancel, done, total)
    val_items, done = _prepare(predictor, images, label_arrays, val_idx, train_encoder, progress, cancel, done, total)

    for p in model.parameters():
        p.requires_grad_(False)
    trainable = list(model.parameters()) if train_encoder else list(model.mask_decoder.parameters())
    for p in trainable:
        p.requires_grad_(True)
    optimizer = torch.optim.AdamW(trainable, lr=lr, weight_decay=0.01)

    fingerprint = _fingerprint(label_arrays, train_idx, val_idx, train_encoder)
    path = Path(checkpoint_path).expanduser() if checkpoint_path is not None else None
    first_epoch, history = 0, []
    if path is not None and resume:
        loaded = _load(model, optimizer, fingerprint, path, device)
        if loaded is not None:
            first_epoch, history = loaded
            done += first_epoch * len(train_idx)
    model.eval()
    if not history:
        history.append(EpochRecord(0, None, evaluate(model, val_items, device) if val_items else {}))

    rng = np.random.default_rng((seed, first_epoch))
    for epoch in range(first_epoch + 1, epochs + 1):
        losses = []
        model.train() if train_encoder else model.mask_decoder.train()
        for i in rng.permutation(len(train_items)):
            check(cancel)
            item = train_items[i]
            chosen = rng.permutation(len(item.objects))[:objects_per_step]
            targets = item.objects[chosen]
            emb = _embeddings(model, [item], device)
            result = simulate(model, emb, np.zeros(len(targets), np.int64), targets, rng,
                              rounds=int(rng.choice(rounds)), background=item.background[None])
            optimizer.zero_grad(set_to_none=True)
            result.loss.backward()
            torch.nn.utils.clip_grad_norm_(trainable, 1.0)
            optimizer.step()
            losses.append(result.loss.item())
            done += 1
            report(progress, done, total, f"epoch {epoch}/{epochs} loss {np.mean(losses):.4f}")
        model.eval()
        history.append(EpochRecord(epoch, float(np.mean(losses)), evaluate(model, val_items, device) if val_items else {}))
        if path is not None:
            _save(model, optimizer, epoch, history, fingerprint, path)
    for p in model.parameters():
        p.requires_grad_(False)
    return FinetuneResult(model.eval(), history, train_idx, val_idx)
