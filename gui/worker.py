"""The hardware worker: one long-lived thread that owns the crossbar and runs queued jobs.

Every instrument and training call happens on this thread, so instrument I/O is serialised
(no two operations interleave on the bus). The GUI thread submits jobs through a queued signal
and returns at once; results come back as signals carrying plain Python objects and numpy arrays
(queued across threads by Qt). Nothing here touches a widget.

Stopping: `abort()` bumps a generation counter. The running job's `should_stop()` (polled by the
pipeline between write-verify iterations, characterisation steps and training epochs) then returns
True, the pipeline turns the outputs off and raises `Cancelled` with the session consistent; jobs
queued before the abort are dropped when their turn comes. `pause()` makes `should_stop()` turn
the outputs off and wait until `resume()` or `abort()`. Every job ends with the outputs off.
"""

from __future__ import annotations

import itertools
import os
import threading
import time
import traceback
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PyQt6.QtCore import QObject, QThread, pyqtSignal, pyqtSlot

from instruments import open_crossbar
from instruments.characterize import Cancelled as PartCancelled
from instruments.characterize import iv_sweeps
from instruments.crossbar import Crossbar
from instruments.limits import LimitError
from simulation.config import ConfigError
from xbarlab.pipeline import STAGES, Cancelled, Event, Pipeline, PipelineConfig, PipelineError
from xbarlab.run_control import PauseGate
from xbarlab.store import SessionError, SessionStore

CrossbarFactory = Callable[[Any], Crossbar]

WORKER_NICE = 5
"""How much lower the worker thread's CPU priority is than the GUI thread's (Unix nice)."""

_job_ids = itertools.count(1)


def warm_up_imports() -> None:
    """Import what the pipeline would otherwise import lazily on the worker thread, before the
    window is shown: loading an extension module holds the GIL for its whole initialisation
    (scikit-learn's digits loader, torch's optimiser machinery and the sympy it pulls in stall
    the event loop 0.2-1.4 s at a run's first epoch otherwise); the digits dataset is parsed
    once per process (0.2 s in numpy's text reader, which also holds the GIL)."""
    import torch

    from training.datasets import load_dataset

    torch.optim.Adam([torch.zeros(1, requires_grad=True)])  # imports torch._dynamo and sympy
    load_dataset("digits")  # imports scikit-learn; cached for the runs


@dataclass
class Job:
    """A unit of work for the worker; `kind` names it in signals and the log."""

    kind: str = "job"
    id: int = field(default_factory=lambda: next(_job_ids))
    generation: int = 0


@dataclass
class ConnectJob(Job):
    """Open a crossbar from an instrument config (name in configs/instruments, path or table)."""

    config: str | Path | Mapping[str, Any] = ""
    kind: str = "connect"


@dataclass
class DisconnectJob(Job):
    kind: str = "disconnect"


@dataclass
class RunJob(Job):
    """Run pipeline stages into a session file (created, or appended to if it exists).

    data: optional pre-loaded dataset splits (tests); None loads the config's dataset.
    """

    config: PipelineConfig | None = None
    session: Path = Path("session.h5")
    stages: tuple[str, ...] = STAGES
    data: Any = None
    kind: str = "run"


@dataclass
class ReadAllJob(Job):
    """One full-array read at the crossbar's v_read."""

    kind: str = "read"


@dataclass
class IVSweepJob(Job):
    """An I-V sweep 0 -> +v_max -> 0 -> -v_max -> 0 of one cell (`iv_sweeps`, grounded
    unselected lines, as characterisation does)."""

    row: int = 0
    col: int = 0
    v_max: float = 0.5
    points: int = 11
    kind: str = "iv"


@dataclass(frozen=True)
class JobError:
    """What went wrong, and what the user can do about it."""

    kind: str
    message: str
    hint: str
    details: str = ""


