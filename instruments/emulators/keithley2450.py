"""Wire-level emulator of a Keithley 2450 SourceMeter (native SCPI command set).

It owns one SMU terminal on the bench, "<prefix>.1", sources onto whatever lines the matrix or
mux connected to it, and measures through `Bench.drive` with the aperture NPLC / line frequency.
Behaviour follows the 2450 Reference Manual 2450-901-01 section 6 for the commands below; what it
reports the way the instrument does:
- current limit: the reading is clamped to the limit and `:SOUR:VOLT:ILIM:TRIP?` answers 1;
- a reading beyond a fixed measure range is 9.9E+37;
- errors go to the event log, read by `:SYST:ERR?` as code,"message;severity;time" and
  '0,"No error;0;0 0"' when empty (severity 1 = error);
- a list sweep (`:SOUR:LIST:VOLT`, `:SOUR:SWE:VOLT:LIST`, `:INIT`) clears the buffer, turns the
  output on, steps source -> delay -> measure through the list and leaves the last level on.
Only voltage sourcing with current measurement is emulated (`:SOUR:FUNC CURR` is accepted but a
measurement then fails with -221 Settings conflict).
"""

from __future__ import annotations

import time
from typing import ClassVar

from instruments.emulators.bench import Bench, ChannelState
from instruments.emulators.scpi import (
    ScpiEmulator,
    ScpiError,
    command_pattern,
    format_number,
    parse_bool,
    parse_number,
    parse_number_list,
    parse_string,
    split_parameters,
)
from instruments.emulators.server import command

CURRENT_RANGES = (1e-8, 1e-7, 1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0)
VOLTAGE_RANGES = (0.02, 0.2, 2.0, 20.0, 200.0)
OVERFLOW = 9.9e37
LIST_MAX = 100  # values one :SOUR:LIST:VOLT or :APP command takes
BUFFER_CAPACITY = 100_000
OFF_MODES = {"HIMP": "high_z", "NORM": "zero", "NORMAL": "zero", "ZERO": "zero"}


def _range_for(ranges: tuple[float, ...], value: float) -> float:
    """The range an instrument selects for `value`: the smallest that holds it."""
    for candidate in ranges:
        if abs(value) <= candidate * 1.0000001:
            return candidate
    raise ScpiError(-222, f"range {value!r}")


def _suffix(suffix: str | None) -> None:
    """The 2450 has one source: suffix "" or "1" only."""
    if suffix not in (None, "", "1"):
        raise ScpiError(-113, f"suffix {suffix}")


