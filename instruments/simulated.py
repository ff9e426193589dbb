"""`SimulatedCrossbar`: the `Crossbar` interface over a `SimulatedChip`, no instruments at all.

Every operation becomes line voltages on the chip, so bias schemes, half-select disturb and sneak
paths come from the chip's physics rather than from special cases here:

- Reading cell (i, j): word line i at v_read, bit line j at 0 V and measured (the current flowing
  out of the array into it); unselected lines at the bias scheme's levels (V/2: v/2 on both;
  V/3: v/3 on word lines, 2 v_read/3 on bit lines; grounded: 0 V; floating: disconnected). Under
  V/2 and V/3 the half-selected cells of column j add their current to the measurement, as on a
  real passive array.
- Reading a row (row-parallel): word line i at v_read, every bit line at 0 V and measured at once;
  the other word lines are grounded, or disconnected under the floating scheme (with every bit line
  selected, 0 V is the only level that leaves the cells of the measured lines unbiased).
- Pulsing: cells of one row with one amplitude A share a drive call (up to `cols` cells): word line
  at A, their bit lines at 0 V, unselected lines at the scheme's levels scaled by A. Half-selected
  cells see A/2 (V/2) or A/3 (V/3); under the grounded scheme every cell of the row sees the full A
  (unselected bit lines sit at 0 V), so program with V/2 or V/3.
- Multiply: every word line driven, every bit line at 0 V and measured.
- I-V sweep: one drive call per point of `iv_step_time` seconds, so points above the switching
  thresholds switch the device, as a real sweep would.

`read_bias_scheme` (optional) makes single-cell reads use their own scheme whatever `bias_scheme`
says, as lab tools do (e.g. V/2 pulses with grounded-unselected reads): with one scheme for both,
V/2 reads add the column's half-selected currents and grounded pulses hit the whole row.

Outputs are "on" from the first operation; `_outputs_off` grounds every line and records it in
`outputs_on` (False) and `outputs_off_calls`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from instruments.chip import SimulatedChip
from instruments.crossbar import BiasScheme, Capabilities, Crossbar
from instruments.limits import SafetyLimits
from simulation.config import (
    ConfigError,
    key_path,
    read_choice,
    read_float,
    read_int,
    reject_unknown_keys,
    require_mapping,
)

TOP_LEVEL_KEYS = (
    "backend",
    "name",
    "description",
    "emulate",
    "bias_scheme",
    "read_bias_scheme",
    "limits",
    "read",
    "chip",
)
READ_KEYS = ("v_read", "averages", "iv_step_time")


class SimulatedCrossbar(Crossbar):
    """A `Crossbar` whose chip is a `SimulatedChip` (exposed as `.chip`).

    averages: reads averaged by `read_row`, `read_all` and `multiply` (read_cells takes its own).
    iv_step_time: how long each I-V sweep point is applied (s).
    """

    def __init__(
        self,
        chip: SimulatedChip,
        limits: SafetyLimits | None = None,
        v_read: float = 0.1,
        averages: int = 1,
        bias_scheme: BiasScheme | str = BiasScheme.GROUNDED,
        iv_step_time: float = 1e-3,
        read_bias_scheme: BiasScheme | str | None = None,
    ) -> None:
        limits = limits if limits is not None else SafetyLimits()
        rows, cols = chip.shape
        capabilities = Capabilities(
            rows=rows,
            cols=cols,
            bias_schemes=tuple(BiasScheme),
            pulse_width_range=(limits.min_pulse_width, limits.max_pulse_width),
            voltage_range=(-limits.max_pulse_voltage, limits.max_pulse_voltage),
            compliance_range=(min(1e-9, limits.compliance_current), limits.compliance_current),
            parallel_read_rows=True,
            parallel_pulse_cells=cols,
            vmm=True,
        )
        parameters = chip.parameters
        identity = {
            "simulated": (
                f"SimulatedChip {rows}x{cols}, device {parameters.device}, seed {parameters.seed}"
            )
        }
        if averages < 1:
            raise ValueError(f"averages: {averages!r} must be >= 1")
        if not (math.isfinite(iv_step_time) and iv_step_time > 0):
            raise ValueError(f"iv_step_time: {iv_step_time!r} s must be > 0")
        self.chip = chip
        self.averages = int(averages)
        self.iv_step_time = float(iv_step_time)
        self.outputs_on = False
        self.outputs_off_calls = 0
        self.read_bias_scheme = None if read_bias_scheme is None else BiasScheme(read_bias_scheme)
        super().__init__(limits, capabilities, identity, v_read, bias_scheme)

    @classmethod
    def from_config(cls, config: Mapping[str, Any], where: str = "") -> SimulatedCrossbar:
        """From an instrument config: [limits], [read] (v_read V, averages, iv_step_time s),
        [chip] (see `instruments.chip.ChipParameters`) and bias_scheme (default "grounded")."""
        table = require_mapping(config, where or "simulated crossbar")
        reject_unknown_keys(table, TOP_LEVEL_KEYS, where)
        limits_where = key_path(where, "limits")
        limits = SafetyLimits.from_config(
            require_mapping(table.get("limits", {}), limits_where), limits_where
        )
        read_where = key_path(where, "read")
        read = require_mapping(table.get("read", {}), read_where)
        reject_unknown_keys(read, READ_KEYS, read_where)
        v_read = read_float(read, "v_read", read_where, default=0.1)
        if v_read == 0 or abs(v_read) > limits.max_read_voltage:
            raise ConfigError(
                f"{key_path(read_where, 'v_read')}: {v_read!r} V is not allowed; allowed: "
                f"0 < |v_read| <= limits.max_read_voltage = {limits.max_read_voltage!r} V"
            )
        averages = read_int(read, "averages", read_where, default=1, minimum=1)
        step = read_float(
            read, "iv_step_time", read_where, default=1e-3, minimum=0.0, exclusive_minimum=True
        )
        schemes = tuple(str(s) for s in BiasScheme)
        scheme = read_choice(table, "bias_scheme", where, schemes, default=str(BiasScheme.GROUNDED))
        chip_where = key_path(where, "chip")
        chip = SimulatedChip.from_config(
            require_mapping(table.get("chip", {}), chip_where), chip_where
        )
        read_scheme = table.get("read_bias_scheme")
        if read_scheme is not None:
            read_scheme = read_choice(table, "read_bias_scheme", where, schemes)
        return cls(chip, limits, v_read, averages, scheme, step, read_scheme)

    def record(self) -> dict[str, Any]:
        record = super().record()
        record["chip"] = self.chip.parameters.to_config()
        record["averages"] = self.averages
        record["read_bias_scheme"] = str(self._read_scheme())
        return record

    # -- line levels ----------------------------------------------------------------------------

    def _read_scheme(self) -> BiasScheme:
        return self.bias_scheme if self.read_bias_scheme is None else self.read_bias_scheme

    def _unselected(
        self, voltage: float | np.ndarray, scheme: BiasScheme | None = None
    ) -> tuple[Any, Any]:
        """Levels (V) of unselected word and bit lines for a selected level `voltage`."""
        voltage = np.asarray(voltage, dtype=float)
        scheme = self.bias_scheme if scheme is None else scheme
        if scheme is BiasScheme.HALF:
            return voltage / 2, voltage / 2
        if scheme is BiasScheme.THIRD:
            return voltage / 3, 2 * voltage / 3
        if scheme is BiasScheme.GROUNDED:
            return np.zeros_like(voltage), np.zeros_like(voltage)
        return np.full_like(voltage, np.nan), np.full_like(voltage, np.nan)

    def _cell_lines(
        self,
        rows: np.ndarray,
        cols: np.ndarray,
        levels: np.ndarray,
        scheme: BiasScheme | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Word (n, rows) and bit (n, cols) voltages selecting cell k at levels[k] volts."""
        n = len(rows)
        word_level, bit_level = self._unselected(levels, scheme)
        words = np.repeat(np.asarray(word_level)[:, None], self.shape[0], axis=1)
        bits = np.repeat(np.asarray(bit_level)[:, None], self.shape[1], axis=1)
        words[np.arange(n), rows] = levels
        bits[np.arange(n), cols] = 0.0
        return words, bits

    def _row_lines(self, rows: np.ndarray, v_read: float) -> tuple[np.ndarray, np.ndarray]:
        """Row-parallel reads: word line rows[k] at v_read, all bit lines at 0 V."""
        other = np.nan if self._read_scheme() is BiasScheme.FLOATING else 0.0
        words = np.full((len(rows), self.shape[0]), other)
        words[np.arange(len(rows)), rows] = v_read
        return words, np.zeros((len(rows), self.shape[1]))

    # -- backend --------------------------------------------------------------------------------

    def _read_cells(self, cells: np.ndarray, v_read: float, averages: int) -> np.ndarray:
        self.outputs_on = True
        if self._read_scheme() == BiasScheme.GROUNDED:
            isolated = self.chip.read_isolated(cells[:, 0], cells[:, 1], v_read, averages)
            if isolated is not None:  # ideal lines: no array solve per cell needed
                self.stats.bus_round_trips += 1
                return -isolated
        levels = np.full(len(cells), v_read)
        words, bits = self._cell_lines(cells[:, 0], cells[:, 1], levels, self._read_scheme())
        _, bit_currents = self.chip.read_batch(words, bits, averages)
        self.stats.bus_round_trips += 1
        return -bit_currents[np.arange(len(cells)), cells[:, 1]]

    def _read_row(self, row: int, v_read: float) -> np.ndarray:
        self.outputs_on = True
        words, bits = self._row_lines(np.array([row]), v_read)
        _, bit_currents = self.chip.read_batch(words, bits, self.averages)
        self.stats.bus_round_trips += 1
        return -bit_currents[0]

    def _read_all(self, v_read: float) -> np.ndarray:
        self.outputs_on = True
        words, bits = self._row_lines(np.arange(self.shape[0]), v_read)
        _, bit_currents = self.chip.read_batch(words, bits, self.averages)
        self.stats.bus_round_trips += 1
        return -bit_currents

    def _pulse(self, cells: np.ndarray, amplitudes: np.ndarray, width: float) -> None:
        self.outputs_on = True
        keys = np.stack([cells[:, 0].astype(float), amplitudes], axis=1)
        groups, first = np.unique(keys, axis=0, return_index=True)
        for index in np.argsort(first):  # in the order the cells were given
            row, amplitude = int(groups[index, 0]), float(groups[index, 1])
            members = (cells[:, 0] == row) & (amplitudes == amplitude)
            word_level, bit_level = self._unselected(amplitude)
            words = np.full(self.shape[0], float(word_level))
            bits = np.full(self.shape[1], float(bit_level))
            words[row] = amplitude
            bits[cells[members, 1]] = 0.0
            self.chip.drive(words, bits, width)
            self.stats.bus_round_trips += 1

    def _multiply(self, voltages: np.ndarray) -> np.ndarray:
        self.outputs_on = True
        bits = np.zeros((voltages.shape[0], self.shape[1]))
        _, bit_currents = self.chip.read_batch(voltages, bits, self.averages)
        self.stats.bus_round_trips += 1
        return -bit_currents

    def _iv_sweep(self, row: int, col: int, voltages: np.ndarray) -> np.ndarray:
        self.outputs_on = True
        rows, cols = np.full(len(voltages), row), np.full(len(voltages), col)
        words, bits = self._cell_lines(rows, cols, voltages)
        currents = np.empty(len(voltages))
        for k in range(len(voltages)):
            _, bit_currents = self.chip.drive(words[k], bits[k], self.iv_step_time)
            currents[k] = -bit_currents[col]
        self.stats.bus_round_trips += 1
        return currents

    def _outputs_off(self) -> None:
        self.outputs_on = False
        self.outputs_off_calls += 1
