"""Device current models I(V, G): how much current a device of conductance G passes at V.

Like a disturbance, a current model separates its per-device randomness (`draw`) from the
computation. `device_currents` is the exact elementwise reference, (batch, rows, cols) in A;
`column_currents` returns what a crossbar needs, the bit-line currents (batch, cols) in A and the
device power sum |V * I| over the array per example (batch,) in W, as fast as the model allows.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from typing import Any, ClassVar

import torch

from simulation.config import ConfigError, key_path, reject_unknown_keys, require_mapping
from simulation.nonidealities.base import Draws

CURRENT_MODELS: dict[str, type[CurrentModel]] = {}
"""Config name ("kind") -> class, filled by subclasses as they are defined."""

_ELEMENTWISE_CHUNK = 2**22
"""Largest number of device currents the elementwise path holds at once."""


class CurrentModel(ABC):
    """A (possibly nonlinear, possibly random) I-V model applied to every device of an array."""

    kind: ClassVar[str]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        kind = cls.__dict__.get("kind")
        if kind is not None:
            if kind in CURRENT_MODELS:
                raise TypeError(f"current model kind {kind!r} is defined twice")
            CURRENT_MODELS[kind] = cls

    @property
    def is_linear(self) -> bool:
        """True when I = G V exactly, so an array's currents are one matrix product."""
        return False

    def draw(
        self,
        shape: tuple[int, int],
        generator: torch.Generator | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> Draws:
        """Sample per-device random variables for an array of `shape`; none by default."""
        return {}

    @abstractmethod
    def device_currents(
        self, voltages: torch.Tensor, conductances: torch.Tensor, draws: Draws
    ) -> torch.Tensor:
        """Exact per-device currents (batch, rows, cols) in A for voltages (batch, rows) in V."""

    def column_currents(
        self, voltages: torch.Tensor, conductances: torch.Tensor, draws: Draws
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Bit-line currents (batch, cols) in A and device power (batch,) in W.

        The default sums the exact device currents in chunks of examples so memory stays bounded.
        """
        rows, cols = conductances.shape
        step = max(1, _ELEMENTWISE_CHUNK // max(1, rows * cols))
        currents, powers = [], []
        for start in range(0, voltages.shape[0], step):
            chunk = voltages[start : start + step]
            device = self.device_currents(chunk, conductances, draws)
            currents.append(device.sum(dim=-2))
            powers.append((chunk.unsqueeze(-1) * device).abs().sum(dim=(-2, -1)))
        return torch.cat(currents), torch.cat(powers)

    @abstractmethod
    def to_config(self) -> dict[str, Any]:
        """A TOML-ready table that `current_model_from_config` turns back into an equal object."""

    @classmethod
    @abstractmethod
    def from_config(cls, config: Mapping[str, Any], where: str) -> CurrentModel:
        """Build from a config table (without checking "kind"); errors name `where` and the key."""

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and other.to_config() == self.to_config()

    def __hash__(self) -> int:
        return hash(repr(sorted(self.to_config().items())))

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v!r}" for k, v in self.to_config().items() if k != "kind")
        return f"{type(self).__name__}({fields})"


class Ohmic(CurrentModel):
    """I = G V: the ideal, linear device."""

    kind = "ohmic"

    @property
    def is_linear(self) -> bool:
        return True

    def device_currents(
        self, voltages: torch.Tensor, conductances: torch.Tensor, draws: Draws
    ) -> torch.Tensor:
        return voltages.unsqueeze(-1) * conductances

    def column_currents(
        self, voltages: torch.Tensor, conductances: torch.Tensor, draws: Draws
    ) -> tuple[torch.Tensor, torch.Tensor]:
        currents = voltages @ conductances
        # |V I| summed over a row is V^2 * sum_j G_ij since all G >= 0.
        power = (voltages * voltages) @ conductances.sum(dim=-1)
        return currents, power

    def to_config(self) -> dict[str, Any]:
        return {"kind": self.kind}

    @classmethod
    def from_config(cls, config: Mapping[str, Any], where: str) -> Ohmic:
        reject_unknown_keys(config, ["kind"], where)
        return cls()


def current_model_from_config(config: Mapping[str, Any], where: str) -> CurrentModel:
    """Build any registered current model from its table; `kind` selects the class."""
    table = require_mapping(config, where)
    kind = table.get("kind")
    if kind not in CURRENT_MODELS:
        raise ConfigError(
            f"{key_path(where, 'kind')}: {kind!r} is not a known current model; "
            f"allowed: {sorted(CURRENT_MODELS)}"
        )
    return CURRENT_MODELS[kind].from_config(table, where)
