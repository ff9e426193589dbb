"""One training experiment: data, network, device model, training and evaluation, as a unit.

"Standard" training ignores the device (ideal layers with standard weights) and is evaluated on
it afterwards; "aware" training computes every forward pass through the device model (double
weights by default), resampling its random nonidealities each batch or on one frozen chip.

Evaluation reports test accuracy on an ideal crossbar and, under the device model, over
`repeats` resampled passes and over `repeats` frozen chips; a network trained on a frozen chip is
also evaluated on that chip ("own chip").
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from simulation.config import (
    ConfigError,
    key_path,
    read_choice,
    read_float,
    read_int,
    reject_unknown_keys,
    require_mapping,
)
from simulation.device_model import DeviceModel
from training.datasets import DATASETS, DatasetSplits, load_dataset
from training.evaluation import EvaluationResult, evaluate_on_chips
from training.layers import SAMPLING_MODES, set_network_device_model
from training.networks import build_network, count_synapses, validate_spec
from training.power import DEFAULT_READ_TIME, tops_per_watt
from training.trainer import EpochRecord, TrainerConfig, TrainingResult, train

TRAINING_KEYS = (*TrainerConfig.__dataclass_fields__, "aware", "sampling", "chip_seed")


@dataclass
class DataConfig:
    dataset: str = "digits"
    data_dir: str | None = None
    validation_fraction: float = 0.2
    split_seed: int = 0
    download: bool = False
    limit_train: int | None = None
    limit_test: int | None = None

    @classmethod
    def from_config(cls, config: Mapping[str, Any], where: str = "data") -> DataConfig:
        table = require_mapping(config, where)
        reject_unknown_keys(table, list(cls.__dataclass_fields__), where)
        data_dir = table.get("data_dir") or None
        if data_dir is not None and not isinstance(data_dir, str):
            raise ConfigError(f"{key_path(where, 'data_dir')}: expected a path, got {data_dir!r}")
        download = table.get("download", False)
        if not isinstance(download, bool):
            raise ConfigError(
                f"{key_path(where, 'download')}: expected true or false, got {download!r}"
            )
        limits = {
            name: read_int(table, name, where, minimum=1) if name in table else None
            for name in ("limit_train", "limit_test")
        }
        return cls(
            dataset=read_choice(table, "dataset", where, DATASETS, default="digits"),
            data_dir=data_dir,
            validation_fraction=read_float(
                table, "validation_fraction", where, default=0.2, minimum=0.0, maximum=0.9
            ),
            split_seed=read_int(table, "split_seed", where, default=0, minimum=0),
            download=download,
            **limits,
        )

    def load(self) -> DatasetSplits:
        return load_dataset(
            self.dataset,
            self.data_dir,
            validation_fraction=self.validation_fraction,
            split_seed=self.split_seed,
            download=self.download,
            limit_train=self.limit_train,
            limit_test=self.limit_test,
        )


@dataclass
class ExperimentConfig:
    """Everything one run needs; `device` None means an ideal crossbar throughout."""

    name: str = "experiment"
    data: DataConfig = field(default_factory=DataConfig)
    network: dict[str, Any] = field(default_factory=lambda: {"hidden": [25]})
    device: DeviceModel | None = None
    aware: bool = False
    sampling: str = "resample"
    chip_seed: int = 0
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    evaluation_repeats: int = 5
    evaluation_modes: tuple[str, ...] = SAMPLING_MODES
    read_time: float = DEFAULT_READ_TIME

    def __post_init__(self) -> None:
        if self.sampling not in SAMPLING_MODES:
            raise ConfigError(
                f"training.sampling: {self.sampling!r} is not allowed; "
                f"allowed: {list(SAMPLING_MODES)}"
            )
        if self.aware and self.device is None:
            raise ConfigError("training.aware: aware training needs a [device] model")
        for mode in self.evaluation_modes:
            if mode not in SAMPLING_MODES:
                raise ConfigError(
                    f"evaluation.modes: {mode!r} is not allowed; allowed: {list(SAMPLING_MODES)}"
                )


def read_training_table(
    config: Mapping[str, Any], where: str = "training"
) -> tuple[TrainerConfig, bool, str, int]:
    """Split a [training] table into the trainer's keys and aware / sampling / chip_seed."""
    table = dict(require_mapping(config, where))
    reject_unknown_keys(table, TRAINING_KEYS, where)
    aware = table.pop("aware", False)
    if not isinstance(aware, bool):
        raise ConfigError(f"{key_path(where, 'aware')}: expected true or false, got {aware!r}")
    sampling = read_choice(table, "sampling", where, SAMPLING_MODES, default="resample")
    chip_seed = read_int(table, "chip_seed", where, default=0, minimum=0)
    table.pop("sampling", None)
    table.pop("chip_seed", None)
    return TrainerConfig.from_config(table, where), aware, sampling, chip_seed


