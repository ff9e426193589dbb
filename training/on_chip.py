"""A network computing on a crossbar chip: every crossbar layer becomes one on-chip multiply.

Inside `OnChip`, each memristive core's `crossbar_forward` is replaced by the chip: its inputs x
(batch, in) become word-line voltages k_V [x, 1] (k_V from the core's device model) on the word
lines of that layer's tiles, every other word line at 0 V and every bit line held at 0 V by the
crossbar's `multiply`; one multiply call per batch per layer. A layer cut into several tiles
drives them one at a time, as separate read configurations of that one call (batch x tiles rows
of voltages): with block-diagonal placement, one tile's word lines cross the other tiles' bit
lines at devices that belong to no tile, so driving them together would add those devices'
currents to the result. The bit-line currents of the layer's tiles are gathered into its
(batch, 2 out) currents, tiles that split its rows summed, and y = (I+ - I-) / (k_V k_G) with the
k_G the chip was programmed with. Everything else in the
network (activations, pooling, flatten, digital layers) runs unchanged in software.

Device power cannot be measured on the chip (sum |V I| over devices needs every device's current,
not the bit-line sums), so the layers report NaN power and `evaluate_on_chip` reports None.
The on-chip forward is not differentiable.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from types import MethodType
from typing import Any

import numpy as np
import torch
import torch.nn.functional as functional
from torch import nn
from torch.utils.data import TensorDataset

from instruments.crossbar import Crossbar
from simulation.mapping import append_bias_input, currents_to_outputs, inputs_to_voltages
from training.deployment import DeploymentError, DeploymentPlan
from training.layers import CrossbarCore, memristive_cores

_MISSING = object()


class OnChip:
    """Context manager: while inside, `network` computes its crossbar layers on `crossbar`.

    plan: where each core's tiles sit (its array_shape must be the crossbar's shape);
    k_gs: per core, the k_G (S per unit weight) its conductances were programmed with
    (None: each core's nominal k_G now). Every core needs a device model (for k_V).
    `multiplies` counts the on-chip multiplies done. The cores' own methods come back on exit,
    also when an error is raised inside.
    """

    def __init__(
        self,
        network: nn.Module,
        crossbar: Crossbar,
        plan: DeploymentPlan,
        k_gs: Sequence[float] | None = None,
    ) -> None:
        self.network = network
        self.crossbar = crossbar
        self.plan = plan
        self.cores = memristive_cores(network)
        shapes = [core.crossbar_shape for core in self.cores]
        if shapes != list(plan.layer_shapes):
            raise DeploymentError(
                f"on chip: the plan's layers {list(plan.layer_shapes)} do not match the "
                f"network's crossbars {shapes}"
            )
        if tuple(crossbar.shape) != plan.array_shape:
            raise DeploymentError(
                f"on chip: the plan is for a {plan.array_shape[0]}x{plan.array_shape[1]} array, "
                f"the crossbar is {crossbar.shape[0]}x{crossbar.shape[1]}"
            )
        if not crossbar.capabilities.vmm:
            raise DeploymentError(
                f"on chip: {type(crossbar).__name__} cannot do on-chip multiplies "
                "(capabilities.vmm is false)"
            )
        for index, core in enumerate(self.cores):
            if core.device_model is None:
                raise RuntimeError(
                    f"on chip: layer {index} has no device model, so no k_V to turn inputs into "
                    "voltages; call set_device_model first"
                )
        self.k_gs = self._read_k_gs(k_gs)
        self.multiplies = 0
        self._saved: list[Any] = []

    def _read_k_gs(self, k_gs: Sequence[float] | None) -> list[float]:
        if k_gs is None:
            with torch.no_grad():
                return [float(core.conductances()[1]) for core in self.cores]
        values = [float(k) for k in k_gs]
        if len(values) != len(self.cores):
            raise ValueError(
                f"k_gs: got {len(values)} value(s); the network has {len(self.cores)} crossbars"
            )
        for index, value in enumerate(values):
            if not (np.isfinite(value) and value > 0):
                raise ValueError(f"k_gs[{index}]: {value!r} S per unit weight; allowed: > 0")
        return values

    def __enter__(self) -> OnChip:
        if self._saved:
            raise RuntimeError("OnChip is already active")
        self._saved = [core.__dict__.get("crossbar_forward", _MISSING) for core in self.cores]
        try:
            for index, core in enumerate(self.cores):
                core.crossbar_forward = MethodType(_chip_method(self, index), core)
        except BaseException:
            self._restore()
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._restore()

    def _restore(self) -> None:
        for core, saved in zip(self.cores, self._saved, strict=False):
            if saved is _MISSING:
                core.__dict__.pop("crossbar_forward", None)
            else:
                core.__dict__["crossbar_forward"] = saved
        self._saved = []

    def layer_forward(self, index: int, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Layer `index` on the chip: inputs (batch, in) -> outputs (batch, out) and NaN power
        (batch,) (not measurable on chip).

        A layer of T tiles is one multiply of T * batch read configurations: configuration
        (t, b) drives only tile t's word lines with example b's voltages. Driving all tiles at
        once would be wrong: tile t's word lines cross tile u's bit lines at devices that belong
        to no tile, and their currents would add to tile u's.
        """
        core = self.cores[index]
        model = core.device_model
        if model is None:
            raise RuntimeError(f"on chip: layer {index} lost its device model")
        voltages = inputs_to_voltages(append_bias_input(x.detach()), model.k_v)
        voltages = voltages.cpu().to(torch.float64).numpy()
        batch = voltages.shape[0]
        tiles = self.plan.tiles_of(index)
        rows, cols = self.plan.array_shape
        word = np.zeros((len(tiles), batch, rows))
        for t, tile in enumerate(tiles):
            word[t][:, slice(*tile.chip_rows)] = voltages[:, slice(*tile.layer_rows)]
        try:
            bits = np.asarray(self.crossbar.multiply(word.reshape(-1, rows)), dtype=np.float64)
        except Exception as error:
            error.add_note(f"on-chip multiply of layer {index} (k_V = {model.k_v!r} V)")
            raise
        self.multiplies += 1
        if bits.shape != (len(tiles) * batch, cols):
            raise RuntimeError(
                f"on chip: multiply returned shape {bits.shape}, expected "
                f"{(len(tiles) * batch, cols)}"
            )
        bits = bits.reshape(len(tiles), batch, cols)
        currents = np.zeros((batch, core.crossbar_shape[1]))
        for t, tile in enumerate(tiles):
            currents[:, slice(*tile.layer_cols)] += bits[t][:, slice(*tile.chip_cols)]
        k_g = torch.tensor(self.k_gs[index], dtype=torch.float64)
        outputs = currents_to_outputs(torch.from_numpy(currents), model.k_v, k_g)
        dtype = x.dtype if x.is_floating_point() else torch.get_default_dtype()
        outputs = outputs.to(device=x.device, dtype=dtype)
        power = torch.full((batch,), float("nan"), dtype=dtype, device=x.device)
        return outputs, power


def _chip_method(chip: OnChip, index: int) -> Any:
    def crossbar_forward(core: CrossbarCore, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return chip.layer_forward(index, x)

    return crossbar_forward


@torch.no_grad()
def chip_forward(
    network: nn.Module,
    crossbar: Crossbar,
    plan: DeploymentPlan,
    k_gs: Sequence[float] | None,
    x: torch.Tensor,
) -> torch.Tensor:
    """One batch through the network with its crossbar layers on the chip: the outputs."""
    with OnChip(network, crossbar, plan, k_gs):
        return network(x)


@dataclass
class OnChipResult:
    """An on-chip evaluation: accuracy (0..1), mean cross-entropy loss, examples, multiplies;
    power is None (device power is not measurable on a chip)."""

    accuracy: float
    loss: float
    examples: int
    multiplies: int
    power: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "accuracy": self.accuracy,
            "loss": self.loss,
            "examples": self.examples,
            "multiplies": self.multiplies,
            "power": self.power,
        }


Data = TensorDataset | tuple[torch.Tensor, torch.Tensor] | Iterable[tuple[torch.Tensor, Any]]


@torch.no_grad()
def evaluate_on_chip(
    network: nn.Module,
    crossbar: Crossbar,
    plan: DeploymentPlan,
    k_gs: Sequence[float] | None,
    data: Data,
    batch_size: int = 100,
) -> OnChipResult:
    """Accuracy of `network` with its crossbar layers on the chip, in eval mode (restored after).

    data: (inputs, labels) tensors or a TensorDataset (cut into batches of `batch_size`), or any
    iterable of (inputs, labels) batches such as a DataLoader.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size: {batch_size!r}; allowed: >= 1")
    was_training = network.training
    network.eval()
    correct, loss_sum, count = 0, 0.0, 0
    try:
        with OnChip(network, crossbar, plan, k_gs) as chip:
            for x, y in _batches(data, batch_size):
                logits = network(x)
                labels = torch.as_tensor(y, device=logits.device)
                correct += int((logits.argmax(dim=1) == labels).sum())
                loss_sum += float(functional.cross_entropy(logits, labels, reduction="sum"))
                count += len(labels)
    finally:
        network.train(was_training)
    total = max(1, count)
    return OnChipResult(correct / total, loss_sum / total, count, chip.multiplies)


def _batches(data: Data, batch_size: int) -> Iterable[tuple[torch.Tensor, Any]]:
    if isinstance(data, TensorDataset):
        data = (data.tensors[0], data.tensors[1])
    if isinstance(data, tuple) and len(data) == 2 and isinstance(data[0], torch.Tensor):
        inputs, labels = data
        if len(inputs) != len(labels):
            raise ValueError(f"data: {len(inputs)} inputs but {len(labels)} labels")
        return [
            (inputs[s : s + batch_size], labels[s : s + batch_size])
            for s in range(0, len(labels), batch_size)
        ]
    return data  # type: ignore[return-value]
