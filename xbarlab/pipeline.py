"""The hardware-in-the-loop pipeline: measure a chip, train for it, program it, evaluate it.

Stages (`STAGES`), each runnable alone with its inputs read from the session file:

1. characterize: conductance map, read noise, stuck scan, pulse response, I-V sweeps
   (`instruments.characterize`), and the fitted device model (`simulation.fitting`) ->
   /characterisation, /models/fitted.
2. train: nonideality-aware training with the fitted model; this chip's measured stuck devices
   are fixed in every layer (where the deployment plan puts it), the other random nonidealities
   are resampled every batch -> /training/main (checkpoint, history, deployment plan, k_G).
3. program: map weights to conductance targets, tile the layers onto the array, write-verify,
   read back -> /deployments/main/program (live: resumable after a crash), .../readback.
4. evaluate: test accuracy four ways (ideal weights; fitted models; read-back conductances;
   on-chip multiplies through the backend), device power, mapping-error metrics ->
   /evaluations/main.
5. fine_tune (hybrid): keep what is programmed, retrain the last layer in software against the
   read-back conductances of the others, reprogram it, evaluate again -> /training/fine_tuned,
   /deployments/fine_tuned/..., /evaluations/fine_tuned.

Events (`Event`: stage, kind, data) go to an `on_event` callback (CLI progress bar, GUI); the
pipeline never imports Qt. `should_stop()` is polled between pulses iterations and batches; a stop
raises `Cancelled` after the crossbar outputs are off and the session is consistent (finished
stages complete, a programming stage "in_progress" and resumable).
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from instruments.characterize import Characterisation, CharacterizeConfig, characterize
from instruments.crossbar import Crossbar
from instruments.program import ProgramResult, WriteVerifyConfig, program_map
from simulation.config import (
    ConfigError,
    key_path,
    read_float,
    read_int,
    reject_unknown_keys,
    require_mapping,
)
from simulation.device_model import DeviceModel
from training.checkpoint import checkpoint_bytes, network_from_bytes
from training.datasets import DatasetSplits
from training.deployment import (
    DeploymentPlan,
    chip_map,
    fix_chip_defects,
    layer_conductances,
    layer_maps,
    network_layer_shapes,
    plan_deployment,
)
from training.evaluation import evaluate_once
from training.experiment import ExperimentConfig, network_spec
from training.layers import memristive_cores, set_network_device_model
from training.networks import build_network, count_synapses
from training.on_chip import evaluate_on_chip
from training.power import tops_per_watt
from training.trainer import TrainerConfig, TrainingStopped, train
from xbarlab.store import SessionStore

STAGES: tuple[str, ...] = ("characterize", "train", "program", "evaluate", "fine_tune")

ACCURACY_STAGES: tuple[str, ...] = ("ideal", "fitted model", "read-back", "on chip")
"""The four ways test accuracy is measured, in order: the trained weights in software on an ideal
crossbar (for aware-trained double weights this drops the nonlinearity they were trained with, so
it can be below the next); software through the fitted device model (median of repeats, the chip's
stuck devices pinned); software with the read-back conductances and the fitted I-V model; the
chip's own multiplies."""


class Cancelled(Exception):
    """The run was stopped (should_stop); outputs are off and the session is consistent."""


class PipelineError(RuntimeError):
    """A stage cannot run: its inputs are missing from the session, or they do not fit."""


@dataclass(frozen=True)
class Event:
    """What the pipeline reports: stage name, kind ("start", "progress", "epoch", "map",
    "metrics", "end", "log") and plain data (numbers, strings, numpy arrays)."""

    stage: str
    kind: str
    data: dict[str, Any] = field(default_factory=dict)
    time: float = field(default_factory=time.time)


EventCallback = Callable[[Event], None]


# -- configuration ------------------------------------------------------------------------------

PIPELINE_KEYS = (
    "name",
    "description",
    "instrument",
    "experiment",
    "characterize",
    "write_verify",
    "deploy",
    "fine_tune",
    "evaluate",
)