def describe_error(error: BaseException) -> tuple[str, str]:
    """(message, what to do) for an exception from a job."""
    message = f"{type(error).__name__}: {error}"
    name = type(error).__name__
    if isinstance(error, ConfigError):
        hint = "Fix the named key in the config file (the message names the file and key)."
    elif isinstance(error, LimitError):
        hint = (
            "The request is outside the instrument's safety limits. Lower the level in the run "
            "config, or change [limits] in the instrument config if the device allows it."
        )
    elif isinstance(error, PipelineError):
        hint = "Run the stage the message names first, or choose a session file that has it."
    elif isinstance(error, SessionError):
        hint = "Choose another session file name, or check the file is an xbarlab session."
    elif name == "DeploymentError":
        hint = (
            "The network does not fit the array: use a larger chip, a smaller network, or set "
            "[deploy] tile_rows / tile_cols in the run config."
        )
    elif isinstance(error, ConnectionError | OSError | TimeoutError) or "visa" in name.lower():
        hint = (
            "Check that the instruments are on, cabled and at the address in the instrument "
            "config; the *-emulated configs run the same drivers without hardware."
        )
    else:
        hint = "See the log for details. The session file keeps every finished stage."
    return message, hint


class HardwareWorker(QObject):
    """Owns the crossbar; runs jobs one at a time on its own thread.

    Signals (emitted on the worker thread, delivered queued to GUI-thread receivers):
    pipeline_event(Event), connected(dict), disconnected(), job_started(str kind, int id),
    job_finished(str kind, object result), job_cancelled(str kind, str why),
    job_failed(JobError), paused(bool).
    """

    pipeline_event = pyqtSignal(object)
    connected = pyqtSignal(object)
    disconnected = pyqtSignal()
    job_started = pyqtSignal(str, int)
    job_finished = pyqtSignal(str, object)
    job_cancelled = pyqtSignal(str, str)
    job_failed = pyqtSignal(object)
    paused = pyqtSignal(bool)
    _submit = pyqtSignal(object)

    def __init__(self, crossbar_factory: CrossbarFactory = open_crossbar) -> None:
        super().__init__()
        self.crossbar_factory = crossbar_factory
        self.crossbar: Crossbar | None = None
        self.crossbar_config: Any = None
        self._generation = 0
        self._pause = PauseGate()
        self._pending = 0
        self._lock = threading.Lock()
        self._sent_targets: set[str] = set()
        self._niced = False
        self._store: SessionStore | None = None
        self.qthread = QThread()
        self.qthread.setObjectName("xbarlab-hardware")
        self.moveToThread(self.qthread)
        self._submit.connect(self._run)
        self.qthread.start()

    # -- GUI-thread API -------------------------------------------------------------------------

    def submit(self, job: Job) -> Job:
        """Queue a job; returns it (its id shows up in job_started)."""
        with self._lock:
            job.generation = self._generation
            self._pending += 1
        self._submit.emit(job)
        return job

    @property
    def busy(self) -> bool:
        """A job is running or queued."""
        return self._pending > 0

    def abort(self) -> None:
        """Stop the running job at its next check and drop the queued ones."""
        with self._lock:
            self._generation += 1
        self._pause.resume()

    def pause(self) -> None:
        self._pause.pause()

    def resume(self) -> None:
        self._pause.resume()

    @property
    def is_paused(self) -> bool:
        return self._pause.paused

    def shutdown(self, timeout_s: float = 30.0) -> bool:
        """Abort, close the crossbar (outputs off) on the worker thread, stop the thread.
        Returns False if the thread did not finish within timeout_s."""
        self.abort()
        self.submit(DisconnectJob())
        deadline = time.monotonic() + timeout_s
        while self._pending > 0 and time.monotonic() < deadline:
            time.sleep(0.01)  # the running job stops at its next check; queued ones are dropped
        self.qthread.quit()
        finished = self.qthread.wait(max(1, int(1000 * (deadline - time.monotonic()))))
        if finished and self.crossbar is not None:  # the thread is gone: safe to close here
            self.crossbar.close()
            self.crossbar = None
        return finished

    # -- worker thread --------------------------------------------------------------------------

    @pyqtSlot(object)
    def _run(self, job: Job) -> None:
        self._lower_priority()
        try:
            if job.generation != self._generation and not isinstance(job, DisconnectJob):
                self.job_cancelled.emit(job.kind, "dropped: aborted before it started")
                return
            self.job_started.emit(job.kind, job.id)
            try:
                result = getattr(self, f"_do_{job.kind}")(job)
            except (Cancelled, PartCancelled) as stop:
                self._outputs_off()
                self.job_cancelled.emit(job.kind, str(stop))
                return
            except Exception as error:
                self._outputs_off()
                message, hint = describe_error(error)
                self.job_failed.emit(JobError(job.kind, message, hint, traceback.format_exc()))
                return
            self._outputs_off()
            self.job_finished.emit(job.kind, result)
        finally:
            with self._lock:
                self._pending -= 1

    def _lower_priority(self) -> None:
        """Run this thread (and the threads it starts, e.g. torch's) at a lower CPU priority than
        the GUI thread, so that on a busy machine the window is scheduled first (Linux: a
        thread's nice value is its own)."""
        if self._niced or not hasattr(os, "setpriority"):
            return
        self._niced = True
        try:
            tid = threading.get_native_id()
            os.setpriority(os.PRIO_PROCESS, tid, os.getpriority(os.PRIO_PROCESS, tid) + WORKER_NICE)
        except OSError:
            pass

    def _outputs_off(self) -> None:
        if self.crossbar is not None and not self.crossbar.closed:
            try:
                self.crossbar.outputs_off()
            except Exception as error:  # reported; the job's own error (if any) is kept
                self.pipeline_event.emit(
                    Event("gui", "log", {"message": f"outputs off failed: {error}"})
                )

    def _should_stop(self, job: Job) -> Callable[[], bool]:
        def should_stop() -> bool:
            def aborted() -> bool:
                return job.generation != self._generation

            self._pause.hold(self._outputs_off, self.paused.emit, released=aborted)
            return aborted()

        return should_stop

    def _info(self) -> dict[str, Any]:
        assert self.crossbar is not None
        return {"config": self.crossbar_config, "record": self.crossbar.record()}

    def _do_connect(self, job: ConnectJob) -> dict[str, Any]:
        self._close()
        self.crossbar = self.crossbar_factory(job.config)
        self.crossbar_config = job.config
        info = self._info()
        self.connected.emit(info)
        return info

    def _do_disconnect(self, job: DisconnectJob) -> None:
        self._close()

    def _close(self) -> None:
        if self.crossbar is not None:
            try:
                self.crossbar.close()
            finally:
                self.crossbar = None
                self.disconnected.emit()

    def _require_crossbar(self) -> Crossbar:
        if self.crossbar is None:
            raise PipelineError("no instrument connected; connect one first")
        return self.crossbar

    def _do_run(self, job: RunJob) -> dict[str, Any]:
        config = job.config
        if config is None:
            raise PipelineError("run: no pipeline config")
        needs_chip = any(
            s in ("characterize", "program", "evaluate", "fine_tune") for s in job.stages
        )
        if self.crossbar is None and needs_chip:
            self._do_connect(ConnectJob(config=config.instrument))
        store = SessionStore.open_or_create(job.session, {"session_name": config.name})
        self._store = store
        self._sent_targets = set()
        try:
            pipeline = Pipeline(
                config,
                store,
                self.crossbar,
                data=job.data,
                on_event=self._forward,
                should_stop=self._should_stop(job),
            )
            summary = pipeline.run(job.stages)
        finally:
            self._store = None
            store.close()
        return {"summary": summary, "session": str(job.session)}

    def _forward(self, event: Event) -> None:
        """Pass a pipeline event on; before the first progress event of a programming run, send
        its targets (from the live stage in the session file) so the maps can show them."""
        if event.stage == "program" and event.kind == "progress" and self._store is not None:
            for path in self._store.stages("deployments"):
                if not path.endswith("/program") or path in self._sent_targets:
                    continue
                if self._store.status(path) != "in_progress":
                    continue
                self._sent_targets.add(path)
                stage = self._store.read_stage(path)
                self.pipeline_event.emit(
                    Event(
                        "program",
                        "map",
                        {
                            "name": "targets",
                            "deployment": path.split("/")[1],
                            "conductances": stage.arrays["targets"],
                            "write_verify": stage.attrs.get("write_verify", {}),
                        },
                    )
                )
        self.pipeline_event.emit(event)

    def _do_read(self, job: ReadAllJob) -> np.ndarray:
        conductances = np.asarray(self._require_crossbar().read_all(), dtype=float)
        self.pipeline_event.emit(
            Event("read", "map", {"name": "measured", "conductances": conductances})
        )
        return conductances

    def _do_iv(self, job: IVSweepJob) -> dict[str, Any]:
        sweeps = iv_sweeps(
            self._require_crossbar(),
            [(job.row, job.col)],
            v_max=job.v_max,
            points=job.points,
            should_stop=self._should_stop(job),
        )
        return {
            "row": job.row,
            "col": job.col,
            "voltages": sweeps.voltages,
            "currents": sweeps.currents[0],
        }
