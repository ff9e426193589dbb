"""The window's panels. Each is a QWidget that draws from a `RunState` in `refresh(state)` (called
by the main window's redraw timer, at most 10 times a second) and asks for work through signals;
none of them talks to an instrument. GUI thread only."""

from __future__ import annotations

import html
import tomllib
from pathlib import Path
from typing import Any

import numpy as np
import pyqtgraph as pg
from PyQt6.QtCore import Qt, pyqtSignal
from PyQt6.QtWidgets import (
    QComboBox,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QGridLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPlainTextEdit,
    QProgressBar,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from gui.state import Deployment, RunState, relative_errors, signed_error
from gui.widgets import Heatmap, percent, si
from instruments.factory import CONFIG_DIR as INSTRUMENT_DIR
from xbarlab.config import config_directory
from xbarlab.pipeline import ACCURACY_STAGES, STAGES

COLOURS = {
    "train": "#1f77b4",
    "validation": "#ff7f0e",
    "memristive": "#2ca02c",
    "main": "#1f77b4",
    "fine_tuned": "#d62728",
}


def _rich_table(rows: list[tuple[str, ...]], header: tuple[str, ...] | None = None) -> str:
    cells = []
    if header:
        cells.append("<tr>" + "".join(f"<th align='left'>{html.escape(h)}</th>" for h in header))
    for row in rows:
        cells.append(
            "<tr>"
            + "".join(
                f"<td{' align=right' if i else ''}>{html.escape(str(v))}&nbsp;&nbsp;</td>"
                for i, v in enumerate(row)
            )
            + "</tr>"
        )
    return "<table cellspacing='2'>" + "".join(cells) + "</table>"


def _toml_summary(path: Path) -> str:
    """One line about an instrument config: backend, emulated or not, address, description."""
    try:
        with path.open("rb") as handle:
            table = tomllib.load(handle)
    except (OSError, tomllib.TOMLDecodeError) as error:
        return f"cannot read {path}: {error}"
    parts = [f"backend {table.get('backend', '?')}"]
    if table.get("emulate"):
        parts.append("emulated (drivers talk to in-process instrument emulators)")
    for section, key in (("smu", "resource"), ("board", "port")):
        value = table.get(section, {}).get(key) if isinstance(table.get(section), dict) else None
        if value:
            parts.append(f"{section}.{key} {value}")
    chip = table.get("chip", {})
    if isinstance(chip, dict) and "rows" in chip:
        parts.append(f"{chip['rows']}x{chip.get('cols', '?')} simulated")
    if table.get("description"):
        parts.append(str(table["description"]))
    return "; ".join(parts)


def _config_names(folder: Path) -> list[str]:
    return sorted(p.stem for p in folder.glob("*.toml"))


def resolve_config(text: str, folder: Path) -> Path:
    """A config name in `folder` or a path."""
    candidate = Path(text).expanduser()
    if candidate.suffix == ".toml" or candidate.parent != Path("."):
        return candidate
    return folder / f"{text}.toml"


# -- instrument -----------------------------------------------------------------------------------


class ConnectionPanel(QGroupBox):
    """Choose an instrument config (simulated, emulated, VISA / serial setups, or a typed path),
    connect and disconnect; shows the identity and limits of what is connected."""

    connect_requested = pyqtSignal(str)
    disconnect_requested = pyqtSignal()

    def __init__(self) -> None:
        super().__init__("Instrument")
        self.config = QComboBox()
        self.config.setEditable(True)
        self.config.addItems(_config_names(INSTRUMENT_DIR))
        self.config.setCurrentText("simulated-siox-high-r-128x128")
        self.config.setToolTip(
            "A config in configs/instruments/, or a path to an instrument TOML (VISA resource, "
            "serial port, channel map and limits are set there)"
        )
        browse = QPushButton("…")
        browse.setFixedWidth(28)
        browse.clicked.connect(self._browse)
        self.about = QLabel()
        self.about.setWordWrap(True)
        self.about.setStyleSheet("color: #555")
        self.connect_button = QPushButton("Connect")
        self.disconnect_button = QPushButton("Disconnect")
        self.disconnect_button.setEnabled(False)
        self.connect_button.clicked.connect(
            lambda: self.connect_requested.emit(self.config.currentText().strip())
        )
        self.disconnect_button.clicked.connect(self.disconnect_requested.emit)
        self.info = QLabel("not connected")
        self.info.setWordWrap(True)
        self.info.setTextFormat(Qt.TextFormat.RichText)
        self.info.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        row = QHBoxLayout()
        row.addWidget(self.config, 1)
        row.addWidget(browse)
        buttons = QHBoxLayout()
        buttons.addWidget(self.connect_button)
        buttons.addWidget(self.disconnect_button)
        layout = QVBoxLayout(self)
        layout.addLayout(row)
        layout.addWidget(self.about)
        layout.addLayout(buttons)
        layout.addWidget(self.info)
        self.config.currentTextChanged.connect(self._describe)
        self._describe(self.config.currentText())

    def config_path(self) -> Path:
        return resolve_config(self.config.currentText().strip(), INSTRUMENT_DIR)

    def _describe(self, text: str) -> None:
        path = resolve_config(text.strip(), INSTRUMENT_DIR) if text.strip() else None
        self.about.setText(_toml_summary(path) if path and path.is_file() else "")

    def _browse(self) -> None:
        path, _ = QFileDialog.getOpenFileName(
            self, "Instrument config", str(INSTRUMENT_DIR), "TOML (*.toml)"
        )
        if path:
            self.config.setCurrentText(path)

    def set_connected(self, info: dict[str, Any] | None) -> None:
        self.connect_button.setEnabled(True)
        self.disconnect_button.setEnabled(info is not None)
        if info is None:
            self.info.setText("not connected")
            return
        if isinstance(info.get("config"), str | Path):
            self.config.setCurrentText(str(info["config"]))
        record = info["record"]
        caps = record.get("capabilities", {})
        limits = record.get("limits", {})
        rows = [(k, v) for k, v in record.get("identity", {}).items()]
        rows.append(("array", f"{caps.get('rows')} x {caps.get('cols')}"))
        rows.append(("backend", record.get("backend", "")))
        rows.append(("v_read", si(record.get("v_read"), "V")))
        rows.append(("bias scheme", record.get("bias_scheme", "")))
        units = {"voltage": "V", "current": "A", "width": "s"}
        for key, value in limits.items():
            unit = next((u for word, u in units.items() if word in key), "")
            shown = si(value, unit) if unit and isinstance(value, int | float) else value
            rows.append((key.replace("_", " "), shown))
        self.info.setText(_rich_table(rows))


# -- run controls -----------------------------------------------------------------------------


class RunPanel(QGroupBox):
    """Pipeline config, stage(s), session file; run, pause / resume, abort; progress."""

    run_requested = pyqtSignal(str, object, str)  # config path, stages tuple, session path
    pause_requested = pyqtSignal(bool)  # True: pause, False: resume
    abort_requested = pyqtSignal()

    def __init__(self) -> None:
        super().__init__("Run")
        self.pipelines = config_directory() / "pipelines"
        self.config = QComboBox()
        self.config.setEditable(True)
        self.config.addItems(_config_names(self.pipelines))
        if "demo" in _config_names(self.pipelines):
            self.config.setCurrentText("demo")
        self.stages = QComboBox()
        self.stages.addItem("all stages")
        self.stages.addItems(STAGES)
        self.session = QLineEdit("runs/gui-session.h5")
        self.session.setToolTip(
            "Session file: created, or appended to (a stage alone reads the "
            "stages before it from this file)"
        )
        browse = QPushButton("…")
        browse.setFixedWidth(28)
        browse.clicked.connect(self._browse)
        self.run_button = QPushButton("Run")
        self.pause_button = QPushButton("Pause")
        self.pause_button.setCheckable(True)
        self.abort_button = QPushButton("Abort")
        self.abort_button.setStyleSheet("QPushButton:enabled { color: #b00; font-weight: bold }")
        self.run_button.clicked.connect(self._run)
        self.pause_button.toggled.connect(self._pause)
        self.abort_button.clicked.connect(self.abort_requested.emit)
        self.progress = QProgressBar()
        self.progress.setFormat("%p %")
        self.status = QLabel("idle")
        self.status.setWordWrap(True)
        # Fixed heights: a label that grows with its text would re-lay out (and repaint) the
        # whole window on every update.
        self.status.setFixedHeight(4 * self.status.fontMetrics().lineSpacing())
        self.status.setAlignment(Qt.AlignmentFlag.AlignTop)
        form = QFormLayout()
        form.addRow("config", self.config)
        form.addRow("stages", self.stages)
        session_row = QHBoxLayout()
        session_row.addWidget(self.session, 1)
        session_row.addWidget(browse)
        form.addRow("session", session_row)
        buttons = QHBoxLayout()
        for button in (self.run_button, self.pause_button, self.abort_button):
            buttons.addWidget(button)
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addLayout(buttons)
        layout.addWidget(self.progress)
        layout.addWidget(self.status)
        self.set_running(False)

    def selected_stages(self) -> tuple[str, ...]:
        choice = self.stages.currentText()
        return STAGES if choice == "all stages" else (choice,)

    def config_path(self) -> Path:
        return resolve_config(self.config.currentText().strip(), self.pipelines)

    def _run(self) -> None:
        self.run_requested.emit(
            str(self.config_path()), self.selected_stages(), self.session.text().strip()
        )

    def _pause(self, checked: bool) -> None:
        self.pause_button.setText("Resume" if checked else "Pause")
        self.pause_requested.emit(checked)

    def _browse(self) -> None:
        path, _ = QFileDialog.getSaveFileName(
            self,
            "Session file",
            self.session.text(),
            "HDF5 session (*.h5)",
            options=QFileDialog.Option.DontConfirmOverwrite,
        )
        if path:
            self.session.setText(path)

    def set_running(self, running: bool) -> None:
        self.run_button.setEnabled(not running)
        self.pause_button.setEnabled(running)
        self.abort_button.setEnabled(running)
        if not running and self.pause_button.isChecked():
            self.pause_button.blockSignals(True)
            self.pause_button.setChecked(False)
            self.pause_button.setText("Pause")
            self.pause_button.blockSignals(False)

    def set_review(self, review: bool) -> None:
        """Session review: nothing to run."""
        for widget in (self.run_button, self.config, self.stages, self.session):
            widget.setEnabled(not review)

    def refresh(self, state: RunState) -> None:
        parts = []
        for stage in STAGES:
            status = state.stage_status.get(stage)
            if status:
                parts.append(f"{stage}: {status}")
        value, text = 0, ""
        stage = state.stage
        if stage == "characterize" and state.characterize_part:
            text = f"characterize: {state.characterize_part}"
        elif stage in ("train", "fine_tune") and state.epochs.get(stage):
            done = len(state.epochs[stage])
            planned = state.epochs_planned.get(stage, done) or done
            value, text = int(100 * done / planned), f"{stage}: epoch {done} / {planned}"
        deployment = state.deployment()
        if stage in ("program", "fine_tune") and deployment is not None and deployment.total:
            done = deployment.done[-1] if deployment.done else 0
            value = int(100 * done / deployment.total)
            text = (
                f"programming {deployment.name}: {done} / {deployment.total} cells finished, "
                f"iteration {deployment.iterations[-1] if deployment.iterations else 0}"
            )
        if state.stage_status.get(stage or "") == "done":
            value = 100
        self.progress.setValue(value)
        self.status.setText("<br>".join([text, ", ".join(parts)]) if text else ", ".join(parts))


# -- maps -------------------------------------------------------------------------------------


class MapsPanel(QWidget):
    """Target, measured and signed-error heatmaps of one deployment (or a plain read)."""

    cell_selected = pyqtSignal(int, int)
    FOLLOW = "follow the run"

    def __init__(self) -> None:
        super().__init__()
        self.source = QComboBox()
        self.source.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToContents)
        self.source.setMinimumContentsLength(22)
        self.source.addItem(self.FOLLOW)
        self.source.currentTextChanged.connect(lambda _: self._changed())
        self.target = Heatmap("target G")
        self.measured = Heatmap("measured G")
        self.error = Heatmap("signed error", "signed", unit="")
        self.hover = QLabel(" ")
        self.shown: str | None = None
        self._state: RunState | None = None
        header = QHBoxLayout()
        header.addWidget(QLabel("maps of"))
        header.addWidget(self.source)
        header.addStretch(1)
        header.addWidget(self.hover)
        maps = QHBoxLayout()
        for heatmap in (self.target, self.measured, self.error):
            maps.addWidget(heatmap)
            heatmap.clicked.connect(self._select)
            heatmap.hovered.connect(self.hover.setText)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(2, 2, 2, 2)
        layout.addLayout(header)
        layout.addLayout(maps, 1)

    def select_cell(self, row: int, col: int) -> None:
        """Select a cell as a click on it would."""
        self._select(row, col)

    def _select(self, row: int, col: int) -> None:
        for heatmap in (self.target, self.measured, self.error):
            heatmap.select((row, col))
        self.cell_selected.emit(row, col)

    def _changed(self) -> None:
        if self._state is not None:
            self.refresh(self._state)

    def deployment_name(self) -> str | None:
        """The deployment the maps show (None for a plain read or the characterisation map)."""
        if self.shown and self.shown.startswith("deployment "):
            return self.shown.removeprefix("deployment ")
        return None

    def sources(self, state: RunState) -> list[str]:
        names = [f"deployment {name}" for name in state.deployments]
        if state.characterisation is not None:
            names.append("characterisation map")
        if state.last_read is not None:
            names.append("last array read")
        return names

    def refresh(self, state: RunState) -> None:
        self._state = state
        names = self.sources(state)
        current = self.source.currentText()
        if [self.source.itemText(i) for i in range(1, self.source.count())] != names:
            self.source.blockSignals(True)
            self.source.clear()
            self.source.addItems([self.FOLLOW, *names])
            self.source.setCurrentText(current if current in names else self.FOLLOW)
            self.source.blockSignals(False)
        choice = self.source.currentText()
        target = measured = None
        if choice == self.FOLLOW:
            deployment = state.deployment()
            if deployment is not None:
                choice = f"deployment {deployment.name}"
            elif state.last_read is not None and state.stage is None:
                choice = "last array read"
            elif state.characterisation is not None:
                choice = "characterisation map"
        if choice.startswith("deployment "):
            deployment = state.deployments.get(choice.removeprefix("deployment "))
            if deployment is not None:
                target, measured = deployment.targets, deployment.measured()
        elif choice == "characterisation map":
            measured = state.characterisation
        elif choice == "last array read":
            measured = state.last_read
        self.shown = choice
        self._levels(state, target, measured)
        self.target.show_map(target)
        self.measured.show_map(measured)
        window = state.window
        if target is not None and measured is not None and window:
            self.error.show_map(signed_error(measured, target, window))
        else:
            self.error.show_map(None)

    def _levels(self, state: RunState, target: np.ndarray | None, measured: np.ndarray | None):
        g_off, g_on = state.device.get("g_off"), state.device.get("g_on")
        finite = [a[np.isfinite(a) & (a > 0)] for a in (target, measured) if a is not None]
        values = np.concatenate(finite) if finite else np.zeros(0)
        if g_off and g_on:
            low, high = float(g_off) / 1.5, float(g_on) * 1.5
        elif values.size:
            low, high = float(np.percentile(values, 1)), float(np.percentile(values, 99))
        else:
            return
        for heatmap in (self.target, self.measured):
            heatmap.set_levels(low, high)
        self.error.set_levels(-0.05, 0.05)