@dataclass
class PipelineConfig:
    """Everything a run needs. The experiment's device is ignored: the fitted model replaces it.

    tile_shape: most rows and cols of one tile (None: the whole array). fine_tune_epochs,
    fine_tune_learning_rate: hybrid retraining of the last layer. on_chip_limit: test examples
    evaluated on the chip (None: all). evaluation_repeats: software evaluations with the fitted
    model (median reported).
    """

    name: str = "session"
    instrument: Any = "simulated-siox-high-r-128x128"
    experiment: ExperimentConfig = field(default_factory=ExperimentConfig)
    characterize: CharacterizeConfig = field(default_factory=CharacterizeConfig)
    write_verify: WriteVerifyConfig = field(default_factory=WriteVerifyConfig)
    tile_shape: tuple[int, int] | None = None
    fine_tune_epochs: int = 10
    fine_tune_learning_rate: float = 0.005
    on_chip_limit: int | None = None
    evaluation_repeats: int = 5
    source: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_config(cls, config: Mapping[str, Any], where: str = "pipeline") -> PipelineConfig:
        """Read a pipeline TOML document (configs/pipelines/*.toml); errors name the key."""
        from xbarlab.config import experiment_from_mapping

        table = require_mapping(config, where)
        reject_unknown_keys(table, PIPELINE_KEYS, where)
        experiment_table = dict(
            require_mapping(table.get("experiment", {}), key_path(where, "experiment"))
        )
        experiment_table.pop("device", None)  # the fitted model is the device
        training = dict(
            require_mapping(
                experiment_table.get("training", {}), key_path(where, "experiment.training")
            )
        )
        aware = training.pop("aware", True)
        if not isinstance(aware, bool):
            raise ConfigError(
                f"{key_path(where, 'experiment.training.aware')}: expected true or false, "
                f"got {aware!r}"
            )
        experiment_table["training"] = training
        experiment = experiment_from_mapping(experiment_table, key_path(where, "experiment"))
        experiment.aware = aware  # aware of the fitted model (default) or standard
        deploy_where = key_path(where, "deploy")
        deploy = require_mapping(table.get("deploy", {}), deploy_where)
        reject_unknown_keys(deploy, ("tile_rows", "tile_cols"), deploy_where)
        tile_shape = None
        if "tile_rows" in deploy or "tile_cols" in deploy:
            tile_shape = (
                read_int(deploy, "tile_rows", deploy_where, minimum=1),
                read_int(deploy, "tile_cols", deploy_where, minimum=2),
            )
        tune_where = key_path(where, "fine_tune")
        tune = require_mapping(table.get("fine_tune", {}), tune_where)
        reject_unknown_keys(tune, ("epochs", "learning_rate"), tune_where)
        evaluate_where = key_path(where, "evaluate")
        evaluate = require_mapping(table.get("evaluate", {}), evaluate_where)
        reject_unknown_keys(evaluate, ("on_chip_limit", "repeats"), evaluate_where)
        instrument = table.get("instrument", cls.instrument)
        if not isinstance(instrument, str | Mapping):
            raise ConfigError(
                f"{key_path(where, 'instrument')}: expected a config name, path or table"
            )
        return cls(
            name=str(table.get("name", "session")),
            instrument=instrument,
            experiment=experiment,
            characterize=CharacterizeConfig.from_config(
                table.get("characterize", {}), key_path(where, "characterize")
            ),
            write_verify=WriteVerifyConfig.from_config(
                table.get("write_verify", {}), key_path(where, "write_verify")
            ),
            tile_shape=tile_shape,
            fine_tune_epochs=read_int(tune, "epochs", tune_where, default=10, minimum=0),
            fine_tune_learning_rate=read_float(
                tune, "learning_rate", tune_where, default=0.005, minimum=0, exclusive_minimum=True
            ),
            on_chip_limit=read_int(evaluate, "on_chip_limit", evaluate_where, minimum=1)
            if "on_chip_limit" in evaluate
            else None,
            evaluation_repeats=read_int(evaluate, "repeats", evaluate_where, default=5, minimum=1),
            source=copy.deepcopy(dict(table)),
        )


# -- the device model training uses ----------------------------------------------------------


def training_device_config(fitted: Mapping[str, Any]) -> dict[str, Any]:
    """The fitted device model as training uses it for a write-verified deployment.

    Write-verify programs every device to its target within tolerance, whatever its own window,
    so the fitted device-to-device spread of G_off / G_on is not a disturbance of the programmed
    conductances; it is left out (kept in /models/fitted for reference). What stays: the common
    window, I-V nonlinearity, programming noise and stuck devices.
    """
    config = copy.deepcopy(dict(fitted))
    config["nonidealities"] = [
        part for part in config.get("nonidealities", []) if part.get("kind") != "d2d_lognormal"
    ]
    return config


