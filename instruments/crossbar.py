"""The `Crossbar` interface: how xbarlab touches a chip, real, emulated or simulated.

Conventions: cells are (row, col) = (word line, bit line), 0-indexed; arrays are numpy, SI units
(V, A, S, s). A pulse amplitude's sign is its polarity: positive SETs (raises G), negative RESETs.

Safety is one mechanism: every public method checks its levels against `self.limits` before
calling the backend (`_read_cells`, `_pulse`, ...), so a backend never sees an out-of-limit
request; pulses are charged to the endurance ledger first. Any exception raised by a backend call
turns every output off (`_outputs_off`) before it propagates, and leaving the context manager or
calling `close()` does the same. Backends implement the underscore methods only.
"""

from __future__ import annotations

import abc
import enum
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any, TypeVar

import numpy as np

from instruments.limits import EnduranceLedger, SafetyLimits

T = TypeVar("T")


class BiasScheme(enum.StrEnum):
    """What unselected word and bit lines see while one cell is read or pulsed."""

    HALF = "v/2"  # unselected lines at V/2: half-selected cells see V/2
    THIRD = "v/3"  # unselected word lines at V/3, bit lines at 2V/3: at most V/3 elsewhere
    GROUNDED = "grounded"  # unselected lines at 0 V
    FLOATING = "floating"  # unselected lines disconnected


@dataclass(frozen=True)
class Capabilities:
    """What a backend can do. Ranges are (min, max) in SI units.

    parallel_read_rows: a whole row can be read in one operation (bit lines measured together).
    parallel_pulse_cells: most cells of one row that can be pulsed at once with one amplitude.
    vmm: on-chip vector-matrix multiply (all word lines driven, all bit lines measured).
    """

    rows: int
    cols: int
    bias_schemes: tuple[BiasScheme, ...]
    pulse_width_range: tuple[float, float]
    voltage_range: tuple[float, float]
    compliance_range: tuple[float, float]
    parallel_read_rows: bool = False
    parallel_pulse_cells: int = 1
    vmm: bool = False

    def to_config(self) -> dict[str, Any]:
        config = asdict(self)
        config["bias_schemes"] = [str(s) for s in self.bias_schemes]
        return config


@dataclass
class CrossbarStats:
    """Counters a backend keeps: bus round trips (query-reply exchanges) and operations."""

    bus_round_trips: int = 0
    reads: int = 0
    pulses: int = 0
    extra: dict[str, int] = field(default_factory=dict)


def as_cells(cells: Any, shape: tuple[int, int], what: str = "cells") -> np.ndarray:
    """Validate cells as an int array (n, 2) of (row, col) inside shape; one (row, col) is n = 1."""
    array = np.asarray(cells)
    if array.ndim == 1 and array.shape[0] == 2:
        array = array[None, :]
    if array.ndim != 2 or array.shape[1] != 2:
        raise ValueError(f"{what}: expected (row, col) pairs of shape (n, 2), got {array.shape}")
    integral = np.issubdtype(array.dtype, np.integer)
    if array.size and not integral and not np.all(np.equal(np.mod(array, 1), 0)):
        raise ValueError(f"{what}: row and column indices must be integers")
    array = array.astype(np.int64)
    rows, cols = shape
    bad = (array[:, 0] < 0) | (array[:, 0] >= rows) | (array[:, 1] < 0) | (array[:, 1] >= cols)
    if np.any(bad):
        row, col = array[np.argmax(bad)]
        raise IndexError(f"{what}: cell ({row}, {col}) is outside the {rows}x{cols} crossbar")
    return array


