"""Wire-level emulator of a Keysight B2900 SMU (B2901A/B2902A/B2911A/B2912A), SCPI.

Each channel is a terminal "<prefix>.<n>" on the bench; sourcing goes onto whatever lines the
matrix or mux connected to it, measurements through `Bench.drive` with the aperture NPLC / line
frequency, pulses through `Bench.drive(width, overrides={terminal: peak})`. Reported the way the
instrument does (B2900 SCPI Command Reference, chapter 4):
- compliance: the reading is clamped to the compliance value and `:SENS<n>:CURR:PROT:TRIP?`
  answers 1 (bit 1 "Current Summary" of `:STAT:QUES:COND?` is set too);
- errors: `:SYST:ERR?` answers code,"message" with a signed code, '+0,"No error"' when empty;
- `:INIT (@n)` runs the transient: in pulse shape `count` pulses base -> triggered level for the
  pulse width after the pulse delay; in list mode the list, one point per trigger; in fixed DC
  mode it steps to the triggered level. Readings go to the buffer `:FETC:ARR:CURR?` returns.
- `:OUTP<n>:ON:AUTO` (default on) switches the output on at `:INIT`.
Only voltage sourcing with current measurement is emulated.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from instruments.emulators.bench import Bench, ChannelState
from instruments.emulators.scpi import (
    ScpiEmulator,
    ScpiError,
    command_pattern,
    format_number,
    parse_bool,
    parse_channel_list,
    parse_number,
    parse_number_list,
    parse_string,
)
from instruments.emulators.server import command

CURRENT_RANGES = (1e-8, 1e-7, 1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0, 1.5, 3.0)
VOLTAGE_RANGES = (0.2, 2.0, 20.0, 200.0)
OVERFLOW = 9.91e37
LIST_MAX = 2500
OFF_MODES = {"NORM": "high_z", "NORMAL": "high_z", "HIZ": "high_z", "ZERO": "zero"}
MODELS = {"B2901A": 1, "B2902A": 2, "B2911A": 1, "B2912A": 2}


@dataclass
class B2900Channel:
    """One channel's settings (SI units)."""

    state: ChannelState
    shape: str = "DC"
    voltage_mode: str = "FIX"
    trigger_level: float = 0.0
    source_list: list[float] = field(default_factory=list)
    pulse_delay: float = 0.0
    pulse_width: float = 1e-4
    trigger_count: int = 1
    nplc: float = 1.0
    current_range: float = 1e-4
    current_range_auto: bool = True
    source_range: float = 2.0
    source_range_auto: bool = True
    auto_on: bool = True
    tripped: bool = False
    currents: list[float] = field(default_factory=list)
    voltages: list[float] = field(default_factory=list)


def _range_for(ranges: tuple[float, ...], value: float) -> float:
    for candidate in ranges:
        if abs(value) <= candidate * 1.0000001:
            return candidate
    raise ScpiError(-222, f"range {value!r}")


