"""Training loop: SGD or Adam, L1 on device parameters, standard and memristive validation.

Standard validation is one pass over the validation set every epoch. Memristive validation
(Joksas et al. 2022, section 6) evaluates the validation set N times under freshly drawn
nonidealities and takes the median accuracy, at the first epoch, every k epochs and at the last
epoch; the checkpoint keeps the parameters with the best median. A frozen-chip network is
deterministic, so its memristive validation is a single pass on its chip.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn.functional as functional
from torch import nn
from tqdm.auto import tqdm

from simulation.config import (
    read_choice,
    read_float,
    read_int,
    reject_unknown_keys,
    require_mapping,
)
from training.datasets import DatasetSplits
from training.evaluation import evaluate_once, evaluate_repeated
from training.layers import memristive_cores, network_power

OPTIMIZERS = ("sgd", "adam")
SELECTIONS = ("memristive", "standard", "last")


@dataclass
class TrainerConfig:
    """How to train. learning_rate is per optimiser step; l1 is the paper's gamma."""

    epochs: int = 20
    batch_size: int = 64
    optimizer: str = "adam"
    learning_rate: float = 0.005
    l1: float = 0.0
    seed: int = 0
    selection: str = "memristive"
    memristive_validation_repeats: int = 20
    memristive_validation_every: int = 20

    def __post_init__(self) -> None:
        _read_trainer_table(asdict(self), "training")

    @classmethod
    def from_config(cls, config: Mapping[str, Any], where: str = "training") -> TrainerConfig:
        """Build from a TOML table; missing keys take the defaults, bad values raise."""
        return cls(**_read_trainer_table(config, where))

    def to_config(self) -> dict[str, Any]:
        return asdict(self)


def _read_trainer_table(config: Mapping[str, Any], where: str) -> dict[str, Any]:
    table = require_mapping(config, where)
    fields = TrainerConfig.__dataclass_fields__
    reject_unknown_keys(table, list(fields), where)

    def default(name: str) -> Any:
        return fields[name].default

    def choice(name: str, choices: tuple[str, ...]) -> str:
        return read_choice(table, name, where, choices, default=default(name))

    def count(name: str) -> int:
        return read_int(table, name, where, default=default(name), minimum=1)

    return {
        "epochs": count("epochs"),
        "batch_size": count("batch_size"),
        "optimizer": read_choice(
            table, "optimizer", where, OPTIMIZERS, default=default("optimizer")
        ),
        "learning_rate": read_float(
            table,
            "learning_rate",
            where,
            default=default("learning_rate"),
            minimum=0.0,
            exclusive_minimum=True,
        ),
        "l1": read_float(table, "l1", where, default=default("l1"), minimum=0.0),
        "seed": read_int(table, "seed", where, default=default("seed"), minimum=0),
        "selection": read_choice(
            table, "selection", where, SELECTIONS, default=default("selection")
        ),
        "memristive_validation_repeats": count("memristive_validation_repeats"),
        "memristive_validation_every": count("memristive_validation_every"),
    }


class TrainingStopped(Exception):
    """`should_stop()` returned True between batches; the network is left mid-training."""


@dataclass
class EpochRecord:
    """What one epoch measured; accuracies in 0..1, power in W per example."""

    epoch: int
    train_loss: float
    train_accuracy: float
    validation_accuracy: float
    memristive_validation: float | None
    power: float
    seconds: float


@dataclass
class TrainingResult:
    """History of a run and which epoch's parameters the network holds at the end."""

    history: list[EpochRecord] = field(default_factory=list)
    best_epoch: int = 0
    best_score: float = float("-inf")
    selection: str = "memristive"
    wall_time: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "history": [asdict(r) for r in self.history],
            "best_epoch": self.best_epoch,
            "best_score": self.best_score,
            "selection": self.selection,
            "wall_time": self.wall_time,
        }


def make_optimizer(network: nn.Module, config: TrainerConfig) -> torch.optim.Optimizer:
    if config.optimizer == "sgd":
        return torch.optim.SGD(network.parameters(), lr=config.learning_rate)
    return torch.optim.Adam(network.parameters(), lr=config.learning_rate)


