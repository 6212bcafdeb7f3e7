"""Image series: going through many images one by one, each image's labels saved, resumable.

A series is an ordered list of image names (the files of a folder, sorted by name, or the names of a
front end's image layers) and an *output folder* that holds, for every image that was saved, a label
TIFF (``<stem>_labels.tif``, 0 background, one id per object) and one small JSON manifest
(:data:`MANIFEST_NAME`) that says which images are done, their label files, their objects' classes,
the class list and the current position. Every file is written atomically (temporary file + rename,
:mod:`sam_core.fileio`), so a crash never leaves a half-written label file or manifest.

Opening a series whose output folder already holds a manifest resumes it: the saved labels and
classes are kept and the position is the image that was current (found by name, so images added
to the folder since keep their places in the order by name).

Images are read with :func:`sam_core.io.read_image` ((H, W) or (H, W, C), rows first). An image
that cannot be read raises :class:`~sam_core.errors.SamError` naming it; front ends skip it with a note
(:meth:`Series.mark_unreadable` records the reason in the manifest). :func:`encode_ahead` computes the
embeddings of the next images into a predictor's embedding cache, with progress and cancel.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ContextManager, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from sam_core.annotate import list_images
from sam_core.errors import SamError
from sam_core.fileio import atomic_write, check_output_path
from sam_core.imaging import Preparation
from sam_core.progress import CancelToken, ProgressFn, check, report

PathLike = Union[str, "os.PathLike[str]"]

__all__ = ["MANIFEST_NAME", "OUTPUT_FOLDER_NAME", "Series", "SeriesImage", "display_range", "encode_ahead",
           "folder_loader", "label_file_names", "list_images", "open_folder", "open_names"]

#: The manifest's file name inside the output folder.
MANIFEST_NAME = "sam-series.json"
#: The output folder of a folder series when none is chosen: a folder of this name inside the image folder.
OUTPUT_FOLDER_NAME = "sam-labels"
_FORMAT = "sam-suite image series"
_VERSION = 1


def label_file_names(names: Sequence[str]) -> List[str]:
    """The label TIFF's file name for each image name: ``<stem>_labels.tif``, unique within the series.

    Characters other than letters, digits, ``.``, ``-`` and ``_`` become ``_``; images whose stems
    coincide (``a.png`` and ``a.tif``) keep their extension in the name (``a_png_labels.tif``).
    """
    def clean(text: str) -> str:
        return re.sub(r"[^A-Za-z0-9._-]", "_", text).strip(".") or "image"

    stems = [clean(Path(name).stem if Path(name).suffix else name) for name in names]
    out: List[str] = []
    for name, stem in zip(names, stems):
        base = clean(name.replace(".", "_")) if stems.count(stem) > 1 else stem
        candidate, n = f"{base}_labels.tif", 2
        while candidate in out:
            candidate, n = f"{base}_{n}_labels.tif", n + 1
        out.append(candidate)
    return out


def display_range(image: np.ndarray) -> Optional[Tuple[float, float]]:
    """The value range an image is shown and prepared with: (0, 255) for uint8, else its finite
    (min, max); None when all pixels have one value. Front ends show the image with this range as
    contrast limits, so that the embeddings :func:`encode_ahead` computes are the ones they use."""
    array = np.asarray(image)
    if array.dtype == np.uint8:
        return 0.0, 255.0
    finite = array[np.isfinite(array)] if np.issubdtype(array.dtype, np.floating) else array
    if finite.size == 0:
        return None
    lo, hi = float(finite.min()), float(finite.max())
    return (lo, hi) if hi > lo else None


@dataclass
class SeriesImage:
    """One image of a series: its ``name`` (file name or layer name), ``labels`` (label TIFF's file name
    in the output folder), whether its labels are saved (``done``), how many objects they hold,
    ``classes`` (object id -> class name) and, for an image that could not be read, ``error``."""

    name: str
    labels: str
    done: bool = False
    objects: int = 0
    classes: Dict[int, str] = field(default_factory=dict)
    error: Optional[str] = None

    def to_json(self) -> dict:
        entry: dict = {"name": self.name, "labels": self.labels, "done": self.done, "objects": self.objects}
        if self.classes:
            entry["classes"] = {str(k): v for k, v in sorted(self.classes.items())}
        if self.error:
            entry["error"] = self.error
        return entry


@dataclass
class Series:
    """An ordered list of images, the output folder of their labels and the current ``position`` (0-based).

    ``folder``: where the image files are (None for a series of named in-memory images, such as napari
    layers). ``class_names``: the class list last saved (empty: none). Build one with
    :func:`open_folder` or :func:`open_names`.
    """

    output: Path
    images: List[SeriesImage]
    folder: Optional[Path] = None
    position: int = 0
    class_names: List[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.images)

    @property
    def manifest_path(self) -> Path:
        return self.output / MANIFEST_NAME

    @property
    def current(self) -> SeriesImage:
        return self.images[self.position]

    def describe(self) -> str:
        """``image 3 of 5: name`` (1-based, for people)."""
        return f"image {self.position + 1} of {len(self)}: {self.current.name}"

    @property
    def done(self) -> int:
        """How many images have saved labels."""
        return sum(image.done for image in self.images)

    def index_of(self, name: str) -> int:
        """The position of the image called ``name`` (SamError when it is not in the series)."""
        for i, image in enumerate(self.images):
            if image.name == name:
                return i
        raise SamError(f"{name!r} is not an image of this series")

    def move_to(self, index: int) -> None:
        """Make image ``index`` the current one (the manifest is written by the next save)."""
        if not 0 <= index < len(self):
            raise SamError(f"there is no image {index + 1}: the series has {len(self)}")
        self.position = int(index)

    def path(self, index: int) -> Path:
        """The file of image ``index`` (folder series only)."""
        if self.folder is None:
            raise SamError("this series is not a folder of files")
        return self.folder / self.images[index].name

    def read(self, index: int) -> np.ndarray:
        """The pixels of image ``index`` ((H, W) or (H, W, C)); SamError naming the file when it cannot be read."""
        from sam_core.io import read_image

        return read_image(self.path(index))

    def labels_path(self, index: int) -> Path:
        return self.output / self.images[index].labels

    def load_labels(self, index: int) -> Optional[np.ndarray]:
        """The saved labels of image ``index`` (int32), or None when it has none yet.

        A label file listed as done but missing or unreadable raises SamError naming it."""
        image = self.images[index]
        if not image.done:
            return None
        import tifffile

        path = self.labels_path(index)
        try:
            return np.asarray(tifffile.imread(path)).astype(np.int32)
        except Exception as error:  # missing or damaged file: say which, never guess
            raise SamError(f"the saved labels of {image.name} ({path}) cannot be read: {error}. "
                           f"Restore the file, or remove the entry of {image.name} from {self.manifest_path}") from error

    def save_labels(self, index: int, labels: np.ndarray, classes: Optional[Mapping[int, str]] = None) -> Path:
        """Write image ``index``'s ``labels`` (integers, 0 background) as its label TIFF, with ``classes``
        (object id -> class name) kept in the manifest and, when there are some, in a CSV ``id,class``
        beside the TIFF; then the manifest. Both atomically. Returns the TIFF's path."""
        from sam_core.labels import write_labels

        labels = np.asarray(labels)
        ids = {int(i) for i in np.unique(labels) if i > 0}
        kept = {int(k): str(v) for k, v in (classes or {}).items() if int(k) in ids and v}
        path = self.labels_path(index)
        write_labels(labels, path, classes=kept or None)
        image = self.images[index]
        image.done, image.objects, image.classes, image.error = True, len(ids), kept, None
        self.write_manifest()
        return path

    def mark_unreadable(self, index: int, reason: str) -> None:
        """Record that image ``index`` cannot be read (kept in the manifest; its labels, if any, stay)."""
        self.images[index].error = reason

    def next_index(self, step: int) -> Optional[int]:
        """The position ``step`` images away (+1 next, -1 previous), or None past either end."""
        index = self.position + int(step)
        return index if 0 <= index < len(self) else None

    def ahead(self, count: int) -> List[int]:
        """The positions of the next ``count`` images after the current one (fewer at the end)."""
        return list(range(self.position + 1, min(self.position + 1 + max(count, 0), len(self))))

    def write_manifest(self) -> Path:
        """Write the manifest (atomically): the images, which are done, their label files and classes,
        the class list and the current position."""
        content = {
            "format": _FORMAT,
            "version": _VERSION,
            "folder": None if self.folder is None else str(self.folder),
            "position": self.position,
            "current": self.current.name,
            "class_names": list(self.class_names),
            "images": [image.to_json() for image in self.images],
        }
        with atomic_write(self.manifest_path, "w") as handle:
            json.dump(content, handle, indent=1)
        return self.manifest_path