# -- mapping error ----------------------------------------------------------------------------


MAPPING_ROWS = (
    ("cells programmed", "cells", "cells", str),
    ("mean relative error", "mean_relative_error", "mean_relative_error", percent),
    ("95th percentile relative error", "p95_relative_error", "p95_relative_error", percent),
    ("within tolerance", "within_tolerance", "within_tolerance", percent),
    ("mean pulses per cell", "mean_pulses", "mean_pulses", lambda v: f"{v:.2f}"),
    ("max pulses per cell", "max_pulses", "max_pulses", str),
    ("stuck cells", "stuck_cells", "stuck_cells", str),
)
"""(label, key in ProgramResult.summary, key in the evaluation's mapping metrics, format)."""


class MappingErrorPanel(QWidget):
    """Relative-error histogram, convergence curve and the mapping metrics of a deployment:
    live from write-verify (`ProgramResult.summary`), then from the read-back (evaluation)."""

    def __init__(self) -> None:
        super().__init__()
        self.histogram = pg.PlotWidget(title="relative error (G - G_target) / G_target")
        self.histogram.setLabel("bottom", "relative error", units="%")
        self.histogram.setLabel("left", "cells")
        self.bars = pg.PlotDataItem(stepMode="center", fillLevel=0, brush=(31, 119, 180, 120))
        self.histogram.addItem(self.bars)
        self.band = [
            pg.InfiniteLine(angle=90, pen=pg.mkPen("#d62728", style=Qt.PenStyle.DashLine))
            for _ in range(2)
        ]
        for line in self.band:
            self.histogram.addItem(line)
        self.convergence = pg.PlotWidget(title="cells finished")
        self.convergence.setLabel("bottom", "write-verify iteration")
        self.convergence.setLabel("left", "finished", units="%")
        self.convergence.setYRange(0, 100)
        self.curve = self.convergence.plot(
            pen=pg.mkPen("#2ca02c", width=2), symbol="o", symbolSize=3, symbolBrush="#2ca02c"
        )
        self.table = QLabel()
        self.table.setTextFormat(Qt.TextFormat.RichText)
        self.table.setAlignment(Qt.AlignmentFlag.AlignTop)
        self.table.setFixedHeight(13 * self.table.fontMetrics().lineSpacing())
        self.span = 0.0
        self.histogram.disableAutoRange(axis="x")
        self.values: dict[str, dict[str, Any]] = {}
        self.errors = np.zeros(0)
        plots = QHBoxLayout()
        plots.addWidget(self.histogram, 3)
        plots.addWidget(self.convergence, 2)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(2, 2, 2, 2)
        layout.addLayout(plots, 1)
        layout.addWidget(self.table)

    def refresh(self, state: RunState, deployment: Deployment | None = None) -> None:
        deployment = deployment or state.deployment()
        if deployment is None:
            return
        result = deployment.result()
        live = result.summary() if result is not None else {}
        if deployment.summary and not deployment.summary.get("cancelled", False):
            live = {**live, **deployment.summary}
        evaluation = state.evaluations.get(deployment.name, {}).get("mapping", {})
        self.values = {"live": live, "readback": evaluation}
        tolerance = float(deployment.write_verify.get("relative_tolerance", 0.02))
        self.errors = relative_errors(deployment)
        span = 100 * 3 * tolerance  # before any cell has an error to show
        if self.errors.size:
            worst = float(np.percentile(np.abs(self.errors), 99))
            span = min(100.0, max(span, 110 * worst))
        counts, edges = np.histogram(100 * self.errors, bins=61, range=(-span, span))
        if span != self.span:
            self.span = span
            self.histogram.setXRange(-span, span, padding=0.02)
        self.bars.setData(edges, counts)
        for line, sign in zip(self.band, (-1, 1), strict=True):
            line.setValue(sign * 100 * tolerance)
        if deployment.total:
            self.curve.setData(
                np.asarray(deployment.iterations),
                100 * np.asarray(deployment.done) / deployment.total,
            )
        source = "read-back" if deployment.readback is not None else "verify reads"
        rows = []
        for label, live_key, read_key, fmt in MAPPING_ROWS:
            rows.append(
                (
                    label,
                    fmt(live[live_key]) if live_key in live else "-",
                    fmt(evaluation[read_key]) if read_key in evaluation else "-",
                )
            )
        done = deployment.done[-1] if deployment.done else 0
        state_text = "interrupted (resumable)" if deployment.interrupted else ""
        rows.insert(1, ("cells finished", f"{done} / {deployment.total} {state_text}", ""))
        text = (
            f"<b>deployment {deployment.name}</b>, histogram from {source}, tolerance "
            f"±{percent(tolerance, 1)}"
            + _rich_table(rows, ("", "write-verify", "read-back (evaluation)"))
        )
        if text != self.table.text():
            self.table.setText(text)