class Crossbar(abc.ABC):
    """A memristor crossbar behind some backend. Use as a context manager.

    Subclasses set `limits`, `capabilities` and `identity` (instrument name -> *IDN? reply, or a
    description for simulated backends) in __init__ and implement the underscore methods.
    """

    limits: SafetyLimits
    capabilities: Capabilities
    identity: dict[str, str]

    def __init__(
        self,
        limits: SafetyLimits,
        capabilities: Capabilities,
        identity: dict[str, str],
        v_read: float = 0.1,
        bias_scheme: BiasScheme | str = BiasScheme.GROUNDED,
    ) -> None:
        self.limits = limits
        self.capabilities = capabilities
        self.identity = identity
        self.stats = CrossbarStats()
        self.ledger = EnduranceLedger(self.shape, limits.max_pulses_per_cell)
        limits.check_read_voltage(v_read, "default v_read")
        self.v_read = v_read
        self._bias_scheme = BiasScheme.GROUNDED
        self.set_bias_scheme(bias_scheme)
        self.closed = False

    # -- description ----------------------------------------------------------------------------

    @property
    def shape(self) -> tuple[int, int]:
        return (self.capabilities.rows, self.capabilities.cols)

    @property
    def bias_scheme(self) -> BiasScheme:
        return self._bias_scheme

    def set_bias_scheme(self, scheme: BiasScheme | str) -> None:
        """Choose what unselected lines see; must be one the backend declares."""
        scheme = BiasScheme(scheme)
        if scheme not in self.capabilities.bias_schemes:
            allowed = ", ".join(str(s) for s in self.capabilities.bias_schemes)
            raise ValueError(
                f"bias scheme {str(scheme)!r} is not supported here; allowed: {allowed}"
            )
        self._bias_scheme = scheme

    def record(self) -> dict[str, Any]:
        """Identity, limits, capabilities and settings, to store beside every result."""
        return {
            "backend": type(self).__name__,
            "identity": dict(self.identity),
            "limits": self.limits.to_config(),
            "capabilities": self.capabilities.to_config(),
            "v_read": self.v_read,
            "bias_scheme": str(self.bias_scheme),
        }

    # -- reads ----------------------------------------------------------------------------------

    def read_cells(
        self, cells: Any, v_read: float | None = None, averages: int = 1
    ) -> tuple[np.ndarray, np.ndarray]:
        """Read cells (n, 2) at v_read (V): (conductances (n,) in S, currents (n,) in A).

        Conductance is I / V at the read voltage; `averages` reads are averaged per cell.
        """
        cells = as_cells(cells, self.shape)
        v = self._read_voltage(v_read)
        if averages < 1:
            raise ValueError(f"averages: {averages!r} must be >= 1")
        currents = self._guarded(lambda: self._read_cells(cells, v, averages))
        self.stats.reads += len(cells) * averages
        currents = np.asarray(currents, dtype=float)
        return currents / v, currents

    def read_cell(self, row: int, col: int, v_read: float | None = None) -> float:
        """Conductance (S) of one cell at v_read (V)."""
        conductances, _ = self.read_cells([(row, col)], v_read)
        return float(conductances[0])

    def read_row(self, row: int, v_read: float | None = None) -> np.ndarray:
        """Conductances (cols,) in S of one word line at v_read (V)."""
        if not 0 <= row < self.shape[0]:
            raise IndexError(f"row {row} is outside the {self.shape[0]} word lines")
        v = self._read_voltage(v_read)
        currents = np.asarray(self._guarded(lambda: self._read_row(row, v)), dtype=float)
        self.stats.reads += self.shape[1]
        return currents / v

    def read_all(
        self, v_read: float | None = None, *, with_currents: bool = False
    ) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
        """Conductance map (rows, cols) in S at v_read (V); with_currents adds the currents (A)."""
        v = self._read_voltage(v_read)
        currents = np.asarray(self._guarded(lambda: self._read_all(v)), dtype=float)
        self.stats.reads += currents.size
        conductances = currents / v
        return (conductances, currents) if with_currents else conductances

    # -- writes ---------------------------------------------------------------------------------

    def pulse(self, cells: Any, amplitude: float | np.ndarray, width: float) -> None:
        """One pulse of `width` (s) on every cell; amplitude (V) scalar or per cell, signed."""
        cells = as_cells(cells, self.shape)
        amplitudes = np.broadcast_to(np.asarray(amplitude, dtype=float), (len(cells),)).copy()
        self.limits.check_pulse(amplitudes, width)
        self.ledger.charge(cells[:, 0], cells[:, 1])
        self._guarded(lambda: self._pulse(cells, amplitudes, width))
        self.stats.pulses += len(cells)

    def pulse_and_read(
        self,
        cells: Any,
        amplitude: float | np.ndarray,
        width: float,
        v_read: float | None = None,
        averages: int = 1,
    ) -> np.ndarray:
        """One write-verify iteration: pulse the cells, then read them back; conductances (n,) S.

        Cells whose amplitude is 0 are only read. Backends that can run this on the instrument in
        one bus round trip override `_pulse_and_read`.
        """
        cells = as_cells(cells, self.shape)
        amplitudes = np.broadcast_to(np.asarray(amplitude, dtype=float), (len(cells),)).copy()
        v = self._read_voltage(v_read)
        pulsed = amplitudes != 0
        self.limits.check_pulse(amplitudes, width)
        self.ledger.charge(cells[pulsed, 0], cells[pulsed, 1])
        currents = self._guarded(
            lambda: self._pulse_and_read(cells, amplitudes, width, v, averages)
        )
        self.stats.pulses += int(pulsed.sum())
        self.stats.reads += len(cells) * averages
        return np.asarray(currents, dtype=float) / v

    # -- analogue operations --------------------------------------------------------------------

    def multiply(self, row_voltages: np.ndarray) -> np.ndarray:
        """On-chip vector-matrix multiply: word-line voltages (batch, rows) in V -> bit-line
        currents (batch, cols) in A, bit lines held at 0 V."""
        if not self.capabilities.vmm:
            raise NotImplementedError(f"{type(self).__name__} cannot do on-chip multiplies")
        voltages = np.asarray(row_voltages, dtype=float)
        if voltages.ndim == 1:
            voltages = voltages[None, :]
        if voltages.ndim != 2 or voltages.shape[1] != self.shape[0]:
            raise ValueError(
                f"row_voltages: expected shape (batch, {self.shape[0]}), got {voltages.shape}"
            )
        self.limits.check_read_voltage(voltages, "multiply")
        return np.asarray(self._guarded(lambda: self._multiply(voltages)), dtype=float)

    def iv_sweep(self, row: int, col: int, voltages: np.ndarray) -> np.ndarray:
        """Currents (n,) in A of one cell at each voltage (n,) in V, in order."""
        cell = as_cells([(row, col)], self.shape)[0]
        voltages = np.asarray(voltages, dtype=float).ravel()
        self.limits.check_sweep_voltage(voltages)
        currents = self._guarded(lambda: self._iv_sweep(int(cell[0]), int(cell[1]), voltages))
        return np.asarray(currents, dtype=float)

    # -- lifetime -------------------------------------------------------------------------------

    def outputs_off(self) -> None:
        """Turn every source output off (or ground it). Safe to call at any time, repeatedly."""
        self._outputs_off()

    def close(self) -> None:
        """Outputs off, then release the instruments. Idempotent."""
        if self.closed:
            return
        try:
            self._outputs_off()
        finally:
            self.closed = True
            self._close()

    def __enter__(self) -> Crossbar:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @contextmanager
    def session(self) -> Iterator[Crossbar]:
        """Like the context manager, for code that got the crossbar from elsewhere."""
        try:
            yield self
        finally:
            self.close()

    # -- helpers --------------------------------------------------------------------------------

    def _read_voltage(self, v_read: float | None) -> float:
        v = self.v_read if v_read is None else float(v_read)
        if v == 0:
            raise ValueError("v_read: a read needs a non-zero voltage")
        self.limits.check_read_voltage(v)
        return v

    def _guarded(self, call: Callable[[], T]) -> T:
        """Run a backend call; on any exception turn outputs off, then re-raise."""
        if self.closed:
            raise RuntimeError(f"{type(self).__name__} is closed")
        try:
            return call()
        except BaseException:
            try:
                self._outputs_off()
            except Exception as off_error:
                import warnings

                warnings.warn(f"turning outputs off failed: {off_error}", RuntimeWarning, 2)
            raise

    # -- backend ----------------------------------------------------------------------------

    @abc.abstractmethod
    def _read_cells(self, cells: np.ndarray, v_read: float, averages: int) -> np.ndarray:
        """Currents (n,) A of cells (n, 2) at v_read, each the mean of `averages` reads."""

    def _read_row(self, row: int, v_read: float) -> np.ndarray:
        """Currents (cols,) A of one word line; default: cell by cell."""
        cols = np.arange(self.shape[1])
        return self._read_cells(np.stack([np.full_like(cols, row), cols], axis=1), v_read, 1)

    def _read_all(self, v_read: float) -> np.ndarray:
        """Currents (rows, cols) A; default: row by row."""
        return np.stack([self._read_row(row, v_read) for row in range(self.shape[0])])

    @abc.abstractmethod
    def _pulse(self, cells: np.ndarray, amplitudes: np.ndarray, width: float) -> None:
        """Pulse cells (n, 2) with amplitudes (n,) V of width s (already checked)."""

    def _pulse_and_read(
        self, cells: np.ndarray, amplitudes: np.ndarray, width: float, v_read: float, averages: int
    ) -> np.ndarray:
        pulsed = amplitudes != 0
        if np.any(pulsed):
            self._pulse(cells[pulsed], amplitudes[pulsed], width)
        return self._read_cells(cells, v_read, averages)

    def _multiply(self, voltages: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    @abc.abstractmethod
    def _iv_sweep(self, row: int, col: int, voltages: np.ndarray) -> np.ndarray:
        """Currents (n,) A of one cell at each voltage."""

    @abc.abstractmethod
    def _outputs_off(self) -> None:
        """Every output off or grounded; must not raise if already off."""

    def _close(self) -> None:  # noqa: B027 - optional for backends
        """Release connections (after _outputs_off)."""
