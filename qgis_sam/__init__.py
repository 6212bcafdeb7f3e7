"""QGIS plugin "Segment Anything": segment georeferenced rasters on the map canvas and in Processing.

The plugin imports only QGIS and the standard library; all model work runs in the sam_core engine
process (see ``engine_client``).
"""


def classFactory(iface):  # noqa: N802 (QGIS's name)
    """Entry point called by QGIS (``iface`` is None under ``qgis_process``)."""
    from .plugin import SamPlugin

    return SamPlugin(iface)
