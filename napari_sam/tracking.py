"""Tracking in a time-lapse (t, y, x): objects followed with persistent ids, divisions, lineage, a
Tracks layer, and the Cell Tracking Challenge (CTC) format.

The logic is :mod:`sam_core.tracking`; this module reads the session's layers, runs it off the GUI
thread (progress and cancel) and writes the results back as one undoable edit of ``SAM objects``:

* **Track objects from this frame**: every committed object of the shown frame is followed to the
  last frame under its own id (SAM 2.1: with memory, all objects together; other models: slice
  propagation, one object at a time). Its pixels on later frames are replaced by the tracked ones;
  an object that divides (has children) still ends on the frame before its children begin.
* **Mark division**: the object typed in 'Object ids' divides on the shown frame; one positive point
  (or box) inside each of the two children gives two new ids whose parent is that object, tracked
  on from there. The parent ends on the frame before.
* The lineage (child id -> parent id) lives in the objects layer's ``metadata`` (``sam_parents``);
  begin and end frames always come from the labels themselves. "Show tracks" draws the centroids
  per frame and the divisions as a napari Tracks layer (``SAM tracks``).
* Export writes CTC ground truth (``man_trackT.tif`` + ``man_track.txt``; an object that leaves and
  comes back continues under a new id, as CTC requires) or a CSV (frame, id, parent, centroid, area,
  in the image's scale units); import reads CTC ground truth into ``SAM objects`` for correction.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Dict, Optional

import numpy as np
from napari.utils.notifications import show_info, show_warning
from qtpy.QtWidgets import QFileDialog, QGroupBox, QPushButton, QVBoxLayout

from sam_core.errors import SamError

if TYPE_CHECKING:
    from napari_sam.session import SamSession
    from napari_sam.workers import Job
    from sam_core.tracking import Lineage

TRACKS_NAME = "SAM tracks"
#: Key of the lineage (child id -> parent id) in the objects layer's metadata.
PARENTS_KEY = "sam_parents"
_CHANGED = "The objects changed while {what} ran: the result was dropped. {again}"


def parents_of(layer: Any) -> Dict[int, int]:
    """Child id -> parent id recorded on labels ``layer`` (empty when none)."""
    return {int(c): int(p) for c, p in dict(layer.metadata.get(PARENTS_KEY, {})).items()}


def is_tracked(layer: Any) -> bool:
    """Whether labels ``layer`` holds tracks (ids followed through time by tracking or a CTC import)."""
    return PARENTS_KEY in layer.metadata


def lineage_of(layer: Any) -> "Lineage":
    """The lineage of labels ``layer`` (T, Y, X): begin and end frames from its labels, parents from its metadata."""
    from sam_core.tracking import Lineage

    return Lineage.from_labels(np.asarray(layer.data), parents_of(layer))


class Tracking:
    """Tracking actions on ``session``'s image (a time-lapse: one stack axis, time)."""

    def __init__(self, session: "SamSession") -> None:
        self.session = session

    # ----------------------------------------------------------------------------------- helpers

    def check_time_lapse(self) -> bool:
        """True when the session runs on a (t, y, x) image (else notifies)."""
        session = self.session
        if not session.ready():
            return False
        if len(session.access.stack_shape) != 1:
            session.fail("Tracking needs a time-lapse with axes (t, y, x): this image has "
                         f"{len(session.access.spatial_shape)} non-channel axes {session.access.spatial_shape}.")
            return False
        return True

    def _apply(self, objects: Any, before: np.ndarray, new: np.ndarray, what: str, again: str,
               parents: Optional[Dict[int, int]] = None) -> bool:
        """Write ``new`` into ``objects`` as one undoable edit, unless the objects changed since ``before``."""
        session = self.session
        if session.layers.objects is not objects or not np.array_equal(np.asarray(objects.data), before):
            show_warning(_CHANGED.format(what=what, again=again))
            return False
        old_parents = parents_of(objects)
        was_tracked = is_tracked(objects)

        def undo() -> None:  # the lineage goes back with the pixels
            if was_tracked:
                objects.metadata[PARENTS_KEY] = old_parents
            else:
                objects.metadata.pop(PARENTS_KEY, None)
            self.show_tracks()

        session.history.apply(objects, new.astype(objects.data.dtype), what, on_undo=undo)
        objects.metadata[PARENTS_KEY] = dict(old_parents if parents is None else parents)  # marks it tracked
        self.show_tracks()
        return True

    # ----------------------------------------------------------------------------------- tracking

    def _shown_frame(self) -> Optional[tuple]:
        """(session, objects layer, its labels copied, the lineage's parents, the shown index, its frame), or
        None (with a message) when the image is not a time-lapse with objects."""
        if not self.check_time_lapse():
            return None
        session = self.session
        objects = session.layers.objects
        here = session.current_index()
        return session, objects, np.array(objects.data), parents_of(objects), here, here[0]

    def track(self, on_done: Optional[Callable[[np.ndarray], None]] = None) -> Optional["Job"]:
        """Follow every committed object of the shown frame to the last frame, each under its id."""
        from sam_core.tracking import end_parents, replace_tracks, track_objects

        shown = self._shown_frame()
        if shown is None:
            return None
        session, objects, before, parents, here, frame = shown
        plane = before[frame]
        masks = {int(i): plane == i for i in np.unique(plane) if i > 0}
        if not masks:
            session.fail(f"No committed object on frame {frame}: segment the objects on this frame, commit them, "
                         "then track.")
            return None
        stack = session.access.volume(here, 0)
        preparation = session.access.preparation()

        def job(progress: Any, cancel: Any) -> np.ndarray:
            predictor = session.predictor(progress, cancel)
            with session.lock:
                tracked = track_objects(predictor, stack, frame, masks, preparation=preparation,
                                        progress=progress, cancel=cancel)
            return end_parents(replace_tracks(before, tracked, frame), parents)  # a divided object stays ended

        def finished(new: np.ndarray) -> None:
            if self._apply(objects, before, new, "tracking", "Track again."):
                show_info(f"{len(masks)} object(s) tracked from frame {frame} to frame {len(stack) - 1}.")
                if on_done is not None:
                    on_done(new)

        return session.run(job, "SAM tracking", finished)

    def divide(self, parent_id: int, on_done: Optional[Callable[[tuple], None]] = None) -> Optional["Job"]:
        """Object ``parent_id`` divides on the shown frame: the two positive points (or boxes) there become
        two children (new ids, parent recorded), tracked on to the last frame."""
        from sam_core.tracking import mark_division, replace_tracks, track_objects

        shown = self._shown_frame()
        if shown is None:
            return None
        session, objects, before, parents, here, frame = shown
        prompts = session.prompts()
        count = 0 if prompts is None else (0 if prompts.labels is None else int((prompts.labels == 1).sum())) + (
            0 if prompts.boxes is None else len(prompts.boxes))
        if count != 2:
            session.fail(f"Click one point inside each of the two children of object {parent_id} on this frame "
                         f"(frame {frame}, where it divides), then press 'Mark division' ({count} given).")
            return None
        stack = session.access.volume(here, 0)
        preparation = session.access.preparation()

        def job(progress: Any, cancel: Any) -> tuple:
            predictor = session.predictor(progress, cancel)
            with session.lock:
                children = session.embeddings.decode_each(predictor, prompts, preparation)
                masks = [children == 1, children == 2]
                labels, new_parents, ids = mark_division(before, parents, parent_id, frame, masks)
                tracked = track_objects(predictor, stack, frame, {i: labels[frame] == i for i in ids},
                                        preparation=preparation, progress=progress, cancel=cancel)
            return replace_tracks(labels, tracked, frame), new_parents, ids

        def finished(result: tuple) -> None:
            new, new_parents, ids = result
            if self._apply(objects, before, new, "division", "Mark the division again.", new_parents):
                session.clear()
                show_info(f"Object {parent_id} divides on frame {frame} into objects {ids[0]} and {ids[1]}.")
                if on_done is not None:
                    on_done(ids)

        return session.run(job, "SAM division", finished)

    # ----------------------------------------------------------------------------------- tracks layer

    def show_tracks(self) -> Any:
        """Draw the objects' centroids per frame and the divisions as the ``SAM tracks`` layer (or remove
        it when there are no objects); returns the layer."""
        from napari.layers import Tracks

        from sam_core.tracking import tracks_layer_data

        session = self.session
        viewer = session.viewer
        objects = session.layers.objects
        if objects is None or np.asarray(objects.data).ndim != 3:
            return None
        active = viewer.layers.selection.active
        if TRACKS_NAME in viewer.layers:
            viewer.layers.remove(TRACKS_NAME)
        data, graph = tracks_layer_data(np.asarray(objects.data), lineage_of(objects))
        if not len(data):
            return None
        layer = Tracks(data, graph=graph, name=TRACKS_NAME, scale=objects.scale, translate=objects.translate,
                       tail_length=len(objects.data))
        viewer.add_layer(layer)
        if active is not None:
            viewer.layers.selection.active = active
        return layer

    # ----------------------------------------------------------------------------------- files

    def export_ctc(self, folder: str, on_done: Optional[Callable[["Lineage"], None]] = None) -> Optional["Job"]:
        """Write the objects and their lineage as CTC ground truth into ``folder``."""
        from sam_core.tracking import Lineage, continuous_tracks, write_ctc

        if not self.check_time_lapse():
            return None
        objects = self.session.layers.objects
        labels = np.array(objects.data)
        parents = parents_of(objects)
        if not labels.any():
            self.session.fail("Commit and track some objects first: there is nothing to export.")
            return None

        def job(progress: Any, cancel: Any) -> tuple:
            fixed, fixed_parents, renamed = continuous_tracks(labels, parents)
            lineage = Lineage.from_labels(fixed, fixed_parents)
            write_ctc(folder, fixed, lineage, progress=progress, cancel=cancel)
            return lineage, renamed

        def finished(result: tuple) -> None:
            lineage, renamed = result
            text = f"Wrote {len(labels)} masks and man_track.txt ({len(lineage.tracks)} tracks) to {folder}."
            if renamed:
                text += " Objects that leave and come back continue under new ids (CTC): " + "; ".join(
                    f"{old} -> {', '.join(map(str, ids))}" for old, ids in renamed.items()) + "."
            show_info(text)
            if on_done is not None:
                on_done(lineage)

        return self.session.run(job, "SAM CTC export", finished)

    def export_csv(self, path: str, on_done: Optional[Callable[[dict], None]] = None) -> Optional["Job"]:
        """Write one row per object and frame (frame, id, parent, centroid, area in scale units) to ``path``."""
        from sam_core.labels import write_csv
        from sam_core.tracking import Lineage, track_table

        if not self.check_time_lapse():
            return None
        objects = self.session.layers.objects
        labels = np.array(objects.data)
        parents = parents_of(objects)
        scale = self.session.access.scale

        def job(progress: Any, cancel: Any) -> dict:
            progress(0, 1, "measuring")
            table = track_table(labels, Lineage.from_labels(labels, parents), scale)
            write_csv(table, path)
            progress(1, 1, "written")
            return table

        def finished(table: dict) -> None:
            show_info(f"Wrote {len(table['id'])} rows (object and frame) to {path}.")
            if on_done is not None:
                on_done(table)

        return self.session.run(job, "SAM tracks CSV", finished)

    def import_ctc(self, folder: str, on_done: Optional[Callable[["Lineage"], None]] = None) -> Optional["Job"]:
        """Read CTC ground truth from ``folder`` into ``SAM objects`` (one undoable edit) with its lineage."""
        from sam_core.tracking import read_ctc, validate

        if not self.check_time_lapse():
            return None
        session = self.session
        objects = session.layers.objects
        before = np.array(objects.data)
        shape = session.access.spatial_shape

        def job(progress: Any, cancel: Any) -> tuple:
            labels, lineage = read_ctc(folder, progress=progress, cancel=cancel)
            if labels.shape != shape:
                raise SamError(f"the ground truth in {folder} is {labels.shape} (t, y, x) but the image is {shape}: "
                               "choose the image it belongs to in the set-up panel")
            return labels, lineage, validate(labels, lineage)

        def finished(result: tuple) -> None:
            labels, lineage, problems = result
            if not self._apply(objects, before, labels, "CTC import", "Import again.", lineage.parents):
                return
            show_info(f"Imported {len(lineage.tracks)} tracks on {len(labels)} frames from {folder}.")
            if problems:
                show_warning(f"The ground truth breaks {len(problems)} CTC rule(s), e.g. {problems[0]}; "
                             "correct the objects and export again.")
            if on_done is not None:
                on_done(lineage)

        return session.run(job, "SAM CTC import", finished)


