"""Safety limits: the one place where every level is checked before it reaches an instrument.

Every `Crossbar` method and every driver checks its request here first; a request outside the
limits raises `LimitError` before a single byte is written. The limits come from the instrument
config (`[limits]` table) and are recorded with every result (`SafetyLimits.to_config`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from simulation.config import ConfigError, read_float, read_int, reject_unknown_keys


class LimitError(ValueError):
    """A requested level (voltage, current, pulse width, pulse count) is outside the limits."""


@dataclass(frozen=True)
class SafetyLimits:
    """Hard limits of a setup, SI units.

    max_read_voltage: largest |V| of a read or an on-chip multiply (V).
    max_sweep_voltage: largest |V| of an I-V sweep point (V).
    max_pulse_voltage: largest |V| of a programming pulse (V).
    compliance_current: current compliance of every sourced level (A).
    min_pulse_width, max_pulse_width: allowed pulse widths (s).
    max_pulses_per_cell: endurance budget, pulses any one cell may receive in a session.
    """

    max_read_voltage: float = 0.5
    max_sweep_voltage: float = 1.5
    max_pulse_voltage: float = 3.0
    compliance_current: float = 1e-3
    min_pulse_width: float = 1e-6
    max_pulse_width: float = 1e-2
    max_pulses_per_cell: int = 100_000

    def __post_init__(self) -> None:
        for name in ("max_read_voltage", "max_sweep_voltage", "max_pulse_voltage"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ConfigError(f"limits.{name}: {value!r} must be a positive number of volts")
        if not (math.isfinite(self.compliance_current) and self.compliance_current > 0):
            raise ConfigError(
                f"limits.compliance_current: {self.compliance_current!r} must be positive (A)"
            )
        if not 0 < self.min_pulse_width <= self.max_pulse_width:
            raise ConfigError(
                f"limits: pulse widths must satisfy 0 < min_pulse_width <= max_pulse_width, got "
                f"{self.min_pulse_width!r} and {self.max_pulse_width!r} (s)"
            )
        if self.max_pulses_per_cell < 1:
            raise ConfigError(
                f"limits.max_pulses_per_cell: {self.max_pulses_per_cell!r} must be >= 1"
            )

    # -- configuration --------------------------------------------------------------------------

    @classmethod
    def from_config(cls, config: Mapping[str, Any], where: str = "limits") -> SafetyLimits:
        """Read a `[limits]` table; missing keys take the defaults above."""
        defaults = cls()
        reject_unknown_keys(config, tuple(asdict(defaults)), where)
        values: dict[str, Any] = {}
        for name, default in asdict(defaults).items():
            if name == "max_pulses_per_cell":
                values[name] = read_int(config, name, where, default=default, minimum=1)
            else:
                values[name] = read_float(
                    config, name, where, default=default, minimum=0.0, exclusive_minimum=True
                )
        try:
            return cls(**values)
        except ConfigError as error:
            raise ConfigError(f"{where}: {error}") from None

    def to_config(self) -> dict[str, Any]:
        return asdict(self)

    # -- checks ---------------------------------------------------------------------------------

    def check_read_voltage(self, voltage: float | np.ndarray, what: str = "read") -> None:
        """Raise unless every |V| <= max_read_voltage and finite."""
        _check_amplitude(voltage, self.max_read_voltage, "max_read_voltage", what)

    def check_sweep_voltage(self, voltage: float | np.ndarray, what: str = "I-V sweep") -> None:
        _check_amplitude(voltage, self.max_sweep_voltage, "max_sweep_voltage", what)

    def check_pulse(self, amplitude: float | np.ndarray, width: float, what: str = "pulse") -> None:
        """Raise unless every |amplitude| <= max_pulse_voltage and the width is allowed."""
        _check_amplitude(amplitude, self.max_pulse_voltage, "max_pulse_voltage", what)
        if not (math.isfinite(width) and self.min_pulse_width <= width <= self.max_pulse_width):
            raise LimitError(
                f"{what}: pulse width {width!r} s is outside the limits "
                f"[{self.min_pulse_width!r}, {self.max_pulse_width!r}] s"
            )

    def check_compliance(self, current: float, what: str = "compliance") -> None:
        """Raise unless 0 < current <= compliance_current (A)."""
        if not (math.isfinite(current) and 0 < current <= self.compliance_current):
            raise LimitError(
                f"{what}: current compliance {current!r} A is outside (0, "
                f"{self.compliance_current!r}] A (limits.compliance_current)"
            )


def _check_amplitude(voltage: float | np.ndarray, limit: float, key: str, what: str) -> None:
    values = np.asarray(voltage, dtype=float)
    if values.size == 0:
        return
    if not np.all(np.isfinite(values)):
        raise LimitError(
            f"{what}: voltages must be finite, got {values[~np.isfinite(values)][0]!r}"
        )
    worst = float(np.max(np.abs(values)))
    if worst > limit:
        raise LimitError(f"{what}: |V| = {worst!r} V exceeds limits.{key} = {limit!r} V")


class EnduranceLedger:
    """Pulses delivered to each cell in this session, against limits.max_pulses_per_cell.

    `charge` checks the whole request first and counts it only if every cell stays in budget,
    so a refused request leaves the ledger (and the chip) untouched.
    """

    def __init__(self, shape: tuple[int, int], budget: int) -> None:
        self.counts = np.zeros(shape, dtype=np.int64)
        self.budget = budget

    def charge(self, rows: np.ndarray, cols: np.ndarray, pulses: int = 1) -> None:
        """Count `pulses` more pulses on each (rows[k], cols[k]); raise if a cell would exceed."""
        after = np.zeros_like(self.counts)
        np.add.at(after, (rows, cols), pulses)
        after += self.counts
        over = np.argwhere(after > self.budget)
        if over.size:
            row, col = (int(v) for v in over[0])
            raise LimitError(
                f"endurance budget: cell ({row}, {col}) would receive pulse {int(after[row, col])}"
                f" > limits.max_pulses_per_cell = {self.budget}"
            )
        self.counts = after
