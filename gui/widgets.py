"""Reusable views: a crossbar heatmap with colour bar and hover readout, and the event-loop stall
meter. GUI thread only."""

from __future__ import annotations

import time

import numpy as np
import pyqtgraph as pg
from PyQt6.QtCore import QObject, Qt, QTimer, pyqtSignal
from PyQt6.QtWidgets import QLabel, QVBoxLayout, QWidget

pg.setConfigOptions(imageAxisOrder="row-major", antialias=False, background="w", foreground="k")


def si(value: float | None, unit: str, digits: int = 3) -> str:
    """A number with an SI prefix and unit, e.g. si(2.6e-6, "S") -> "2.6 µS"; "-" for None/NaN."""
    if value is None or not np.isfinite(value):
        return "-"
    return pg.siFormat(float(value), precision=digits, suffix=unit)


def percent(value: float | None, digits: int = 2) -> str:
    if value is None or not np.isfinite(value):
        return "-"
    return f"{100 * float(value):.{digits}f} %"


class Heatmap(QWidget):
    """A (row, col) map as an image: word lines down, bit lines across, row 0 at the top.

    kind "conductance": log10 colour scale over `levels` (S); "signed": linear, symmetric,
    diverging. Hovering shows row, column and value with its unit (`hovered`); a click emits
    `clicked(row, col)`. `values` holds the array last shown (for tests and the readout).
    """

    hovered = pyqtSignal(str)
    clicked = pyqtSignal(int, int)

    def __init__(self, title: str, kind: str = "conductance", unit: str = "S") -> None:
        super().__init__()
        self.kind = kind
        self.unit = unit
        self.values: np.ndarray | None = None
        self._levels: tuple[float, float] | None = None
        self._shape: tuple[int, ...] | None = None
        self._source: np.ndarray | None = None
        self._drawn_levels: tuple[float, float] | None = None
        self.selected: tuple[int, int] | None = None
        self.graphics = pg.GraphicsLayoutWidget()
        self.plot = self.graphics.addPlot(title=title)
        self.plot.setLabel("left", "word line (row)")
        self.plot.setLabel("bottom", "bit line (col)")
        self.plot.invertY(True)
        self.plot.setAspectLocked(False)
        self.plot.hideButtons()
        self.image = pg.ImageItem(axisOrder="row-major")
        self.plot.addItem(self.image)
        self.marker = pg.ScatterPlotItem(
            size=10, pen=pg.mkPen("m", width=2), brush=None, symbol="s"
        )
        self.plot.addItem(self.marker)
        if kind == "signed":
            cmap = pg.colormap.get("CET-D1")
            label = "(G - G_target) / (G_on - G_off)"
            values = (-0.05, 0.05)
        else:
            cmap = pg.colormap.get("viridis")
            label = "log10 G (G in S)"
            values = (-7.0, -5.0)
        self.colorbar = pg.ColorBarItem(
            values=values, colorMap=cmap, label=label, interactive=False, width=15
        )
        self.colorbar.setImageItem(self.image, insert_in=self.plot)
        self.readout = QLabel(" ")
        self.readout.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.graphics)
        layout.addWidget(self.readout)
        self.graphics.scene().sigMouseMoved.connect(self._moved)
        self.graphics.scene().sigMouseClicked.connect(self._clicked)

    def set_levels(self, low: float, high: float) -> None:
        """Colour range: conductances in S (shown on a log scale), signed errors as they are."""
        if self.kind == "conductance":
            low, high = np.log10(max(low, 1e-15)), np.log10(max(high, 1e-15))
        if high <= low:
            high = low + 1e-12
        if self._levels != (low, high):  # a colour-bar change repaints the bar and its axis
            self._levels = (low, high)
            self.colorbar.setLevels((low, high))

    def show_map(self, values: np.ndarray | None) -> None:
        """Draw `values` (rows, cols); None clears the view. The same array object again is not
        redrawn (targets do not change while cells are programmed)."""
        if values is not None and values is self._source and self._levels == self._drawn_levels:
            return
        self._source = values
        self._drawn_levels = self._levels
        self.values = None if values is None else np.asarray(values, dtype=float)
        if self.values is None:
            self.image.clear()
            self._shape = None
            return
        shown = self.values
        if self.kind == "conductance":
            with np.errstate(divide="ignore", invalid="ignore"):
                shown = np.where(shown > 0, np.log10(np.abs(shown)), np.nan)
        self.image.setImage(shown, autoLevels=False, levels=self.colorbar.levels())
        if shown.shape != self._shape:  # a new geometry: fix the view once, no auto-range
            self._shape = shown.shape
            self.image.setRect(0, 0, shown.shape[1], shown.shape[0])
            self.plot.disableAutoRange()
            self.plot.setRange(xRange=(0, shown.shape[1]), yRange=(0, shown.shape[0]), padding=0.02)

    def select(self, cell: tuple[int, int] | None) -> None:
        self.selected = cell
        if cell is None:
            self.marker.setData([], [])
        else:
            self.marker.setData([cell[1] + 0.5], [cell[0] + 0.5])

    def cell_at(self, scene_pos) -> tuple[int, int] | None:
        """(row, col) under a scene position, or None outside the map."""
        if self.values is None or not self.plot.sceneBoundingRect().contains(scene_pos):
            return None
        point = self.plot.vb.mapSceneToView(scene_pos)
        row, col = int(np.floor(point.y())), int(np.floor(point.x()))
        rows, cols = self.values.shape
        if 0 <= row < rows and 0 <= col < cols:
            return row, col
        return None

    def describe(self, row: int, col: int) -> str:
        assert self.values is not None
        value = self.values[row, col]
        text = si(value, self.unit) if self.unit else f"{value:+.4f}"
        return f"row {row}, col {col}: {text}"

    def _moved(self, scene_pos) -> None:
        cell = self.cell_at(scene_pos)
        if cell is not None:
            text = self.describe(*cell)
            self.readout.setText(text)
            self.hovered.emit(text)

    def _clicked(self, mouse_event) -> None:
        cell = self.cell_at(mouse_event.scenePos())
        if cell is not None:
            self.clicked.emit(*cell)


class StallMeter(QObject):
    """Measures how long the GUI event loop goes without running a timer due every `interval_ms`:
    the longest gap between ticks minus the interval is the longest stall (ms), per label."""

    def __init__(self, interval_ms: int = 10, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.interval_ms = interval_ms
        self.timer = QTimer(self)
        self.timer.setTimerType(Qt.TimerType.PreciseTimer)
        self.timer.setInterval(interval_ms)
        self.timer.timeout.connect(self._tick)
        self.label = "idle"
        self.longest_ms: dict[str, float] = {}
        self.ticks: dict[str, int] = {}
        self._last: float | None = None

    def start(self) -> None:
        self._last = time.perf_counter()
        self.timer.start()

    def stop(self) -> None:
        self.timer.stop()
        self._last = None

    def set_label(self, label: str) -> None:
        """Charge stalls from now on to `label` (e.g. the running stage)."""
        self.label = label

    def _tick(self) -> None:
        now = time.perf_counter()
        if self._last is not None:
            stall = max(0.0, (now - self._last) * 1000 - self.interval_ms)
            label = self.label
            self.longest_ms[label] = max(self.longest_ms.get(label, 0.0), stall)
            self.ticks[label] = self.ticks.get(label, 0) + 1
        self._last = now