class TrackingPanel(QGroupBox):
    """The panel's 'Tracking (time-lapse)' box: buttons for :class:`Tracking` on the widget's session."""

    def __init__(self, widget: Any) -> None:
        super().__init__("Tracking (time-lapse t, y, x)")
        self.widget = widget
        self.tracking = Tracking(widget.session)
        layout = QVBoxLayout(self)
        buttons = [
            ("track_button", "Track objects from this frame", self.track,
             "Follow every committed object of the shown frame to the last frame, each under its own id "
             "(SAM 2.1: with memory; other models: slice propagation). Undo with 'Undo' (Shift-Z)."),
            ("divide_button", "Mark division of listed object", self.divide,
             "On the frame where the object typed in 'Object ids' divides, click one point inside each of its two "
             "children, then press this: they become two new ids whose parent is that object, tracked on."),
            ("tracks_button", "Show tracks", self.show_tracks,
             "Draw the objects' centroids per frame and the divisions as the 'SAM tracks' layer."),
            ("export_ctc_button", "Export tracks (CTC folder)…", self.export_ctc,
             "Write man_track000.tif ... and man_track.txt (L B E P) in the Cell Tracking Challenge format."),
            ("export_csv_button", "Export tracks (CSV)…", self.export_csv,
             "Write one row per object and frame: frame, id, parent, centroid and area in the image's units."),
            ("import_ctc_button", "Import CTC ground truth…", self.import_ctc,
             "Read a folder with man_track*.tif and man_track.txt into SAM objects (with its lineage) to correct it."),
        ]
        for attribute, text, action, tip in buttons:
            button = QPushButton(text)
            button.setToolTip(tip)
            button.clicked.connect(lambda _=False, action=action: action())
            setattr(self, attribute, button)
            layout.addWidget(button)

    def track(self) -> Any:
        if not self.widget._ensure_started():
            return None
        return self.tracking.track()

    def show_tracks(self) -> Any:
        if not self.widget._ensure_started() or not self.tracking.check_time_lapse():
            return None
        layer = self.tracking.show_tracks()
        if layer is None:
            show_info("No objects to draw: commit and track some objects first.")
        return layer

    def divide(self) -> Any:
        from napari.utils.notifications import show_error

        from napari_sam.editing import parse_ids

        if not self.widget._ensure_started():
            return None
        try:
            ids = parse_ids(self.widget.ids_edit.text())
        except SamError as error:
            show_error(str(error))
            return None
        if len(ids) != 1:
            show_error("Type the id of the object that divides (one id) in the 'Object ids' box first.")
            return None
        return self.tracking.divide(ids[0])

    def export_ctc(self) -> Any:
        if not self.widget._ensure_started():
            return None
        folder = QFileDialog.getExistingDirectory(self, "Folder for the CTC ground truth (e.g. 01_GT/TRA)")
        return self.tracking.export_ctc(folder) if folder else None

    def export_csv(self) -> Any:
        if not self.widget._ensure_started():
            return None
        path, _ = QFileDialog.getSaveFileName(self, "Tracks CSV", "tracks.csv", "CSV (*.csv)")
        return self.tracking.export_csv(path) if path else None

    def import_ctc(self) -> Any:
        if not self.widget._ensure_started():
            return None
        folder = QFileDialog.getExistingDirectory(self, "CTC ground truth folder (man_track*.tif + man_track.txt)")
        return self.tracking.import_ctc(folder) if folder else None