class Keithley2450Emulator(ScpiEmulator):
    """A 2450 on the bench; channel terminal f"{prefix}.1"; line_frequency in Hz."""

    identity: ClassVar[str] = "KEITHLEY INSTRUMENTS,MODEL 2450,04567890,1.7.12b"

    def __init__(
        self, bench: Bench, name: str = "k2450", prefix: str = "smu", line_frequency: float = 50.0
    ) -> None:
        super().__init__(bench, name)
        self.terminal = f"{prefix}.1"
        self.line_frequency = float(line_frequency)
        self.state: ChannelState = bench.add_channel(self.terminal)
        self.started = time.monotonic()
        self.reset()

    def reset(self) -> None:
        """*RST defaults (section 6 'Default value' columns): voltage source at 0 V, 105 uA
        limit, current measured on auto range at 1 NPLC, output off in NORMal (0 V) mode."""
        self.source_function = "VOLT"
        self.source_range = 0.02
        self.source_range_auto = True
        self.sense_function = "CURR"
        self.nplc = 1.0
        self.current_range = 1e-4
        self.current_range_auto = True
        self.limit_tripped = False
        self.source_list: list[float] = []
        self.sweep: dict[str, object] | None = None
        self.buffers: dict[str, list[tuple[float, float, float]]] = {
            "defbuffer1": [],
            "defbuffer2": [],
        }
        self.last_reading: tuple[float, float, float] | None = None
        state = self.state
        state.level = 0.0
        state.output_on = False
        state.compliance = 1.05e-4
        state.off_mode = "zero"
        state.in_compliance = False

    # -- measurement ----------------------------------------------------------------------------

    @property
    def aperture(self) -> float:
        return self.nplc / self.line_frequency

    def _measure(self, buffer: str = "defbuffer1", settle: float = 0.0) -> tuple[float, float]:
        """Drive the bench for the settle delay and the aperture; store and return
        (current A, source V)."""
        if self.source_function != "VOLT" or self.sense_function != "CURR":
            raise ScpiError(-221, "emulator: voltage source with current measurement only")
        if settle > 0:
            self.bench.drive(settle)
        currents = self.bench.drive(self.aperture)
        current = currents.get(self.terminal, 0.0)
        self.limit_tripped = self.state.in_compliance
        if not self.current_range_auto and abs(current) > 1.05 * self.current_range:
            current = OVERFLOW
        source = self.state.level if self.state.output_on else 0.0
        self._store(buffer, current, source)
        return current, source

    def _store(self, buffer: str, reading: float, source: float) -> None:
        if buffer not in self.buffers:
            raise ScpiError(-224, f"buffer {buffer!r} does not exist")
        entries = self.buffers[buffer]
        if len(entries) >= BUFFER_CAPACITY:
            entries.pop(0)
        entry = (reading, source, time.monotonic() - self.started)
        entries.append(entry)
        self.last_reading = entry

    def _elements(self, entry: tuple[float, float, float], names: list[str]) -> list[str]:
        out = []
        for name in names or ["READ"]:
            key = name.upper()
            if key in ("READ", "READING"):
                out.append(format_number(entry[0]))
            elif key in ("SOUR", "SOURCE"):
                out.append(format_number(entry[1]))
            elif key in ("REL", "RELATIVE"):
                out.append(format_number(entry[2]))
            else:
                raise ScpiError(-224, f"buffer element {name!r}")
        return out

    def _buffer_and_elements(self, params: list[str]) -> tuple[str, list[str]]:
        buffer = parse_string(params[0], "buffer name") if params else "defbuffer1"
        return buffer, params[1:]

    # -- source ---------------------------------------------------------------------------------

    @command(command_pattern(":SOURce#:FUNCtion[:MODE]"))
    def source_function_set(self, suffix: str, params: str | None) -> None:
        _suffix(suffix)
        value = (params or "").strip().upper()
        if value in ("VOLT", "VOLTAGE"):
            self.source_function = "VOLT"
        elif value in ("CURR", "CURRENT"):
            self.source_function = "CURR"
        elif not value:
            raise ScpiError(-109, "source function")
        else:
            raise ScpiError(-224, f"source function {value!r}")

    @command(command_pattern(":SOURce#:FUNCtion[:MODE]?", parameters=False))
    def source_function_query(self, suffix: str) -> str:
        _suffix(suffix)
        return self.source_function

    @command(command_pattern(":SOURce#:VOLTage[:LEVel][:IMMediate][:AMPLitude]"))
    def voltage_set(self, suffix: str, params: str | None) -> None:
        _suffix(suffix)
        value = parse_number(params, "source voltage", -210.0, 210.0)
        if not self.source_range_auto and abs(value) > 1.05 * self.source_range:
            raise ScpiError(-222, f"{value} V beyond the {self.source_range} V source range")
        self.log_source("1", "voltage", value, f":SOUR:VOLT {params}")
        self.state.level = value

    @command(command_pattern(":SOURce#:VOLTage[:LEVel][:IMMediate][:AMPLitude]?"))
    def voltage_query(self, suffix: str, params: str | None) -> str:
        _suffix(suffix)
        return format_number(self.state.level)

    @command(command_pattern(":SOURce#:VOLTage:ILIMit[:LEVel]"))
    def limit_set(self, suffix: str, params: str | None) -> None:
        _suffix(suffix)
        value = parse_number(params, "current limit", 1e-9, 1.05)
        self.log_source("1", "current_limit", value, f":SOUR:VOLT:ILIM {params}")
        self.state.compliance = value

    @command(command_pattern(":SOURce#:VOLTage:ILIMit[:LEVel]?", parameters=False))
    def limit_query(self, suffix: str) -> str:
        _suffix(suffix)
        return format_number(self.state.compliance)

    @command(command_pattern(":SOURce#:VOLTage:ILIMit[:LEVel]:TRIPped?", parameters=False))
    def limit_tripped_query(self, suffix: str) -> str:
        _suffix(suffix)
        return "1" if self.limit_tripped else "0"

    @command(command_pattern(":SOURce#:VOLTage:RANGe"))
    def source_range_set(self, suffix: str, params: str | None) -> None:
        _suffix(suffix)
        value = parse_number(params, "source range", -210.0, 210.0)
        self.source_range = _range_for(VOLTAGE_RANGES, value)
        self.source_range_auto = False

    @command(command_pattern(":SOURce#:VOLTage:RANGe:AUTO"))
    def source_range_auto_set(self, suffix: str, params: str | None) -> None:
        _suffix(suffix)
        self.source_range_auto = parse_bool(params, "source autorange")

    @command(command_pattern(":SOURce#:LIST:VOLTage"))
    def list_set(self, suffix: str, params: str | None) -> None:
        _suffix(suffix)
        values = parse_number_list(params, "source list", -210.0, 210.0)
        if len(values) > LIST_MAX:
            raise ScpiError(-222, f"{len(values)} list values; at most {LIST_MAX} per command")
        for value in values:
            self.log_source("1", "voltage", value, ":SOUR:LIST:VOLT")
        self.source_list = values

    @command(command_pattern(":SOURce#:LIST:VOLTage:APPend"))
    def list_append(self, suffix: str, params: str | None) -> None:
        _suffix(suffix)
        values = parse_number_list(params, "source list", -210.0, 210.0)
        if len(values) > LIST_MAX:
            raise ScpiError(-222, f"{len(values)} list values; at most {LIST_MAX} per command")
        for value in values:
            self.log_source("1", "voltage", value, ":SOUR:LIST:VOLT:APP")
        self.source_list.extend(values)

    @command(command_pattern(":SOURce#:LIST:VOLTage?", parameters=False))
    def list_query(self, suffix: str) -> str:
        _suffix(suffix)
        return ",".join(format_number(v) for v in self.source_list)

    @command(command_pattern(":SOURce#:SWEep:VOLTage:LIST"))
    def sweep_list(self, suffix: str, params: str | None) -> None:
        """<startIndex>[, <delay>[, <count>[, <failAbort>[, "<bufferName>"]]]] (p. 6-85)."""
        _suffix(suffix)
        items = split_parameters(params)
        if not items:
            raise ScpiError(-109, "sweep start index")
        if len(items) > 5:
            raise ScpiError(-108, "sweep list takes at most 5 parameters")
        if not self.source_list:
            raise ScpiError(-221, "no source list defined")
        start = int(parse_number(items[0], "start index", 1, len(self.source_list)))
        delay = parse_number(items[1], "delay", 0.0, 1e4) if len(items) > 1 else 0.0
        if 0 < delay < 50e-6:
            raise ScpiError(-222, f"delay {delay} s; 0 or 50e-6 .. 1e4 s")
        count = int(parse_number(items[2], "count", 1, 268435455)) if len(items) > 2 else 1
        abort = parse_bool(items[3], "failAbort") if len(items) > 3 else True
        buffer = parse_string(items[4], "buffer name") if len(items) > 4 else "defbuffer1"
        if buffer not in self.buffers:
            raise ScpiError(-224, f"buffer {buffer!r} does not exist")
        self.sweep = {
            "start": start,
            "delay": delay,
            "count": count,
            "abort": abort,
            "buffer": buffer,
        }

    # -- sense ----------------------------------------------------------------------------------

    @command(command_pattern(":SENSe#:FUNCtion[:ON]"))
    def sense_function_set(self, suffix: str, params: str | None) -> None:
        _suffix(suffix)
        value = parse_string(params, "sense function").upper()
        if value in ("CURR", "CURRENT", "CURR:DC", "CURRENT:DC"):
            self.sense_function = "CURR"
        elif value in ("VOLT", "VOLTAGE", "VOLT:DC", "VOLTAGE:DC", "RES", "RESISTANCE"):
            self.sense_function = value.split(":")[0][:4]
        else:
            raise ScpiError(-224, f"sense function {value!r}")

    @command(command_pattern(":SENSe#:FUNCtion[:ON]?", parameters=False))
    def sense_function_query(self, suffix: str) -> str:
        _suffix(suffix)
        return f'"{self.sense_function}:DC"'

    @command(command_pattern(":SENSe#:CURRent[:DC]:NPLCycles"))
    def nplc_set(self, suffix: str, params: str | None) -> None:
        _suffix(suffix)
        self.nplc = parse_number(params, "NPLC", 0.01, 10.0)

    @command(command_pattern(":SENSe#:CURRent[:DC]:NPLCycles?", parameters=False))
    def nplc_query(self, suffix: str) -> str:
        _suffix(suffix)
        return format_number(self.nplc)

    @command(command_pattern(":SENSe#:CURRent[:DC]:RANGe[:UPPer]"))
    def current_range_set(self, suffix: str, params: str | None) -> None:
        _suffix(suffix)
        value = parse_number(params, "current range", -1.05, 1.05)
        self.current_range = _range_for(CURRENT_RANGES, value)
        self.current_range_auto = False

    @command(command_pattern(":SENSe#:CURRent[:DC]:RANGe[:UPPer]?", parameters=False))
    def current_range_query(self, suffix: str) -> str:
        _suffix(suffix)
        return format_number(self.current_range)

    @command(command_pattern(":SENSe#:CURRent[:DC]:RANGe:AUTO"))
    def current_range_auto_set(self, suffix: str, params: str | None) -> None:
        _suffix(suffix)
        self.current_range_auto = parse_bool(params, "current autorange")

    # -- output ---------------------------------------------------------------------------------

    @command(command_pattern(":OUTPut#[:STATe]"))
    def output_set(self, suffix: str, params: str | None) -> None:
        _suffix(suffix)
        self.state.output_on = parse_bool(params, "output state")

    @command(command_pattern(":OUTPut#[:STATe]?", parameters=False))
    def output_query(self, suffix: str) -> str:
        _suffix(suffix)
        return "1" if self.state.output_on else "0"

    @command(command_pattern(":OUTPut#:VOLTage:SMODe"))
    def off_mode_set(self, suffix: str, params: str | None) -> None:
        _suffix(suffix)
        value = (params or "").strip().upper()
        if value not in OFF_MODES:
            raise ScpiError(-224, f"output-off state {value!r}; HIMP, NORM or ZERO")
        self.state.off_mode = OFF_MODES[value]

    # -- measure, trigger, buffers --------------------------------------------------------------

    @command(command_pattern(":READ?"))
    def read_query(self, params: str | None) -> str:
        buffer, elements = self._buffer_and_elements(split_parameters(params))
        self._measure(buffer)
        assert self.last_reading is not None
        return ",".join(self._elements(self.last_reading, elements))

    @command(command_pattern(":MEASure:CURRent[:DC]?"))
    def measure_current_query(self, params: str | None) -> str:
        self.sense_function = "CURR"
        return self.read_query(params)

    @command(command_pattern(":FETCh?"))
    def fetch_query(self, params: str | None) -> str:
        buffer, elements = self._buffer_and_elements(split_parameters(params))
        if buffer not in self.buffers:
            raise ScpiError(-224, f"buffer {buffer!r} does not exist")
        if not self.buffers[buffer]:
            raise ScpiError(-230, "buffer is empty")
        return ",".join(self._elements(self.buffers[buffer][-1], elements))

    @command(command_pattern(":INITiate[:IMMediate]", parameters=False))
    def initiate(self) -> None:
        if self.sweep is None:
            self._measure()
            return
        sweep = self.sweep
        buffer = str(sweep["buffer"])
        self.buffers[buffer].clear()
        self.state.output_on = True
        values = self.source_list[int(sweep["start"]) - 1 :]  # type: ignore[call-overload]
        for _ in range(int(sweep["count"])):  # type: ignore[call-overload]
            for value in values:
                self.state.level = value
                self._measure(buffer, settle=float(sweep["delay"]))  # type: ignore[arg-type]
                if sweep["abort"] and self.limit_tripped:
                    return

    @command(command_pattern(":ABORt", parameters=False))
    def abort(self) -> None:
        """Nothing runs in the background here: sweeps complete inside :INIT."""

    @command(command_pattern(":TRACe:DATA?"))
    def trace_data(self, params: str | None) -> str:
        items = split_parameters(params)
        if len(items) < 2:
            raise ScpiError(-109, "start and end index")
        buffer, elements = self._buffer_and_elements(items[2:])
        if buffer not in self.buffers:
            raise ScpiError(-224, f"buffer {buffer!r} does not exist")
        entries = self.buffers[buffer]
        start = int(parse_number(items[0], "start index", 1, max(len(entries), 1)))
        end = int(parse_number(items[1], "end index", start, max(len(entries), 1)))
        if not entries:
            raise ScpiError(-230, "buffer is empty")
        values: list[str] = []
        for entry in entries[start - 1 : end]:
            values.extend(self._elements(entry, elements))
        return ",".join(values)

    @command(command_pattern(":TRACe:ACTual?"))
    def trace_actual(self, params: str | None) -> str:
        buffer, _ = self._buffer_and_elements(split_parameters(params))
        if buffer not in self.buffers:
            raise ScpiError(-224, f"buffer {buffer!r} does not exist")
        return str(len(self.buffers[buffer]))

    @command(command_pattern(":TRACe:CLEar"))
    def trace_clear(self, params: str | None) -> None:
        buffer, _ = self._buffer_and_elements(split_parameters(params))
        if buffer not in self.buffers:
            raise ScpiError(-224, f"buffer {buffer!r} does not exist")
        self.buffers[buffer].clear()

    # -- system ---------------------------------------------------------------------------------

    @command(command_pattern(":SYSTem:ERRor[:NEXT]?", parameters=False))
    def error_query(self) -> str:
        error = self.pop_error()
        if error is None:
            return '0,"No error;0;0 0"'
        code, message = error
        stamp = time.strftime("%Y/%m/%d %H:%M:%S", time.localtime())
        return f'{code},"{message};1;{stamp}.{int(time.time() * 1000) % 1000:03d}"'

    @command(command_pattern(":SYSTem:ERRor:COUNt?", parameters=False))
    def error_count(self) -> str:
        return str(len(self.errors))

    @command(command_pattern(":SYSTem:CLEar", parameters=False))
    def error_clear(self) -> None:
        self.errors.clear()

    def in_compliance(self) -> bool:
        """For tests: whether the last measurement hit the current limit."""
        return self.limit_tripped