# -- the pipeline -------------------------------------------------------------------------------


class Pipeline:
    """Runs stages against one crossbar and one session file."""

    def __init__(
        self,
        config: PipelineConfig,
        store: SessionStore,
        crossbar: Crossbar | None = None,
        *,
        data: DatasetSplits | None = None,
        on_event: EventCallback | None = None,
        should_stop: Callable[[], bool] | None = None,
    ) -> None:
        self.config = config
        self.store = store
        self.crossbar = crossbar
        self._data = data
        self.on_event = on_event
        self.should_stop = should_stop
        self.stage_times: dict[str, float] = {}

    # -- plumbing -------------------------------------------------------------------------------

    def emit(self, stage: str, kind: str, **data: Any) -> None:
        if self.on_event is not None:
            self.on_event(Event(stage, kind, data))

    def _check_stop(self) -> None:
        if self.should_stop is not None and self.should_stop():
            raise Cancelled("stopped by request")

    def _require_crossbar(self, stage: str) -> Crossbar:
        if self.crossbar is None:
            raise PipelineError(f"stage {stage!r} needs a connected crossbar")
        return self.crossbar

    def data(self) -> DatasetSplits:
        if self._data is None:
            self._data = self.config.experiment.data.load()
        return self._data

    def _require(self, path: str, stage: str) -> None:
        if self.store.status(path) != "complete":
            raise PipelineError(
                f"stage {stage!r} needs {path!r} in {self.store.path}; run the stage that makes "
                "it first"
            )

    def run(self, stages: Sequence[str] = STAGES) -> dict[str, Any]:
        """Run the given stages in order; returns `summary()`."""
        unknown = [s for s in stages if s not in STAGES]
        if unknown:
            raise PipelineError(f"unknown stage(s) {unknown}; stages: {list(STAGES)}")
        self.store.set_metadata(pipeline=self.config.source or {"name": self.config.name})
        for stage in STAGES:
            if stage not in stages:
                continue
            started = time.perf_counter()
            self.emit(stage, "start")
            self.store.log({"event": "stage_start", "stage": stage})
            try:
                getattr(self, f"run_{stage}")()
            except BaseException as error:
                if self.crossbar is not None:
                    self.crossbar.outputs_off()
                stopped = isinstance(error, Cancelled | KeyboardInterrupt)
                event = "stage_stopped" if stopped else "stage_failed"
                self.store.log({"event": event, "stage": stage, "error": repr(error)})
                raise
            self.stage_times[stage] = time.perf_counter() - started
            self.store.log(
                {"event": "stage_end", "stage": stage, "seconds": self.stage_times[stage]}
            )
            self.emit(stage, "end", seconds=self.stage_times[stage])
        return self.summary()

    # -- 1. characterise and fit ------------------------------------------------------------

    def run_characterize(self) -> None:
        crossbar = self._require_crossbar("characterize")

        def progress(event: dict[str, Any]) -> None:
            self.emit("characterize", "progress", **_without_stage(event))

        region = None
        if self.config.characterize.region == "deployment":
            region = self._planned_region(crossbar.shape)
        result = characterize(
            crossbar, self.config.characterize, progress, self.should_stop, region
        )
        if result.cancelled:
            raise Cancelled("characterisation stopped")
        restore = None if result.stuck_scan is None else result.stuck_scan.restore
        # Targets must be reachable by (nearly) every device: the window 95 % of devices span.
        fit = result.fit(program=restore, name="fitted from characterisation", window_coverage=0.95)
        self.store.write_stage(
            "characterisation",
            characterisation_arrays(result),
            attrs={
                "config": result.config.to_config(),
                "instrument": result.record,
                "part_times_s": result.part_times_s,
                "wall_time_s": result.wall_time_s,
            },
            units=CHARACTERISATION_UNITS,
        )
        fitted = fit.to_config()
        stuck = result.stuck_scan
        shape = crossbar.shape
        stuck_mask = np.zeros(shape, bool) if stuck is None else stuck.stuck
        stuck_values = np.zeros(shape) if stuck is None else np.where(stuck.stuck, stuck.values, 0)
        self.store.write_stage(
            "models/fitted",
            {"stuck": stuck_mask, "stuck_values": stuck_values},
            attrs={
                "device_model": fitted,
                "training_device_model": training_device_config(fitted),
                "array_shape": list(shape),
            },
            units={"stuck_values": "S"},
        )
        self.emit(
            "characterize",
            "metrics",
            g_off=fitted.get("g_off"),
            g_on=fitted.get("g_on"),
            stuck_fraction=float(stuck_mask.mean()),
            read_noise=None if result.read_noise is None else result.read_noise.median_relative,
        )
        if result.map is not None:
            self.emit("characterize", "map", name="measured", conductances=result.map.conductances)

    def _planned_region(self, array_shape: tuple[int, int]) -> np.ndarray:
        """The cells the network will occupy (its deployment plan on this array)."""
        spec = network_spec(self.config.experiment, self.data())
        network = build_network(spec)
        plan = plan_deployment(network_layer_shapes(network), array_shape, self.config.tile_shape)
        return plan.chip_mask()

    # -- 2. train ---------------------------------------------------------------------------

    def _fitted(self) -> tuple[DeviceModel, np.ndarray, np.ndarray, tuple[int, int]]:
        self._require("models/fitted", "train")
        stage = self.store.read_stage("models/fitted")
        model = DeviceModel.from_config(
            stage.attrs["training_device_model"], f"{self.store.path}: models/fitted"
        )
        shape = tuple(int(v) for v in stage.attrs["array_shape"])
        return model, stage.arrays["stuck"], stage.arrays["stuck_values"], shape  # type: ignore[return-value]

    def run_train(self) -> None:
        model, stuck, stuck_values, array_shape = self._fitted()
        experiment = self.config.experiment
        data = self.data()
        spec = network_spec(experiment, data)
        network = build_network(spec)
        plan = plan_deployment(network_layer_shapes(network), array_shape, self.config.tile_shape)
        fixed: list[int | None] = []
        if experiment.aware:
            set_network_device_model(network, model, sampling="resample", seed=experiment.chip_seed)
            fixed = fix_chip_defects(network, plan, stuck, stuck_values)
        else:  # standard training: ideal layers; the model only maps the weights afterwards
            set_network_device_model(network, None)

        def on_epoch(record: Any) -> None:
            self._check_stop()
            self.emit("train", "epoch", **record.__dict__, epochs=experiment.trainer.epochs)

        history = self._train(network, data, experiment.trainer, on_epoch)
        if not experiment.aware:
            set_network_device_model(network, model, sampling="resample", seed=experiment.chip_seed)
        k_gs = [k for _, k in layer_conductances(network)]
        self.store.write_stage(
            "training/main",
            {"checkpoint": np.void(checkpoint_bytes(network, spec))},
            attrs={
                "spec": spec,
                "trainer": experiment.trainer.to_config(),
                "history": history.to_dict(),
                "plan": plan.to_config(),
                "k_g": k_gs,
                "fixed_stuck_per_layer": fixed,
                "device_model": model.to_config(),
                "aware": experiment.aware,
                "data": data.summary(),
            },
        )

    def _train(self, network: Any, data: Any, trainer: TrainerConfig, on_epoch: Any) -> Any:
        try:
            return train(network, data, trainer, on_epoch=on_epoch, should_stop=self.should_stop)
        except TrainingStopped as stopped:
            raise Cancelled(str(stopped)) from None

    def _trained(self, run: str = "main") -> tuple[torch.nn.Module, DeploymentPlan, list[float]]:
        self._require(f"training/{run}", "program")
        stage = self.store.read_stage(f"training/{run}")
        network, _, _ = network_from_bytes(
            stage.arrays["checkpoint"].tobytes(), f"{self.store.path}: training/{run}"
        )
        plan = DeploymentPlan.from_config(stage.attrs["plan"], f"training/{run}: plan")
        return network, plan, [float(k) for k in stage.attrs["k_g"]]

    # -- 3. program -------------------------------------------------------------------------

    def run_program(self) -> None:
        network, plan, _ = self._trained()
        targets = chip_map(plan, [g for g, _ in layer_conductances(network)])
        self._program("main", targets, np.isfinite(targets), plan)

    def _program(
        self, name: str, targets: np.ndarray, mask: np.ndarray, plan: DeploymentPlan
    ) -> ProgramResult:
        """Write-verify `targets` where `mask`, resuming an interrupted run of the same name;
        then read the whole array back."""
        crossbar = self._require_crossbar("program")
        stage = f"deployments/{name}/program"
        if self.store.status(stage) == "complete":
            raise PipelineError(f"{self.store.path}: {stage} is already complete")
        live = self.store.begin_stage(
            stage,
            {"plan": plan.to_config(), "write_verify": self.config.write_verify.to_config()},
        )
        shape = crossbar.shape
        live.dataset("targets", shape, np.float64, np.nan, units="S")
        live.dataset("achieved", shape, np.float64, np.nan, units="S")
        live.dataset("pulses", shape, np.int64, 0)
        live.dataset("status", shape, np.int8, 0)
        previous = None
        if live.resumed:
            previous = ProgramResult.from_arrays(
                {
                    **{n: live.read(n) for n in ("targets", "achieved", "pulses", "status")},
                    "tolerance": np.full(shape, np.nan),
                },
                {"config": self.config.write_verify.to_config()},
            )
            self.emit(
                "program",
                "log",
                message=f"resuming: {int(previous.finished.sum())} cells already finished",
            )
        live.write("targets", np.where(mask, targets, np.nan))
        self.emit(
            "program",
            "map",
            name="targets",
            deployment=name,
            conductances=np.where(mask, targets, np.nan),
            write_verify=self.config.write_verify.to_config(),
        )

        def progress(event: dict[str, Any]) -> None:
            live.write("achieved", event["achieved"])
            if "pulses" in event:
                live.write("pulses", event["pulses"])
                live.write("status", event["status"])
                # per-iteration history of the programmed cells, for reviewing a session
                live.append("history_iteration", event["iteration"], np.int64)
                live.append("history_done", event["done"], np.int64)
                live.append("history_achieved", event["achieved"][mask], np.float32)
                live.append("history_pulses", event["pulses"][mask], np.int32)
            self.emit("program", "progress", deployment=name, **_without_stage(event))

        result = program_map(
            crossbar,
            targets,
            self.config.write_verify,
            mask=mask,
            finished=previous,
            on_progress=progress,
            should_stop=self.should_stop,
        )
        arrays = result.to_arrays()
        for key in ("achieved", "pulses", "status"):
            live.write(key, arrays[key])
        if result.cancelled:
            crossbar.outputs_off()
            raise Cancelled(f"programming stopped; {stage} can be resumed")
        summary = result.summary()
        live.finish(summary=summary, metadata=result.metadata())
        readback = crossbar.read_all()
        self.store.write_stage(
            f"deployments/{name}/readback",
            {"conductances": readback},
            attrs={"v_read": crossbar.v_read, "instrument": crossbar.record()},
            units={"conductances": "S"},
            overwrite=True,
        )
        self.emit("program", "map", name="achieved", deployment=name, conductances=readback)
        self.emit("program", "metrics", deployment=name, **summary)
        return result

    # -- 4. evaluate ------------------------------------------------------------------------

    def run_evaluate(self) -> None:
        network, plan, k_gs = self._trained()
        self._evaluate("main", "main", network, plan, k_gs)

    def _evaluate(
        self,
        name: str,
        deployment: str,
        network: torch.nn.Module,
        plan: DeploymentPlan,
        k_gs: list[float],
    ) -> dict[str, Any]:
        crossbar = self._require_crossbar("evaluate")
        self._require(f"deployments/{deployment}/readback", "evaluate")
        readback = self.store.read_stage(f"deployments/{deployment}/readback").arrays[
            "conductances"
        ]
        program = self.store.read_stage(f"deployments/{deployment}/program")
        model, stuck, stuck_values, _ = self._fitted()
        test = self.data().test
        synapses = count_synapses(network)
        read_time = self.config.experiment.read_time
        accuracies: dict[str, float] = {}
        powers: dict[str, float] = {}

        set_network_device_model(network, None)
        accuracies["ideal"] = evaluate_once(network, test).accuracy
        fitted_runs = []
        for repeat in range(self.config.evaluation_repeats):
            self._check_stop()
            set_network_device_model(network, model, sampling="resample", seed=10**6 + repeat)
            fix_chip_defects(network, plan, stuck, stuck_values)
            fitted_runs.append(evaluate_once(network, test))
        fitted_runs.sort(key=lambda r: r.accuracy)
        median = fitted_runs[len(fitted_runs) // 2]
        accuracies["fitted model"], powers["fitted model"] = median.accuracy, median.power
        set_network_device_model(network, model, sampling="frozen", seed=2 * 10**6)
        for core, measured, k_g in zip(
            memristive_cores(network), layer_maps(plan, readback), k_gs, strict=True
        ):
            core.set_measured_conductances(torch.as_tensor(measured), k_g)
        readback_run = evaluate_once(network, test)
        accuracies["read-back"], powers["read-back"] = readback_run.accuracy, readback_run.power
        self._check_stop()
        on_chip_examples = 0
        if crossbar.capabilities.vmm:
            limit = self.config.on_chip_limit
            inputs, labels = test.tensors
            if limit is not None:
                inputs, labels = inputs[:limit], labels[:limit]
            on_chip = evaluate_on_chip(network, crossbar, plan, k_gs, (inputs, labels))
            accuracies["on chip"] = on_chip.accuracy
            on_chip_examples = on_chip.examples
        else:
            self.emit("evaluate", "log", message="the backend has no on-chip multiply: skipped")
        metrics = mapping_metrics(program.arrays, program.attrs, readback, model)
        chip = accuracies.get("on chip", accuracies["read-back"])
        metrics["accuracy_drop_software_to_chip"] = accuracies["fitted model"] - chip
        result = {
            "accuracy": accuracies,
            "power_w": powers,
            "tops_per_watt": {k: tops_per_watt(synapses, p, read_time) for k, p in powers.items()},
            "on_chip_examples": on_chip_examples,
            "test_examples": len(test),
            "mapping": metrics,
        }
        self.store.write_stage(f"evaluations/{name}", attrs=result, overwrite=True)
        self.emit("evaluate", "metrics", name=name, **result)
        return result

    # -- 5. hybrid fine-tuning --------------------------------------------------------------

    def run_fine_tune(self) -> None:
        if self.config.fine_tune_epochs == 0:
            self.emit("fine_tune", "log", message="fine_tune.epochs = 0: skipped")
            return
        network, plan, k_gs = self._trained()
        self._require("deployments/main/readback", "fine_tune")
        readback = self.store.read_stage("deployments/main/readback").arrays["conductances"]
        model, stuck, stuck_values, _ = self._fitted()
        cores = memristive_cores(network)
        set_network_device_model(network, model, sampling="resample", seed=3 * 10**6)
        fix_chip_defects(network, plan, stuck, stuck_values)
        measured = layer_maps(plan, readback)
        for index, core in enumerate(cores[:-1]):
            core.set_measured_conductances(torch.as_tensor(measured[index]), k_gs[index])
            for parameter in core.parameters():
                parameter.requires_grad_(False)
        trainer = TrainerConfig(
            **{
                **self.config.experiment.trainer.to_config(),
                "epochs": self.config.fine_tune_epochs,
                "learning_rate": self.config.fine_tune_learning_rate,
            }
        )

        def on_epoch(record: Any) -> None:
            self._check_stop()
            self.emit("fine_tune", "epoch", **record.__dict__, epochs=trainer.epochs)

        history = self._train(network, self.data(), trainer, on_epoch)
        last = len(cores) - 1
        with torch.no_grad():
            new_g, new_k_g = cores[-1].conductances()
        new_k_gs = [*k_gs[:-1], float(new_k_g)]
        targets_last = new_g.double().numpy()
        layer_targets = [np.full(shape, np.nan) for shape in plan.layer_shapes]
        layer_targets[last] = targets_last
        targets = chip_map(plan, layer_targets)
        spec = self.store.read_stage("training/main").attrs["spec"]
        for core in cores:
            for parameter in core.parameters():
                parameter.requires_grad_(True)
        self.store.write_stage(
            "training/fine_tuned",
            {"checkpoint": np.void(checkpoint_bytes(network, spec))},
            attrs={
                "spec": spec,
                "trainer": trainer.to_config(),
                "history": history.to_dict(),
                "plan": plan.to_config(),
                "k_g": new_k_gs,
                "retrained_layers": [last],
            },
            overwrite=True,
        )
        self._program("fine_tuned", targets, np.isfinite(targets), plan)
        network, plan, k_gs = self._trained("fine_tuned")
        self._evaluate("fine_tuned", "fine_tuned", network, plan, k_gs)

    # -- results ----------------------------------------------------------------------------

    def summary(self) -> dict[str, Any]:
        """Accuracies, mapping metrics, power and stage times found in the session."""
        summary: dict[str, Any] = {"stage_seconds": dict(self.stage_times)}
        for name in ("main", "fine_tuned"):
            if self.store.status(f"evaluations/{name}") == "complete":
                summary[name] = self.store.read_stage(f"evaluations/{name}").attrs
        return summary


def _without_stage(event: Mapping[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in event.items() if key != "stage"}


CHARACTERISATION_UNITS = {
    "map": "S",
    "map_std": "S",
    "read_noise_mean": "S",
    "read_noise_std": "S",
    "stuck_values": "S",
    "pulse_conductances": "S",
    "iv_voltages": "V",
    "iv_currents": "A",
}


def characterisation_arrays(result: Characterisation) -> dict[str, np.ndarray]:
    """The measured records as flat arrays for the session file."""
    arrays: dict[str, np.ndarray] = {}
    if result.map is not None:
        arrays["map"], arrays["map_std"] = result.map.conductances, result.map.std
    if result.read_noise is not None:
        arrays["read_noise_mean"] = result.read_noise.mean
        arrays["read_noise_std"] = result.read_noise.std
    if result.stuck_scan is not None:
        arrays["stuck"] = result.stuck_scan.stuck
        arrays["stuck_values"] = result.stuck_scan.values
        arrays["stuck_tested"] = result.stuck_scan.tested
    if result.pulse_response is not None:
        arrays["pulse_cells"] = result.pulse_response.cells
        arrays["pulse_conductances"] = result.pulse_response.conductances
    if result.iv is not None:
        arrays["iv_cells"] = result.iv.cells
        arrays["iv_voltages"] = result.iv.voltages
        arrays["iv_currents"] = result.iv.currents
    return arrays


def mapping_metrics(
    program: Mapping[str, np.ndarray],
    attrs: Mapping[str, Any],
    readback: np.ndarray,
    model: DeviceModel,
) -> dict[str, Any]:
    """Mapping error the ways labs report it, from the write-verify maps and the final read."""
    targets = program["targets"]
    used = np.isfinite(targets)
    summary = dict(attrs.get("summary", {}))
    statuses = list(attrs.get("metadata", {}).get("statuses", []))
    stuck_code = statuses.index("stuck") if "stuck" in statuses else -1
    free = used & (program["status"] != stuck_code)
    achieved = readback[free]
    target = targets[free]
    error = achieved - target
    window = model.g_range.g_on - model.g_range.g_off
    relative = np.abs(error) / target
    tolerance = float(attrs.get("write_verify", {}).get("relative_tolerance", 0.02))
    return {
        "cells": int(used.sum()),
        "stuck_cells": int((used & (program["status"] == stuck_code)).sum()),
        "stuck_fraction": float((used & (program["status"] == stuck_code)).sum() / used.sum()),
        "mean_relative_error": float(relative.mean()),
        "p95_relative_error": float(np.percentile(relative, 95)),
        "mean_abs_error_s": float(np.abs(error).mean()),
        "std_error_s": float(error.std()),
        "mean_error_over_window": float(np.abs(error).mean() / window),
        "within_tolerance": float((relative <= tolerance).mean()),
        "tolerance": tolerance,
        "mean_pulses": float(program["pulses"][used].mean()),
        "max_pulses": int(program["pulses"][used].max()),
        "bus_round_trips": int(summary.get("bus_round_trips", 0)),
        "programming_wall_s": float(summary.get("wall_time_s", 0.0)),
    }


def open_session(path: str | Path, config: PipelineConfig) -> SessionStore:
    """A session file for a run: opened for appending if it exists, else created."""
    return SessionStore.open_or_create(path, {"session_name": config.name})
