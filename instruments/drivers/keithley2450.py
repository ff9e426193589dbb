"""Keithley 2450 SourceMeter driver, native SCPI command set (not TSP, not the "SCPI 2400" mode).

Manual: Model 2450 Interactive SourceMeter Reference Manual 2450-901-01 (Rev. B, 2013), section 6
"SCPI command reference"; page numbers below are that edition's.

Round trips (query-reply exchanges) per operation:
- `measure_current`: 1 (`:READ?`).
- `pulse`: 1 (`:TRAC:ACT?` after the two-point list sweep, which also confirms it ran).
- `sweep` of n points: 1 (`:TRAC:DATA?`), whatever n (the list goes out in writes of 100).
- `configure`: 1 (`:SYST:ERR?` confirming the setup was accepted).
Errors are not polled after every write; callers poll `check_errors()` at checkpoints (the
composite crossbars do so after each batch), `configure` always does.

Pulses: the 2450 has no pulse mode (pulsing is the 2461's). A pulse here is a two-point list sweep
[amplitude, base] run by the instrument's trigger model, so its timing does not depend on the bus:
each point is source -> delay -> measurement, so the time at the amplitude is the sweep delay plus
the measurement aperture (NPLC / line frequency). The sweep delay is 0 or 50 us .. 10,000 s
(:SOUR:SWE:VOLT:LIST, p. 6-85), the fastest aperture 0.01 NPLC = 200 us at 50 Hz, and source
settling plus trigger-model overhead add a few hundred microseconds more, so the shortest flat top
worth asking for is `MIN_PULSE_WIDTH` = 1 ms. A shorter width raises `LimitError`; nothing is
clamped.
"""

from __future__ import annotations

import math

from instruments.drivers.smu import SourceMeter
from instruments.drivers.transport import InstrumentError, Transport
from instruments.limits import LimitError, SafetyLimits

# Measure and source ranges (section 6 :SENSe[1]:<function>:RANGe; p. 6-74 source RANGe).
CURRENT_RANGES = (1e-8, 1e-7, 1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0)
VOLTAGE_RANGES = (0.02, 0.2, 2.0, 20.0, 200.0)
OVERFLOW = 9.9e37  # what a reading beyond the fixed range returns


def fmt(value: float) -> str:
    """A number as the drivers write it (up to 9 significant digits, SCPI NRf)."""
    return f"{float(value):.9g}"


def pick_range(ranges: tuple[float, ...], value: float, what: str) -> float:
    """Smallest range that holds |value|."""
    for candidate in ranges:
        if abs(value) <= candidate:
            return candidate
    raise ValueError(f"{what}: {value!r} exceeds the largest range {ranges[-1]!r}")


