"""The main window: panels, the hardware worker, coalesced redraws and the stall meter.

Events from the worker are folded into a `RunState` as they arrive (cheap: keeping references to
arrays); a 100 ms timer redraws the views the events made out of date, so the window redraws at
most 10 times a second however fast the pipeline reports. pyqtgraph items are only touched here,
on the GUI thread.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from PyQt6.QtCore import Qt, QTimer
from PyQt6.QtGui import QAction, QKeySequence
from PyQt6.QtWidgets import (
    QDockWidget,
    QFileDialog,
    QMainWindow,
    QMessageBox,
    QScrollArea,
    QSplitter,
    QVBoxLayout,
    QWidget,
)

from gui.panels import (
    AccuracyPanel,
    CellPanel,
    ConnectionPanel,
    LogPanel,
    MappingErrorPanel,
    MapsPanel,
    RunPanel,
)
from gui.state import RunState, session_events
from gui.widgets import StallMeter, percent
from gui.worker import (
    ConnectJob,
    DisconnectJob,
    HardwareWorker,
    IVSweepJob,
    JobError,
    ReadAllJob,
    RunJob,
    warm_up_imports,
)
from instruments import open_crossbar
from simulation.config import ConfigError
from xbarlab.config import read_toml
from xbarlab.pipeline import STAGES, Event, PipelineConfig
from xbarlab.store import SessionError, SessionStore

REDRAW_INTERVAL_MS = 100
"""At most 10 redraws a second."""

HEAVY_VIEWS = ("maps", "mapping", "cell", "accuracy")


class MainWindow(QMainWindow):
    """The lab bench window. `crossbar_factory` (default `open_crossbar`) and `data` (dataset
    splits given to every run instead of loading the config's) are for tests."""

    def __init__(
        self,
        crossbar_factory: Callable[[Any], Any] = open_crossbar,
        data: Any = None,
    ) -> None:
        super().__init__()
        warm_up_imports()
        self.setWindowTitle("xbarlab")
        self.state = RunState()
        self.data = data
        self.review: Path | None = None
        self.connection_info: dict[str, Any] | None = None
        self.running = False
        self.run_results: list[dict[str, Any]] = []
        self.errors: list[JobError] = []
        self.cancelled: list[tuple[str, str]] = []
        self.dialogs: list[QMessageBox] = []
        self.redraws = 0
        self._dirty: set[str] = set()
        self._drawn_at: dict[str, int] = dict.fromkeys(HEAVY_VIEWS, -1)

        self.connection = ConnectionPanel()
        self.run_panel = RunPanel()
        self.maps = MapsPanel()
        self.mapping = MappingErrorPanel()
        self.accuracy = AccuracyPanel()
        self.cell = CellPanel()
        self.log = LogPanel()

        bottom = QSplitter(Qt.Orientation.Horizontal)
        bottom.addWidget(self.mapping)
        bottom.addWidget(self.accuracy)
        bottom.setSizes([1, 1])
        central = QSplitter(Qt.Orientation.Vertical)
        central.addWidget(self.maps)
        central.addWidget(self.cell)
        central.addWidget(bottom)
        central.setSizes([400, 210, 440])
        self.setCentralWidget(central)

        side = QWidget()
        side_layout = QVBoxLayout(side)
        side_layout.addWidget(self.connection)
        side_layout.addWidget(self.run_panel)
        side_layout.addStretch(1)
        self.controls_widget = side
        scroll = QScrollArea()
        scroll.setWidget(side)
        scroll.setWidgetResizable(True)
        controls = QDockWidget("Controls")
        controls.setObjectName("controls")
        controls.setWidget(scroll)
        controls.setFeatures(QDockWidget.DockWidgetFeature.NoDockWidgetFeatures)
        self.addDockWidget(Qt.DockWidgetArea.LeftDockWidgetArea, controls)
        log_dock = QDockWidget("Log")
        log_dock.setObjectName("log")
        log_dock.setWidget(self.log)
        log_dock.setFeatures(QDockWidget.DockWidgetFeature.NoDockWidgetFeatures)
        self.addDockWidget(Qt.DockWidgetArea.LeftDockWidgetArea, log_dock)
        self.resizeDocks([controls], [400], Qt.Orientation.Horizontal)
        self._menus()

        self.worker = HardwareWorker(crossbar_factory)
        self.worker.pipeline_event.connect(self.on_event)
        self.worker.connected.connect(self.on_connected)
        self.worker.disconnected.connect(self.on_disconnected)
        self.worker.job_started.connect(self.on_job_started)
        self.worker.job_finished.connect(self.on_job_finished)
        self.worker.job_cancelled.connect(self.on_job_cancelled)
        self.worker.job_failed.connect(self.on_job_failed)
        self.worker.paused.connect(
            lambda paused: self.log.add("paused: outputs off" if paused else "resumed")
        )
        self.connection.connect_requested.connect(self.connect_instrument)
        self.connection.disconnect_requested.connect(lambda: self.worker.submit(DisconnectJob()))
        self.run_panel.run_requested.connect(self._run_requested)
        self.run_panel.pause_requested.connect(self.pause)
        self.run_panel.abort_requested.connect(self.abort)
        self.maps.cell_selected.connect(
            lambda r, c: self.cell.select(r, c, self.state, self.maps.deployment_name())
        )
        self.cell.iv_requested.connect(self.iv_sweep)

        self.redraw_timer = QTimer(self)
        self.redraw_timer.setInterval(REDRAW_INTERVAL_MS)
        self.redraw_timer.timeout.connect(lambda: self.redraw(everything=False))
        self.redraw_timer.start()
        self.stall = StallMeter(10, self)
        self.stall.start()

    def _menus(self) -> None:
        file_menu = self.menuBar().addMenu("&File")
        actions: list[tuple[Any, str, Any, Callable[[], Any]]] = [
            (file_menu, "&Open session…", QKeySequence.StandardKey.Open, self._open_dialog),
            (file_menu, "&Reload session", QKeySequence.StandardKey.Refresh, self.reload_session),
            (file_menu, "Save &screenshot…", None, self._screenshot_dialog),
            (file_menu, "&Quit", QKeySequence.StandardKey.Quit, self.close),
        ]
        instrument_menu = self.menuBar().addMenu("&Instrument")
        actions.append((instrument_menu, "&Read array", None, self.read_array))
        for menu, text, shortcut, slot in actions:
            action = QAction(text, self)
            if shortcut is not None:
                action.setShortcut(shortcut)
            action.triggered.connect(slot)
            menu.addAction(action)

    # -- requests from the panels -----------------------------------------------------------

    def connect_instrument(self, config: str) -> None:
        self.log.add(f"connecting: {config}")
        self.worker.submit(ConnectJob(config=config))

    def read_array(self) -> None:
        self.worker.submit(ReadAllJob())

    def iv_sweep(self, row: int, col: int, v_max: float, points: int) -> None:
        self.log.add(f"I-V sweep of cell ({row}, {col}) to ±{v_max:g} V")
        self.worker.submit(IVSweepJob(row=row, col=col, v_max=v_max, points=points))

    def _run_requested(self, config_path: str, stages: tuple[str, ...], session: str) -> None:
        self.start_run(Path(config_path), stages, Path(session))

    def start_run(
        self,
        config: Path | PipelineConfig,
        stages: tuple[str, ...] = STAGES,
        session: Path = Path("runs/gui-session.h5"),
    ) -> RunJob | None:
        """Queue a pipeline run (the same `Pipeline` the CLI runs). A config path is read here so
        that a bad file is reported before anything touches the instrument."""
        try:
            if isinstance(config, PipelineConfig):
                pipeline_config = config
            else:
                pipeline_config = PipelineConfig.from_config(read_toml(config), str(config))
        except (ConfigError, OSError) as error:
            self.show_error(JobError("run", f"{type(error).__name__}: {error}", "Fix the config."))
            return None
        session = Path(session)
        self.review = None
        self.run_panel.set_review(False)
        self.state = RunState()
        if session.exists():
            # Appending to a session: show what it holds, then the new stages on top.
            self._replay(session)
        where = (
            f"connected instrument ({self.connection_info['config']})"
            if self.connection_info
            else f"instrument {pipeline_config.instrument!r} from the run config"
        )
        self.log.add(f"run {pipeline_config.name}: stages {', '.join(stages)} on {where}")
        self.log.add(f"session file: {session}")
        job = RunJob(config=pipeline_config, session=session, stages=tuple(stages), data=self.data)
        self.running = True
        self.run_panel.set_running(True)
        self._dirty |= {"status", "maps", "mapping", "accuracy", "cell"}
        return self.worker.submit(job)  # type: ignore[return-value]

    def pause(self, paused: bool) -> None:
        if paused:
            self.worker.pause()
            self.log.add("pause requested: stops at the next check, outputs off")
        else:
            self.worker.resume()

    def abort(self) -> None:
        self.log.add("abort requested: stops at the next check; outputs off; session kept")
        self.worker.abort()

    # -- from the worker --------------------------------------------------------------------

    def on_event(self, event: Event) -> None:
        self._dirty |= self.state.apply(event)
        self.stall.set_label(self.state.stage or "idle")
        text = format_event(event)
        if text:
            self.log.add(text)

    def on_connected(self, info: dict[str, Any]) -> None:
        self.connection_info = info
        self.connection.set_connected(info)
        limits = info["record"].get("limits", {})
        self.cell.set_instrument(True, limits.get("max_sweep_voltage"))
        identity = "; ".join(f"{k}: {v}" for k, v in info["record"]["identity"].items())
        self.log.add(f"connected: {identity}")

    def on_disconnected(self) -> None:
        self.connection_info = None
        self.connection.set_connected(None)
        self.cell.set_instrument(False)
        self.log.add("disconnected (outputs off)")

    def on_job_started(self, kind: str, job_id: int) -> None:
        if kind == "run":
            self.stall.set_label("run")

    def on_job_finished(self, kind: str, result: Any) -> None:
        if kind == "run":
            self.running = False
            self.run_panel.set_running(False)
            self.run_results.append(result)
            self.log.add(f"run finished; session {result['session']}")
            self.stall.set_label("idle")
        elif kind == "iv":
            self.cell.show_iv(result)
        elif kind == "read":
            self.log.add("array read")

    def on_job_cancelled(self, kind: str, why: str) -> None:
        self.cancelled.append((kind, why))
        self.log.add(f"{kind} stopped: {why}")
        if kind == "run":
            self.running = False
            self.run_panel.set_running(False)
            if self.state.stage and self.state.stage_status.get(self.state.stage) == "running":
                self.state.stage_status[self.state.stage] = "aborted"
            deployment = self.state.deployment()
            if deployment is not None and deployment.readback is None:
                deployment.interrupted = True
            self._dirty |= {"status", "mapping"}
            self.stall.set_label("idle")

    def on_job_failed(self, error: JobError) -> None:
        if error.kind == "run":
            self.running = False
            self.run_panel.set_running(False)
            self.stall.set_label("idle")
        self.show_error(error)

    def show_error(self, error: JobError) -> None:
        """Log the error and show it in a (non-blocking) dialog with what to do."""
        self.errors.append(error)
        self.log.add(f"ERROR ({error.kind}): {error.message}")
        box = QMessageBox(self)
        box.setIcon(QMessageBox.Icon.Warning)
        box.setWindowTitle(f"xbarlab: {error.kind} failed")
        box.setText(error.message)
        box.setInformativeText(f"What to do: {error.hint}")
        if error.details:
            box.setDetailedText(error.details)
        box.finished.connect(lambda _: self.dialogs.remove(box) if box in self.dialogs else None)
        self.dialogs.append(box)
        box.open()

    # -- drawing ----------------------------------------------------------------------------

    def redraw(self, everything: bool = True) -> None:
        """Redraw views that changed since they were last drawn.

        The timer calls it with everything=False every 100 ms: the cheap run status and at most
        one of the plot views (round robin), so no single repaint covers the whole window and
        the event loop stays responsive; each view still updates several times a second.
        """
        if not self._dirty:
            return
        views = [view for view in HEAVY_VIEWS if view in self._dirty]
        if not everything:
            views = sorted(views, key=self._drawn_at.get)[:1]
        if "status" in self._dirty:
            self.run_panel.refresh(self.state)
        self._dirty.discard("status")
        for view in views:
            self._dirty.discard(view)
            self._drawn_at[view] = self.redraws
            if view == "maps":
                self.maps.refresh(self.state)
            elif view == "mapping":
                self.mapping.refresh(self.state, self.state.deployment(self.maps.deployment_name()))
            elif view == "accuracy":
                self.accuracy.refresh(self.state)
            elif view == "cell":
                self.cell.refresh(self.state, self.maps.deployment_name())
        self.redraws += 1

    # -- sessions ---------------------------------------------------------------------------

    def _replay(self, path: Path) -> list[dict[str, Any]]:
        """Fold a session file's stages into the state; returns the file's own event log."""
        with SessionStore.open(path) as store:
            events = session_events(store)
            logged = store.events()
        for event in events:
            self._dirty |= self.state.apply(event)
        return logged

    def open_session(self, path: str | Path) -> bool:
        """Show a past session read-only (every panel from the file); False if it can't be read."""
        path = Path(path)
        try:
            self.state = RunState()
            logged = self._replay(path)
        except (SessionError, OSError, KeyError, ValueError) as error:
            self.show_error(
                JobError(
                    "open session",
                    f"{path}: {error}",
                    "Choose an xbarlab session file (.h5) written by a run.",
                )
            )
            return False
        self.review = path
        self.run_panel.set_review(True)
        self.setWindowTitle(f"xbarlab: {path.name} (read-only)")
        self.log.add(f"opened {path} read-only: {len(self.state.deployments)} deployment(s)")
        for record in logged:
            details = ", ".join(
                f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                for k, v in record.items()
                if k not in ("utc", "event")
            )
            self.log.add(f"{record.get('utc', '')} {record.get('event', '')} {details}")
        self._dirty |= {"status", "maps", "mapping", "accuracy", "cell"}
        self.redraw()
        if "main" in self.state.deployments:
            self.maps.source.setCurrentText("deployment main")
            self._dirty |= {"maps", "mapping", "cell"}
            self.redraw()
        return True

    def reload_session(self) -> None:
        if self.review is not None:
            self.open_session(self.review)

    def _open_dialog(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Open session", "runs", "Sessions (*.h5)")
        if path:
            self.open_session(path)

    def _screenshot_dialog(self) -> None:
        path, _ = QFileDialog.getSaveFileName(self, "Screenshot", "xbarlab.png", "PNG (*.png)")
        if path:
            self.redraw()
            self.grab().save(path)

    def closeEvent(self, event: Any) -> None:
        """Abort any run (outputs off, session consistent), close the instrument, stop."""
        if self.worker.busy:
            self.log.add("closing: aborting the running job")
        self.redraw_timer.stop()
        self.stall.stop()
        self.worker.shutdown()
        super().closeEvent(event)


def format_event(event: Event) -> str | None:
    """A log line for an event, or None for the ones too frequent to log (progress, maps)."""
    data = event.data
    if event.kind == "start":
        return f"[{event.stage}] started"
    if event.kind == "end":
        seconds = data.get("seconds")
        return f"[{event.stage}] " + (f"done in {seconds:.1f} s" if seconds else "done")
    if event.kind == "log":
        return f"[{event.stage}] {data.get('message', '')}"
    if event.kind == "progress" and event.stage == "characterize":
        return f"[characterize] {data.get('part')} ({data.get('done')} / {data.get('total')})"
    if event.kind == "epoch":
        memristive = data.get("memristive_validation")
        extra = f", memristive validation {percent(memristive)}" if memristive is not None else ""
        return (
            f"[{event.stage}] epoch {data.get('epoch', 0)} / {data.get('epochs', '?')}: "
            f"loss {data.get('train_loss', float('nan')):.4f}, train "
            f"{percent(data.get('train_accuracy'))}, validation "
            f"{percent(data.get('validation_accuracy'))}{extra}"
        )
    if event.kind == "metrics":
        if event.stage == "evaluate":
            accuracy = data.get("accuracy", {})
            parts = ", ".join(f"{k} {percent(v)}" for k, v in accuracy.items())
            return f"[evaluate] {data.get('name')}: {parts}"
        if event.stage == "program":
            return (
                f"[program] {data.get('converged_cells', '?')} of {data.get('cells', '?')} cells "
                f"converged, mean relative error {percent(data.get('mean_relative_error'))}, "
                f"{data.get('mean_pulses', float('nan')):.1f} pulses per cell"
            )
        if event.stage == "characterize":
            return (
                f"[characterize] G_off {data.get('g_off', float('nan')):.3g} S, G_on "
                f"{data.get('g_on', float('nan')):.3g} S, "
                f"stuck {percent(data.get('stuck_fraction'))}"
            )
    return None