def l1_penalty(network: nn.Module) -> torch.Tensor:
    """Sum of |theta| over every crossbar's device parameters."""
    terms = [p.abs().sum() for core in memristive_cores(network) for p in core.device_parameters()]
    return torch.stack(terms).sum() if terms else torch.zeros(())


def has_device_model(network: nn.Module) -> bool:
    return any(core.device_model is not None for core in memristive_cores(network))


def train(
    network: nn.Module,
    data: DatasetSplits,
    config: TrainerConfig,
    *,
    on_epoch: Callable[[EpochRecord], None] | None = None,
    progress: bool = False,
    should_stop: Callable[[], bool] | None = None,
) -> TrainingResult:
    """Train in place; the network ends with the selected epoch's parameters.

    `should_stop()` is polled before every batch (raises TrainingStopped). Selection
    "memristive" checkpoints on the best memristive-validation median (falls back to
    standard validation when the network has no device model), "standard" on the best single
    validation pass, "last" keeps the final parameters.
    """
    selection = config.selection
    if selection == "memristive" and not has_device_model(network):
        selection = "standard"
    torch.manual_seed(config.seed)
    shuffle = torch.Generator().manual_seed(config.seed)
    optimizer = make_optimizer(network, config)
    inputs, labels = data.train.tensors
    result = TrainingResult(selection=selection)
    best_state: dict[str, Any] | None = None
    started = time.perf_counter()
    epochs = tqdm(range(1, config.epochs + 1), desc="training", unit="epoch", disable=not progress)
    for epoch in epochs:
        epoch_started = time.perf_counter()
        network.train()
        loss_sum, correct, power_sum = 0.0, 0, 0.0
        order = torch.randperm(len(labels), generator=shuffle)
        for start in range(0, len(order), config.batch_size):
            if should_stop is not None and should_stop():
                raise TrainingStopped(f"stopped in epoch {epoch} at example {start}")
            index = order[start : start + config.batch_size]
            x, y = inputs[index], labels[index]
            logits = network(x)
            loss = functional.cross_entropy(logits, y)
            objective = loss + config.l1 * l1_penalty(network) if config.l1 > 0 else loss
            optimizer.zero_grad(set_to_none=True)
            objective.backward()
            optimizer.step()
            for core in memristive_cores(network):
                core.project_parameters()
            loss_sum += loss.item() * len(y)
            correct += int((logits.argmax(dim=1) == y).sum())
            power_sum += network_power(network) * len(y)
        count = len(labels)
        validation = evaluate_once(network, data.validation)
        memristive = None
        due = (
            epoch == 1 or epoch % config.memristive_validation_every == 0 or epoch == config.epochs
        )
        if has_device_model(network) and due:
            repeated = evaluate_repeated(
                network, data.validation, config.memristive_validation_repeats
            )
            memristive = repeated.median_accuracy
        record = EpochRecord(
            epoch=epoch,
            train_loss=loss_sum / count,
            train_accuracy=correct / count,
            validation_accuracy=validation.accuracy,
            memristive_validation=memristive,
            power=power_sum / count,
            seconds=time.perf_counter() - epoch_started,
        )
        result.history.append(record)
        score = _selection_score(selection, record, epoch == config.epochs)
        if score is not None and score > result.best_score:
            result.best_score, result.best_epoch = score, epoch
            best_state = copy.deepcopy(network.state_dict())
        epochs.set_postfix(
            loss=f"{record.train_loss:.3f}",
            val=f"{record.validation_accuracy:.3f}",
            mval="-" if memristive is None else f"{memristive:.3f}",
        )
        if on_epoch is not None:
            on_epoch(record)
    if best_state is not None:
        network.load_state_dict(best_state)
    result.wall_time = time.perf_counter() - started
    return result


def _selection_score(selection: str, record: EpochRecord, last: bool) -> float | None:
    if selection == "standard":
        return record.validation_accuracy
    if selection == "memristive":
        return record.memristive_validation
    return float(record.epoch) if last else None


__all__ = [
    "OPTIMIZERS",
    "EpochRecord",
    "TrainerConfig",
    "TrainingResult",
    "TrainingStopped",
    "l1_penalty",
    "train",
]
