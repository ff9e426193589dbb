"""Stuck devices: each device is independently stuck with probability p at a conductance (S).

Draws of every stuck disturbance: "stuck", a bool mask (rows, cols) (a float mask, nonzero =
stuck, is accepted too), and optionally "values", stuck conductances in S (rows, cols). When
"values" is present, `apply` uses it instead of the class's own stuck value, so
`stuck_draws_from_map` can put a measured chip's defects into any stuck disturbance's slot of a
frozen realisation.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from simulation.config import (
    ConfigError,
    key_path,
    read_float,
    read_float_list,
    reject_unknown_keys,
)
from simulation.kde import reflected_kde_sample, scott_bandwidth
from simulation.mapping import ConductanceRange
from simulation.nonidealities.base import Disturbance, Draws


def stuck_draws_from_map(
    mask: torch.Tensor | npt.ArrayLike, values: float | torch.Tensor | npt.ArrayLike
) -> Draws:
    """Draws for a measured chip: `mask` (rows, cols) true where a device is stuck, `values` its
    stuck conductance in S (a scalar or (rows, cols); entries outside the mask are ignored).

    Put the result in a realisation under the stuck disturbance's key (see
    `simulation.device_model.disturbance_key`) to freeze that chip's defects.
    """
    stuck = torch.as_tensor(np.asarray(mask)).to(torch.bool)
    if stuck.dim() != 2:
        raise ValueError(f"stuck map: mask must be (rows, cols), got shape {tuple(stuck.shape)}")
    held = torch.as_tensor(np.asarray(values, dtype=np.float64)).expand(stuck.shape).clone()
    used = held[stuck]
    if not bool(torch.isfinite(used).all()) or bool((used < 0).any()):
        raise ValueError("stuck map: stuck conductances must be finite and >= 0 S")
    return {"stuck": stuck, "values": held}


class StuckDevices(Disturbance):
    """Base of the stuck disturbances; `probability` in [0, 1] per device."""

    def __init__(self, probability: float) -> None:
        self.probability = read_float(
            {"probability": probability},
            "probability",
            type(self).__name__,
            minimum=0.0,
            maximum=1.0,
        )

    @abstractmethod
    def stuck_value(self, g_range: ConductanceRange) -> float:
        """The conductance (S) a stuck device holds when the draws carry no "values"."""

    def draw(
        self,
        shape: tuple[int, int],
        g_range: ConductanceRange,
        generator: torch.Generator | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> Draws:
        # The uniforms are float64 whatever `dtype`, so a seed gives the same mask at any precision.
        uniform = torch.rand(shape, generator=generator, dtype=torch.float64)
        return {"stuck": uniform < self.probability}

    def apply(
        self, conductances: torch.Tensor, draws: Draws, g_range: ConductanceRange
    ) -> torch.Tensor:
        stuck = draws["stuck"].to(device=conductances.device)
        if stuck.dtype != torch.bool:
            stuck = stuck != 0
        if "values" in draws:
            values = draws["values"].to(conductances)
        else:
            values = conductances.new_tensor(self.stuck_value(g_range))
        return torch.where(stuck, values, conductances)

    def to_config(self) -> dict[str, Any]:
        return {"kind": self.kind, "probability": self.probability}


class StuckAtGOff(StuckDevices):
    """Stuck at g_off (S) of the device's conductance range."""

    kind = "stuck_at_g_off"

    def stuck_value(self, g_range: ConductanceRange) -> float:
        return g_range.g_off

    @classmethod
    def from_config(cls, config: Mapping[str, Any], where: str) -> StuckAtGOff:
        reject_unknown_keys(config, ["probability", "kind"], where)
        return cls(read_float(config, "probability", where, minimum=0.0, maximum=1.0))


class StuckAtGOn(StuckDevices):
    """Stuck at g_on (S) of the device's conductance range."""

    kind = "stuck_at_g_on"

    def stuck_value(self, g_range: ConductanceRange) -> float:
        return g_range.g_on

    @classmethod
    def from_config(cls, config: Mapping[str, Any], where: str) -> StuckAtGOn:
        reject_unknown_keys(config, ["probability", "kind"], where)
        return cls(read_float(config, "probability", where, minimum=0.0, maximum=1.0))


