"""The plugin object QGIS loads: menu, toolbar, map tool, Processing provider and engine settings."""

from __future__ import annotations

import os
from typing import Optional

from qgis.core import Qgis, QgsApplication, QgsMapLayerType, QgsRasterLayer
from qgis.PyQt.QtCore import Qt
from qgis.PyQt.QtGui import QIcon
from qgis.PyQt.QtWidgets import QAction, QDockWidget, QPushButton

from . import settings
from .map_tool import SamMapTool
from .provider import SamProvider

MENU = "&Segment Anything"
ICON = os.path.join(os.path.dirname(__file__), "icon.png")


class SamPlugin:
    """Created by ``classFactory``; ``iface`` is None under ``qgis_process`` (then only Processing loads)."""

    def __init__(self, iface) -> None:
        self.iface = iface
        self.provider: Optional[SamProvider] = None
        self.actions: list[QAction] = []
        self.toolbar = None
        self.map_tool: Optional[SamMapTool] = None
        self.segment_action: Optional[QAction] = None
        self.dock: Optional[QDockWidget] = None  # the map tool's panel ("Find all")

    # -- Processing (also without a GUI) -------------------------------------------------------------
    def initProcessing(self) -> None:  # noqa: N802 (QGIS's name)
        if self.provider is None:
            self.provider = SamProvider()
            QgsApplication.processingRegistry().addProvider(self.provider)

    # -- GUI ----------------------------------------------------------------------------------------
    def initGui(self) -> None:  # noqa: N802 (QGIS's name)
        self.initProcessing()
        if self.iface is None:
            return
        self.toolbar = self.iface.addToolBar("Segment Anything")
        self.toolbar.setObjectName("SegmentAnythingToolbar")
        self.segment_action = self._add_action(
            "Segment on the map", self.start_map_tool, checkable=True,
            tip="Segment the active raster layer: left click adds a positive point, right click a negative one, "
                "drag draws a box; Enter keeps the polygon, Esc clears, Backspace removes the last prompt.")
        self._add_action("Engine settings…", self.show_settings, toolbar=False,
                         tip="Choose or create the Python environment that runs the Segment Anything engine")
        if not settings.engine_python():
            self._offer_setup()

    def _add_action(self, text: str, slot, checkable: bool = False, toolbar: bool = True, tip: str = "") -> QAction:
        action = QAction(QIcon(ICON), text, self.iface.mainWindow())
        action.setCheckable(checkable)
        action.setToolTip(tip)
        action.setStatusTip(tip)
        action.triggered.connect(slot)
        self.iface.addPluginToRasterMenu(MENU, action)
        if toolbar:
            self.toolbar.addAction(action)
        self.actions.append(action)
        return action

    def _offer_setup(self) -> None:
        bar = self.iface.messageBar()
        item = bar.createMessage("Segment Anything", "needs a Python environment with sam_core to run its engine.")
        button = QPushButton("Set up…")
        button.clicked.connect(self.show_settings)
        item.layout().addWidget(button)
        bar.pushWidget(item, Qgis.MessageLevel.Info, 15)

    def message(self, text: str, level: int = Qgis.MessageLevel.Info) -> None:
        """Show ``text`` in the message bar (GUI) and in the log."""
        settings.log(text, level)
        if self.iface is not None:
            self.iface.messageBar().pushMessage("Segment Anything", text.split("\n")[0], level,
                                                10 if level != Qgis.MessageLevel.Critical else 0)

    def show_settings(self) -> bool:
        """Open the engine settings (first-run) dialog; True when accepted."""
        from .setup_dialog import EngineSetupDialog

        dialog = EngineSetupDialog(self.iface.mainWindow() if self.iface is not None else None)
        accepted = bool(dialog.exec())
        if accepted:
            settings.stop_client()  # the next request starts the engine with the new settings
        return accepted

    def start_map_tool(self, checked: bool = True) -> Optional[SamMapTool]:
        """Activate the map tool on the active raster layer."""
        if not checked and self.map_tool is not None:
            self.iface.mapCanvas().unsetMapTool(self.map_tool)
            return None
        layer = self.iface.activeLayer()
        if layer is None or layer.type() != QgsMapLayerType.RasterLayer or not isinstance(layer, QgsRasterLayer):
            self.segment_action.setChecked(False)
            self.message("Select a raster layer in the Layers panel first, then start Segment on the map.",
                         Qgis.MessageLevel.Warning)
            return None
        if not settings.engine_python() and not self.show_settings():
            self.segment_action.setChecked(False)
            return None
        self._drop_map_tool()
        self.map_tool = SamMapTool(self.iface.mapCanvas(), layer, settings.client(), self.message)
        self.map_tool.setAction(self.segment_action)
        layer.willBeDeleted.connect(self._drop_map_tool)
        self.iface.mapCanvas().setMapTool(self.map_tool)
        self.dock = QDockWidget("Segment Anything", self.iface.mainWindow())
        self.dock.setObjectName("SegmentAnythingPanel")
        self.dock.setWidget(self.map_tool.panel)
        self.iface.addDockWidget(Qt.DockWidgetArea.RightDockWidgetArea, self.dock)
        self.iface.mapCanvas().setFocus()
        self.message(f"Segmenting '{layer.name()}': left click +, right click −, drag a box, Enter to keep, "
                     "Esc to clear, Backspace to undo a prompt.")
        return self.map_tool

    def _drop_map_tool(self) -> None:
        if self.dock is not None:
            self.iface.removeDockWidget(self.dock)
            self.dock.deleteLater()
            self.dock = None
        if self.map_tool is None:
            return
        canvas = self.iface.mapCanvas()
        if canvas.mapTool() is self.map_tool:
            canvas.unsetMapTool(self.map_tool)
        self.map_tool.cleanup()
        self.map_tool.deleteLater()
        self.map_tool = None

    def unload(self) -> None:
        """Remove every menu entry, toolbar, map tool, provider and the engine process."""
        if self.iface is not None:
            self._drop_map_tool()
            for action in self.actions:
                self.iface.removePluginRasterMenu(MENU, action)
                if self.toolbar is not None:
                    self.toolbar.removeAction(action)
                action.deleteLater()
            self.actions = []
            if self.toolbar is not None:
                self.iface.mainWindow().removeToolBar(self.toolbar)
                self.toolbar.deleteLater()
                self.toolbar = None
        if self.provider is not None:
            QgsApplication.processingRegistry().removeProvider(self.provider)
            self.provider = None
        settings.stop_client()
