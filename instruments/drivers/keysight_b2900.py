"""Keysight (Agilent) B2900 precision SMU driver: B2901A/B2902A/B2911A/B2912A (and B-models), SCPI.

Manuals: Agilent B2900 SCPI Command Reference B2910-90030 (Edition 2, 2011), chapter 4 "Subsystem
Commands" (page numbers below are that edition's where checked; the B2961A/B2962A SCPI
Command Reference, Edition 6, documents the same SENSe/OUTPut commands), and the Keysight B2900
User's Guide, Edition 5, p. 6-7 "Pulse Output" (pulse width 50 us .. 100,000 s).

Channels are "1" and "2" on two-channel models (B2902, B2912), "1" on one-channel models; the
count comes from the *IDN? model at `connect()` (a configured count must agree).

Round trips (query-reply exchanges) per operation:
- `measure_current`: 1 (`:MEAS:CURR? (@n)`).
- `pulse`: 1 (`*OPC?` after `:INIT (@n)`: returns once the pulse is over).
- `sweep` of n points: 1 (`:FETC:ARR:CURR? (@n)`), the list goes out in writes of 2500.
- `configure`: 1 (`:SYST:ERR?`).
Errors are not polled after every write; callers poll `check_errors()` at checkpoints (the
composite crossbars do so after each batch), `configure` always does.

`configure` turns the automatic output-on function off (`:OUTP:ON:AUTO OFF`) so that `:INIT`
never switches an output on behind the caller's back; `pulse` and `sweep` switch a channel whose
output is off on at its present level and off again afterwards.
"""

from __future__ import annotations

import math
import re

from instruments.drivers.keithley2450 import fmt, pick_range
from instruments.drivers.smu import SourceMeter
from instruments.drivers.transport import IdentityMismatch, InstrumentError, Transport
from instruments.limits import LimitError, SafetyLimits

# Source and measure ranges ("Source Output Ranges", SCPI Command Reference chapter 2).
VOLTAGE_RANGES = (0.2, 2.0, 20.0, 200.0)
CURRENT_RANGES = (1e-7, 1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0, 1.5, 3.0)
CURRENT_RANGES_B291X = (1e-8, *CURRENT_RANGES)  # the B2911/B2912 add a 10 nA range
OVERFLOW = 9.9e37  # the B2900 answers 9.91E+37 for an over-range reading