# -- accuracy ---------------------------------------------------------------------------------


class AccuracyPanel(QWidget):
    """Training curves per epoch; accuracy at every stage after deployment; power and TOPS/W."""

    def __init__(self) -> None:
        super().__init__()
        self.curves_plot = pg.PlotWidget(title="training")
        self.curves_plot.setLabel("bottom", "epoch")
        self.curves_plot.setLabel("left", "accuracy", units="%")
        self.curves_plot.addLegend(offset=(-10, -10))
        self.curves_plot.setYRange(0, 100)
        dash = Qt.PenStyle.DashLine
        self.curves = {
            ("train", "train_accuracy"): self.curves_plot.plot(
                pen=pg.mkPen(COLOURS["train"], width=2), name="train"
            ),
            ("train", "validation_accuracy"): self.curves_plot.plot(
                pen=pg.mkPen(COLOURS["validation"], width=2), name="validation"
            ),
            ("train", "memristive_validation"): self.curves_plot.plot(
                pen=pg.mkPen(COLOURS["memristive"], width=2),
                symbol="o",
                symbolSize=6,
                symbolBrush=COLOURS["memristive"],
                name="memristive validation",
            ),
            ("fine_tune", "train_accuracy"): self.curves_plot.plot(
                pen=pg.mkPen(COLOURS["train"], width=2, style=dash), name="fine-tune train"
            ),
            ("fine_tune", "validation_accuracy"): self.curves_plot.plot(
                pen=pg.mkPen(COLOURS["validation"], width=2, style=dash),
                name="fine-tune validation",
            ),
            ("fine_tune", "memristive_validation"): self.curves_plot.plot(
                pen=pg.mkPen(COLOURS["memristive"], width=2, style=dash),
                symbol="t",
                symbolSize=7,
                symbolBrush=COLOURS["memristive"],
            ),
        }
        self.bars_plot = pg.PlotWidget(
            title="test accuracy: <span style='color:#1f77b4'>main</span> / "
            "<span style='color:#d62728'>fine-tuned</span>"
        )
        self.bars_plot.setLabel("left", "accuracy", units="%")
        self.bars_plot.setYRange(0, 100)
        axis = self.bars_plot.getAxis("bottom")
        short = {"fitted model": "fitted", "read-back": "read-back", "on chip": "on chip"}
        axis.setTicks([[(i, short.get(s, s)) for i, s in enumerate(ACCURACY_STAGES)]])
        self.bars = {
            name: pg.BarGraphItem(
                x=[], height=[], width=0.38, brush=COLOURS[name], name=f"deployment {name}"
            )
            for name in ("main", "fine_tuned")
        }
        for item in self.bars.values():
            self.bars_plot.addItem(item)
        self.labels: list[pg.TextItem] = []
        self.small_font = self.font()
        self.small_font.setPointSizeF(max(6.0, self.small_font.pointSizeF() * 0.8))
        self.table = QLabel()
        self.table.setTextFormat(Qt.TextFormat.RichText)
        self.table.setAlignment(Qt.AlignmentFlag.AlignTop)
        self.table.setFixedHeight(11 * self.table.fontMetrics().lineSpacing())
        self.accuracies: dict[str, dict[str, float]] = {}
        plots = QHBoxLayout()
        plots.addWidget(self.curves_plot, 1)
        plots.addWidget(self.bars_plot, 1)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(2, 2, 2, 2)
        layout.addLayout(plots, 1)
        layout.addWidget(self.table)

    def refresh(self, state: RunState) -> None:
        offset = 0
        for stage in ("train", "fine_tune"):
            records = state.epochs.get(stage, [])
            for key in ("train_accuracy", "validation_accuracy", "memristive_validation"):
                points = [
                    (offset + r["epoch"], 100 * r[key]) for r in records if r.get(key) is not None
                ]
                x, y = (np.asarray(v) for v in zip(*points, strict=True)) if points else ([], [])
                self.curves[(stage, key)].setData(x, y)
            if stage == "train" and records:
                offset = max(r["epoch"] for r in records)
        self.accuracies = {
            name: dict(result.get("accuracy", {})) for name, result in state.evaluations.items()
        }
        for label in self.labels:
            self.bars_plot.removeItem(label)
        self.labels = []
        for shift, name in ((-0.2, "main"), (0.2, "fine_tuned")):
            accuracy = self.accuracies.get(name, {})
            xs = [i + shift for i, s in enumerate(ACCURACY_STAGES) if s in accuracy]
            heights = [100 * accuracy[s] for s in ACCURACY_STAGES if s in accuracy]
            self.bars[name].setOpts(x=xs, height=heights)
            for x, height in zip(xs, heights, strict=True):
                label = pg.TextItem(f"{height:.0f}", anchor=(0.5, 1.0), color="k")
                label.setFont(self.small_font)
                label.setPos(x, height)
                self.bars_plot.addItem(label)
                self.labels.append(label)
        rows = []
        for name, result in state.evaluations.items():
            power = result.get("power_w", {})
            tops = result.get("tops_per_watt", {})
            rows.append((name, "ideal", percent(result.get("accuracy", {}).get("ideal")), "", ""))
            for mode in power:
                rows.append(
                    (
                        name,
                        mode,
                        percent(result.get("accuracy", {}).get(mode)),
                        si(power[mode], "W"),
                        f"{tops.get(mode, float('nan')):.1f}",
                    )
                )
            rows.append(
                (
                    name,
                    "on chip",
                    percent(result.get("accuracy", {}).get("on chip")),
                    f"{result.get('on_chip_examples', '-')} of {result.get('test_examples', '-')}"
                    " test examples",
                    "",
                )
            )
        self.table.setText(
            _rich_table(rows, ("deployment", "stage", "accuracy", "device power", "TOPS/W"))
            if rows
            else ""
        )