class KeysightB2900Emulator(ScpiEmulator):
    """A B2900 on the bench: model "B2901A", "B2902A", "B2911A" or "B2912A"; channel terminals
    f"{prefix}.1" (and f"{prefix}.2"); line_frequency in Hz."""

    identity: ClassVar[str] = "Keysight Technologies,B2902A,MY00000000,5.0.2040.0"

    def __init__(
        self,
        bench: Bench,
        name: str = "b2900",
        model: str = "B2902A",
        prefix: str = "smu",
        line_frequency: float = 50.0,
    ) -> None:
        if model not in MODELS:
            raise ValueError(f"model {model!r}; allowed: {sorted(MODELS)}")
        super().__init__(bench, name)
        self.identity = f"Keysight Technologies,{model},MY00000000,5.0.2040.0"  # type: ignore[misc]
        self.model = model
        self.line_frequency = float(line_frequency)
        self.terminals = {n: f"{prefix}.{n}" for n in range(1, MODELS[model] + 1)}
        self.channels = {
            n: B2900Channel(bench.add_channel(terminal)) for n, terminal in self.terminals.items()
        }
        self.reset()

    def reset(self) -> None:
        """*RST: DC voltage source at 0 V, 100 uA compliance, auto ranges, outputs off."""
        for number, old in self.channels.items():
            state = old.state
            self.channels[number] = B2900Channel(state)
            state.level = 0.0
            state.output_on = False
            state.compliance = 1e-4
            state.off_mode = "high_z"
            state.in_compliance = False

    def _channel(self, suffix: str | None) -> tuple[int, B2900Channel]:
        number = int(suffix) if suffix else 1
        if number not in self.channels:
            raise ScpiError(-113, f"channel {number} on a {self.model}")
        return number, self.channels[number]

    def _channels(self, params: str | None) -> list[int]:
        if params is None or not params.strip():
            return [1]
        return parse_channel_list(params, "channel list", len(self.channels))

    # -- measurement ----------------------------------------------------------------------------

    def _measure(self, number: int, duration: float | None = None, **overrides: float) -> float:
        """Drive the bench for the channel's aperture (or `duration`); its current (A)."""
        channel = self.channels[number]
        aperture = channel.nplc / self.line_frequency
        terminal = self.terminals[number]
        currents = self.bench.drive(
            aperture if duration is None else duration,
            {terminal: overrides["peak"]} if "peak" in overrides else None,
        )
        current = currents.get(terminal, 0.0)
        channel.tripped = channel.state.in_compliance
        if not channel.current_range_auto and abs(current) > 1.05 * channel.current_range:
            current = OVERFLOW
        return current

    # -- source ---------------------------------------------------------------------------------

    @command(command_pattern(":SOURce#:FUNCtion:MODE"))
    def function_mode(self, suffix: str, params: str | None) -> None:
        self._channel(suffix)
        value = (params or "").strip().upper()
        if not value:
            raise ScpiError(-109, "function mode")
        if value not in ("VOLT", "VOLTAGE"):
            raise ScpiError(-224, f"function mode {value!r}: the emulator sources voltage only")

    @command(command_pattern(":SOURce#:FUNCtion[:SHAPe]"))
    def function_shape(self, suffix: str, params: str | None) -> None:
        _, channel = self._channel(suffix)
        value = (params or "").strip().upper()
        if value in ("PULS", "PULSE"):
            channel.shape = "PULS"
        elif value == "DC":
            channel.shape = "DC"
        elif not value:
            raise ScpiError(-109, "function shape")
        else:
            raise ScpiError(-224, f"function shape {value!r}")

    @command(command_pattern(":SOURce#:VOLTage[:LEVel][:IMMediate][:AMPLitude]"))
    def voltage(self, suffix: str, params: str | None) -> None:
        number, channel = self._channel(suffix)
        value = parse_number(params, "voltage", -210.0, 210.0)
        if not channel.source_range_auto and abs(value) > 1.05 * channel.source_range:
            raise ScpiError(-222, f"{value} V beyond the {channel.source_range} V range")
        self.log_source(str(number), "voltage", value, f":SOUR{suffix}:VOLT {params}")
        channel.state.level = value

    @command(command_pattern(":SOURce#:VOLTage[:LEVel][:IMMediate][:AMPLitude]?"))
    def voltage_query(self, suffix: str, params: str | None) -> str:
        return format_number(self._channel(suffix)[1].state.level)

    @command(command_pattern(":SOURce#:VOLTage[:LEVel]:TRIGgered[:AMPLitude]"))
    def voltage_triggered(self, suffix: str, params: str | None) -> None:
        number, channel = self._channel(suffix)
        value = parse_number(params, "triggered voltage", -210.0, 210.0)
        if not channel.source_range_auto and abs(value) > 1.05 * channel.source_range:
            raise ScpiError(-222, f"{value} V beyond the {channel.source_range} V range")
        self.log_source(str(number), "voltage", value, f":SOUR{suffix}:VOLT:TRIG {params}")
        channel.trigger_level = value

    @command(command_pattern(":SOURce#:VOLTage:MODE"))
    def voltage_mode(self, suffix: str, params: str | None) -> None:
        _, channel = self._channel(suffix)
        value = (params or "").strip().upper()
        if value in ("FIX", "FIXED"):
            channel.voltage_mode = "FIX"
        elif value == "LIST":
            channel.voltage_mode = "LIST"
        elif not value:
            raise ScpiError(-109, "voltage mode")
        else:
            raise ScpiError(-224, f"voltage mode {value!r}: FIX or LIST emulated")

    @command(command_pattern(":SOURce#:VOLTage:RANGe[:UPPer]"))
    def source_range(self, suffix: str, params: str | None) -> None:
        _, channel = self._channel(suffix)
        channel.source_range = _range_for(
            VOLTAGE_RANGES, parse_number(params, "voltage range", -210.0, 210.0)
        )
        channel.source_range_auto = False

    @command(command_pattern(":SOURce#:VOLTage:RANGe:AUTO"))
    def source_range_auto(self, suffix: str, params: str | None) -> None:
        self._channel(suffix)[1].source_range_auto = parse_bool(params, "voltage autorange")

    @command(command_pattern("[:SOURce#]:LIST:VOLTage"))
    def list_set(self, suffix: str | None, params: str | None) -> None:
        number, channel = self._channel(suffix)
        values = parse_number_list(params, "voltage list", -210.0, 210.0)
        if len(values) > LIST_MAX:
            raise ScpiError(-222, f"{len(values)} list values; at most {LIST_MAX}")
        for value in values:
            self.log_source(str(number), "voltage", value, ":LIST:VOLT")
        channel.source_list = values

    @command(command_pattern("[:SOURce#]:LIST:VOLTage:APPend"))
    def list_append(self, suffix: str | None, params: str | None) -> None:
        number, channel = self._channel(suffix)
        values = parse_number_list(params, "voltage list", -210.0, 210.0)
        if len(channel.source_list) + len(values) > LIST_MAX:
            raise ScpiError(-222, f"list longer than {LIST_MAX}")
        for value in values:
            self.log_source(str(number), "voltage", value, ":LIST:VOLT:APP")
        channel.source_list.extend(values)

    @command(command_pattern("[:SOURce#]:LIST:VOLTage:POINts?", parameters=False))
    def list_points(self, suffix: str | None) -> str:
        return str(len(self._channel(suffix)[1].source_list))

    @command(command_pattern(":SOURce#:PULSe:WIDTh"))
    def pulse_width(self, suffix: str, params: str | None) -> None:
        self._channel(suffix)[1].pulse_width = parse_number(params, "pulse width", 5e-5, 1e5)

    @command(command_pattern(":SOURce#:PULSe:DELay"))
    def pulse_delay(self, suffix: str, params: str | None) -> None:
        self._channel(suffix)[1].pulse_delay = parse_number(params, "pulse delay", 0.0, 99999.9)

    # -- sense ----------------------------------------------------------------------------------

    @command(command_pattern(":SENSe#:FUNCtion[:ON]"))
    def sense_function(self, suffix: str, params: str | None) -> None:
        self._channel(suffix)
        for item in (params or "").split(","):
            value = parse_string(item, "sense function").upper()
            if value not in ("CURR", "CURRENT", "VOLT", "VOLTAGE", "RES", "RESISTANCE"):
                raise ScpiError(-224, f"sense function {value!r}")

    @command(command_pattern(":SENSe#:CURRent[:DC]:PROTection[:LEVel]"))
    def compliance(self, suffix: str, params: str | None) -> None:
        number, channel = self._channel(suffix)
        value = parse_number(params, "current compliance", 1e-9, 3.03)
        self.log_source(str(number), "current_limit", value, f":SENS{suffix}:CURR:PROT {params}")
        channel.state.compliance = value

    @command(command_pattern(":SENSe#:CURRent[:DC]:PROTection[:LEVel]?", parameters=False))
    def compliance_query(self, suffix: str) -> str:
        return format_number(self._channel(suffix)[1].state.compliance)

    @command(command_pattern(":SENSe#:CURRent[:DC]:PROTection:TRIPped?", parameters=False))
    def compliance_tripped(self, suffix: str) -> str:
        return "1" if self._channel(suffix)[1].tripped else "0"

    @command(command_pattern(":SENSe#:CURRent[:DC]:NPLCycles"))
    def nplc(self, suffix: str, params: str | None) -> None:
        limit = 2.0 * self.line_frequency
        value = parse_number(params, "NPLC", 8e-6 * self.line_frequency, limit)
        self._channel(suffix)[1].nplc = value

    @command(command_pattern(":SENSe#:CURRent[:DC]:RANGe[:UPPer]"))
    def current_range(self, suffix: str, params: str | None) -> None:
        _, channel = self._channel(suffix)
        value = parse_number(params, "current range", -3.03, 3.03)
        channel.current_range = _range_for(CURRENT_RANGES, value)
        channel.current_range_auto = False

    @command(command_pattern(":SENSe#:CURRent[:DC]:RANGe:AUTO"))
    def current_range_auto(self, suffix: str, params: str | None) -> None:
        self._channel(suffix)[1].current_range_auto = parse_bool(params, "current autorange")

    # -- output ---------------------------------------------------------------------------------

    @command(command_pattern(":OUTPut#[:STATe]"))
    def output(self, suffix: str, params: str | None) -> None:
        self._channel(suffix)[1].state.output_on = parse_bool(params, "output state")

    @command(command_pattern(":OUTPut#[:STATe]?", parameters=False))
    def output_query(self, suffix: str) -> str:
        return "1" if self._channel(suffix)[1].state.output_on else "0"

    @command(command_pattern(":OUTPut#:ON:AUTO"))
    def output_auto_on(self, suffix: str, params: str | None) -> None:
        self._channel(suffix)[1].auto_on = parse_bool(params, "automatic output on")

    @command(command_pattern(":OUTPut#:OFF:MODE"))
    def output_off_mode(self, suffix: str, params: str | None) -> None:
        value = (params or "").strip().upper()
        if value not in OFF_MODES:
            raise ScpiError(-224, f"output-off mode {value!r}; NORM, HIZ or ZERO")
        self._channel(suffix)[1].state.off_mode = OFF_MODES[value]

    # -- trigger, measure, fetch ----------------------------------------------------------------

    @command(command_pattern(":TRIGger#[:ALL]:COUNt"))
    def trigger_count(self, suffix: str, params: str | None) -> None:
        value = parse_number(params, "trigger count", 1, 100000)
        self._channel(suffix)[1].trigger_count = int(value)

    @command(command_pattern(":INITiate[:IMMediate][:ALL]"))
    def initiate(self, params: str | None) -> None:
        for number in self._channels(params):
            self._transient(number)

    def _transient(self, number: int) -> None:
        channel = self.channels[number]
        if channel.auto_on:
            channel.state.output_on = True
        channel.currents, channel.voltages = [], []
        if channel.shape == "PULS":
            base = channel.state.level
            peak = channel.source_list if channel.voltage_mode == "LIST" else None
            for index in range(channel.trigger_count):
                level = peak[index % len(peak)] if peak else channel.trigger_level
                if channel.pulse_delay > 0:
                    self._measure(number, channel.pulse_delay)
                self.log_source(str(number), "pulse", level, f":INIT (@{number})")
                current = self._measure(number, channel.pulse_width, peak=level)
                channel.currents.append(current)
                channel.voltages.append(level)
            channel.state.level = base
            return
        if channel.voltage_mode == "LIST" and not channel.source_list:
            raise ScpiError(-221, "list mode with an empty list")
        for index in range(channel.trigger_count):
            if channel.voltage_mode == "LIST":
                channel.state.level = channel.source_list[index % len(channel.source_list)]
            else:
                channel.state.level = channel.trigger_level
            channel.currents.append(self._measure(number))
            channel.voltages.append(channel.state.level)

    @command(command_pattern(":MEASure:CURRent[:DC]?"))
    def measure(self, params: str | None) -> str:
        return ",".join(format_number(self._measure(n)) for n in self._channels(params))

    @command(command_pattern(":FETCh:ARRay:CURRent[:DC]?"))
    def fetch_currents(self, params: str | None) -> str:
        values: list[float] = []
        for number in self._channels(params):
            values.extend(self.channels[number].currents)
        if not values:
            raise ScpiError(-230, "no data")
        return ",".join(format_number(v) for v in values)

    @command(command_pattern(":FETCh:ARRay:VOLTage[:DC]?"))
    def fetch_voltages(self, params: str | None) -> str:
        values: list[float] = []
        for number in self._channels(params):
            values.extend(self.channels[number].voltages)
        if not values:
            raise ScpiError(-230, "no data")
        return ",".join(format_number(v) for v in values)

    # -- status and system ----------------------------------------------------------------------

    @command(command_pattern(":STATus:QUEStionable:CONDition?", parameters=False))
    def questionable(self) -> str:
        """Bit 1 (2) "Current Summary" while a channel is in current compliance (p. 4-115)."""
        return "2" if any(c.tripped for c in self.channels.values()) else "0"

    @command(command_pattern(":SYSTem:ERRor[:NEXT]?", parameters=False))
    def error_query(self) -> str:
        error = self.pop_error()
        if error is None:
            return '+0,"No error"'
        code, message = error
        return f'{code:+d},"{message}"'

    @command(command_pattern(":SYSTem:ERRor:COUNt?", parameters=False))
    def error_count(self) -> str:
        return f"{len(self.errors):+d}"
