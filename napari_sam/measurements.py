"""Per-object measurements of the committed objects, in the image's physical units, as CSV.

The measuring is ``sam_core.labels.measure`` (scikit-image ``regionprops_table``) with the image
layer's scale as pixel spacing and every channel's intensities; the file is written atomically by
``sam_core.labels.write_csv``. Classes come from the objects layer's ``features`` table; objects that
were tracked (or imported from CTC files) get their track id, which is their id.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Optional

import numpy as np
from napari.utils.notifications import show_info

from napari_sam.classes import object_classes
from napari_sam.tracking import is_tracked

if TYPE_CHECKING:
    from napari_sam.session import SamSession
    from napari_sam.workers import Job


def export(session: "SamSession", path: str, on_done: Optional[Callable[[dict], None]] = None) -> Optional["Job"]:
    """Measure every committed object and write the table to ``path`` (CSV) off the GUI thread."""
    from sam_core.labels import measure, write_csv

    if not session.ready():
        return None
    labels = np.array(session.layers.objects.data)
    if not labels.any():
        session.fail("Commit some objects first: measurements are made on the committed objects.")
        return None
    access = session.access
    scale = access.scale
    classes = object_classes(session.layers.objects)
    # tracked objects keep one id through time: that id is the track's (CTC's L)
    tracks = {int(i): int(i) for i in np.unique(labels) if i > 0} if is_tracked(session.layers.objects) else None

    def job(progress: Any, cancel: Any) -> dict:
        from sam_core.progress import check

        progress(0, 2, "reading the image")
        intensity = access.intensity()
        check(cancel)
        progress(1, 2, "measuring")
        table = measure(labels, intensity, scale, classes=classes, tracks=tracks)
        check(cancel)
        write_csv(table, path)
        progress(2, 2, "written")
        return table

    def finished(table: dict) -> None:
        show_info(f"Measured {len(table['label'])} object(s); written to {path}.")
        if on_done is not None:
            on_done(table)

    return session.run(job, "SAM measurements", finished)