class Keithley2450(SourceMeter):
    """Keithley 2450 as a voltage source measuring current; one channel, "1".

    line_frequency: mains frequency (Hz) the instrument integrates over (NPLC -> seconds).
    buffer: reading buffer the sweeps and pulses fill ("defbuffer1").
    sweep_delay: delay (s) between a sweep point's source step and its measurement; 0 = none,
    otherwise 50 us .. 10,000 s.
    """

    identity_pattern = r"KEITHLEY INSTRUMENTS,MODEL 2450"
    channels = ("1",)
    MIN_PULSE_WIDTH = 1e-3
    MIN_SWEEP_DELAY = 50e-6
    LIST_CHUNK = 100  # values per :SOUR:LIST:VOLT / :APP command (p. 6-78)
    NPLC_RANGE = (0.01, 10.0)

    def __init__(
        self,
        transport: Transport,
        limits: SafetyLimits,
        line_frequency: float = 50.0,
        buffer: str = "defbuffer1",
        sweep_delay: float = 0.0,
    ) -> None:
        super().__init__(transport, limits)
        if line_frequency not in (50.0, 60.0):
            raise ValueError(f"line_frequency: {line_frequency!r} Hz; allowed: 50, 60")
        if sweep_delay != 0 and not self.MIN_SWEEP_DELAY <= sweep_delay <= 1e4:
            raise ValueError(f"sweep_delay: {sweep_delay!r} s; allowed: 0 or 50e-6 .. 1e4 s")
        self.line_frequency = float(line_frequency)
        self.buffer = buffer
        self.sweep_delay = float(sweep_delay)
        self.nplc: float | None = None
        self.level = 0.0
        self.output = False

    # -- helpers --------------------------------------------------------------------------------

    def _check_level(self, volts: float, what: str) -> None:
        if not (math.isfinite(volts) and abs(volts) <= self.limits.max_pulse_voltage):
            raise LimitError(
                f"{self.name}: {what} {volts!r} V exceeds limits.max_pulse_voltage = "
                f"{self.limits.max_pulse_voltage!r} V"
            )

    def _float(self, command: str, reply: str) -> float:
        try:
            value = float(reply)
        except ValueError:
            raise InstrumentError(self.name, command, reply, "not a number") from None
        if abs(value) >= OVERFLOW:
            raise InstrumentError(
                self.name, command, reply, "overflow: current beyond the fixed measure range"
            )
        return value

    @property
    def aperture(self) -> float:
        """Measurement integration time (s) of the configured NPLC."""
        if self.nplc is None:
            raise RuntimeError(f"{self.name}: call configure() before measuring or pulsing")
        return self.nplc / self.line_frequency

    # -- SourceMeter ----------------------------------------------------------------------------

    def configure(self, channel: str, compliance: float, nplc: float) -> None:
        """Source voltage, measure current on a fixed range, current limit `compliance` (A),
        integration `nplc` power-line cycles (0.01 .. 10). No *RST; output left as it is."""
        self.check_channel(channel)
        self.limits.check_compliance(compliance)
        low, high = self.NPLC_RANGE
        if not (math.isfinite(nplc) and low <= nplc <= high):
            raise ValueError(f"{self.name}: nplc {nplc!r} outside [{low}, {high}] (2450)")
        source_range = pick_range(VOLTAGE_RANGES, self.limits.max_pulse_voltage, "source range")
        measure_range = pick_range(CURRENT_RANGES, compliance, "current range")
        write = self.transport.write
        write(":SOUR:FUNC VOLT")  # p. 6-72 :SOURce[1]:FUNCtion[:MODE]
        write(":SOUR:VOLT:RANG:AUTO OFF")  # section 6 :SOURce[1]:<function>:RANGe:AUTO
        write(f":SOUR:VOLT:RANG {fmt(source_range)}")  # p. 6-74 :SOURce[1]:<function>:RANGe
        write(f":SOUR:VOLT:ILIM {fmt(compliance)}")  # p. 6-71 :SOURce[1]:VOLTage:ILIMit
        write(':SENS:FUNC "CURR"')  # section 6 :SENSe[1]:FUNCtion[:ON]
        write(":SENS:CURR:RANG:AUTO OFF")  # section 6 :SENSe[1]:<function>:RANGe:AUTO
        # section 6 :SENSe[1]:<function>:RANGe[:UPPer]
        write(f":SENS:CURR:RANG {fmt(measure_range)}")
        write(f":SENS:CURR:NPLC {fmt(nplc)}")  # section 6 :SENSe[1]:<function>:NPLCycles
        self.check_errors("configure")
        self.nplc = float(nplc)

    def set_voltage(self, channel: str, volts: float) -> None:
        """Source level (V); |V| <= limits.max_pulse_voltage."""
        self.check_channel(channel)
        self._check_level(volts, "source level")
        # section 6 :SOURce[1]:<function>[:LEVel][:IMMediate][:AMPLitude]
        self.transport.write(f":SOUR:VOLT {fmt(volts)}")
        self.level = float(volts)

    def set_output(self, channel: str, on: bool) -> None:
        self.check_channel(channel)
        self.transport.write(":OUTP ON" if on else ":OUTP OFF")  # p. 6-34 :OUTPut[1][:STATe]
        self.output = bool(on)

    def measure_current(self, channel: str) -> float:
        """One reading (A) at the present level: `:READ?` (p. 6-6) with the sense function
        set to current by `configure`; one round trip."""
        self.check_channel(channel)
        return self._float(":READ?", self.transport.query(":READ?"))

    def in_compliance(self, channel: str) -> bool:
        """Whether the source hit its current limit (p. 6-72 :SOURce:VOLTage:ILIMit:TRIPped?)."""
        self.check_channel(channel)
        command = ":SOUR:VOLT:ILIM:TRIP?"
        reply = self.transport.query(command).strip()
        if reply not in ("0", "1"):
            raise InstrumentError(self.name, command, reply, "expected 0 or 1")
        return reply == "1"

    def _run_list(self, values: list[float], delay: float) -> None:
        """Load `values` into the source list and run the list sweep once (no abort on limit)."""
        write = self.transport.write
        # p. 6-78 :SOURce[1]:LIST:<function> (<= 100 values), p. 6-79 :APPend
        for start in range(0, len(values), self.LIST_CHUNK):
            chunk = ", ".join(fmt(v) for v in values[start : start + self.LIST_CHUNK])
            write(f":SOUR:LIST:VOLT {chunk}" if start == 0 else f":SOUR:LIST:VOLT:APP {chunk}")
        # p. 6-85 :SOURce[1]:SWEep:<function>:LIST <startIndex>, <delay>, <count>, <failAbort>
        write(f":SOUR:SWE:VOLT:LIST 1, {fmt(delay)}, 1, OFF")
        write(":INIT")  # section 6 :INITiate[:IMMediate]
        write("*WAI")

    def pulse(self, channel: str, amplitude: float, width: float, base: float = 0.0) -> None:
        """base -> amplitude (V) for `width` s -> base, as a two-point list sweep; the
        instrument's shortest flat top is max(MIN_PULSE_WIDTH, aperture + 50 us)."""
        self.check_channel(channel)
        self.limits.check_pulse(amplitude, width)
        self._check_level(base, "pulse base")
        aperture = self.aperture
        shortest = max(self.MIN_PULSE_WIDTH, aperture + self.MIN_SWEEP_DELAY)
        if width < shortest:
            raise LimitError(
                f"{self.name}: pulse width {width!r} s is below what a 2450 can do at NPLC "
                f"{self.nplc:g} ({shortest:g} s; it has no pulse mode, see the module notes)"
            )
        was_on = self.output
        if not was_on:
            self.set_voltage(channel, base)
            self.set_output(channel, True)
        self._run_list([amplitude, base], width - aperture)
        command = f':TRAC:ACT? "{self.buffer}"'  # p. 6-107 :TRACe:ACTual?
        reply = self.transport.query(command).strip()
        self.level = float(base)
        if not was_on:
            self.set_output(channel, False)
        if reply != "2":
            errors = self.read_errors()
            raise InstrumentError(
                self.name, command, reply, "pulse sweep did not run; " + "; ".join(errors)
            )

    def sweep(self, channel: str, voltages: list[float]) -> list[float]:
        """Currents (A) at each voltage (V), one list sweep in the instrument; the level and
        output state from before the sweep are restored."""
        self.check_channel(channel)
        self.limits.check_sweep_voltage(voltages)
        values = [float(v) for v in voltages]
        if not values:
            return []
        previous, was_on = self.level, self.output
        if not was_on:
            self.set_output(channel, True)
        self._run_list(values, self.sweep_delay)
        # p. 6-109 :TRACe:DATA? <startIndex>, <endIndex>, "<bufferName>", <bufferElements>
        command = f':TRAC:DATA? 1, {len(values)}, "{self.buffer}", READ'
        reply = self.transport.query(command)
        self.set_voltage(channel, previous)
        if not was_on:
            self.set_output(channel, False)
        try:
            currents = [float(item) for item in reply.split(",")]
        except ValueError:
            raise InstrumentError(self.name, command, reply, "not a list of numbers") from None
        if len(currents) != len(values):
            raise InstrumentError(
                self.name, command, reply, f"expected {len(values)} readings, got {len(currents)}"
            )
        if any(abs(c) >= OVERFLOW for c in currents):
            raise InstrumentError(self.name, command, reply, "overflow in a sweep reading")
        return currents

    # -- Instrument -----------------------------------------------------------------------------

    def read_errors(self) -> list[str]:
        """Drain the event log with :SYSTem:ERRor[:NEXT]? (section 6); '0,"No error;0;0 0"' ends."""
        errors: list[str] = []
        for _ in range(100):
            reply = self.transport.query(":SYST:ERR?").strip()
            code = reply.split(",", 1)[0]
            try:
                number = int(code)
            except ValueError:
                raise InstrumentError(self.name, ":SYST:ERR?", reply, "garbled error") from None
            if number == 0:
                return errors
            errors.append(reply)
        return errors

    def output_off(self) -> None:
        self.transport.write(":OUTP OFF")
        self.output = False
