"""napari plugin: click-and-box Segment Anything for microscopy and medical images, volumes and time series.

The dock widget (``napari_sam.widget.SamWidget``) drives a ``napari_sam.session.SamSession``, which calls
only ``sam_core``'s public API in worker threads. Readers (NIfTI, DICOM series) and sample data are
declared in ``napari.yaml`` (npe2).
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
