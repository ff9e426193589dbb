"""Accuracy, loss and device power of a network on a dataset, once or over many chips.

Two ways to repeat an evaluation under random nonidealities:

- "resample": every test batch sees newly drawn nonidealities (what the paper did, so one
  repeat averages over many chips);
- "frozen": each repeat is one chip, one realisation fixed over the whole test set, so the
  spread over repeats is the chip-to-chip spread a lab would see.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as functional
from torch import nn
from torch.utils.data import TensorDataset

from simulation.device_model import DeviceModel
from training.layers import memristive_cores, network_power, set_network_device_model

EVALUATION_BATCH_SIZE = 100
"""Examples per evaluation batch (the paper's test batch)."""

CHIP_SEED_STRIDE = 1000
"""Seed distance between repeats, larger than any network's number of layers."""


@dataclass
class PassResult:
    """One pass over a dataset: accuracy (0..1), mean loss, mean device power per example (W)."""

    accuracy: float
    loss: float
    power: float


@dataclass
class EvaluationResult:
    """Repeated passes: one value per repeat (per chip in frozen mode)."""

    sampling: str
    accuracies: list[float] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)
    powers: list[float] = field(default_factory=list)

    @property
    def median_accuracy(self) -> float:
        return statistics.median(self.accuracies)

    @property
    def median_error(self) -> float:
        """Median test error (0..1) over repeats: the paper's headline statistic."""
        return 1.0 - self.median_accuracy

    @property
    def mean_power(self) -> float:
        """Mean device power per example (W) over repeats."""
        return statistics.fmean(self.powers) if self.powers else 0.0

    def add(self, result: PassResult) -> None:
        self.accuracies.append(result.accuracy)
        self.losses.append(result.loss)
        self.powers.append(result.power)

    def to_dict(self) -> dict[str, Any]:
        return {
            "sampling": self.sampling,
            "accuracies": self.accuracies,
            "losses": self.losses,
            "powers": self.powers,
        }


@torch.no_grad()
def evaluate_once(
    network: nn.Module, dataset: TensorDataset, batch_size: int = EVALUATION_BATCH_SIZE
) -> PassResult:
    """One pass in eval mode with the network's layers as they are configured."""
    was_training = network.training
    network.eval()
    inputs, labels = dataset.tensors
    correct, loss_sum, power_sum = 0, 0.0, 0.0
    for start in range(0, len(labels), batch_size):
        x = inputs[start : start + batch_size]
        y = labels[start : start + batch_size]
        logits = network(x)
        correct += int((logits.argmax(dim=1) == y).sum())
        loss_sum += float(functional.cross_entropy(logits, y, reduction="sum"))
        power_sum += network_power(network) * len(y)
    network.train(was_training)
    count = max(1, len(labels))
    return PassResult(correct / count, loss_sum / count, power_sum / count)


def is_stochastic(network: nn.Module) -> bool:
    """True when repeated passes can differ: some crossbar resamples random nonidealities."""
    return any(
        core.device_model is not None
        and core.sampling == "resample"
        and core.device_model.is_random
        for core in memristive_cores(network)
    )


def evaluate_repeated(
    network: nn.Module,
    dataset: TensorDataset,
    repeats: int,
    batch_size: int = EVALUATION_BATCH_SIZE,
) -> EvaluationResult:
    """Repeat passes with the network's own configuration (one pass if nothing is random)."""
    result = EvaluationResult(sampling=_sampling_of(network))
    for _ in range(repeats if is_stochastic(network) else 1):
        result.add(evaluate_once(network, dataset, batch_size))
    return result


def evaluate_on_chips(
    network: nn.Module,
    dataset: TensorDataset,
    device_model: DeviceModel | None,
    *,
    sampling: str,
    repeats: int,
    seed: int = 0,
    batch_size: int = EVALUATION_BATCH_SIZE,
) -> EvaluationResult:
    """Evaluate under `device_model` (None: ideal) `repeats` times, then restore the network.

    In frozen mode repeat r is the chip drawn from seed + r * CHIP_SEED_STRIDE; in resample mode
    repeat r resamples every batch from a generator seeded the same way.
    """
    result = EvaluationResult(sampling=sampling)
    with preserved_device_state(network):
        for repeat in range(repeats):
            chip_seed = seed + repeat * CHIP_SEED_STRIDE
            set_network_device_model(network, device_model, sampling=sampling, seed=chip_seed)
            result.add(evaluate_once(network, dataset, batch_size))
            if device_model is None or not device_model.is_random:
                break
    return result


@contextmanager
def preserved_device_state(network: nn.Module) -> Iterator[None]:
    """Restore every crossbar's device model, sampling mode and chip on exit."""
    saved = [core.get_extra_state() for core in memristive_cores(network)]
    try:
        yield
    finally:
        for core, state in zip(memristive_cores(network), saved, strict=True):
            core.set_extra_state(state)


def _sampling_of(network: nn.Module) -> str:
    modes = {core.sampling for core in memristive_cores(network) if core.device_model is not None}
    return modes.pop() if len(modes) == 1 else ("ideal" if not modes else "mixed")
