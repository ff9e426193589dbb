"""`SmuMuxCrossbar`: one SMU and the xbarlab mux board (docs/mux-board-protocol.md) as a Crossbar.

The SMU's HI and LO are cabled to the board's HI and LO inputs; the board connects each crossbar
line to HI, LO (ground), one of two DAC-driven bias buses, or nothing. One SMU measures one
current, so cells are read one at a time (no parallel row read); a row's cells that share one
pulse amplitude can be pulsed at once (their bit lines all go to LO), unless `[pulse] parallel_row
= false` (then one cell per pulse, so the SMU compliance limits each cell's current alone).

Reads (`[read] routing`):
- "equipotential" (default): word line i at V (SMU HI), bit line j at 0 V (LO), the other bit
  lines at V (bias bus 1, its DAC at V and the SMU sourcing the DAC's quantised value so both
  match to the µV), the other word lines at 0 V (LO). The other cells of row i see 0 V and carry
  no current, so the SMU current is cell (i, j)'s alone; the remaining cells see -V (a read level,
  below every switching threshold). Exact with ideal switches and no line resistance.
- "bias-scheme": unselected lines as for pulses (the crossbar's bias scheme at V). The SMU then
  also measures the half-selected cells of row i (V/2: V/2 each; grounded: V each; floating:
  sneak paths): reported as measured, for experiments on the schemes themselves.
Pulses and I-V sweeps use the bias scheme: V/2 (both buses' unselected lines at a/2 on bus 1),
V/3 (unselected word lines at a/3 on bus 1, unselected bit lines at 2a/3 on bus 2), grounded
(LO) or floating.

Every operation starts from the board SAFE and the SMU at 0 V, and ends with the SMU output off,
the board SAFE and both error queues checked (a board watchdog trip during the operation fails
it); any exception turns the SMU output off and the board SAFE (the Crossbar base class calls
`_outputs_off`), and if the board link itself is gone its watchdog floats every line.

Bus round trips (Keithley 2450 numbers): one cell read = 2 (`ROUTE`, `:READ?`) plus 1 per
average beyond the first; one pulse group (one cell, or a row's cells sharing an amplitude) = 2
(`ROUTE`, the 2450's `:TRAC:ACT?`) plus 1 per bias DAC whose level changes; each operation adds 3
(`SAFE`, `ERR?`, `:SYST:ERR?`).
"""

from __future__ import annotations

import contextlib
import importlib
import time
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from instruments.crossbar import BiasScheme, Capabilities, Crossbar
from instruments.drivers.mux_board import MuxBoard
from instruments.drivers.smu import SourceMeter
from instruments.drivers.transport import ConnectionLost, VisaTransport
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

SMU_DRIVERS: dict[str, str] = {
    "keithley2450": "instruments.drivers.keithley2450:Keithley2450",
    "keysight-b2900": "instruments.drivers.keysight_b2900:KeysightB2900",
    "keithley2600": "instruments.drivers.keithley2600:Keithley2600",
}
"""[smu] driver name -> "module:class" (imported when used); "module:Class" is accepted too."""

READ_ROUTINGS = ("equipotential", "bias-scheme")
TOP_KEYS = (
    "backend",
    "emulate",
    "description",
    "name",
    "bias_scheme",
    "smu",
    "board",
    "channel_map",
    "limits",
    "read",
    "pulse",
    "chip",  # the emulated twin's chip, read by instruments.emulators.launch
    "emulator",
)
SMU_KEYS = ("driver", "resource", "channel", "timeout", "visa_library", "compliance", "options")
BOARD_KEYS = ("port", "baudrate", "timeout", "watchdog", "boot_delay", "settle")
READ_KEYS = ("v_read", "nplc", "averages", "routing")


