"""Objects followed through a time-lapse: tracking with persistent ids, divisions, lineage and the
Cell Tracking Challenge (CTC) format.

Labels are (T, ..., row, col) int arrays, time first: an object keeps its id from frame to frame.
A :class:`Lineage` is the CTC ``man_track.txt`` table: one :class:`Track` per id with the first and
last frame it is on (``begin``, ``end``, zero-based, inclusive) and its ``parent`` (0: none). The CTC
rules (:func:`validate`): ids are positive and listed once; a track is on every frame from ``begin``
to ``end`` and on no other; a parent is a listed track that ends before its child begins; every id of
the masks is listed. :func:`continuous_tracks` makes labels obey them (an object that leaves the
field and comes back continues as a new id whose parent is the earlier one).

Tracking (:func:`track_objects`) carries objects from one frame to the following frames: with a
SAM 2.1 model through its memory (:class:`sam_core.propagation.VideoSession`, all objects together),
with other models by slice propagation (:func:`sam_core.volume.propagate`, one object at a time).
A division (:func:`mark_division`) ends the parent on the frame before and starts two children.

Files: :func:`write_ctc` writes ``man_trackT.tif`` (one 16-bit mask per frame, T with 3 digits, or 4
for more than 1000 frames, as the CTC data sets) and ``man_track.txt`` (lines ``L B E P``);
:func:`read_ctc` reads such a folder back; :func:`track_table` is the per-frame table for CSV
(frame, id, parent, centroid, area). Coordinates: centroids are (row, col) = (y, x) of the image
plane, in pixels, or physical units with a scale.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from sam_core.errors import SamError
from sam_core.progress import CancelToken, ProgressFn, check, report

__all__ = [
    "Track", "Lineage", "validate", "check_ctc", "continuous_tracks", "mark_division", "replace_tracks", "end_parents",
    "track_objects", "track_table", "tracks_layer_data", "ctc_digits", "write_ctc", "read_ctc",
]

#: The lineage table's file name in a CTC folder.
TABLE_NAME = "man_track.txt"
_MASK_NAME = re.compile(r"^man_track(\d+)\.tiff?$")


@dataclass(frozen=True)
class Track:
    """One line of ``man_track.txt``: ``label`` (L), ``begin`` (B) and ``end`` (E) frames (zero-based,
    inclusive) and ``parent`` (P, 0: none)."""

    label: int
    begin: int
    end: int
    parent: int = 0


@dataclass(frozen=True)
class Lineage:
    """The tracks of a time-lapse (a CTC ``man_track.txt`` table), sorted by label."""

    tracks: Tuple[Track, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "tracks", tuple(sorted(self.tracks, key=lambda t: t.label)))

    @classmethod
    def from_labels(cls, labels: np.ndarray, parents: Optional[Mapping[int, int]] = None) -> "Lineage":
        """The lineage of ``labels`` (T, ..., row, col): each id's first and last frame, and its parent
        from ``parents`` (child id -> parent id; parents that are not in the labels count as none)."""
        frames = _frames_of(labels)
        parents = parents or {}
        tracks = []
        for label, on in frames.items():
            parent = int(parents.get(label, 0))
            tracks.append(Track(label, int(on[0]), int(on[-1]), parent if parent in frames else 0))
        return cls(tuple(tracks))

    @property
    def labels(self) -> List[int]:
        return [t.label for t in self.tracks]

    @property
    def parents(self) -> Dict[int, int]:
        """Child id -> parent id, for the tracks that have a parent."""
        return {t.label: t.parent for t in self.tracks if t.parent}

    def to_text(self) -> str:
        """The ``man_track.txt`` text: one line ``L B E P`` per track."""
        return "".join(f"{t.label} {t.begin} {t.end} {t.parent}\n" for t in self.tracks)

    @classmethod
    def from_text(cls, text: str, source: str = TABLE_NAME) -> "Lineage":
        """Read ``man_track.txt`` text (four whole numbers a line; blank lines ignored)."""
        tracks = []
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            parts = line.split()
            try:
                values = [int(p) for p in parts]
            except ValueError:
                values = []
            if len(values) != 4:
                raise SamError(f"{source} line {number} is {line.strip()!r}: each line must be four whole numbers "
                               "'L B E P' (label, begin frame, end frame, parent label or 0)")
            tracks.append(Track(*values))
        return cls(tuple(tracks))


def _frames_of(labels: np.ndarray) -> Dict[int, np.ndarray]:
    """Id -> sorted frame indices where it is (labels (T, ...))."""
    labels = np.asarray(labels)
    if labels.ndim < 3:
        raise SamError(f"a time-lapse of labels needs a time axis first (T, Y, X); got shape {labels.shape}")
    frames: Dict[int, List[int]] = {}
    for t in range(len(labels)):
        for label in np.unique(labels[t]):
            if label > 0:
                frames.setdefault(int(label), []).append(t)
    return {label: np.asarray(on) for label, on in sorted(frames.items())}


def validate(labels: np.ndarray, lineage: Lineage) -> List[str]:
    """The CTC rules ``labels`` (T, ..., row, col) and ``lineage`` break, as sentences (empty: none)."""
    problems: List[str] = []
    frames = _frames_of(labels)
    listed: Dict[int, Track] = {}
    for track in lineage.tracks:
        if track.label <= 0:
            problems.append(f"track label {track.label} is not positive")
        elif track.label in listed:
            problems.append(f"track {track.label} is listed twice")
        listed[track.label] = track
    count = len(np.asarray(labels))
    for label, track in listed.items():
        if not 0 <= track.begin <= track.end < count:
            problems.append(f"track {label}: frames {track.begin}..{track.end} are not within 0..{count - 1}")
        on = frames.get(label)
        if on is None:
            problems.append(f"track {label} is in the table but on no frame of the masks")
        elif on.tolist() != list(range(track.begin, track.end + 1)):
            problems.append(f"track {label} should be on frames {track.begin}..{track.end} and only there, "
                            f"but is on frames {_ranges(on)}")
        if track.parent:
            parent = listed.get(track.parent)
            if parent is None or track.parent == label:
                problems.append(f"track {label}: its parent {track.parent} is not another track of the table")
            elif parent.end >= track.begin:
                problems.append(f"track {label} begins on frame {track.begin} but its parent {track.parent} "
                                f"ends on frame {parent.end}: a parent must end before its children begin")
        elif track.parent < 0:
            problems.append(f"track {label}: parent {track.parent} is negative (0 means no parent)")
    for label in frames:
        if label not in listed:
            problems.append(f"id {label} is in the masks (frames {_ranges(frames[label])}) but not in the table")
    return problems


def check_ctc(labels: np.ndarray, lineage: Lineage) -> None:
    """Raise :class:`SamError` naming the CTC rules that ``labels`` and ``lineage`` break."""
    problems = validate(labels, lineage)
    if problems:
        more = f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""
        raise SamError("the tracks break the Cell Tracking Challenge rules: " + "; ".join(problems[:5]) + more)


def _ranges(frames: Sequence[int]) -> str:
    """[0, 1, 2, 5] -> ``0..2, 5``."""
    runs = _runs(frames)
    return ", ".join(f"{a}..{b}" if b > a else f"{a}" for a, b in runs)


def _runs(frames: Sequence[int]) -> List[Tuple[int, int]]:
    """Consecutive runs (first, last) of sorted frame indices."""
    runs: List[Tuple[int, int]] = []
    for t in frames:
        t = int(t)
        if runs and t == runs[-1][1] + 1:
            runs[-1] = (runs[-1][0], t)
        else:
            runs.append((t, t))
    return runs


def continuous_tracks(labels: np.ndarray, parents: Optional[Mapping[int, int]] = None
                      ) -> Tuple[np.ndarray, Dict[int, int], Dict[int, List[int]]]:
    """Labels whose every id is on consecutive frames, as CTC requires.

    An id on separate runs of frames keeps its id on the first run; each later run gets a new id
    (the labels' maximum + 1, ...) whose parent is the run before. A child of such an id gets the run
    that ends last before the child begins as parent. Returns ``(labels, parents, renamed)``;
    ``renamed`` maps each split id to the ids of its runs (only ids that were split).
    """
    labels = np.array(labels, copy=True)
    parents = {int(c): int(p) for c, p in (parents or {}).items()}
    next_id = int(labels.max(initial=0)) + 1
    runs_of: Dict[int, List[Tuple[int, int, int]]] = {}  # id -> [(run id, first, last)]
    renamed: Dict[int, List[int]] = {}
    for label, on in _frames_of(labels).items():
        runs = _runs(on)
        ids = [label]
        for first, last in runs[1:]:
            block = labels[first:last + 1]
            block[block == label] = next_id
            parents[next_id] = ids[-1]
            ids.append(next_id)
            next_id += 1
        runs_of[label] = [(i, a, b) for i, (a, b) in zip(ids, runs)]
        if len(ids) > 1:
            renamed[label] = ids
    begins = {i: a for runs in runs_of.values() for i, a, _ in runs}
    for child, parent in list(parents.items()):
        if parent in renamed and child in begins and child not in renamed.get(parent, ()):
            before = [i for i, _, b in runs_of[parent] if b < begins[child]]
            parents[child] = before[-1] if before else parent
    return labels, parents, renamed


def mark_division(labels: np.ndarray, parents: Mapping[int, int], parent_id: int, frame: int,
                  child_masks: Sequence[np.ndarray]) -> Tuple[np.ndarray, Dict[int, int], Tuple[int, ...]]:
    """Object ``parent_id`` divides on ``frame``: it ends on the frame before, and each of the two
    ``child_masks`` ((row, col) bool of one frame) starts a new id there (the labels' maximum + 1 and
    + 2) whose parent is ``parent_id``. The parent's pixels from ``frame`` on become background; a
    child takes the free pixels of its mask (the first child where they overlap). Returns
    ``(labels, parents, child ids)``; the children are on ``frame`` only (track them on from there)."""
    labels = np.asarray(labels)
    parent_id, frame = int(parent_id), int(frame)
    if len(child_masks) != 2:
        raise SamError(f"a division gives two children: click one point inside each of them (got {len(child_masks)})")
    if not 0 < frame < len(labels):
        raise SamError(f"a division is marked on a frame with frames before it (1..{len(labels) - 1}), not on frame {frame}")
    before = labels[:frame] == parent_id
    if not before.any():
        raise SamError(f"object {parent_id} is on no frame before frame {frame}: the parent must exist before it divides")
    out = np.array(labels, copy=True)
    later = out[frame:]
    later[later == parent_id] = 0
    base = int(out.max(initial=0)) + 1
    ids = (base, base + 1)
    for child, mask in zip(ids, child_masks):
        mask = np.asarray(mask, bool)
        if mask.shape != out.shape[1:]:
            raise SamError(f"a child's mask has shape {mask.shape}, the frames {out.shape[1:]}")
        take = mask & (out[frame] == 0)
        if not take.any():
            raise SamError(f"a child of object {parent_id} has no free pixel on frame {frame}: click inside it")
        out[frame][take] = child
    new_parents = {int(c): int(p) for c, p in parents.items()}
    new_parents.update({child: parent_id for child in ids})
    return out, new_parents, ids


def replace_tracks(labels: np.ndarray, tracked: np.ndarray, start: int) -> np.ndarray:
    """``labels`` (T, ...) with the objects of ``tracked`` (same shape) after frame ``start``: on every
    later frame their old pixels become background and they take the free pixels of ``tracked``
    (other objects keep theirs). Frames up to ``start`` are unchanged."""
    labels = np.asarray(labels)
    tracked = np.asarray(tracked)
    if tracked.shape != labels.shape:
        raise SamError(f"tracked objects of shape {tracked.shape} do not fit the labels' shape {labels.shape}")
    out = np.array(labels, copy=True)
    ids = [int(i) for i in np.unique(tracked) if i > 0]
    later, found = out[start + 1:], tracked[start + 1:]
    later[np.isin(later, ids)] = 0
    take = (found > 0) & (later == 0)
    later[take] = found[take]
    return out


def end_parents(labels: np.ndarray, parents: Mapping[int, int]) -> np.ndarray:
    """``labels`` (T, ...) where every parent of ``parents`` (child id -> parent id) ends before its first
    child begins: its pixels on that frame and later become background (e.g. after tracking a parent
    again from an earlier frame). Returns a new array (the input when nothing changes)."""
    labels = np.asarray(labels)
    frames = _frames_of(labels)
    first_child: Dict[int, int] = {}
    for child, parent in parents.items():
        if int(child) in frames:
            begin = int(frames[int(child)][0])
            first_child[int(parent)] = min(begin, first_child.get(int(parent), begin))
    out = labels
    for parent, begin in first_child.items():
        if parent in frames and frames[parent][-1] >= begin:
            out = np.array(out, copy=True) if out is labels else out
            later = out[begin:]
            later[later == parent] = 0
    return out


def track_objects(predictor: Any, frames: Any, start: int, masks: Mapping[int, np.ndarray], *,
                  last: Optional[int] = None, preparation: Any = None, stop_iou: Optional[float] = None,
                  progress: Optional[ProgressFn] = None, cancel: Optional[CancelToken] = None) -> np.ndarray:
    """Follow objects from frame ``start`` to frame ``last`` (inclusive; default the last frame).

    ``frames``: (T, Y, X[, C]) array-like read one frame at a time; ``masks``: object id -> its (Y, X)
    bool mask on ``start``. Returns (T, Y, X) int32 labels with the objects under their own ids on
    frames ``start``..``last`` (0 elsewhere). A SAM 2.1 ``predictor`` (``family == "sam2"``) tracks all
    objects together with its memory (:class:`~sam_core.propagation.VideoSession`; where objects
    overlap, the higher logit wins); other models propagate each object on its own
    (:func:`~sam_core.volume.propagate`, forward; it stops where the object is lost; where objects
    overlap, the first id keeps the pixel). ``preparation``: one value range for every frame.
    """
    shape = tuple(int(s) for s in frames.shape)
    count = shape[0]
    last = count - 1 if last is None else int(last)
    if not 0 <= start <= last < count:
        raise SamError(f"track from frame {start} to {last}: the time-lapse has frames 0..{count - 1}")
    masks = {int(i): np.asarray(m, bool) for i, m in masks.items() if np.asarray(m).any()}
    if not masks:
        raise SamError(f"no object on frame {start} to track: segment and commit the objects on that frame first")
    if any(i <= 0 for i in masks):
        raise SamError(f"object ids are positive, got {sorted(masks)}")
    out = np.zeros(shape[:3], np.int32)
    if getattr(predictor, "family", "sam") == "sam2":
        from sam_core.frames import open_frames
        from sam_core.propagation import VideoSession

        session = VideoSession(predictor.model, open_frames(frames), preparation=preparation)
        for object_id, mask in masks.items():
            session.add_prompt(start, object_id, mask=mask)
        total = last - start + 1
        for done, result in enumerate(session.propagate("forward", start, cancel=cancel), start=1):
            out[result.frame] = session.labels(result.frame)
            report(progress, done, total, f"frame {result.frame}")
            if result.frame >= last:
                break
        return out
    from sam_core.volume import STOP_IOU, propagate

    span = max(last - start, 1)  # frames after the start, per object
    total = span * len(masks)
    for done, (object_id, mask) in enumerate(masks.items()):
        check(cancel)

        def step(frame_done: int, _total: int, message: str, done: int = done, object_id: int = object_id) -> None:
            report(progress, done * span + min(frame_done, span), total, f"object {object_id}: {message}")

        found = propagate(predictor, frames, start, mask, direction="forward", index_range=(start, last),
                          stop_iou=STOP_IOU if stop_iou is None else stop_iou, preparation=preparation,
                          progress=step, cancel=cancel)
        out[found & (out == 0)] = object_id
        report(progress, (done + 1) * span, total, f"object {object_id} done ({done + 1}/{len(masks)})")
    return out


def _frame_rows(labels: np.ndarray) -> List[Tuple[int, Dict[str, np.ndarray]]]:
    """Per frame: ``(t, sam_core.labels.measure of the frame)`` in pixels (frames without objects left out)."""
    from sam_core.labels import measure

    rows = []
    for t in range(len(labels)):
        plane = np.asarray(labels[t])
        if plane.any():
            rows.append((t, measure(plane)))
    return rows


def track_table(labels: np.ndarray, lineage: Lineage, scale: Optional[Sequence[float]] = None) -> Dict[str, np.ndarray]:
    """One row per object and frame: ``frame``, ``id``, ``parent`` (0: none), ``centroid-y``,
    ``centroid-x`` (``centroid-z`` first for (T, Z, Y, X)) and ``area`` (``volume`` in 3D), in the units
    of ``scale`` (one value per labels axis, time first; default pixels)."""
    labels = np.asarray(labels)
    ndim = labels.ndim - 1
    spacing = np.ones(ndim) if scale is None else np.asarray(scale, float).reshape(-1)[1:]
    if spacing.shape != (ndim,):
        raise SamError(f"scale needs one value per labels axis ({labels.ndim}, time first), got {list(scale)}")
    axes = "zyx"[-ndim:] if ndim <= 3 else [str(a) for a in range(ndim)]
    parents = lineage.parents
    columns: Dict[str, list] = {"frame": [], "id": [], "parent": []}
    columns.update({f"centroid-{a}": [] for a in axes})
    size = "area" if ndim == 2 else "volume"
    columns[size] = []
    for t, table in _frame_rows(labels):
        for row, label in enumerate(table["label"]):
            columns["frame"].append(t)
            columns["id"].append(int(label))
            columns["parent"].append(parents.get(int(label), 0))
            for axis, name in enumerate(axes):
                columns[f"centroid-{name}"].append(float(table[f"centroid-{axis}"][row]) * spacing[axis])
            columns[size].append(float(table["area" if ndim == 2 else "volume"][row]) * float(np.prod(spacing)))
    return {name: np.asarray(values, dtype=np.int64 if name in ("frame", "id", "parent") else float)
            for name, values in columns.items()}


def tracks_layer_data(labels: np.ndarray, lineage: Lineage) -> Tuple[np.ndarray, Dict[int, List[int]]]:
    """What a napari Tracks layer shows: ``data`` (N, 2 + ndim) rows ``track id, frame, (z,) y, x`` (the
    objects' centroids, pixels) and ``graph`` {child id: [parent id]} for the divisions."""
    labels = np.asarray(labels)
    ndim = labels.ndim - 1
    rows = [[int(label), t, *(float(table[f"centroid-{a}"][r]) for a in range(ndim))]
            for t, table in _frame_rows(labels) for r, label in enumerate(table["label"])]
    data = np.asarray(rows, float).reshape(-1, 2 + ndim)
    present = set(int(i) for i in data[:, 0])
    graph = {child: [parent] for child, parent in lineage.parents.items() if child in present and parent in present}
    return data, graph


def ctc_digits(count: int) -> int:
    """Digits of the frame number in CTC file names: 3, or 4 for time-lapses of more than 1000 frames."""
    return 3 if count <= 1000 else 4


def write_ctc(folder: Any, labels: np.ndarray, lineage: Lineage, *, progress: Optional[ProgressFn] = None,
              cancel: Optional[CancelToken] = None) -> List[Path]:
    """Write ``labels`` (T, ..., row, col) and ``lineage`` as CTC ground truth into ``folder`` (created
    when missing): ``man_track000.tif`` ... (uint16, one per frame) and ``man_track.txt``. The rules are
    checked first (:func:`check_ctc`); every file is written atomically, the table last, and a cancelled or
    failed export removes the files it created. A folder that holds CTC masks of other frame numbers is
    refused. Returns the paths written."""
    import io

    import tifffile

    from sam_core.fileio import atomic_write, check_output_path

    labels = np.asarray(labels)
    check_ctc(labels, lineage)
    if labels.max(initial=0) > np.iinfo(np.uint16).max:
        raise SamError(f"CTC masks are 16-bit: ids up to 65535, but the largest id is {int(labels.max())}")
    target = check_output_path(folder, option="the CTC folder", folder=True)
    digits = ctc_digits(len(labels))
    names = [f"man_track{t:0{digits}d}.tif" for t in range(len(labels))]
    stale = sorted(p.name for p in target.glob("man_track*.tif*") if p.name not in names) if target.is_dir() else []
    if stale:
        raise SamError(f"{target} already holds CTC masks of another time-lapse ({', '.join(stale[:3])}"
                       f"{', ...' if len(stale) > 3 else ''}): choose an empty folder")
    written = []
    created = [target / name for name in names + [TABLE_NAME] if not (target / name).exists()]
    try:
        for t, name in enumerate(names):
            check(cancel)
            buffer = io.BytesIO()
            tifffile.imwrite(buffer, labels[t].astype(np.uint16), compression="zlib")
            with atomic_write(target / name, "wb") as handle:
                handle.write(buffer.getvalue())
            written.append(target / name)
            report(progress, t + 1, len(names) + 1, f"frame {t}")
        with atomic_write(target / TABLE_NAME, "w") as handle:
            handle.write(lineage.to_text())
    except BaseException:  # cancelled or failed: no half-written ground truth is left behind
        for path in created:
            path.unlink(missing_ok=True)
        raise
    written.append(target / TABLE_NAME)
    report(progress, len(names) + 1, len(names) + 1, TABLE_NAME)
    return written


def read_ctc(folder: Any, *, progress: Optional[ProgressFn] = None, cancel: Optional[CancelToken] = None
             ) -> Tuple[np.ndarray, Lineage]:
    """Read CTC ground truth: a folder with ``man_trackT.tif`` masks (frames 0, 1, ... in their file
    names, 3 or 4 digits) and ``man_track.txt``. Returns ``(labels (T, ..., row, col) int32, lineage)``;
    the rules are not checked here (see :func:`validate`), so that broken data can be corrected."""
    import tifffile

    path = Path(folder).expanduser()
    if not path.is_dir():
        raise SamError(f"{path} is not a folder: choose the folder that holds man_track000.tif ... and man_track.txt")
    files = {}
    for file in path.iterdir():
        match = _MASK_NAME.match(file.name)
        if match:
            files[int(match.group(1))] = file
    if not files:
        raise SamError(f"{path} holds no CTC masks (man_track000.tif, ...): choose a CTC 'TRA' folder")
    table = path / TABLE_NAME
    if not table.is_file():
        raise SamError(f"{path} has masks but no {TABLE_NAME}: the lineage table 'L B E P' is needed beside them")
    missing = sorted(set(range(max(files) + 1)) - set(files))
    if missing:
        raise SamError(f"{path} lacks the masks of frame(s) {_ranges(missing)}: frames must be numbered 0, 1, 2, ...")
    planes = []
    for t in range(len(files)):
        check(cancel)
        try:
            plane = tifffile.imread(files[t])
        except (OSError, ValueError, tifffile.TiffFileError) as error:
            raise SamError(f"cannot read {files[t]}: {error}") from None
        if planes and plane.shape != planes[0].shape:
            raise SamError(f"{files[t].name} is {plane.shape}, {files[0].name} is {planes[0].shape}: "
                           "every mask must have the same size")
        if not np.issubdtype(plane.dtype, np.integer):
            raise SamError(f"{files[t].name} holds {plane.dtype} values: CTC masks hold whole-number ids")
        planes.append(plane.astype(np.int32))
        report(progress, t + 1, len(files), f"frame {t}")
    lineage = Lineage.from_text(table.read_text(), str(table))
    return np.stack(planes), lineage