# -- one cell ---------------------------------------------------------------------------------


class CellPanel(QWidget):
    """The selected cell: its values, its write-verify history and an I-V sweep."""

    iv_requested = pyqtSignal(int, int, float, int)

    def __init__(self) -> None:
        super().__init__()
        self.cell: tuple[int, int] | None = None
        self.info = QLabel("click a cell on a map")
        self.info.setTextFormat(Qt.TextFormat.RichText)
        self.info.setAlignment(Qt.AlignmentFlag.AlignTop)
        self.info.setFixedWidth(250)
        self.history_plot = pg.PlotWidget(title="write-verify history")
        self.history_plot.setLabel("bottom", "pulses delivered")
        self.history_plot.setLabel("left", "G", units="S")
        self.history = self.history_plot.plot(
            pen=pg.mkPen("#1f77b4", width=2), symbol="o", symbolSize=5, symbolBrush="#1f77b4"
        )
        self.target_lines = [
            pg.InfiniteLine(angle=0, pen=pg.mkPen("#d62728", style=style))
            for style in (Qt.PenStyle.SolidLine, Qt.PenStyle.DotLine, Qt.PenStyle.DotLine)
        ]
        for line in self.target_lines:
            line.setVisible(False)
            self.history_plot.addItem(line)
        self.iv_plot = pg.PlotWidget(title="I-V sweep")
        self.iv_plot.setLabel("bottom", "V", units="V")
        self.iv_plot.setLabel("left", "I", units="A")
        self.iv_curve = self.iv_plot.plot(
            pen=pg.mkPen("#9467bd", width=2), symbol="o", symbolSize=4
        )
        self.v_max = QDoubleSpinBox()
        self.v_max.setRange(0.01, 10.0)
        self.v_max.setDecimals(2)
        self.v_max.setSingleStep(0.05)
        self.v_max.setValue(0.5)
        self.v_max.setSuffix(" V")
        self.points = QSpinBox()
        self.points.setRange(1, 200)
        self.points.setValue(11)
        self.points.setToolTip("points per quarter of the sweep 0 -> +V -> 0 -> -V -> 0")
        self.iv_button = QPushButton("I-V sweep")
        self.iv_button.setEnabled(False)
        self.iv_button.clicked.connect(self._iv)
        self.iv_data: dict[str, Any] | None = None
        controls = QHBoxLayout()
        controls.addWidget(QLabel("V max"))
        controls.addWidget(self.v_max)
        controls.addWidget(QLabel("points"))
        controls.addWidget(self.points)
        controls.addWidget(self.iv_button)
        grid = QGridLayout(self)
        grid.setContentsMargins(2, 2, 2, 2)
        grid.addWidget(self.info, 0, 0, 2, 1)
        grid.addWidget(self.history_plot, 0, 1)
        grid.addWidget(self.iv_plot, 0, 2)
        grid.addLayout(controls, 1, 2)
        grid.setColumnStretch(1, 1)
        grid.setColumnStretch(2, 1)

    def set_instrument(self, connected: bool, max_sweep_voltage: float | None = None) -> None:
        self.iv_button.setEnabled(connected and self.cell is not None)
        self._connected = connected
        if max_sweep_voltage:
            self.v_max.setMaximum(max_sweep_voltage)

    def select(self, row: int, col: int, state: RunState, deployment: str | None = None) -> None:
        self.cell = (row, col)
        self.iv_button.setEnabled(getattr(self, "_connected", False))
        self.refresh(state, deployment)

    def _iv(self) -> None:
        if self.cell is not None:
            self.iv_requested.emit(
                self.cell[0], self.cell[1], self.v_max.value(), self.points.value()
            )

    def show_iv(self, result: dict[str, Any]) -> None:
        self.iv_data = result
        self.iv_curve.setData(result["voltages"], result["currents"])
        self.iv_plot.setTitle(f"I-V sweep, cell ({result['row']}, {result['col']})")

    def refresh(self, state: RunState, deployment_name: str | None = None) -> None:
        if self.cell is None:
            return
        row, col = self.cell
        rows: list[tuple[str, str]] = []
        if state.characterisation is not None:
            rows.append(("characterisation read", si(state.characterisation[row, col], "S")))
        if state.stuck is not None:
            rows.append(("stuck (scan)", "yes" if state.stuck[row, col] else "no"))
        if state.last_read is not None:
            rows.append(("last array read", si(state.last_read[row, col], "S")))
        deployment = state.deployment(deployment_name)
        pulses = conductances = np.zeros(0)
        target = None
        if deployment is not None and deployment.targets is not None:
            target = float(deployment.targets[row, col])
            rows.append((f"{deployment.name}: target", si(target, "S")))
            if deployment.achieved is not None:
                rows.append(("last verify read", si(deployment.achieved[row, col], "S")))
            if deployment.readback is not None:
                rows.append(("read-back", si(deployment.readback[row, col], "S")))
            if deployment.pulses is not None:
                rows.append(("pulses", str(int(deployment.pulses[row, col]))))
            rows.append(("status", deployment.status_name(row, col)))
            pulses, conductances = deployment.cell_history(row, col)
        self.info.setText(f"<b>cell ({row}, {col})</b>" + _rich_table(rows))
        self.history.setData(pulses, conductances)
        self.history_plot.setTitle(f"write-verify history, cell ({row}, {col})")
        finite = target is not None and np.isfinite(target)
        if finite and deployment is not None:
            config = deployment.config()
            band = max(config.relative_tolerance * target, config.absolute_tolerance)
            for line, value in zip(
                self.target_lines, (target, target - band, target + band), strict=True
            ):
                line.setValue(value)
        for line in self.target_lines:
            line.setVisible(bool(finite))


# -- log --------------------------------------------------------------------------------------


class LogPanel(QPlainTextEdit):
    """The pipeline's events and errors, newest last."""

    def __init__(self) -> None:
        super().__init__()
        self.setReadOnly(True)
        self.setMaximumBlockCount(5000)
        self.lines: list[str] = []

    def add(self, text: str) -> None:
        self.lines.append(text)
        self.appendPlainText(text)
