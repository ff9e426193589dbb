"""What the panels show, folded from pipeline events; no Qt here.

A live run and a session file reach the panels the same way: the hardware worker forwards the
pipeline's `Event`s, and `session_events(store)` replays a session file as the events a run would
have sent. `RunState.apply(event)` keeps the latest arrays and numbers and says which views are
out of date; the views read from it at most 10 times a second. Every number shown comes from the
library (`ProgramResult.summary`, the pipeline's metrics), not from code of the GUI's own.

Maps are (row, col) = (word line, bit line) arrays in S; accuracies are 0..1.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from instruments.characterize import ReadNoise
from instruments.program import STATUSES, ProgramResult, WriteVerifyConfig, tolerance_band
from xbarlab.pipeline import STAGES, Event
from xbarlab.store import SessionStore

VIEWS = ("status", "maps", "mapping", "accuracy", "cell")
"""Names of the views `RunState.apply` marks out of date."""

DEPLOYMENT_OF_STAGE = {"program": "main", "fine_tune": "fine_tuned"}
"""Which deployment a top-level stage programs (the pipeline's own naming)."""


@dataclass
class Deployment:
    """One programmed map (deployments/<name>): targets, live verify reads, readback.

    base: the last full read before this programming (characterisation map, or the readback of
    the deployment before), so the measured map is whole while cells are being programmed.
    snapshots: (iteration, achieved, pulses) of every progress event, for cell histories.
    """

    name: str
    write_verify: dict[str, Any] = field(default_factory=dict)
    statuses: tuple[str, ...] = STATUSES
    targets: np.ndarray | None = None
    base: np.ndarray | None = None
    achieved: np.ndarray | None = None
    pulses: np.ndarray | None = None
    status: np.ndarray | None = None
    readback: np.ndarray | None = None
    summary: dict[str, Any] | None = None
    iterations: list[int] = field(default_factory=list)
    done: list[int] = field(default_factory=list)
    total: int = 0
    counts: dict[str, int] = field(default_factory=dict)
    snapshots: list[tuple[int, np.ndarray, np.ndarray]] = field(default_factory=list)
    interrupted: bool = False

    def measured(self) -> np.ndarray | None:
        """Latest known conductance of every cell (S): the readback once it exists, else the
        live verify reads over the base map."""
        if self.readback is not None:
            return self.readback
        if self.achieved is None:
            return self.base
        if self.base is None or self.base.shape != self.achieved.shape:
            return self.achieved
        return np.where(np.isfinite(self.achieved), self.achieved, self.base)

    def config(self) -> WriteVerifyConfig:
        return WriteVerifyConfig.from_config(self.write_verify, "write_verify")

    def result(self) -> ProgramResult | None:
        """The write-verify state so far as a `ProgramResult` (its `summary()` is what the CLI
        reports), or None before the first progress event."""
        if self.targets is None or self.achieved is None or self.status is None:
            return None
        pulses = self.pulses if self.pulses is not None else np.zeros(self.targets.shape, int)
        targets = self.targets
        with np.errstate(invalid="ignore"):
            tolerance = np.where(
                np.isfinite(targets), tolerance_band(targets, self.config()), np.nan
            )
        return ProgramResult.from_arrays(
            {
                "targets": targets,
                "achieved": self.achieved,
                "pulses": pulses,
                "status": self.status,
                "tolerance": tolerance,
            },
            {
                "config": self.write_verify,
                "statuses": list(self.statuses),
                "iterations": self.iterations[-1] if self.iterations else 0,
            },
        )

    def status_name(self, row: int, col: int) -> str:
        if self.status is None:
            return "-"
        return self.statuses[int(self.status[row, col])]

    def cell_history(self, row: int, col: int) -> tuple[np.ndarray, np.ndarray]:
        """(pulses delivered, verify-read conductance in S) of one cell over the progress events
        in which its pulse count changed (and the first one)."""
        pulses: list[int] = []
        conductances: list[float] = []
        for _, achieved, pulse_map in self.snapshots:
            count = int(pulse_map[row, col])
            value = float(achieved[row, col])
            if not np.isfinite(value):
                continue
            if pulses and count == pulses[-1]:
                conductances[-1] = value
                continue
            pulses.append(count)
            conductances.append(value)
        return np.asarray(pulses, dtype=np.int64), np.asarray(conductances, dtype=float)


@dataclass
class RunState:
    """Everything the panels show, from events in the order a run sends them."""

    stage: str | None = None
    stage_status: dict[str, str] = field(default_factory=dict)
    characterize_part: str | None = None
    characterisation: np.ndarray | None = None
    last_read: np.ndarray | None = None
    stuck: np.ndarray | None = None
    device: dict[str, Any] = field(default_factory=dict)
    epochs: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    epochs_planned: dict[str, int] = field(default_factory=dict)
    evaluations: dict[str, dict[str, Any]] = field(default_factory=dict)
    deployments: dict[str, Deployment] = field(default_factory=dict)
    current: str | None = None
    events: int = 0

    # -- folding events ---------------------------------------------------------------------

    def apply(self, event: Event) -> set[str]:
        """Take one event; returns the views it made out of date (names from VIEWS)."""
        self.events += 1
        handler = getattr(self, f"_on_{event.kind}", None)
        if handler is None:
            return set()
        return handler(event.stage, event.data)

    def _on_start(self, stage: str, data: dict[str, Any]) -> set[str]:
        if stage in STAGES:
            self.stage = stage
            self.stage_status[stage] = "running"
            if stage in ("train", "fine_tune"):
                self.epochs[stage] = []
                return {"status", "accuracy"}
        return {"status"}

    def _on_end(self, stage: str, data: dict[str, Any]) -> set[str]:
        if stage in STAGES:
            self.stage_status[stage] = str(data.get("status", "done"))
        return {"status"}

    def _on_log(self, stage: str, data: dict[str, Any]) -> set[str]:
        return set()

    def _on_progress(self, stage: str, data: dict[str, Any]) -> set[str]:
        if stage == "characterize":
            self.characterize_part = str(data.get("part", ""))
            return {"status"}
        if stage != "program":
            return {"status"}
        deployment = self._deployment(data)
        iteration = int(data.get("iteration", 0))
        deployment.achieved = np.asarray(data["achieved"], dtype=float)
        if "pulses" in data:
            deployment.pulses = np.asarray(data["pulses"])
            deployment.snapshots.append((iteration, deployment.achieved, deployment.pulses))
        if "status" in data:
            deployment.status = np.asarray(data["status"])
        deployment.iterations.append(iteration)
        deployment.done.append(int(data.get("done", 0)))
        deployment.total = int(data.get("total", deployment.total))
        deployment.counts = dict(data.get("counts", {}))
        deployment.interrupted = bool(data.get("interrupted", False))
        return {"status", "maps", "mapping", "cell"}

    def _on_epoch(self, stage: str, data: dict[str, Any]) -> set[str]:
        self.epochs.setdefault(stage, []).append(dict(data))
        if "epochs" in data:
            self.epochs_planned[stage] = int(data["epochs"])
        return {"status", "accuracy"}

    def _on_map(self, stage: str, data: dict[str, Any]) -> set[str]:
        name = data.get("name")
        if stage == "read":
            self.last_read = np.asarray(data["conductances"], dtype=float)
            return {"maps", "cell"}
        if stage == "characterize":
            if name == "stuck":
                self.stuck = np.asarray(data["mask"], dtype=bool)
            else:
                self.characterisation = np.asarray(data["conductances"], dtype=float)
            return {"maps", "cell"}
        if stage != "program":
            return set()
        if name == "targets" and "write_verify" in data:
            # The start of a programming run (sent by the worker or a session replay).
            deployment = Deployment(
                name=str(data.get("deployment") or self._default_deployment()),
                write_verify=dict(data["write_verify"]),
                statuses=tuple(data.get("statuses", STATUSES)),
                base=self._base_for(str(data.get("deployment") or "")),
            )
            self.deployments[deployment.name] = deployment
            self.current = deployment.name
        deployment = self._deployment(data)
        if name == "targets":
            deployment.targets = np.asarray(data["conductances"], dtype=float)
        elif name == "achieved":
            deployment.readback = np.asarray(data["conductances"], dtype=float)
        return {"maps", "mapping", "cell"}

    def _on_metrics(self, stage: str, data: dict[str, Any]) -> set[str]:
        if stage == "characterize":
            self.device.update(data)
            return {"maps", "mapping", "status"}
        if stage == "program":
            self._deployment(data).summary = {k: v for k, v in data.items() if k != "deployment"}
            return {"mapping", "status"}
        if stage == "evaluate":
            self.evaluations[str(data.get("name", "main"))] = dict(data)
            return {"accuracy", "mapping", "status"}
        return set()

    # -- helpers ----------------------------------------------------------------------------

    def _default_deployment(self) -> str:
        return DEPLOYMENT_OF_STAGE.get(self.stage or "", "main")

    def _base_for(self, name: str) -> np.ndarray | None:
        """The last full read before programming deployment `name`."""
        for earlier in reversed(list(self.deployments.values())):
            if earlier.name != name and earlier.readback is not None:
                return earlier.readback
        return self.characterisation

    def _deployment(self, data: dict[str, Any]) -> Deployment:
        name = data.get("deployment") or self.current or self._default_deployment()
        if name not in self.deployments:
            self.deployments[name] = Deployment(name=name, base=self._base_for(name))
        self.current = name
        return self.deployments[name]

    # -- what the views ask -----------------------------------------------------------------

    def deployment(self, name: str | None = None) -> Deployment | None:
        name = name or self.current
        return None if name is None else self.deployments.get(name)

    @property
    def window(self) -> float | None:
        """Conductance window G_on - G_off (S) of the fitted device model."""
        g_off, g_on = self.device.get("g_off"), self.device.get("g_on")
        if g_off is None or g_on is None:
            return None
        return float(g_on) - float(g_off)

    def shape(self) -> tuple[int, int] | None:
        for array in (self.characterisation, *(d.targets for d in self.deployments.values())):
            if array is not None:
                return tuple(array.shape)  # type: ignore[return-value]
        return None


def signed_error(measured: np.ndarray, targets: np.ndarray, window: float) -> np.ndarray:
    """(G - G_target) / (G_on - G_off), NaN where there is no target."""
    with np.errstate(invalid="ignore"):
        return (measured - targets) / window


def relative_errors(deployment: Deployment) -> np.ndarray:
    """Signed relative errors (G - G_target) / G_target of programmed cells that are not stuck and
    have been read (the population `ProgramResult.summary` scores), from the measured map."""
    measured = deployment.measured()
    if deployment.targets is None or measured is None or deployment.status is None:
        return np.zeros(0)
    stuck_code = deployment.statuses.index("stuck") if "stuck" in deployment.statuses else -1
    skipped = deployment.statuses.index("skipped") if "skipped" in deployment.statuses else -1
    used = (
        (deployment.status != skipped)
        & (deployment.status != stuck_code)
        & np.isfinite(deployment.targets)
        & np.isfinite(measured)
    )
    return (measured[used] - deployment.targets[used]) / deployment.targets[used]


# -- a session file as events -----------------------------------------------------------------


def session_events(store: SessionStore) -> list[Event]:
    """The events a run would have sent, rebuilt from what a session file holds (complete stages,
    and a programming stage left in progress by an abort or crash)."""
    events: list[Event] = []
    if store.status("characterisation") == "complete":
        events.append(Event("characterize", "start"))
        stage = store.read_stage("characterisation")
        if "map" in stage.arrays:
            events.append(
                Event(
                    "characterize", "map", {"name": "measured", "conductances": stage.arrays["map"]}
                )
            )
        read_noise = None
        if "read_noise_mean" in stage.arrays:
            noise = ReadNoise(stage.arrays["read_noise_mean"], stage.arrays["read_noise_std"], 0, 0)
            read_noise = noise.median_relative
        if store.status("models/fitted") == "complete":
            fitted = store.read_stage("models/fitted")
            model = fitted.attrs.get("device_model", {})
            stuck = fitted.arrays["stuck"]
            events.append(Event("characterize", "map", {"name": "stuck", "mask": stuck}))
            events.append(
                Event(
                    "characterize",
                    "metrics",
                    {
                        "g_off": model.get("g_off"),
                        "g_on": model.get("g_on"),
                        "stuck_fraction": float(np.mean(stuck)),
                        "read_noise": read_noise,
                    },
                )
            )
        events.append(Event("characterize", "end"))
    for run, stage_name in (("main", "train"), ("fine_tuned", "fine_tune")):
        if store.status(f"training/{run}") == "complete":
            training = store.read_stage(f"training/{run}")
            planned = training.attrs.get("trainer", {}).get("epochs")
            events.append(Event(stage_name, "start"))
            for record in training.attrs.get("history", {}).get("history", []):
                events.append(Event(stage_name, "epoch", {**record, "epochs": planned}))
            if stage_name == "train":
                events.append(Event(stage_name, "end"))
        events.extend(_deployment_events(store, run, stage_name))
        if store.status(f"evaluations/{run}") == "complete":
            attrs = store.read_stage(f"evaluations/{run}").attrs
            if run == "main":
                events.append(Event("evaluate", "start"))
            events.append(Event("evaluate", "metrics", {**attrs, "name": run}))
            events.append(Event("evaluate" if run == "main" else "fine_tune", "end"))
    return events


def _history_events(
    arrays: dict[str, np.ndarray], common: dict[str, Any], total: int
) -> list[Event]:
    """One progress event per recorded write-verify iteration (verify reads and pulse counts
    of the programmed cells), so a reviewed session shows cell histories and convergence."""
    if "history_achieved" not in arrays:
        return []  # written before the history was recorded
    mask = np.isfinite(arrays["targets"])
    events = []
    for iteration, done, achieved, pulses in zip(
        arrays["history_iteration"], arrays["history_done"], arrays["history_achieved"],
        arrays["history_pulses"], strict=True,
    ):  # fmt: skip
        achieved_map = np.full(mask.shape, np.nan)
        achieved_map[mask] = achieved
        pulse_map = np.zeros(mask.shape, dtype=np.int64)
        pulse_map[mask] = pulses
        data = {"iteration": int(iteration), "done": int(done), "total": total}
        data.update(achieved=achieved_map, pulses=pulse_map)
        events.append(Event("program", "progress", {**common, **data}))
    return events


def _deployment_events(store: SessionStore, run: str, stage_name: str) -> list[Event]:
    path = f"deployments/{run}/program"
    state = store.status(path)
    if state is None:
        return []
    program = store.read_stage(path)
    arrays, attrs = program.arrays, program.attrs
    if not all(name in arrays for name in ("targets", "achieved", "pulses", "status")):
        return []
    statuses = list(attrs.get("metadata", {}).get("statuses", STATUSES))
    codes = np.asarray(arrays["status"])
    counts = {
        name: int(np.sum(codes == code)) for code, name in enumerate(statuses) if name != "skipped"
    }
    events: list[Event] = []
    if run == "main":
        events.append(Event("program", "start"))
    common = {"deployment": run}
    events.append(
        Event(
            "program",
            "map",
            {
                **common,
                "name": "targets",
                "conductances": arrays["targets"],
                "write_verify": attrs.get("write_verify", {}),
                "statuses": statuses,
            },
        )
    )
    total = sum(counts.values())
    events.extend(_history_events(arrays, common, total))
    events.append(
        Event(
            "program",
            "progress",
            {
                **common,
                "iteration": int(attrs.get("metadata", {}).get("iterations", 0)),
                "done": total - counts.get("pending", 0),
                "total": total,
                "counts": counts,
                "achieved": arrays["achieved"],
                "pulses": arrays["pulses"],
                "status": codes,
                "final": True,
                "interrupted": state != "complete",
            },
        )
    )
    if state == "complete" and "summary" in attrs:
        events.append(Event("program", "metrics", {**attrs["summary"], **common}))
    if store.status(f"deployments/{run}/readback") == "complete":
        readback = store.read_stage(f"deployments/{run}/readback").arrays["conductances"]
        events.append(
            Event("program", "map", {**common, "name": "achieved", "conductances": readback})
        )
    if run == "main":
        status = "done" if state == "complete" else "interrupted"
        events.append(Event("program", "end", {"status": status}))
    elif state != "complete":
        events.append(Event(stage_name, "end", {"status": "interrupted"}))
    return events