def parse_lines(value: Any, where: str) -> list[int]:
    """Board line numbers from a list of distinct integers >= 0 or a table {first, count}."""
    if isinstance(value, Mapping):
        reject_unknown_keys(value, ("first", "count"), where)
        first = read_int(value, "first", where, default=0, minimum=0)
        count = read_int(value, "count", where, minimum=1)
        return list(range(first, first + count))
    if isinstance(value, str | bytes) or not isinstance(value, Sequence) or not value:
        raise ConfigError(
            f"{where}: expected a non-empty list of board line numbers or {{first, count}}, "
            f"got {value!r}"
        )
    lines = []
    for index, item in enumerate(value):
        if isinstance(item, bool) or not isinstance(item, int) or item < 0:
            raise ConfigError(f"{where}[{index}]: {item!r} must be an integer >= 0")
        lines.append(int(item))
    if len(set(lines)) != len(lines):
        raise ConfigError(f"{where}: board lines must be distinct, got {value!r}")
    return lines


@dataclass(frozen=True)
class MuxCrossbarSettings:
    """Everything an smu-mux config says (parsed, validated, no I/O). SI units."""

    resource: str
    port: str
    word_lines: list[int]
    bit_lines: list[int]
    limits: SafetyLimits = field(default_factory=SafetyLimits)
    driver: str = "keithley2450"
    channel: str | None = None
    smu_timeout: float = 5.0
    visa_library: str = "@py"
    compliance: float | None = None
    smu_options: dict[str, Any] = field(default_factory=dict)
    baudrate: int = 115200
    board_timeout: float = 2.0
    watchdog: float = 10.0
    boot_delay: float = 0.0
    settle: float = 0.0
    v_read: float = 0.1
    nplc: float = 1.0
    averages: int = 1
    routing: str = "equipotential"
    bias_scheme: BiasScheme = BiasScheme.HALF
    parallel_row: bool = True
    where: str = "instrument config:"

    @classmethod
    def from_config(cls, config: Mapping[str, Any], where: str) -> MuxCrossbarSettings:
        require_mapping(config, where)
        reject_unknown_keys(config, TOP_KEYS, where)
        limits = SafetyLimits.from_config(
            require_mapping(config.get("limits", {}), key_path(where, "limits")),
            key_path(where, "limits"),
        )
        values: dict[str, Any] = {"limits": limits, "where": where}
        schemes = tuple(str(s) for s in BiasScheme)
        values["bias_scheme"] = BiasScheme(
            read_choice(config, "bias_scheme", where, schemes, default="v/2")
        )

        smu_where = key_path(where, "smu")
        smu = require_mapping(config.get("smu", {}), smu_where)
        reject_unknown_keys(smu, SMU_KEYS, smu_where)
        values["resource"] = _read_str(smu, "resource", smu_where)
        values["driver"] = _read_str(smu, "driver", smu_where, "keithley2450")
        if values["driver"] not in SMU_DRIVERS and ":" not in values["driver"]:
            raise ConfigError(
                f"{key_path(smu_where, 'driver')}: {values['driver']!r} is not a known SMU "
                f"driver; allowed: {sorted(SMU_DRIVERS)} or 'module:Class'"
            )
        if "channel" in smu:
            values["channel"] = str(smu["channel"])
        values["smu_timeout"] = read_float(
            smu, "timeout", smu_where, default=5.0, minimum=0, exclusive_minimum=True
        )
        values["visa_library"] = _read_str(smu, "visa_library", smu_where, "@py")
        if "compliance" in smu:
            compliance = read_float(smu, "compliance", smu_where, minimum=0, exclusive_minimum=True)
            if compliance > limits.compliance_current:
                raise ConfigError(
                    f"{key_path(smu_where, 'compliance')}: {compliance!r} A exceeds "
                    f"limits.compliance_current = {limits.compliance_current!r} A"
                )
            values["compliance"] = compliance
        values["smu_options"] = dict(
            require_mapping(smu.get("options", {}), key_path(smu_where, "options"))
        )

        board_where = key_path(where, "board")
        board = require_mapping(config.get("board", {}), board_where)
        reject_unknown_keys(board, BOARD_KEYS, board_where)
        values["port"] = _read_str(board, "port", board_where)
        values["baudrate"] = read_int(board, "baudrate", board_where, default=115200, minimum=300)
        values["board_timeout"] = read_float(
            board, "timeout", board_where, default=2.0, minimum=0, exclusive_minimum=True
        )
        values["watchdog"] = read_float(
            board, "watchdog", board_where, default=10.0, minimum=0.1, maximum=600.0
        )
        values["boot_delay"] = read_float(board, "boot_delay", board_where, default=0.0, minimum=0)
        values["settle"] = read_float(board, "settle", board_where, default=0.0, minimum=0)

        map_where = key_path(where, "channel_map")
        channel_map = require_mapping(config.get("channel_map", {}), map_where)
        reject_unknown_keys(channel_map, ("word_lines", "bit_lines"), map_where)
        for key in ("word_lines", "bit_lines"):
            if key not in channel_map:
                raise ConfigError(f"{key_path(map_where, key)}: required list of board lines")
            values[key] = parse_lines(channel_map[key], key_path(map_where, key))

        read_where = key_path(where, "read")
        read = require_mapping(config.get("read", {}), read_where)
        reject_unknown_keys(read, READ_KEYS, read_where)
        values["v_read"] = read_float(read, "v_read", read_where, default=0.1)
        values["nplc"] = read_float(
            read, "nplc", read_where, default=1.0, minimum=0, exclusive_minimum=True
        )
        values["averages"] = read_int(read, "averages", read_where, default=1, minimum=1)
        values["routing"] = read_choice(
            read, "routing", read_where, READ_ROUTINGS, default="equipotential"
        )
        try:
            limits.check_read_voltage(values["v_read"], key_path(read_where, "v_read"))
        except ValueError as error:
            raise ConfigError(str(error)) from None
        if values["v_read"] == 0:
            raise ConfigError(f"{key_path(read_where, 'v_read')}: a read needs a non-zero voltage")

        pulse_where = key_path(where, "pulse")
        pulse = require_mapping(config.get("pulse", {}), pulse_where)
        reject_unknown_keys(pulse, ("parallel_row",), pulse_where)
        parallel = pulse.get("parallel_row", True)
        if not isinstance(parallel, bool):
            raise ConfigError(f"{key_path(pulse_where, 'parallel_row')}: expected true or false")
        values["parallel_row"] = parallel
        return cls(**values)