def _read_manifest(path: Path) -> Optional[dict]:
    if not path.exists():
        return None
    try:
        content = json.loads(path.read_text(encoding="utf-8"))
        if content.get("format") != _FORMAT or not isinstance(content.get("images"), list):
            raise ValueError("not an image series manifest")
        if content.get("version") != _VERSION:
            raise ValueError(f"version {content.get('version')!r}, this program reads version {_VERSION}")
        return content
    except (OSError, ValueError, AttributeError) as error:
        raise SamError(f"the series manifest {path} cannot be used ({error}): choose another output folder, "
                       "or move the manifest away to start the series over (label files stay where they are)") from None


def open_names(names: Sequence[str], output: PathLike, folder: Optional[PathLike] = None) -> Series:
    """The series of ``names`` (in this order) with labels in ``output``, resumed from its manifest.

    ``output`` is checked first: SamError when it cannot be written (read-only, no permission, a file
    in its place, a full disk). Images of the manifest that are not in ``names`` are dropped from the
    series (their label files stay); new names start without labels. The manifest is written at once.
    """
    if not names:
        raise SamError("the series has no images: choose a folder with images, or open some images first")
    if len(set(names)) != len(names):
        raise SamError("two images of the series have the same name: rename one of them")
    target = check_output_path(output, option="the labels folder", folder=True)
    saved = _read_manifest(target / MANIFEST_NAME)
    label_names = label_file_names(names)
    images = [SeriesImage(name, labels) for name, labels in zip(names, label_names)]
    series = Series(target, images, None if folder is None else Path(folder))
    if saved is not None:
        by_name = {entry.get("name"): entry for entry in saved["images"] if isinstance(entry, dict)}
        for image in images:
            entry = by_name.get(image.name)
            if entry and entry.get("done") and (target / str(entry.get("labels"))).is_file():
                image.labels, image.done = str(entry["labels"]), True
                image.objects = int(entry.get("objects", 0))
                image.classes = {int(k): str(v) for k, v in (entry.get("classes") or {}).items()}
        series.class_names = [str(name) for name in saved.get("class_names") or []]
        current = saved.get("current")
        names_list = list(names)
        if current in names_list:
            series.position = names_list.index(current)
        else:
            series.position = int(np.clip(int(saved.get("position", 0)), 0, len(images) - 1))
    series.write_manifest()
    return series


