"""The one exception type for mistakes a user can fix.

Front ends (command line, napari, QGIS) show ``str(error)`` and nothing else, so every message is
written for the user: what is wrong and how to fix it. Programming errors stay ordinary exceptions.
"""

from __future__ import annotations


class SamError(ValueError):
    """A user mistake or an unusable input, with a message written for the user."""
