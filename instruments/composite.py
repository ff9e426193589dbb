"""`SmuMatrixCrossbar`: a crossbar behind a source-measure unit and a switch matrix.

Wiring (config tables below): every crossbar line (word and bit lines) sits on one matrix column
("slot/column"); the matrix rows carry the instrument terminals, each with a role:

- "drive": the drive SMU channel (sources the read or pulse voltage onto the selected word line);
- "sense": the sense SMU channel held at 0 V on the selected bit line during reads (optional);
- "bias": the bias SMU channel for unselected lines under the V/2 scheme (optional; when the bias
  channel is the sense channel, the sense row serves as the bias row);
- "gnd": ground.

Reads (fixed scheme, sneak-path free): with a sense channel, the selected word line -> drive row
at v_read, the selected bit line -> sense row at 0 V, every other line -> ground row, and the
reading is the current into the sense channel (= G V). Without a sense channel (one-channel SMUs)
the drive channel measures, the bit line is grounded and every other line floats (sneak paths
add to the reading; documented, not hidden). Pulses: the word line -> drive row, the pulsed bit
lines of that word line -> ground row (several cells of one row with one amplitude share one
pulse), the other lines per bias scheme: "grounded" -> ground row (every cell of the selected
word line then sees the full amplitude), "floating" -> open, "v/2" -> bias row at amplitude / 2.
Relays switch only while the sources are at 0 V.

Two ways to run:

- fast path (SMU = Keithley 2600B, matrix on TSP-Link behind it, `[smu] use_script = true`):
  every operation is one call of the driver's TSP script (instruments/drivers/tsp/xbarlab.tsp),
  which switches the matrix through `node[N].channel` itself: bus round trips per operation:
  cell reads (any number up to SCRIPT_CHUNK cells) 1, row read 1, array read 1, one write-verify
  iteration over up to SCRIPT_CHUNK cells (pulse each, read each back) 1, I-V sweep 1. Errors
  come back in the same reply (error count as last value).
- per command (any SMU driver; matrix on its own bus, or on TSP-Link with use_script = false):
  per cell read 1 (*OPC? after the relay change, so the relays have settled) + `averages` (one
  measurement each); per pulse event 2 (*OPC? on the matrix, *OPC? on the SMU after the pulse);
  plus the error queues after each operation (2 on separate buses, 1 on TSP-Link). On separate
  buses with averages = 1: n cell reads 2 n + 2, a row read 2 cols + 2, an array read
  rows (2 cols + 2), one write-verify iteration over n cells of one row 4 n + 4 with n different
  amplitudes (2 n + 6 when they share one amplitude: one pulse).

Exit paths: `_outputs_off` turns every SMU channel to 0 V and off, then opens every relay; if a
connection dropped, it reconnects once to the same resource to do so. `stats.bus_round_trips` is
the sum of the transports' round trips (reconnects included). `last_partial` keeps the cells and
currents an interrupted operation had finished.

Config (TOML), keys and units:

    backend = "smu-matrix"
    bias_scheme = "v/2"            # default for pulses: "v/2" if a bias channel exists, else
                                   # "floating"
    [smu]      driver = "keithley2600" | "keithley2450" | "keysight-b2900"; resource (VISA);
               timeout (s, 5); visa_library ("@py"); drive_channel ("a"); sense_channel ("b" or
               "" for none); bias_channel ("" for none); use_script (true; 2600B on TSP-Link)
    [matrix]   driver = "keithley707b"; link = "bus" | "tsp-link"; resource (bus only);
               timeout (s); node (TSP-Link node, 2); slots (6; more only when emulated);
               settle (s, extra channel.setdelay, 0); rows = {A = "drive", B = "sense", C = "gnd"}
    [channel_map] word_lines = ["1/01", ...], bit_lines = ["4/01", ...]  ("slot/column")
    [limits]   see instruments.limits.SafetyLimits
    [read]     v_read (V, 0.1), nplc (0.001..25, 1), averages (row and array reads, 1)
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from instruments.crossbar import BiasScheme, Capabilities, Crossbar
from instruments.drivers.keithley707b import COLUMNS, ROWS, SLOTS, Keithley707B
from instruments.drivers.smu import SourceMeter
from instruments.drivers.transport import (
    ConnectionLost,
    InstrumentError,
    InstrumentTimeout,
    Transport,
)
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
    "keithley2600": "instruments.drivers.keithley2600:Keithley2600",
    "keithley2450": "instruments.drivers.keithley2450:Keithley2450",
    "keysight-b2900": "instruments.drivers.keysight_b2900:KeysightB2900",
}
"""[smu] driver -> "module:class"; imported only when a config names it."""

MATRIX_DRIVERS = ("keithley707b",)
ROLES = ("drive", "sense", "bias", "gnd")
SCRIPT_CHUNK = 2048
"""Most cells per script call (bounds the command and reply lengths on a real 2600B)."""
MIN_SMU_PULSE = 5e-5
"""Shortest pulse (s) an SMU-timed pulse (level, delay(), level) honestly delivers."""
TOP_KEYS = (
    "backend",
    "emulate",
    "name",
    "description",
    "bias_scheme",
    "smu",
    "matrix",
    "channel_map",
    "limits",
    "read",
    "emulator",
    "chip",
)


@dataclass(frozen=True)
class Wiring:
    """Where everything is: (slot, column) of each line, matrix row of each role, SMU channels."""

    word_lines: tuple[tuple[int, int], ...]
    bit_lines: tuple[tuple[int, int], ...]
    rows: dict[str, str]  # role -> matrix row letter
    drive: str
    sense: str | None
    bias: str | None

    @property
    def bias_row(self) -> str | None:
        if self.bias is None:
            return None
        if "bias" in self.rows:
            return self.rows["bias"]
        return self.rows.get("sense") if self.bias == self.sense else None

    def channel(self, line: tuple[int, int], role_row: str) -> str:
        slot, column = line
        return f"{slot}{role_row}{column:02d}"

    def read_pattern(self, row: int, col: int) -> list[str]:
        """Relays of one sneak-free read (see the module docstring)."""
        drive, gnd = self.rows["drive"], self.rows["gnd"]
        items = []
        if self.sense is not None:
            sense = self.rows["sense"]
            for i, line in enumerate(self.word_lines):
                items.append(self.channel(line, drive if i == row else gnd))
            for j, line in enumerate(self.bit_lines):
                items.append(self.channel(line, sense if j == col else gnd))
        else:
            items.append(self.channel(self.word_lines[row], drive))
            items.append(self.channel(self.bit_lines[col], gnd))
        return items

    def pulse_pattern(self, row: int, cols: Sequence[int], scheme: BiasScheme) -> list[str]:
        """Relays of one pulse event on word line `row`, bit lines `cols`."""
        drive, gnd = self.rows["drive"], self.rows["gnd"]
        other = {BiasScheme.GROUNDED: gnd, BiasScheme.HALF: self.bias_row}.get(scheme)
        selected = set(cols)
        items = []
        for i, line in enumerate(self.word_lines):
            if i == row:
                items.append(self.channel(line, drive))
            elif other:
                items.append(self.channel(line, other))
        for j, line in enumerate(self.bit_lines):
            if j in selected:
                items.append(self.channel(line, gnd))
            elif other:
                items.append(self.channel(line, other))
        return items

    def to_config(self) -> dict[str, Any]:
        return {
            "word_lines": [f"{s}/{c:02d}" for s, c in self.word_lines],
            "bit_lines": [f"{s}/{c:02d}" for s, c in self.bit_lines],
            "rows": {letter: role for role, letter in self.rows.items()},
            "drive_channel": self.drive,
            "sense_channel": self.sense or "",
            "bias_channel": self.bias or "",
        }


def _read_string(config: Mapping[str, Any], key: str, where: str, default: str | None) -> str:
    if key not in config:
        if default is None:
            raise ConfigError(f"{key_path(where, key)}: required text is missing")
        return default
    value = config[key]
    if not isinstance(value, str):
        raise ConfigError(f"{key_path(where, key)}: expected text, got {value!r}")
    return value


def parse_lines(values: Any, where: str, slots: int) -> tuple[tuple[int, int], ...]:
    """["1/01", "1/02"] -> ((1, 1), (1, 2)), each slot and column checked."""
    if isinstance(values, str) or not isinstance(values, Sequence) or not values:
        raise ConfigError(f'{where}: expected a non-empty list of "slot/column" names')
    lines = []
    for index, value in enumerate(values):
        match = re.fullmatch(r"(\d{1,2})/(\d{1,2})", value) if isinstance(value, str) else None
        if not match:
            raise ConfigError(f'{where}[{index}]: {value!r} is not a "slot/column" name')
        slot, column = int(match[1]), int(match[2])
        if not (1 <= slot <= slots and 1 <= column <= COLUMNS):
            raise ConfigError(
                f"{where}[{index}]: {value!r} is outside slots 1..{slots}, columns 1..{COLUMNS}"
            )
        lines.append((slot, column))
    return tuple(lines)


def parse_wiring(config: Mapping[str, Any], where: str) -> tuple[Wiring, dict[str, Any]]:
    """The wiring and the instrument settings of a smu-matrix config (validated)."""
    smu = require_mapping(config.get("smu"), key_path(where, "smu"))
    matrix = require_mapping(config.get("matrix"), key_path(where, "matrix"))
    channel_map = require_mapping(config.get("channel_map"), key_path(where, "channel_map"))
    smu_where, matrix_where = key_path(where, "smu"), key_path(where, "matrix")
    map_where = key_path(where, "channel_map")
    reject_unknown_keys(
        smu,
        (
            "driver",
            "resource",
            "timeout",
            "visa_library",
            "drive_channel",
            "sense_channel",
            "bias_channel",
            "use_script",
        ),
        smu_where,
    )
    reject_unknown_keys(
        matrix,
        (
            "driver",
            "resource",
            "timeout",
            "visa_library",
            "link",
            "node",
            "slots",
            "settle",
            "rows",
            "emulated",
        ),
        matrix_where,
    )
    reject_unknown_keys(channel_map, ("word_lines", "bit_lines"), map_where)
    settings: dict[str, Any] = {
        "smu_driver": read_choice(smu, "driver", smu_where, tuple(SMU_DRIVERS)),
        "smu_resource": _read_string(smu, "resource", smu_where, None),
        "smu_timeout": read_float(
            smu, "timeout", smu_where, default=5.0, minimum=0, exclusive_minimum=True
        ),
        "smu_library": _read_string(smu, "visa_library", smu_where, "@py"),
        "matrix_driver": read_choice(matrix, "driver", matrix_where, MATRIX_DRIVERS),
        "link": read_choice(matrix, "link", matrix_where, ("bus", "tsp-link"), default="bus"),
        "node": read_int(matrix, "node", matrix_where, default=2, minimum=1, maximum=64),
        "matrix_timeout": read_float(
            matrix, "timeout", matrix_where, default=5.0, minimum=0, exclusive_minimum=True
        ),
        "matrix_library": _read_string(matrix, "visa_library", matrix_where, "@py"),
        "settle": read_float(matrix, "settle", matrix_where, default=0.0, minimum=0.0),
        "slots": read_int(matrix, "slots", matrix_where, default=SLOTS, minimum=1, maximum=99),
    }
    use_script = smu.get("use_script", True)
    if not isinstance(use_script, bool):
        raise ConfigError(f"{key_path(smu_where, 'use_script')}: expected true or false")
    settings["use_script"] = use_script
    emulated = config.get("emulate") is True or matrix.get("emulated") is True
    if settings["slots"] > SLOTS and not emulated:
        raise ConfigError(
            f"{key_path(matrix_where, 'slots')}: {settings['slots']} > {SLOTS}: a real 707B has "
            f"{SLOTS} slots (more is an emulator-only extension; chain matrices instead)"
        )
    if settings["link"] == "bus":
        settings["matrix_resource"] = _read_string(matrix, "resource", matrix_where, None)
    elif settings["smu_driver"] != "keithley2600":
        raise ConfigError(
            f'{key_path(matrix_where, "link")}: "tsp-link" needs a TSP master; '
            f'{smu_where}.driver is {settings["smu_driver"]!r}, use "keithley2600" or link = '
            '"bus"'
        )
    channels = {
        role: _read_string(smu, f"{role}_channel", smu_where, default)
        for role, default in (("drive", None), ("sense", ""), ("bias", ""))
    }
    if not channels["drive"]:
        raise ConfigError(f"{smu_where}.drive_channel: must name an SMU channel")
    if channels["bias"] and channels["bias"] == channels["drive"]:
        raise ConfigError(f"{smu_where}.bias_channel: must differ from drive_channel")
    if channels["sense"] and channels["sense"] == channels["drive"]:
        raise ConfigError(f"{smu_where}.sense_channel: must differ from drive_channel")
    rows_table = require_mapping(matrix.get("rows"), key_path(matrix_where, "rows"))
    rows: dict[str, str] = {}
    for letter, role in rows_table.items():
        path = key_path(key_path(matrix_where, "rows"), letter)
        if len(letter) != 1 or letter.upper() not in ROWS:
            raise ConfigError(f"{path}: matrix row must be one of {list(ROWS)}")
        if role not in ROLES:
            raise ConfigError(f"{path}: role {role!r} is not allowed; allowed: {list(ROLES)}")
        if role in rows:
            raise ConfigError(f"{path}: role {role!r} is already on row {rows[role]}")
        rows[role] = letter.upper()
    for role in ("drive", "gnd"):
        if role not in rows:
            raise ConfigError(f"{key_path(matrix_where, 'rows')}: no row has role {role!r}")
    if channels["sense"] and "sense" not in rows:
        raise ConfigError(
            f"{key_path(matrix_where, 'rows')}: sense_channel {channels['sense']!r} needs a "
            '"sense" row'
        )
    wiring = Wiring(
        word_lines=parse_lines(
            channel_map.get("word_lines"), key_path(map_where, "word_lines"), settings["slots"]
        ),
        bit_lines=parse_lines(
            channel_map.get("bit_lines"), key_path(map_where, "bit_lines"), settings["slots"]
        ),
        rows=rows,
        drive=channels["drive"],
        sense=channels["sense"] or None,
        bias=channels["bias"] or None,
    )
    if wiring.bias is not None and wiring.bias_row is None:
        raise ConfigError(
            f'{key_path(matrix_where, "rows")}: bias_channel {wiring.bias!r} needs a "bias" row '
            "(or bias_channel = sense_channel, sharing the sense row)"
        )
    seen: dict[tuple[int, int], str] = {}
    for kind, lines in (("word_lines", wiring.word_lines), ("bit_lines", wiring.bit_lines)):
        for index, line in enumerate(lines):
            name = f"{kind}[{index}]"
            if line in seen:
                raise ConfigError(
                    f'{map_where}: {name} = "{line[0]}/{line[1]:02d}" is already used by '
                    f"{seen[line]}"
                )
            seen[line] = name
    shape = (len(wiring.word_lines), len(wiring.bit_lines))
    for table in ("chip", "emulator"):
        chip = config.get(table)
        if table == "emulator" and isinstance(chip, Mapping):
            chip = chip.get("chip")
        if isinstance(chip, Mapping) and ("rows" in chip or "cols" in chip):
            declared = (chip.get("rows", shape[0]), chip.get("cols", shape[1]))
            if tuple(declared) != shape:
                chip_where = "chip" if table == "chip" else "emulator.chip"
                raise ConfigError(
                    f"{map_where}: {shape[0]} word lines x {shape[1]} bit lines do not match "
                    f"{key_path(where, chip_where)} rows x cols = {declared[0]} x {declared[1]}"
                )
    return wiring, settings


def _load_class(path: str) -> type:
    module_name, class_name = path.split(":")
    return getattr(importlib.import_module(module_name), class_name)


class SmuMatrixCrossbar(Crossbar):
    """A crossbar behind an SMU (drive, sense, bias channels) and a 707B/708B switch matrix."""

    def __init__(
        self,
        smu: SourceMeter,
        matrix: Keithley707B,
        wiring: Wiring,
        limits: SafetyLimits,
        *,
        v_read: float = 0.1,
        nplc: float = 1.0,
        averages: int = 1,
        use_script: bool = False,
        bias_scheme: BiasScheme | str | None = None,
        reconnect: Mapping[str, Callable[[], Transport]] | None = None,
        settle: float = 0.0,
    ) -> None:
        self.smu, self.matrix, self.wiring = smu, matrix, wiring
        self.nplc, self.default_averages = nplc, averages
        self.use_script = use_script
        self.settle = settle
        self._reconnect = dict(reconnect or {})
        self._retired_round_trips = 0
        self._outputs_on = False
        self.last_partial: dict[str, Any] | None = None
        schemes = [BiasScheme.GROUNDED, BiasScheme.FLOATING]
        if wiring.bias_row is not None:
            schemes.insert(0, BiasScheme.HALF)
        shortest = min(max(limits.min_pulse_width, MIN_SMU_PULSE), limits.max_pulse_width)
        capabilities = Capabilities(
            rows=len(wiring.word_lines),
            cols=len(wiring.bit_lines),
            bias_schemes=tuple(schemes),
            pulse_width_range=(shortest, limits.max_pulse_width),
            voltage_range=(-limits.max_pulse_voltage, limits.max_pulse_voltage),
            compliance_range=(1e-9, limits.compliance_current),
            parallel_read_rows=False,
            parallel_pulse_cells=len(wiring.bit_lines),
            vmm=False,
        )
        if bias_scheme is None:
            bias_scheme = schemes[0] if schemes[0] == BiasScheme.HALF else BiasScheme.FLOATING
        identity = {"smu": smu.identity, "matrix": matrix.identity}
        super().__init__(limits, capabilities, identity, v_read=v_read, bias_scheme=bias_scheme)
        self._sync_stats()

    # -- construction ---------------------------------------------------------------------

    @classmethod
    def from_config(cls, config: Mapping[str, Any], where: str) -> SmuMatrixCrossbar:
        """Open, identify and configure both instruments from a smu-matrix config."""
        require_mapping(config, where)
        reject_unknown_keys(config, TOP_KEYS, where)
        wiring, settings = parse_wiring(config, where)
        limits = SafetyLimits.from_config(
            require_mapping(config.get("limits", {}), key_path(where, "limits")),
            key_path(where, "limits"),
        )
        read = require_mapping(config.get("read", {}), key_path(where, "read"))
        read_where = key_path(where, "read")
        reject_unknown_keys(read, ("v_read", "nplc", "averages"), read_where)
        v_read = read_float(read, "v_read", read_where, default=0.1)
        nplc = read_float(read, "nplc", read_where, default=1.0, minimum=0.001, maximum=25.0)
        averages = read_int(read, "averages", read_where, default=1, minimum=1)
        scheme = None
        if "bias_scheme" in config:
            scheme = read_choice(config, "bias_scheme", where, tuple(str(s) for s in BiasScheme))
        from instruments.drivers.transport import VisaTransport

        def opener(name: str, resource: str, timeout: float, library: str):
            return lambda: VisaTransport(name, resource, timeout, visa_library=library)

        reconnect = {
            "smu": opener(
                "smu", settings["smu_resource"], settings["smu_timeout"], settings["smu_library"]
            )
        }
        if settings["link"] == "bus":
            reconnect["matrix"] = opener(
                "matrix",
                settings["matrix_resource"],
                settings["matrix_timeout"],
                settings["matrix_library"],
            )
        transports: list[Transport] = []
        try:
            smu_transport = reconnect["smu"]()
            transports.append(smu_transport)
            smu_class = _load_class(SMU_DRIVERS[settings["smu_driver"]])
            fast = settings["link"] == "tsp-link" and settings["use_script"]
            if settings["smu_driver"] == "keithley2600":
                smu = smu_class(smu_transport, limits, load_script=fast)
            else:
                smu = smu_class(smu_transport, limits)
            for role in ("drive", "sense", "bias"):
                channel = getattr(wiring, role)
                if channel is not None and channel not in smu.channels:
                    raise ConfigError(
                        f"{key_path(where, 'smu')}.{role}_channel: {channel!r} is not a channel "
                        f"of {settings['smu_driver']}; channels: {list(smu.channels)}"
                    )
            smu.connect()
            if settings["link"] == "tsp-link":
                matrix = Keithley707B(smu_transport, node=settings["node"], slots=settings["slots"])
            else:
                matrix_transport = reconnect["matrix"]()
                transports.append(matrix_transport)
                matrix = Keithley707B(matrix_transport, slots=settings["slots"])
            matrix.connect()
            crossbar = cls(
                smu,
                matrix,
                wiring,
                limits,
                v_read=v_read,
                nplc=nplc,
                averages=averages,
                use_script=fast,
                bias_scheme=scheme,
                reconnect=reconnect,
                settle=settings["settle"],
            )
        except BaseException:
            for transport in transports:
                transport.close()
            raise
        try:
            crossbar._guarded(crossbar._setup)
        except BaseException:
            crossbar.close()
            raise
        return crossbar

    def _setup(self) -> None:
        """Outputs off and relays open, channels configured, script told the wiring."""
        self._outputs_off()
        for channel in self._channels():
            self.smu.configure(channel, self.limits.compliance_current, self.nplc)
        if self.settle > 0:
            self.matrix.set_delay(["allslots"], self.settle)
        if self.use_script:
            rows = self.wiring.rows
            self.smu.script_setup(  # type: ignore[attr-defined]
                self.matrix.node or 0,
                self.wiring.word_lines,
                self.wiring.bit_lines,
                (self.wiring.drive, self.wiring.sense or "", self.wiring.bias or ""),
                (rows["drive"], rows.get("sense", ""), rows["gnd"], self.wiring.bias_row or ""),
            )
        self._check_errors()
        self._sync_stats()

    # -- bookkeeping ----------------------------------------------------------------------

    def _channels(self) -> list[str]:
        channels = [self.wiring.drive]
        for channel in (self.wiring.sense, self.wiring.bias):
            if channel is not None and channel not in channels:
                channels.append(channel)
        return channels

    def _transports(self) -> list[Transport]:
        unique: dict[int, Transport] = {}
        for instrument in (self.smu, self.matrix):
            unique[id(instrument.transport)] = instrument.transport
        return list(unique.values())

    def _sync_stats(self) -> None:
        self.stats.bus_round_trips = self._retired_round_trips + sum(
            t.round_trips for t in self._transports()
        )

    def _check_errors(self) -> None:
        self.smu.check_errors("operation")
        self.matrix.check_errors("operation")

    def _outputs_up(self) -> None:
        if self._outputs_on:
            return
        for channel in self._channels():
            self.smu.set_voltage(channel, 0.0)
            self.smu.set_output(channel, True)
        self._outputs_on = True

    def _keep(self, operation: str, cells: np.ndarray, currents: list[float]) -> None:
        self.last_partial = {
            "operation": operation,
            "cells": np.asarray(cells[: len(currents)], dtype=np.int64).reshape(-1, 2),
            "currents": np.asarray(currents, dtype=float),
        }

    def record(self) -> dict[str, Any]:
        record = super().record()
        record.update(
            {
                "channel_map": self.wiring.to_config(),
                "fast_path": self.use_script,
                "nplc": self.nplc,
                "averages": self.default_averages,
                "matrix_node": self.matrix.node,
                "settle": self.settle,
            }
        )
        return record

    # -- reads ----------------------------------------------------------------------------

    def _read_cells(self, cells: np.ndarray, v_read: float, averages: int) -> np.ndarray:
        try:
            self._outputs_up()
            currents: list[float] = []
            self._keep("read_cells", cells, currents)
            if self.use_script:
                for start in range(0, len(cells), SCRIPT_CHUNK):
                    chunk = cells[start : start + SCRIPT_CHUNK]
                    currents += self.smu.script_read(  # type: ignore[attr-defined]
                        v_read, averages, chunk[:, 0].tolist(), chunk[:, 1].tolist()
                    )
                    self._keep("read_cells", cells, currents)
            else:
                self._read_bus(cells, v_read, averages, currents, "read_cells")
                self._check_errors()
            return np.asarray(currents, dtype=float)
        finally:
            self._sync_stats()

    def _read_bus(
        self,
        cells: np.ndarray,
        v_read: float,
        averages: int,
        currents: list[float],
        operation: str,
    ) -> None:
        """Per-command reads; appends to currents as each cell finishes."""
        drive, sense = self.wiring.drive, self.wiring.sense
        for row, col in cells.tolist():
            self.smu.set_voltage(drive, 0.0)
            self.matrix.exclusive_close(self.wiring.read_pattern(row, col))
            self.matrix.wait()
            self.smu.set_voltage(drive, v_read)
            total = 0.0
            for _ in range(averages):
                if sense is not None:
                    total -= self.smu.measure_current(sense)
                else:
                    total += self.smu.measure_current(drive)
            currents.append(total / averages)
            self._keep(operation, cells, currents)
        self.smu.set_voltage(drive, 0.0)
        self.matrix.open_all()

    def _read_row(self, row: int, v_read: float) -> np.ndarray:
        if not self.use_script:
            cols = np.arange(self.shape[1])
            cells = np.stack([np.full_like(cols, row), cols], axis=1)
            return self._read_cells(cells, v_read, self.default_averages)
        try:
            self._outputs_up()
            values = self.smu.script_read_row(  # type: ignore[attr-defined]
                v_read, self.default_averages, row, self.shape[1]
            )
            return np.asarray(values, dtype=float)
        finally:
            self._sync_stats()

    def _read_all(self, v_read: float) -> np.ndarray:
        if not self.use_script:
            return super()._read_all(v_read)
        try:
            self._outputs_up()
            rows, cols = self.shape
            values = self.smu.script_read_all(  # type: ignore[attr-defined]
                v_read, self.default_averages, rows * cols
            )
            return np.asarray(values, dtype=float).reshape(rows, cols)
        finally:
            self._sync_stats()

    # -- pulses ---------------------------------------------------------------------------

    @staticmethod
    def events(cells: np.ndarray, amplitudes: np.ndarray) -> list[tuple[int, list[int], float]]:
        """Pulse events: cells of one word line with one amplitude share a pulse; in order of
        first appearance."""
        groups: dict[tuple[int, float], list[int]] = {}
        for (row, col), amplitude in zip(cells.tolist(), amplitudes.tolist(), strict=True):
            if amplitude == 0:
                continue
            cols = groups.setdefault((row, amplitude), [])
            if col not in cols:
                cols.append(col)
        return [(row, cols, amplitude) for (row, amplitude), cols in groups.items()]

    def _pulse(self, cells: np.ndarray, amplitudes: np.ndarray, width: float) -> None:
        try:
            self._outputs_up()
            events = self.events(cells, amplitudes)
            if self.use_script:
                for start in range(0, len(events), SCRIPT_CHUNK):
                    self.smu.script_pulse(  # type: ignore[attr-defined]
                        width, str(self.bias_scheme), events[start : start + SCRIPT_CHUNK]
                    )
            else:
                self._pulse_bus(events, width)
                self._check_errors()
        finally:
            self._sync_stats()

    def _pulse_bus(self, events: list[tuple[int, list[int], float]], width: float) -> None:
        drive, bias = self.wiring.drive, self.wiring.bias
        half = self.bias_scheme == BiasScheme.HALF
        for row, cols, amplitude in events:
            self.smu.set_voltage(drive, 0.0)
            self.matrix.exclusive_close(self.wiring.pulse_pattern(row, cols, self.bias_scheme))
            self.matrix.wait()
            if half and bias is not None:
                self.smu.set_voltage(bias, amplitude / 2)
            self.smu.pulse(drive, amplitude, width, 0.0)
            self.smu.transport.query("*OPC?")  # the pulse is over before any relay moves
            if half and bias is not None:
                self.smu.set_voltage(bias, 0.0)
        self.matrix.open_all()

    def _pulse_and_read(
        self, cells: np.ndarray, amplitudes: np.ndarray, width: float, v_read: float, averages: int
    ) -> np.ndarray:
        if not self.use_script:
            return super()._pulse_and_read(cells, amplitudes, width, v_read, averages)
        try:
            self._outputs_up()
            currents: list[float] = []
            self._keep("pulse_and_read", cells, currents)
            for start in range(0, len(cells), SCRIPT_CHUNK):
                chunk = cells[start : start + SCRIPT_CHUNK]
                events = self.events(chunk, amplitudes[start : start + SCRIPT_CHUNK])
                currents += self.smu.script_pulse_read(  # type: ignore[attr-defined]
                    width,
                    str(self.bias_scheme),
                    events,
                    v_read,
                    averages,
                    chunk[:, 0].tolist(),
                    chunk[:, 1].tolist(),
                )
                self._keep("pulse_and_read", cells, currents)
            return np.asarray(currents, dtype=float)
        finally:
            self._sync_stats()

    # -- sweeps ---------------------------------------------------------------------------

    def _iv_sweep(self, row: int, col: int, voltages: np.ndarray) -> np.ndarray:
        try:
            self._outputs_up()
            if self.use_script:
                values = self.smu.script_sweep(row, col, voltages.tolist())  # type: ignore[attr-defined]
                return np.asarray(values, dtype=float)
            currents: list[float] = []
            drive, sense = self.wiring.drive, self.wiring.sense
            self.smu.set_voltage(drive, 0.0)
            self.matrix.exclusive_close(self.wiring.read_pattern(row, col))
            self.matrix.wait()
            for volts in voltages.tolist():
                self.smu.set_voltage(drive, volts)
                if sense is not None:
                    currents.append(-self.smu.measure_current(sense))
                else:
                    currents.append(self.smu.measure_current(drive))
            self.smu.set_voltage(drive, 0.0)
            self.matrix.open_all()
            self._check_errors()
            return np.asarray(currents, dtype=float)
        finally:
            self._sync_stats()

    # -- exit paths -----------------------------------------------------------------------

    def _off(self, name: str, instrument: SourceMeter | Keithley707B) -> None:
        """output_off, confirmed by *OPC? (the instrument has handled it). A link that dropped
        (ConnectionLost, or no answer: pyvisa-py reports a closed raw socket as a timeout) is
        reopened once to the same resource and the off commands sent again."""
        try:
            instrument.output_off()
            instrument.transport.query("*OPC?")
        except (ConnectionLost, InstrumentTimeout):
            opener = self._reconnect.get(name)
            if opener is None:
                raise
            old = instrument.transport
            self._retired_round_trips += old.round_trips
            old.close()
            instrument.transport = opener()
            if instrument is self.smu and self.matrix.node is not None:
                self.matrix.transport = instrument.transport
            instrument.output_off()
            instrument.transport.query("*OPC?")

    def _outputs_off(self) -> None:
        """SMU channels to 0 V and off first, then every relay open; reconnects a dropped link."""
        failures: list[BaseException] = []
        try:
            for name, instrument in (("smu", self.smu), ("matrix", self.matrix)):
                try:
                    self._off(name, instrument)
                except (InstrumentError, OSError) as error:
                    failures.append(error)
            self._outputs_on = False
        finally:
            self._sync_stats()
        if failures:
            raise failures[0]

    def _close(self) -> None:
        self.matrix.close()
        self.smu.close()
