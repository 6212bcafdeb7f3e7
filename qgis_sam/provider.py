"""The Processing provider "Segment Anything" (id ``sam``); registers with or without a GUI."""

from __future__ import annotations

import os

from qgis.core import QgsApplication, QgsProcessingProvider
from qgis.PyQt.QtGui import QIcon

from .algorithms import ALGORITHMS

ICON = os.path.join(os.path.dirname(__file__), "icon.png")


class SamProvider(QgsProcessingProvider):
    def id(self) -> str:
        return "sam"

    def name(self) -> str:
        return "Segment Anything"

    def longName(self) -> str:
        return "Segment Anything (SAM) on georeferenced rasters"

    def icon(self) -> QIcon:
        return QIcon(ICON)

    def loadAlgorithms(self) -> None:
        for algorithm in ALGORITHMS:
            self.addAlgorithm(algorithm())


_registered: list = []  # keeps the Python side of a provider registered by register_provider() alive


def register_provider() -> SamProvider:
    """Add the provider to QGIS's Processing registry (no ``iface`` needed: scripts, ``qgis_process``)."""
    registry = QgsApplication.processingRegistry()
    existing = registry.providerById("sam")
    if existing is not None:
        return existing
    provider = SamProvider()
    registry.addProvider(provider)
    _registered.append(provider)
    return provider


def unregister_provider() -> None:
    """Remove the provider from the Processing registry, if present."""
    registry = QgsApplication.processingRegistry()
    provider = registry.providerById("sam")
    if provider is not None:
        registry.removeProvider(provider)
    _registered.clear()