@dataclass
class ExperimentResult:
    """Measured outcome; accuracies 0..1, power in W per example, efficiency in TOPS/W."""

    name: str
    spec: dict[str, Any]
    training: TrainingResult
    final_train_accuracy: float
    validation_accuracy: float
    memristive_validation: float | None
    test_ideal: float
    test: dict[str, EvaluationResult]
    synapses: int
    read_time: float
    wall_time: float

    def power(self, mode: str) -> float:
        return self.test[mode].mean_power

    def tops_per_watt(self, mode: str) -> float:
        return tops_per_watt(self.synapses, self.power(mode), self.read_time)

    def summary_rows(self) -> list[tuple[str, str]]:
        """(label, value) rows for printing."""
        rows = [
            ("train accuracy", f"{self.final_train_accuracy:.2%}"),
            ("validation accuracy", f"{self.validation_accuracy:.2%}"),
        ]
        if self.memristive_validation is not None:
            rows.append(("memristive validation (median)", f"{self.memristive_validation:.2%}"))
        rows.append(("test accuracy, ideal crossbar", f"{self.test_ideal:.2%}"))
        for mode, result in self.test.items():
            rows.append(
                (
                    f"test accuracy, {mode} (median of {len(result.accuracies)})",
                    f"{result.median_accuracy:.2%}",
                )
            )
            if result.mean_power > 0:
                rows.append(
                    (
                        f"power, {mode} (device-only)",
                        f"{result.mean_power:.4g} W = {self.tops_per_watt(mode):.4g} TOPS/W",
                    )
                )
        rows.append(("training wall time", f"{self.training.wall_time:.1f} s"))
        return rows

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "network": self.spec,
            "training": self.training.to_dict(),
            "final_train_accuracy": self.final_train_accuracy,
            "validation_accuracy": self.validation_accuracy,
            "memristive_validation": self.memristive_validation,
            "test_ideal": self.test_ideal,
            "test": {mode: r.to_dict() for mode, r in self.test.items()},
            "synapses": self.synapses,
            "read_time": self.read_time,
            "wall_time": self.wall_time,
        }


def network_spec(config: ExperimentConfig, data: DatasetSplits) -> dict[str, Any]:
    """The network spec with the dataset's shape and classes and the training's weights."""
    spec = dict(config.network)
    spec.setdefault("input_shape", list(data.input_shape))
    spec.setdefault("classes", data.num_classes)
    spec.setdefault("weights", "double" if config.aware else "standard")
    return validate_spec(spec, "network")


def run_experiment(
    config: ExperimentConfig,
    data: DatasetSplits | None = None,
    *,
    progress: bool = False,
    on_epoch: Callable[[EpochRecord], None] | None = None,
) -> tuple[ExperimentResult, Any]:
    """Train and evaluate; returns the result and the trained network."""
    started = time.perf_counter()
    data = data if data is not None else config.data.load()
    spec = network_spec(config, data)
    network = build_network(spec)
    training_device = config.device if config.aware else None
    set_network_device_model(
        network, training_device, sampling=config.sampling, seed=config.chip_seed
    )
    history = train(network, data, config.trainer, progress=progress, on_epoch=on_epoch)
    last = history.history[-1]
    selected = next(r for r in history.history if r.epoch == max(history.best_epoch, 1))
    memristive = max(
        (r.memristive_validation for r in history.history if r.memristive_validation is not None),
        default=None,
    )
    test: dict[str, EvaluationResult] = {}
    ideal = evaluate_on_chips(network, data.test, None, sampling="resample", repeats=1)
    if config.device is not None:
        if config.sampling == "frozen":
            # The chip this network is deployed on: for aware training, the one it trained on.
            test["own chip"] = evaluate_on_chips(
                network,
                data.test,
                config.device,
                sampling="frozen",
                repeats=1,
                seed=config.chip_seed,
            )
        # Evaluation chips never coincide with a training chip (seeds offset by 10**6).
        for mode in config.evaluation_modes:
            test[mode] = evaluate_on_chips(
                network,
                data.test,
                config.device,
                sampling=mode,
                repeats=config.evaluation_repeats,
                seed=10**6 + config.chip_seed,
            )
    result = ExperimentResult(
        name=config.name,
        spec=spec,
        training=history,
        final_train_accuracy=last.train_accuracy,
        validation_accuracy=selected.validation_accuracy,
        memristive_validation=memristive,
        test_ideal=ideal.accuracies[0],
        test=test,
        synapses=count_synapses(network),
        read_time=config.read_time,
        wall_time=time.perf_counter() - started,
    )
    return result, network
