"""A device model: conductance window, read-voltage scale, disturbances in a declared order and
one current model, composed into the currents of a whole crossbar array.

The order of `disturbances` is the order they act in: each sees the conductances the previous one
left (e.g. programming noise, then stuck devices, which override whatever was programmed).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from simulation.config import (
    ConfigError,
    key_path,
    read_float,
    reject_unknown_keys,
    require_mapping,
)
from simulation.current_models import CurrentModel, Ohmic, current_model_from_config
from simulation.line_resistance import LineResistance
from simulation.mapping import ConductanceRange
from simulation.nonidealities import Disturbance, Draws, disturbance_from_config

Realisation = dict[str, Draws]
"""All random variables of one chip array: one Draws per disturbance and for the current model."""

CURRENT_MODEL_KEY = "current_model"
LINE_RESISTANCE_KEY = "line_resistance"


def disturbance_key(index: int, disturbance: Disturbance) -> str:
    """Name of a disturbance's draws inside a realisation, e.g. "0_stuck_at_g_off"."""
    return f"{index}_{disturbance.kind}"


@dataclass(frozen=True)
class DeviceModel:
    """Everything that turns nominal conductances and word-line voltages into bit-line currents."""

    g_range: ConductanceRange
    k_v: float = 0.5
    disturbances: tuple[Disturbance, ...] = ()
    current_model: CurrentModel = field(default_factory=Ohmic)
    name: str = ""
    line_resistance: LineResistance | None = None
    """Word/bit-line resistance on tiles (None: ideal lines, the currents are V @ G-like)."""

    def __post_init__(self) -> None:
        if not self.k_v > 0:
            raise ConfigError(f"device model: k_v must be > 0 V, got {self.k_v!r}")
        object.__setattr__(self, "disturbances", tuple(self.disturbances))

    @property
    def is_ideal(self) -> bool:
        """No disturbance and a linear current model: the crossbar computes V @ G exactly."""
        return (
            not self.disturbances and self.current_model.is_linear and self.line_resistance is None
        )

    @property
    def is_random(self) -> bool:
        """True when a realisation holds any random variable."""
        return any(bool(draws) for draws in self.draw((1, 1)).values())

    def draw(
        self,
        shape: tuple[int, int],
        generator: torch.Generator | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> Realisation:
        """One chip array of `shape` (rows, cols): every random variable of every part."""
        realisation: Realisation = {}
        for index, disturbance in enumerate(self.disturbances):
            key = disturbance_key(index, disturbance)
            realisation[key] = disturbance.draw(shape, self.g_range, generator, dtype)
        realisation[CURRENT_MODEL_KEY] = self.current_model.draw(shape, generator, dtype)
        return realisation

    def disturb(self, conductances: torch.Tensor, realisation: Realisation) -> torch.Tensor:
        """Nominal conductances (rows, cols) in S -> the conductances the chip really holds."""
        for index, disturbance in enumerate(self.disturbances):
            draws = realisation[disturbance_key(index, disturbance)]
            conductances = disturbance.apply(conductances, draws, self.g_range)
        return conductances

    def column_currents(
        self, voltages: torch.Tensor, conductances: torch.Tensor, realisation: Realisation
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Voltages (batch, rows) in V and nominal conductances (rows, cols) in S -> bit-line
        currents (batch, cols) in A and device power (batch,) in W."""
        disturbed = self.disturb(conductances, realisation)
        draws = realisation.get(CURRENT_MODEL_KEY, {})
        return self.array_currents(voltages, disturbed, draws)

    def array_currents(
        self, voltages: torch.Tensor, conductances: torch.Tensor, draws: Draws
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Bit-line currents (batch, cols) in A and device power (batch,) in W of conductances
        the chip really holds (already disturbed): the current model, through the lines'
        resistance when the model has one."""
        if self.line_resistance is None:
            return self.current_model.column_currents(voltages, conductances, draws)
        return self.line_resistance.column_currents(
            voltages, conductances, self.current_model, draws
        )

    def to_config(self) -> dict[str, Any]:
        """A TOML-ready table; `DeviceModel.from_config` gives back an equal model."""
        config: dict[str, Any] = {}
        if self.name:
            config["name"] = self.name
        config.update(self.g_range.to_config())
        config["k_v"] = self.k_v
        config[CURRENT_MODEL_KEY] = self.current_model.to_config()
        config["nonidealities"] = [d.to_config() for d in self.disturbances]
        if self.line_resistance is not None:
            config[LINE_RESISTANCE_KEY] = self.line_resistance.to_config()
        return config

    @classmethod
    def from_config(cls, config: Mapping[str, Any], where: str = "device") -> DeviceModel:
        table = require_mapping(config, where)
        reject_unknown_keys(
            table,
            [
                "name",
                "description",
                "g_off",
                "g_on",
                "k_v",
                CURRENT_MODEL_KEY,
                "nonidealities",
                LINE_RESISTANCE_KEY,
            ],
            where,
        )
        name = table.get("name", "")
        if not isinstance(name, str):
            raise ConfigError(f"{key_path(where, 'name')}: expected a string, got {name!r}")
        g_range = ConductanceRange.from_config(table, where)
        k_v = read_float(table, "k_v", where, default=0.5, minimum=0.0, exclusive_minimum=True)
        current_table = table.get(CURRENT_MODEL_KEY, {"kind": "ohmic"})
        current = current_model_from_config(current_table, key_path(where, CURRENT_MODEL_KEY))
        listed = table.get("nonidealities", [])
        if isinstance(listed, str | bytes) or not isinstance(listed, Sequence):
            raise ConfigError(
                f"{key_path(where, 'nonidealities')}: expected a list of tables, got {listed!r}"
            )
        nonidealities_where = key_path(where, "nonidealities")
        disturbances = tuple(
            disturbance_from_config(item, key_path(nonidealities_where, index))
            for index, item in enumerate(listed)
        )
        line_resistance = None
        if LINE_RESISTANCE_KEY in table:
            line_where = key_path(where, LINE_RESISTANCE_KEY)
            line_table = require_mapping(table[LINE_RESISTANCE_KEY], line_where)
            line_resistance = LineResistance.from_config(
                {"kind": LineResistance.kind, **line_table}, line_where
            )
        return cls(g_range, k_v, disturbances, current, name, line_resistance)