class StuckAtValue(StuckDevices):
    """Stuck at a fixed `conductance` >= 0 S."""

    kind = "stuck_at_value"

    def __init__(self, probability: float, conductance: float) -> None:
        super().__init__(probability)
        self.conductance = read_float(
            {"conductance": conductance}, "conductance", type(self).__name__, minimum=0.0
        )

    def stuck_value(self, g_range: ConductanceRange) -> float:
        return self.conductance

    def to_config(self) -> dict[str, Any]:
        return {**super().to_config(), "conductance": self.conductance}

    @classmethod
    def from_config(cls, config: Mapping[str, Any], where: str) -> StuckAtValue:
        reject_unknown_keys(config, ["probability", "conductance", "kind"], where)
        probability = read_float(config, "probability", where, minimum=0.0, maximum=1.0)
        conductance = read_float(config, "conductance", where, minimum=0.0)
        return cls(probability, conductance)


class StuckDistribution(StuckDevices):
    """Stuck at values drawn i.i.d. from a Gaussian KDE, reflected at 0, over measured stuck
    conductances `samples` (S, >= 0, at least 2). `bandwidth` (S, > 0) defaults to Scott's rule.

    Draws: "stuck" (mask) and "values" (a KDE sample for every device, used where stuck).
    """

    kind = "stuck_distribution"

    def __init__(
        self, probability: float, samples: Sequence[float], bandwidth: float | None = None
    ) -> None:
        super().__init__(probability)
        config: dict[str, Any] = {"samples": samples}
        if bandwidth is not None:
            config["bandwidth"] = bandwidth
        self.samples, self.given_bandwidth = _read_kde(config, type(self).__name__)

    @property
    def bandwidth(self) -> float:
        """The kernel width in S: the given one, else Scott's rule over the samples."""
        if self.given_bandwidth is not None:
            return self.given_bandwidth
        return scott_bandwidth(self.samples)

    def stuck_value(self, g_range: ConductanceRange) -> float:
        raise ValueError(f"{self.kind}: stuck values come from draws['values'], none given")

    def draw(
        self,
        shape: tuple[int, int],
        g_range: ConductanceRange,
        generator: torch.Generator | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> Draws:
        draws = super().draw(shape, g_range, generator, dtype)
        draws["values"] = reflected_kde_sample(
            self.samples, self.bandwidth, shape, generator, dtype
        )
        return draws

    def to_config(self) -> dict[str, Any]:
        config = {**super().to_config(), "samples": list(self.samples)}
        if self.given_bandwidth is not None:
            config["bandwidth"] = self.given_bandwidth
        return config

    @classmethod
    def from_config(cls, config: Mapping[str, Any], where: str) -> StuckDistribution:
        reject_unknown_keys(config, ["probability", "samples", "bandwidth", "kind"], where)
        probability = read_float(config, "probability", where, minimum=0.0, maximum=1.0)
        samples, bandwidth = _read_kde(config, where)
        return cls(probability, samples, bandwidth)


def _read_kde(config: Mapping[str, Any], where: str) -> tuple[tuple[float, ...], float | None]:
    """Validated samples (S, >= 0, at least 2) and optional bandwidth (S, > 0)."""
    samples = read_float_list(config, "samples", where, minimum=0.0)
    if len(samples) < 2:
        raise ConfigError(
            f"{key_path(where, 'samples')}: {samples!r} has {len(samples)} value(s); "
            "allowed: at least 2"
        )
    bandwidth = None
    if "bandwidth" in config:
        bandwidth = read_float(config, "bandwidth", where, minimum=0.0, exclusive_minimum=True)
    elif scott_bandwidth(samples) <= 0.0:
        raise ConfigError(
            f"{key_path(where, 'samples')}: {samples!r} are all equal, so Scott's rule gives "
            "bandwidth 0; allowed: samples that differ, or give bandwidth > 0"
        )
    return tuple(samples), bandwidth