class KeysightB2900(SourceMeter):
    """Keysight B2901A/B2902A/B2911A/B2912A as voltage sources measuring current.

    channel_count: 1 or 2 from the config, or None to take it from the *IDN? model.
    line_frequency: mains frequency (Hz) for NPLC -> aperture (s).
    """

    identity_pattern = r"(Keysight|Agilent) Technologies,B29(01|02|11|12)[AB]?,"
    MIN_PULSE_WIDTH = 50e-6  # User's Guide p. 6-7
    MAX_PULSE_WIDTH = 1e5
    APERTURE_RANGE = (8e-6, 2.0)  # s, integration time the ADC allows
    LIST_CHUNK = 2500  # values per :LIST:VOLT / :APP command (p. 4-105: at most 2500 in a list)

    def __init__(
        self,
        transport: Transport,
        limits: SafetyLimits,
        channel_count: int | None = None,
        line_frequency: float = 50.0,
    ) -> None:
        super().__init__(transport, limits)
        if channel_count not in (None, 1, 2):
            raise ValueError(f"channel_count: {channel_count!r}; allowed: 1, 2 or None (*IDN?)")
        if line_frequency not in (50.0, 60.0):
            raise ValueError(f"line_frequency: {line_frequency!r} Hz; allowed: 50, 60")
        self.channel_count = channel_count
        self.channels = tuple(str(c + 1) for c in range(channel_count or 2))
        self.line_frequency = float(line_frequency)
        self.model = ""
        self.nplc: dict[str, float] = {}
        self.level: dict[str, float] = {c: 0.0 for c in self.channels}
        self.output: dict[str, bool] = {c: False for c in self.channels}

    def connect(self) -> str:
        """*IDN? check; the model fixes the channel count (B29x1: 1, B29x2: 2)."""
        reply = super().connect()
        match = re.search(r"B29([01])([12])", reply)
        assert match is not None  # identity_pattern matched
        self.model = match.group(0)
        count = int(match.group(2))
        if self.channel_count is not None and self.channel_count != count:
            raise IdentityMismatch(
                self.name,
                "*IDN?",
                reply,
                f"config says {self.channel_count} channel(s), the {self.model} has {count}",
            )
        self.channels = tuple(str(c + 1) for c in range(count))
        self.level = {c: self.level.get(c, 0.0) for c in self.channels}
        self.output = {c: self.output.get(c, False) for c in self.channels}
        return reply

    # -- helpers --------------------------------------------------------------------------------

    def _check_level(self, volts: float, what: str) -> None:
        if not (math.isfinite(volts) and abs(volts) <= self.limits.max_pulse_voltage):
            raise LimitError(
                f"{self.name}: {what} {volts!r} V exceeds limits.max_pulse_voltage = "
                f"{self.limits.max_pulse_voltage!r} V"
            )

    def _floats(self, command: str, reply: str, count: int) -> list[float]:
        try:
            values = [float(item) for item in reply.split(",")]
        except ValueError:
            raise InstrumentError(self.name, command, reply, "not a list of numbers") from None
        if len(values) != count:
            raise InstrumentError(
                self.name, command, reply, f"expected {count} value(s), got {len(values)}"
            )
        if any(abs(v) >= OVERFLOW for v in values):
            raise InstrumentError(self.name, command, reply, "overflow: beyond the measure range")
        return values

    # -- SourceMeter ----------------------------------------------------------------------------

    def configure(self, channel: str, compliance: float, nplc: float) -> None:
        """Voltage source (DC, fixed mode), current measurement on a fixed range, compliance
        (A), integration `nplc` power-line cycles (aperture 8 us .. 2 s). No *RST."""
        n = self.check_channel(channel)
        self.limits.check_compliance(compliance)
        low, high = self.APERTURE_RANGE
        if not (math.isfinite(nplc) and low <= nplc / self.line_frequency <= high):
            raise ValueError(
                f"{self.name}: nplc {nplc!r} gives an aperture outside [{low:g}, {high:g}] s"
            )
        ranges = CURRENT_RANGES_B291X if self.model.startswith("B291") else CURRENT_RANGES
        source_range = pick_range(VOLTAGE_RANGES, self.limits.max_pulse_voltage, "source range")
        measure_range = pick_range(ranges, compliance, "current range")
        write = self.transport.write
        write(f":SOUR{n}:FUNC:MODE VOLT")  # [:SOURce]:FUNCtion:MODE
        write(f":SOUR{n}:FUNC:SHAP DC")  # [:SOURce]:FUNCtion[:SHAPe]
        write(f":SOUR{n}:VOLT:MODE FIX")  # [:SOURce]:<CURRent|VOLTage>:MODE
        write(f":SOUR{n}:VOLT:RANG:AUTO OFF")  # [:SOURce]:<CURRent|VOLTage>:RANGe:AUTO
        write(f":SOUR{n}:VOLT:RANG {fmt(source_range)}")  # [:SOURce]:<...>:RANGe
        write(f':SENS{n}:FUNC "CURR"')  # :SENSe:FUNCtion[:ON]
        write(f":SENS{n}:CURR:PROT {fmt(compliance)}")  # :SENSe:CURRent:PROTection[:LEVel]
        write(f":SENS{n}:CURR:RANG:AUTO OFF")  # :SENSe:CURRent:RANGe:AUTO
        write(f":SENS{n}:CURR:RANG {fmt(measure_range)}")  # :SENSe:CURRent:RANGe[:UPPer]
        write(f":SENS{n}:CURR:NPLC {fmt(nplc)}")  # :SENSe:CURRent:NPLCycles
        write(f":OUTP{n}:ON:AUTO OFF")  # :OUTPut:ON:AUTO (B2961A ref. p. 4-67)
        self.check_errors("configure")
        self.nplc[n] = float(nplc)

    def set_voltage(self, channel: str, volts: float) -> None:
        """DC level (V); |V| <= limits.max_pulse_voltage."""
        n = self.check_channel(channel)
        self._check_level(volts, "source level")
        # p. 4-93 [:SOURce]:<CURRent|VOLTage>[:LEVel][:IMMediate][:AMPLitude]
        self.transport.write(f":SOUR{n}:VOLT {fmt(volts)}")
        self.level[n] = float(volts)

    def set_output(self, channel: str, on: bool) -> None:
        n = self.check_channel(channel)
        self.transport.write(f":OUTP{n} {'ON' if on else 'OFF'}")  # :OUTPut[:STATe]
        self.output[n] = bool(on)

    def measure_current(self, channel: str) -> float:
        """Spot measurement (A): `:MEAS:CURR? (@n)`, one round trip."""
        n = self.check_channel(channel)
        command = f":MEAS:CURR? (@{n})"  # :MEASure:CURRent[:DC]?
        return self._floats(command, self.transport.query(command), 1)[0]

    def in_compliance(self, channel: str) -> bool:
        """Compliance status: `:SENS<n>:CURR:PROT:TRIP?` (B2961A ref. p. 4-91)."""
        n = self.check_channel(channel)
        command = f":SENS{n}:CURR:PROT:TRIP?"
        reply = self.transport.query(command).strip()
        if reply not in ("0", "1"):
            raise InstrumentError(self.name, command, reply, "expected 0 or 1")
        return reply == "1"

    def pulse(self, channel: str, amplitude: float, width: float, base: float = 0.0) -> None:
        """One pulse base -> amplitude (V) for `width` s (50 us .. 1e5 s) -> base, timed by the
        instrument (pulse shape, triggered level, pulse delay 0)."""
        n = self.check_channel(channel)
        self.limits.check_pulse(amplitude, width)
        self._check_level(base, "pulse base")
        if not self.MIN_PULSE_WIDTH <= width <= self.MAX_PULSE_WIDTH:
            raise LimitError(
                f"{self.name}: pulse width {width!r} s outside what a B2900 can do "
                f"[{self.MIN_PULSE_WIDTH:g}, {self.MAX_PULSE_WIDTH:g}] s (User's Guide p. 6-7)"
            )
        was_on = self.output[n]
        write = self.transport.write
        write(f":SOUR{n}:FUNC:SHAP PULS")  # [:SOURce]:FUNCtion[:SHAPe] PULSe
        write(f":SOUR{n}:VOLT {fmt(base)}")  # base level (p. 4-93)
        write(f":SOUR{n}:VOLT:TRIG {fmt(amplitude)}")  # peak: [:LEVel]:TRIGgered (p. 4-93)
        write(f":SOUR{n}:PULS:DEL 0")  # [:SOURce]:PULSe:DELay
        write(f":SOUR{n}:PULS:WIDT {fmt(width)}")  # [:SOURce]:PULSe:WIDTh
        write(f":TRIG{n}:COUN 1")  # :TRIGger[:ALL]:COUNt
        self.level[n] = float(base)
        if not was_on:
            self.set_output(channel, True)
        write(f":INIT (@{n})")  # :INITiate[:IMMediate][:ALL] (@n)
        reply = self.transport.query("*OPC?").strip()
        write(f":SOUR{n}:VOLT:TRIG {fmt(base)}")  # no stale peak left for a later trigger
        write(f":SOUR{n}:FUNC:SHAP DC")
        if not was_on:
            self.set_output(channel, False)
        if reply != "1":
            raise InstrumentError(self.name, "*OPC?", reply, "expected 1 after the pulse")

    def sweep(self, channel: str, voltages: list[float]) -> list[float]:
        """Currents (A) at each voltage (V): one list sweep in the instrument (list mode,
        trigger count n), fetched at once; the level and output state are restored."""
        n = self.check_channel(channel)
        self.limits.check_sweep_voltage(voltages)
        values = [float(v) for v in voltages]
        if not values:
            return []
        write = self.transport.write
        was_on = self.output[n]
        if not was_on:
            self.set_output(channel, True)
        write(f":SOUR{n}:VOLT:MODE LIST")  # [:SOURce]:VOLTage:MODE LIST
        for start in range(0, len(values), self.LIST_CHUNK):
            chunk = ",".join(fmt(v) for v in values[start : start + self.LIST_CHUNK])
            # p. 4-105 [:SOURce]:LIST:VOLTage and :APPend
            head = f":SOUR{n}:LIST:VOLT" if start == 0 else f":SOUR{n}:LIST:VOLT:APP"
            write(f"{head} {chunk}")
        write(f":TRIG{n}:COUN {len(values)}")  # :TRIGger[:ALL]:COUNt
        write(f":INIT (@{n})")
        write("*WAI")
        command = f":FETC:ARR:CURR? (@{n})"  # :FETCh:ARRay:CURRent?
        reply = self.transport.query(command)
        write(f":SOUR{n}:VOLT:MODE FIX")
        self.set_voltage(channel, self.level[n])
        if not was_on:
            self.set_output(channel, False)
        return self._floats(command, reply, len(values))

    # -- Instrument -----------------------------------------------------------------------------

    def read_errors(self) -> list[str]:
        """Drain the error queue with :SYSTem:ERRor[:NEXT]?; '+0,"No error"' ends it."""
        errors: list[str] = []
        for _ in range(100):
            reply = self.transport.query(":SYST:ERR?").strip()
            try:
                number = int(reply.split(",", 1)[0])
            except ValueError:
                raise InstrumentError(self.name, ":SYST:ERR?", reply, "garbled error") from None
            if number == 0:
                return errors
            errors.append(reply)
        return errors

    def output_off(self) -> None:
        """Every channel's output off."""
        for n in self.channels:
            self.transport.write(f":OUTP{n} OFF")
            self.output[n] = False
