"""napari plugin: click-and-box Segment Anything for microscopy and medical images, volumes and time series.

The dock widget (``napari_sam.widget.SamWidget``) drives a ``napari_sam.session.SamSession``, which calls
only ``sam_core``'s public API in worker threads. Readers (NIfTI, DICOM series) and sample data are
declared in ``napari.yaml`` (npe2).
"""

from sam_core import __version__  # the project's one version number

__all__ = ["__version__"]
