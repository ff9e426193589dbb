"""Memristive layers: a dense layer or a convolution computed by a simulated crossbar.

A layer holds its trainable parameters in one of two implementations (Joksas et al. 2022, 2.3):

- "standard": signed weights W (in, out) and bias b (out,), mapped to differential pairs by a
  mapping rule ("min" or "avg") with w_max = max |W~| of the layer;
- "double": one non-negative parameter per device, theta (in + 1, 2 out), G = k_G theta + g_off,
  so a regulariser on theta pulls devices toward g_off (less power).

Without a device model the layer is ideal, y = x @ W + b, and computes no power. With one, inputs
become voltages (k_V x, bias row at k_V), conductances pass the model's disturbances and the
current model, and y = (I+ - I-) / (k_V k_G). Random nonidealities are either drawn again on every
forward pass ("resample", what the paper did) or fixed once from a seed ("frozen": one physical
chip). A frozen realisation is part of the state dict, so a checkpoint holds the chip.

Measured-conductance mode (`CrossbarCore.set_measured_conductances`): the layer computes with
conductances read back from a programmed chip instead of its parameters' nominal mapping; the
device model's disturbances are skipped (the measurement already holds them) and only its current
model acts. The measured array is part of the state dict too.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as functional
from torch import nn

from simulation.config import ConfigError
from simulation.device_model import CURRENT_MODEL_KEY, DeviceModel, Realisation
from simulation.mapping import (
    MAPPING_RULES,
    append_bias_input,
    append_bias_row,
    currents_to_outputs,
    deinterleave,
    double_weights_to_conductances,
    inputs_to_voltages,
    standard_weights_to_conductances,
)

WEIGHT_IMPLEMENTATIONS = ("double", "standard")
SAMPLING_MODES = ("resample", "frozen")


class CrossbarCore(nn.Module):
    """Parameters, mapping and device model of one crossbar computing (batch, in) -> (batch, out).

    `last_power` holds the mean device power per example (W) of the latest nonideal forward pass.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        *,
        weights: str = "double",
        mapping_rule: str = "min",
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        if weights not in WEIGHT_IMPLEMENTATIONS:
            raise ConfigError(
                f"weights: {weights!r} is not allowed; allowed: {list(WEIGHT_IMPLEMENTATIONS)}"
            )
        if mapping_rule not in MAPPING_RULES:
            raise ConfigError(
                f"mapping_rule: {mapping_rule!r} is not allowed; allowed: {list(MAPPING_RULES)}"
            )
        if in_features < 1 or out_features < 1:
            raise ConfigError(
                f"layer size: in_features and out_features must be >= 1, "
                f"got {in_features} and {out_features}"
            )
        self.in_features = in_features
        self.out_features = out_features
        self.weights = weights
        self.mapping_rule = mapping_rule
        scale = 1.0 / math.sqrt(in_features)
        if weights == "standard":
            self.weight = nn.Parameter(torch.randn(in_features, out_features, generator=generator))
            with torch.no_grad():
                self.weight.mul_(scale)
            self.bias = nn.Parameter(torch.zeros(out_features))
        else:
            theta = 0.5 + scale * torch.randn(in_features, 2 * out_features, generator=generator)
            bias = torch.full((1, 2 * out_features), 0.5)
            self.theta = nn.Parameter(torch.cat([theta, bias]).clamp_min(0.0))
        self.device_model: DeviceModel | None = None
        self.sampling = "resample"
        self.chip_seed: int | None = None
        self._realisation: Realisation | None = None
        self._generator: torch.Generator | None = None
        self._measured: torch.Tensor | None = None
        self._measured_k_g: float | None = None
        self._pinned: Realisation = {}
        self.last_power: torch.Tensor | None = None

    # -- shape and parameters -------------------------------------------------------------
    @property
    def crossbar_shape(self) -> tuple[int, int]:
        """(word lines, bit lines) of the array: (in + 1, 2 out)."""
        return self.in_features + 1, 2 * self.out_features

    @property
    def synapses(self) -> int:
        """Weights and biases, (in + 1) * out."""
        return (self.in_features + 1) * self.out_features

    def effective_weights(self) -> torch.Tensor:
        """The weight matrix with the bias as its last row, (in + 1, out), in weight units."""
        if self.weights == "standard":
            return append_bias_row(self.weight, self.bias)
        positive, negative = deinterleave(self.theta)
        return positive - negative

    def conductances(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Nominal target conductances (in + 1, 2 out) in S and k_G (S per unit weight)."""
        model = self._require_model()
        if self.weights == "standard":
            return standard_weights_to_conductances(
                self.effective_weights(), model.g_range, self.mapping_rule
            )
        return double_weights_to_conductances(self.theta, model.g_range)

    def device_parameters(self) -> list[nn.Parameter]:
        """The parameters that set device conductances (what L1 regularisation acts on)."""
        return [self.weight, self.bias] if self.weights == "standard" else [self.theta]

    @torch.no_grad()
    def project_parameters(self) -> None:
        """Keep double-weight parameters non-negative (call after each optimiser step)."""
        if self.weights == "double":
            self.theta.clamp_(min=0.0)

    # -- device model and chip realisation -----------------------------------------------
    def set_device_model(
        self, model: DeviceModel | None, *, sampling: str = "resample", seed: int = 0
    ) -> None:
        """Compute through `model` (None: ideal). "frozen" draws one chip from `seed` now;
        "resample" draws a new chip on every forward pass from a generator seeded with `seed`.
        Clears measured conductances and pinned draws (they belong to the chip computed with
        before)."""
        if sampling not in SAMPLING_MODES:
            raise ConfigError(
                f"sampling: {sampling!r} is not allowed; allowed: {list(SAMPLING_MODES)}"
            )
        self.device_model = model
        self.sampling = sampling
        self.chip_seed = seed
        self._generator = torch.Generator().manual_seed(seed)
        self._realisation = None
        self._measured = None
        self._measured_k_g = None
        self._pinned = {}
        if model is not None and sampling == "frozen":
            self._realisation = model.draw(self.crossbar_shape, self._generator)

    @property
    def realisation(self) -> Realisation | None:
        """The frozen chip's random variables, or None when resampling or ideal."""
        return self._realisation

    def set_realisation(self, realisation: Realisation) -> None:
        """Freeze the layer to a given chip (e.g. one with measured stuck devices)."""
        self._require_model()
        self.sampling = "frozen"
        self._realisation = {
            part: {name: value.clone() for name, value in draws.items()}
            for part, draws in realisation.items()
        }

    def pin_draws(self, pinned: Realisation | None) -> None:
        """Fix some parts of every realisation (e.g. a measured chip's stuck devices under the
        stuck disturbance's key) while the rest is resampled or frozen as configured; None
        clears. Keys must be parts of the device model's realisation."""
        if pinned is None:
            self._pinned = {}
            return
        model = self._require_model()
        allowed = set(model.draw((1, 1)))
        unknown = sorted(set(pinned) - allowed)
        if unknown:
            raise ValueError(
                f"pinned draws {unknown} are not parts of this device model's realisation "
                f"{sorted(allowed)}"
            )
        self._pinned = {
            part: {name: torch.as_tensor(value).clone() for name, value in draws.items()}
            for part, draws in pinned.items()
        }

    @property
    def pinned_draws(self) -> Realisation:
        """The parts of the realisation fixed by `pin_draws` ({} when none)."""
        return self._pinned

    def set_measured_conductances(
        self, conductances: torch.Tensor | None, k_g: float | None = None
    ) -> None:
        """Compute with measured conductances (in + 1, 2 out) in S, e.g. read back from a
        programmed chip, instead of the nominal mapping of the parameters; None clears.

        In this mode the device model's disturbances are skipped and its current model acts on
        the given conductances (with the frozen realisation's draws for it, or fresh ones when
        resampling). `k_g` (S per unit weight, > 0) is the scale the chip was programmed with;
        None uses the nominal mapping's k_G of the current parameters. The conductances are kept
        in float64 and cast to the layer's dtype at each forward pass; no gradient reaches them.
        """
        if conductances is None:
            self._measured = None
            self._measured_k_g = None
            return
        self._require_model()
        measured = torch.as_tensor(conductances).detach().to(device="cpu", dtype=torch.float64)
        if tuple(measured.shape) != self.crossbar_shape:
            raise ValueError(
                f"measured conductances: shape {tuple(measured.shape)} does not match this "
                f"layer's crossbar {self.crossbar_shape} (in + 1, 2 out)"
            )
        if not bool(torch.isfinite(measured).all()) or bool((measured < 0).any()):
            raise ValueError("measured conductances: every value must be finite and >= 0 S")
        if k_g is not None:
            k_g = float(k_g)
            if not (math.isfinite(k_g) and k_g > 0):
                raise ValueError(f"k_g: {k_g!r} S per unit weight is not allowed; allowed: > 0")
        self._measured = measured.clone()
        self._measured_k_g = k_g

    @property
    def measured_conductances(self) -> torch.Tensor | None:
        """The measured conductances (in + 1, 2 out) in S (float64), or None."""
        return self._measured

    @property
    def measured_k_g(self) -> float | None:
        """The k_G (S per unit weight) given with the measured conductances, or None."""
        return self._measured_k_g

    def _require_model(self) -> DeviceModel:
        if self.device_model is None:
            raise RuntimeError("this layer has no device model; call set_device_model first")
        return self.device_model

    # -- computation -----------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(batch, in) -> (batch, out)."""
        if self.device_model is None:
            self.last_power = None
            return append_bias_input(x) @ self.effective_weights()
        outputs, power = self.crossbar_forward(x)
        self.last_power = power.detach().mean()
        return outputs

    def crossbar_forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Outputs (batch, out) and device power per example (batch,) in W."""
        model = self._require_model()
        conductances, k_g = self.conductances()
        voltages = inputs_to_voltages(append_bias_input(x), model.k_v)
        realisation = self._realisation
        if realisation is None:
            realisation = model.draw(self.crossbar_shape, self._generator, conductances.dtype)
        if self._pinned:
            realisation = {**realisation, **self._pinned}
        realisation = _to_like(realisation, conductances)
        if self._measured is not None:
            measured = self._measured.to(conductances)
            if self._measured_k_g is not None:
                k_g = conductances.new_tensor(self._measured_k_g)
            draws = realisation.get(CURRENT_MODEL_KEY, {})
            currents, power = model.array_currents(voltages, measured, draws)
            return currents_to_outputs(currents, model.k_v, k_g), power
        currents, power = model.column_currents(voltages, conductances, realisation)
        return currents_to_outputs(currents, model.k_v, k_g), power

    # -- state that is not a parameter: the device model, sampling mode and chip ----------
    def get_extra_state(self) -> dict[str, Any]:
        return {
            "device_model": None if self.device_model is None else self.device_model.to_config(),
            "sampling": self.sampling,
            "chip_seed": self.chip_seed,
            "realisation": self._realisation,
            "measured_conductances": self._measured,
            "measured_k_g": self._measured_k_g,
            "pinned_draws": self._pinned,
        }

    def set_extra_state(self, state: dict[str, Any]) -> None:
        config = state.get("device_model")
        model = None if config is None else DeviceModel.from_config(config, "checkpoint device")
        self.set_device_model(model, sampling=state["sampling"], seed=state["chip_seed"] or 0)
        if state.get("realisation") is not None:
            self.set_realisation(state["realisation"])
        if state.get("pinned_draws"):
            self.pin_draws(state["pinned_draws"])
        if state.get("measured_conductances") is not None:
            self.set_measured_conductances(
                state["measured_conductances"], state.get("measured_k_g")
            )

    def extra_repr(self) -> str:
        model = "ideal" if self.device_model is None else (self.device_model.name or "custom")
        return (
            f"in={self.in_features}, out={self.out_features}, weights={self.weights}, "
            f"mapping={self.mapping_rule}, device={model}, sampling={self.sampling}"
            + (", measured" if self._measured is not None else "")
        )


def _to_like(realisation: Realisation, like: torch.Tensor) -> Realisation:
    """Move a realisation's floating tensors to `like`'s device and dtype."""
    moved: Realisation = {}
    for part, draws in realisation.items():
        moved[part] = {
            name: value.to(like) if value.is_floating_point() else value.to(like.device)
            for name, value in draws.items()
        }
    return moved


class MemristiveLinear(CrossbarCore):
    """A dense layer on a crossbar: (batch, in_features) -> (batch, out_features)."""


class MemristiveConv2d(nn.Module):
    """A 2-D convolution on a crossbar: every patch (C kh kw values) is one crossbar input.

    The kernel is unfolded into a (C kh kw + 1, 2 out_channels) array; patches of all images pass
    it as one batch. `last_power` is the device power per image (W), summed over its patches.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int],
        *,
        stride: int = 1,
        padding: int = 0,
        weights: str = "double",
        mapping_rule: str = "min",
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        kh, kw = (kernel_size, kernel_size) if isinstance(kernel_size, int) else kernel_size
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = (kh, kw)
        self.stride = stride
        self.padding = padding
        self.core = CrossbarCore(
            in_channels * kh * kw,
            out_channels,
            weights=weights,
            mapping_rule=mapping_rule,
            generator=generator,
        )
        self.last_power: torch.Tensor | None = None

    def set_device_model(
        self, model: DeviceModel | None, *, sampling: str = "resample", seed: int = 0
    ) -> None:
        self.core.set_device_model(model, sampling=sampling, seed=seed)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(batch, C, H, W) -> (batch, out_channels, H', W')."""
        batch, _, height, width = x.shape
        kh, kw = self.kernel_size
        patches = functional.unfold(x, (kh, kw), padding=self.padding, stride=self.stride)
        out_h = (height + 2 * self.padding - kh) // self.stride + 1
        out_w = (width + 2 * self.padding - kw) // self.stride + 1
        rows = patches.transpose(1, 2).reshape(batch * out_h * out_w, -1)
        if self.core.device_model is None:
            outputs = self.core(rows)
            self.last_power = None
        else:
            outputs, power = self.core.crossbar_forward(rows)
            self.last_power = power.detach().reshape(batch, -1).sum(dim=1).mean()
        return outputs.reshape(batch, out_h, out_w, self.out_channels).permute(0, 3, 1, 2)


def memristive_cores(module: nn.Module) -> list[CrossbarCore]:
    """Every crossbar in a network, in module order."""
    return [m for m in module.modules() if isinstance(m, CrossbarCore)]


def memristive_layers(module: nn.Module) -> list[MemristiveLinear | MemristiveConv2d]:
    """Every memristive layer (linear or convolution) in a network, in module order."""
    return [m for m in module.modules() if isinstance(m, MemristiveLinear | MemristiveConv2d)]


def set_network_device_model(
    network: nn.Module, model: DeviceModel | None, *, sampling: str = "resample", seed: int = 0
) -> None:
    """Give every crossbar of a network the same device model; layer k uses seed + k."""
    for index, core in enumerate(memristive_cores(network)):
        core.set_device_model(model, sampling=sampling, seed=seed + index)


def network_power(network: nn.Module) -> float:
    """Sum of the layers' mean device power per example (W) from the latest forward pass."""
    total = 0.0
    for layer in memristive_layers(network):
        if layer.last_power is not None:
            total += float(layer.last_power)
    return total