def open_folder(folder: PathLike, output: Optional[PathLike] = None) -> Series:
    """The series of the image files in ``folder`` (sorted by name), labels in ``output`` (default
    ``<folder>/sam-labels``), resumed from its manifest. SamError for a missing folder, a folder
    without images, or an output folder that cannot be written."""
    files = list_images(folder)
    source = files[0].parent
    return open_names([f.name for f in files], output if output else source / OUTPUT_FOLDER_NAME, source)


def encode_ahead(predictor: Any, images: Sequence[Tuple[str, Callable[[], Tuple[np.ndarray, Preparation]]]],
                 progress: Optional[ProgressFn] = None, cancel: Optional[CancelToken] = None,
                 lock: Optional[ContextManager] = None) -> Tuple[int, List[Tuple[str, str]]]:
    """Compute the embeddings of ``images`` into ``predictor``'s embedding cache, one at a time.

    ``images``: (name, load) pairs; ``load()`` returns the image as the front end will encode it and
    its :class:`Preparation`. ``lock`` (a context manager, e.g. a front end's model lock) is held
    around each encode. Checks ``cancel`` between images. An image that cannot be read or encoded
    (SamError) is skipped. Returns (encoder runs, skipped as (name, reason)).
    """
    import contextlib

    before = predictor.encoder_runs
    skipped: List[Tuple[str, str]] = []
    for done, (name, load) in enumerate(images):
        check(cancel)
        try:
            image, preparation = load()
            with lock if lock is not None else contextlib.nullcontext():
                check(cancel)
                predictor.encode(image, preparation=preparation)
        except SamError as error:
            skipped.append((name, str(error)))
        report(progress, done + 1, len(images), name)
    return predictor.encoder_runs - before, skipped


def folder_loader(series: Series, index: int, channels: Optional[Tuple[int, ...]] = None
                  ) -> Callable[[], Tuple[np.ndarray, Preparation]]:
    """``load`` for :func:`encode_ahead`: image ``index`` of a folder series, prepared with its
    :func:`display_range` and ``channels``."""
    def load() -> Tuple[np.ndarray, Preparation]:
        image = series.read(index)
        return image, Preparation(value_range=display_range(image), channels=channels)

    return load