def _read_str(table: Mapping[str, Any], key: str, where: str, default: str | None = None) -> str:
    if key not in table:
        if default is None:
            raise ConfigError(f"{key_path(where, key)}: required text is missing")
        return default
    value = table[key]
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{key_path(where, key)}: expected non-empty text, got {value!r}")
    return value


def smu_class(driver: str, where: str = "smu") -> type[SourceMeter]:
    """The SourceMeter class for a driver name ("keithley2450", ...) or "module:Class"."""
    module_name, _, class_name = SMU_DRIVERS.get(driver, driver).partition(":")
    try:
        cls = getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError, ValueError) as error:
        raise ConfigError(f"{key_path(where, 'driver')}: cannot load {driver!r}: {error}") from None
    if not (isinstance(cls, type) and issubclass(cls, SourceMeter)):
        raise ConfigError(f"{key_path(where, 'driver')}: {driver!r} is not a SourceMeter class")
    return cls


class SmuMuxCrossbar(Crossbar):
    """One SMU channel and the mux board; see the module docstring for routing and costs."""

    def __init__(self, smu: SourceMeter, board: MuxBoard, settings: MuxCrossbarSettings) -> None:
        """Connected instruments (identities already checked) and the parsed settings; checks
        the channel map against the board, configures the SMU, leaves everything off."""
        self.smu, self.board, self.settings = smu, board, settings
        self.channel = settings.channel if settings.channel is not None else smu.channels[0]
        smu.check_channel(self.channel)
        config = board.configuration() if board.config is None else board.config
        for key, lines, size in (
            ("word_lines", settings.word_lines, config.word_lines),
            ("bit_lines", settings.bit_lines, config.bit_lines),
        ):
            if max(lines) >= size:
                path = key_path(key_path(settings.where, "channel_map"), key)
                raise ConfigError(
                    f"{path}: board line {max(lines)} does not exist; the board "
                    f"({board.identity}) has {size} {key.replace('_', ' ')} (0..{size - 1})"
                )
        limits = settings.limits
        self.compliance = (
            settings.compliance if settings.compliance is not None else limits.compliance_current
        )
        self._depth = 0
        self._level: float | None = None
        smu.configure(self.channel, self.compliance, settings.nplc)
        smu_min_width = float(smu.MIN_PULSE_WIDTH)
        low = min(max(limits.min_pulse_width, smu_min_width), limits.max_pulse_width)
        v_max = min(limits.max_pulse_voltage, 1.5 * config.dac_highest, -1.5 * config.dac_min)
        capabilities = Capabilities(
            rows=len(settings.word_lines),
            cols=len(settings.bit_lines),
            bias_schemes=tuple(BiasScheme),
            pulse_width_range=(low, limits.max_pulse_width),
            voltage_range=(-v_max, v_max),
            compliance_range=(min(1e-9, self.compliance), self.compliance),
            parallel_read_rows=False,
            parallel_pulse_cells=len(settings.bit_lines) if settings.parallel_row else 1,
            vmm=False,
        )
        identity = {"smu": smu.identity, "board": board.identity}
        super().__init__(limits, capabilities, identity, settings.v_read, settings.bias_scheme)

    @classmethod
    def from_config(cls, config: Mapping[str, Any], where: str) -> SmuMuxCrossbar:
        """Open and connect the SMU (VISA) and the board (serial) an smu-mux config names."""
        settings = MuxCrossbarSettings.from_config(config, where)
        driver = smu_class(settings.driver, key_path(where, "smu"))
        transport = VisaTransport(
            "smu", settings.resource, settings.smu_timeout, settings.visa_library
        )
        smu: SourceMeter | None = None
        board: MuxBoard | None = None
        try:
            try:
                smu = driver(transport, settings.limits, **settings.smu_options)  # type: ignore[call-arg]
            except TypeError as error:
                options = key_path(key_path(where, "smu"), "options")
                raise ConfigError(f"{options}: {settings.driver} does not take {error}") from None
            smu.connect()
            board = MuxBoard.open(
                settings.port,
                baudrate=settings.baudrate,
                timeout=settings.board_timeout,
                watchdog=settings.watchdog,
                boot_delay=settings.boot_delay,
            )
            return cls(smu, board, settings)
        except BaseException:
            for instrument in (board, smu):
                with contextlib.suppress(Exception):
                    if instrument is not None:
                        instrument.output_off()
            transport.close()
            if board is not None:
                board.close()
            raise

    # -- operation bracket ----------------------------------------------------------------------

    @contextlib.contextmanager
    def _operation(self, what: str) -> Iterator[None]:
        """Outermost call: SMU on at 0 V before, SMU off + board SAFE + error queues after.
        On an exception nothing is done here: Crossbar._guarded calls _outputs_off."""
        outermost = self._depth == 0
        self._depth += 1
        try:
            if outermost:
                self._source(0.0)
                self.smu.set_output(self.channel, True)
            yield
        except BaseException:
            self._depth = 0
            raise
        else:
            self._depth -= 1
            if outermost:
                self._source(0.0)
                self.smu.set_output(self.channel, False)
                self._level = None
                self.board.safe()
                self.board.check_errors(what)
                self.smu.check_errors(what)
        finally:
            self._count_round_trips()

    def _count_round_trips(self) -> None:
        smu, board = self.smu.transport.round_trips, self.board.transport.round_trips
        self.stats.bus_round_trips = smu + board
        self.stats.extra["smu_round_trips"] = smu
        self.stats.extra["board_round_trips"] = board

    def _source(self, volts: float) -> None:
        if self._level != volts:
            self.smu.set_voltage(self.channel, volts)
            self._level = volts

    def _set_dacs(self, levels: dict[int, float]) -> dict[int, float]:
        """Bias DACs to the given levels (V), writing only those that change; actual levels."""
        config = self.board.config
        assert config is not None
        for channel, volts in levels.items():
            if config.quantize(round(volts, 6)) != self.board.dac[channel]:
                self.board.set_dac(channel, volts)
        return {channel: self.board.dac[channel] for channel in levels}

    def _scheme_routing(self, amplitude: float) -> tuple[str, str]:
        """Bias buses for the bias scheme at a selected-cell voltage `amplitude` (V); returns
        (unselected word terminal, unselected bit terminal)."""
        scheme = self.bias_scheme
        if scheme is BiasScheme.HALF:
            self._set_dacs({1: amplitude / 2})
            return "BIAS1", "BIAS1"
        if scheme is BiasScheme.THIRD:
            self._set_dacs({1: amplitude / 3, 2: 2 * amplitude / 3})
            return "BIAS1", "BIAS2"
        if scheme is BiasScheme.GROUNDED:
            return "LO", "LO"
        return "FLOAT", "FLOAT"

    def _route(self, row: int, cols: Sequence[int], terminals: tuple[str, str]) -> None:
        self.board.route(
            self.settings.word_lines[row],
            [self.settings.bit_lines[c] for c in cols],
            terminals[0],
            terminals[1],
        )
        if self.settings.settle > 0:
            time.sleep(self.settings.settle)

    # -- reads ----------------------------------------------------------------------------------

    def _read_one(self, row: int, col: int, v_read: float, averages: int) -> float:
        """Current (A) of one cell at v_read, mean of `averages` readings."""
        if self.settings.routing == "equipotential":
            level = self._set_dacs({1: v_read})[1]
            if abs(level - v_read) > 0.01 * abs(v_read):
                lsb = self.board.config.dac_lsb if self.board.config else float("nan")
                raise ValueError(
                    f"v_read {v_read!r} V is below the bias DAC's resolution ({lsb:.3g} V per "
                    "step) for equipotential reads; use a larger v_read"
                )
            terminals = ("LO", "BIAS1")
        else:
            level, terminals = v_read, self._scheme_routing(v_read)
        self._route(row, [col], terminals)
        self._source(level)
        total = 0.0
        for _ in range(averages):
            total += self.smu.measure_current(self.channel)
        # the cell saw the DAC's quantised level: scale to the requested one (ohmic over < 1 LSB)
        return total / averages * (v_read / level)

    def _read_cells(self, cells: np.ndarray, v_read: float, averages: int) -> np.ndarray:
        with self._operation("read"):
            return np.array(
                [self._read_one(int(r), int(c), v_read, averages) for r, c in cells], dtype=float
            )

    def _read_row(self, row: int, v_read: float) -> np.ndarray:
        with self._operation("read row"):
            averages = self.settings.averages
            return np.array(
                [self._read_one(row, c, v_read, averages) for c in range(self.shape[1])]
            )

    def _read_all(self, v_read: float) -> np.ndarray:
        with self._operation("read all"):
            averages = self.settings.averages
            rows, cols = self.shape
            return np.array(
                [[self._read_one(r, c, v_read, averages) for c in range(cols)] for r in range(rows)]
            )

    # -- pulses ---------------------------------------------------------------------------------

    def pulse_groups(
        self, cells: np.ndarray, amplitudes: np.ndarray
    ) -> list[tuple[int, list[int], float]]:
        """(row, cols, amplitude) pulses for cells (n, 2) with amplitudes (n,), in order.

        With parallel_row, consecutive requests on one row with one amplitude share a pulse; a
        cell asked twice starts a new batch, so each cell's pulses keep their order.
        """
        if not self.settings.parallel_row:
            return [
                (int(r), [int(c)], float(a)) for (r, c), a in zip(cells, amplitudes, strict=True)
            ]
        groups: list[tuple[int, list[int], float]] = []
        batch: dict[tuple[int, float], list[int]] = {}
        seen: set[tuple[int, int]] = set()
        for (r, c), a in zip(cells, amplitudes, strict=True):
            cell = (int(r), int(c))
            if cell in seen:
                groups.extend((row, cols, amp) for (row, amp), cols in batch.items())
                batch, seen = {}, set()
            seen.add(cell)
            batch.setdefault((cell[0], float(a)), []).append(cell[1])
        groups.extend((row, cols, amp) for (row, amp), cols in batch.items())
        return groups

    def _pulse(self, cells: np.ndarray, amplitudes: np.ndarray, width: float) -> None:
        with self._operation("pulse"):
            for row, cols, amplitude in self.pulse_groups(cells, amplitudes):
                self._route(row, cols, self._scheme_routing(amplitude))
                self.smu.pulse(self.channel, amplitude, width, 0.0)

    def _pulse_and_read(
        self, cells: np.ndarray, amplitudes: np.ndarray, width: float, v_read: float, averages: int
    ) -> np.ndarray:
        """Pulse, then read back, in one operation (one SAFE and error check per iteration)."""
        with self._operation("pulse and read"):
            return super()._pulse_and_read(cells, amplitudes, width, v_read, averages)

    # -- I-V ------------------------------------------------------------------------------------

    def _iv_sweep(self, row: int, col: int, voltages: np.ndarray) -> np.ndarray:
        with self._operation("iv sweep"):
            if self.bias_scheme in (BiasScheme.HALF, BiasScheme.THIRD):
                # the bias buses follow every point: one point at a time
                currents = []
                for volts in voltages:
                    self._route(row, [col], self._scheme_routing(float(volts)))
                    self._source(float(volts))
                    currents.append(self.smu.measure_current(self.channel))
                return np.array(currents, dtype=float)
            self._route(row, [col], self._scheme_routing(0.0))
            # keep the board's watchdog fed: chunks of at most half its timeout
            per_point = self.settings.nplc / 50.0 + 2e-3
            chunk = max(1, int(0.5 * self.board.watchdog / per_point))
            currents = []
            for start in range(0, len(voltages), chunk):
                if start:
                    self.board.watchdog_timeout()
                part = [float(v) for v in voltages[start : start + chunk]]
                currents.extend(self.smu.sweep(self.channel, part))
            self._level = None  # drivers restore their own level after a sweep
            return np.array(currents, dtype=float)

    # -- lifetime -------------------------------------------------------------------------------

    def _outputs_off(self) -> None:
        """SMU output off, then board SAFE. Tries both; a link already lost only warns (the
        board's watchdog floats every line; with the board SAFE a lost SMU reaches no line),
        any other failure is raised."""
        self._depth = 0
        self._level = None
        failures: list[BaseException] = []
        for instrument, action in ((self.smu, self.smu.output_off), (self.board, self._board_safe)):
            try:
                action()
            except ConnectionLost as error:
                fallback = (
                    f"its watchdog floats every line within {self.board.watchdog:g} s"
                    if instrument is self.board
                    else "its output may still be on"
                )
                warnings.warn(
                    f"outputs off: {instrument.name} link lost ({error}); {fallback}",
                    RuntimeWarning,
                    2,
                )
            except Exception as error:
                failures.append(error)
        self._count_round_trips()
        if failures:
            raise failures[0]

    def _board_safe(self) -> None:
        """SAFE, then drain the board's queue into board.events: after an abort, errors and a
        watchdog trip it caused are history, not a failure of the next operation."""
        self.board.safe()
        self.board.events.extend(self.board.read_errors())

    def _close(self) -> None:
        self.smu.close()
        self.board.close()
