"""Keithley 2600B System SourceMeter (2601B/2602B/2611B/2612B/2634B/2635B/2636B) over TSP.

Commands from the Series 2600B Reference Manual 2600BS-901-01 (Rev. F), section 9 "TSP command
reference" unless noted:

- source and measure: `smuX.source.func = smuX.OUTPUT_DCVOLTS`, `smuX.source.levelv`,
  `smuX.source.limiti`, `smuX.source.output = smuX.OUTPUT_ON|OUTPUT_OFF`, `smuX.measure.nplc`
  (0.001 to 25), `smuX.measure.autorangei = smuX.AUTORANGE_ON`, `smuX.measure.rangei`,
  `smuX.measure.i()`; `delay(seconds)`.
- output: TSP has no queries; `print(value)` makes one response message, numbers formatted by
  format.asciiprecision ("1.00000e+01"), several arguments separated by tabs (print()).
  `printbuffer(1, n, table)` prints n values in one message separated by ", " (printbuffer()).
- errors: `errorqueue.count`, `errorCode, message, severity, errorNode = errorqueue.next()`
  (printed as four tab-separated values), `errorqueue.clear()`; code -285 "Program syntax" stops a
  command, -286 "TSP runtime error" aborts it (section 8 "Troubleshooting guide").
- scripts: `loadscript name` ... `endscript` collects the lines between them into the named
  script; `name.run()` runs it (section 6 "Instrument programming", "Named scripts").
- TSP-Link: remote nodes are reached as `node[N]`, e.g. `node[2].channel.close(...)`, and
  `node[N].model` is the node's model string (section 6 "TSP-Link system").

Speed: at connect the driver loads its own script (instruments/drivers/tsp/xbarlab.tsp) so that a
list of cell reads, a row read, an array read and one write-verify iteration (pulse each listed
cell, read each back) each take ONE bus round trip when the matrix sits on TSP-Link.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import ClassVar

from instruments.drivers.base import read_tsp_error_queue
from instruments.drivers.smu import SourceMeter
from instruments.drivers.transport import InstrumentError, InstrumentTimeout, Transport
from instruments.limits import LimitError, SafetyLimits

SCRIPT_NAME = "xbarlab"
SCRIPT_PATH = Path(__file__).resolve().parent / "tsp" / "xbarlab.tsp"
NPLC_RANGE = (0.001, 25.0)  # smuX.measure.nplc, 2600B reference manual
SWITCH_OVERHEAD = 10e-3
"""s per reading or pulse beyond the aperture (relay closure and settle, source settle), a
generous bound used only to size reply timeouts of script calls."""


def script_lines(path: Path = SCRIPT_PATH) -> list[str]:
    """The script's lines as the driver sends them: trailing blanks stripped, no empty lines."""
    lines = (line.rstrip() for line in path.read_text(encoding="ascii").splitlines())
    return [line for line in lines if line]


def num(value: float) -> str:
    """A number as the driver writes it into TSP (Lua reads every form of it)."""
    return format(float(value), ".9g")


def lua_table(values: Sequence[float | int | Sequence[int]]) -> str:
    """A Lua table constructor of numbers (or of tables of numbers): {1,2,{3,4}}."""
    items = []
    for value in values:
        if isinstance(value, Sequence | range) and not isinstance(value, str):
            items.append(lua_table(list(value)))
        elif isinstance(value, int):
            items.append(str(value))
        else:
            items.append(num(value))
    return "{" + ",".join(items) + "}"


def parse_numbers(reply: str, command: str, instrument: str) -> list[float]:
    """Numbers of a print()/printbuffer() reply (", " or tab separated)."""
    text = reply.strip()
    if not text:
        return []
    try:
        return [float(item) for item in re.split(r"[,\t]\s*", text)]
    except ValueError:
        raise InstrumentError(instrument, command, reply, "expected numbers") from None


class Keithley2600(SourceMeter):
    """A 2600B SMU; channels "a" and "b" (smua, smub; single-channel models have "a" only)."""

    identity_pattern: ClassVar[str] = r"Keithley Instruments.*Model 26\d\dB"
    channels: tuple[str, ...] = ("a", "b")

    def __init__(
        self, transport: Transport, limits: SafetyLimits, load_script: bool = True
    ) -> None:
        super().__init__(transport, limits)
        self.load_script_at_connect = load_script
        self.script_loaded = False
        self.nplc = 1.0  # power-line cycles per reading, as configured
        self.line_frequency = 50.0  # Hz, for reply-time estimates
        self.reply_timeout = transport.base_timeout  # s, for replies that need no work

    # -- connection -------------------------------------------------------------------------

    def connect(self) -> str:
        """*IDN? and the error queue; then the xbarlab script is loaded (if asked)."""
        reply = super().connect()
        if self.load_script_at_connect:
            self.load_script()
        return reply

    def load_script(self) -> None:
        """loadscript xbarlab / script lines / endscript, then xbarlab.run() defines the xbl_
        functions; the error queue is checked afterwards (one round trip)."""
        self.transport.write(f"loadscript {SCRIPT_NAME}")
        self.transport.write_block(script_lines())
        self.transport.write("endscript")
        self.transport.write(f"{SCRIPT_NAME}.run()")
        self.check_errors(f"loadscript {SCRIPT_NAME}")
        self.script_loaded = True

    def query(self, command: str, timeout: float | None = None) -> str:
        """A print() command; on a timeout, queued instrument errors (a TSP command that failed
        prints nothing) are reported instead of the bare timeout. `timeout` (s) for this query
        only."""
        try:
            return self.transport.query(command, timeout)
        except InstrumentTimeout as timeout:
            try:
                errors = self.read_errors()
            except InstrumentError:
                raise timeout from None
            if errors:
                raise InstrumentError(
                    self.name, command, "; ".join(errors), "instrument error queue"
                ) from timeout
            raise

    def read_errors(self) -> list[str]:
        """Drain the error queue: ["code message", ...]."""
        return read_tsp_error_queue(self)

    # -- SourceMeter ------------------------------------------------------------------------

    def smu(self, channel: str) -> str:
        return "smu" + self.check_channel(channel)

    def configure(self, channel: str, compliance: float, nplc: float) -> None:
        """DC volts source, current compliance (A), NPLC, current autorange; output unchanged."""
        smu = self.smu(channel)
        self.limits.check_compliance(compliance, f"{self.name} smu{channel} compliance")
        if not (math.isfinite(nplc) and NPLC_RANGE[0] <= nplc <= NPLC_RANGE[1]):
            raise ValueError(f"{self.name}: nplc {nplc!r} is outside {NPLC_RANGE} (2600B)")
        self.transport.write(f"{smu}.source.func = {smu}.OUTPUT_DCVOLTS")
        self.transport.write(f"{smu}.source.limiti = {num(compliance)}")
        self.transport.write(f"{smu}.measure.nplc = {num(nplc)}")
        self.transport.write(f"{smu}.measure.autorangei = {smu}.AUTORANGE_ON")
        self.nplc = nplc

    def set_current_range(self, channel: str, amps: float | None) -> None:
        """Fixed current measure range (A), or None for autorange."""
        smu = self.smu(channel)
        if amps is None:
            self.transport.write(f"{smu}.measure.autorangei = {smu}.AUTORANGE_ON")
            return
        if not (math.isfinite(amps) and amps > 0):
            raise ValueError(f"{self.name}: current range {amps!r} A must be positive")
        self.transport.write(f"{smu}.measure.rangei = {num(amps)}")

    def check_level(self, volts: float, what: str = "source level") -> None:
        """Raise LimitError unless |volts| <= limits.max_pulse_voltage (the largest allowed)."""
        limit = self.limits.max_pulse_voltage
        if not (math.isfinite(volts) and abs(volts) <= limit):
            raise LimitError(
                f"{self.name} {what}: {volts!r} V exceeds limits.max_pulse_voltage = {limit!r} V"
            )

    def set_voltage(self, channel: str, volts: float) -> None:
        smu = self.smu(channel)
        self.check_level(volts)
        self.transport.write(f"{smu}.source.levelv = {num(volts)}")

    def set_output(self, channel: str, on: bool) -> None:
        smu = self.smu(channel)
        state = "OUTPUT_ON" if on else "OUTPUT_OFF"
        self.transport.write(f"{smu}.source.output = {smu}.{state}")

    def measure_current(self, channel: str) -> float:
        smu = self.smu(channel)
        command = f"print({smu}.measure.i())"
        values = parse_numbers(self.query(command), command, self.name)
        if len(values) != 1:
            raise InstrumentError(self.name, command, str(values), "expected one number")
        return values[0]

    def pulse(self, channel: str, amplitude: float, width: float, base: float = 0.0) -> None:
        """base -> amplitude for width (s) -> base, as one TSP chunk (timed by delay())."""
        smu = self.smu(channel)
        self.limits.check_pulse(amplitude, width, f"{self.name} smu{channel} pulse")
        self.check_level(base, "pulse base")
        self.transport.write(
            f"{smu}.source.levelv = {num(amplitude)} delay({num(width)}) "
            f"{smu}.source.levelv = {num(base)}"
        )

    def sweep(self, channel: str, voltages: list[float]) -> list[float]:
        self.limits.check_sweep_voltage(voltages)
        return super().sweep(channel, voltages)

    def output_off(self) -> None:
        """Every channel to 0 V, output off."""
        for channel in self.channels:
            smu = self.smu(channel)
            self.transport.write(f"{smu}.source.levelv = 0")
            self.transport.write(f"{smu}.source.output = {smu}.OUTPUT_OFF")

    # -- script fast paths (instruments/drivers/tsp/xbarlab.tsp) ---------------------------

    def script_setup(
        self,
        node: int,
        word_lines: Sequence[tuple[int, int]],
        bit_lines: Sequence[tuple[int, int]],
        channels: tuple[str, str, str],
        rows: tuple[str, str, str, str],
    ) -> None:
        """Tell the script the wiring: matrix TSP-Link node, (slot, column) of every word and bit
        line, SMU channels (drive, sense, bias; "" for none) and matrix rows (drive, sense, ground,
        bias; "" for none)."""
        self._require_script()
        for channel in channels:
            if channel:
                self.check_channel(channel)
        wslot, wcol = zip(*word_lines, strict=True)
        bslot, bcol = zip(*bit_lines, strict=True)
        arguments = [str(int(node))]
        arguments += [lua_table(list(v)) for v in (wslot, wcol, bslot, bcol)]
        arguments += [f'"{value}"' for value in (*channels, *rows)]
        self.transport.write(f"xbl_setup({','.join(arguments)})")

    def script_call(self, call: str, readings: int = 1, pulse_seconds: float = 0.0) -> list[float]:
        """Run one xbl_ function (one round trip); its values without the trailing error count.
        Raise InstrumentError with the queued errors if the count is not zero. The reply may
        take as long as the work: the timeout is the link's plus 3x the estimated instrument
        time (readings x (NPLC / line frequency + SWITCH_OVERHEAD) + pulse time)."""
        self._require_script()
        work = readings * (self.nplc / self.line_frequency + SWITCH_OVERHEAD) + pulse_seconds
        timeout = self.reply_timeout + 3.0 * work
        values = parse_numbers(self.query(call, timeout), call, self.name)
        if not values:
            raise InstrumentError(self.name, call, "", "empty reply")
        if values[-1] != 0:
            errors = self.read_errors()
            raise InstrumentError(self.name, call, "; ".join(errors), "instrument error queue")
        return values[:-1]

    def script_read(
        self, v_read: float, averages: int, rows: Sequence[int], cols: Sequence[int]
    ) -> list[float]:
        """Currents (A) of cells (rows[k], cols[k])."""
        self.limits.check_read_voltage(v_read)
        call = f"xbl_read({num(v_read)},{int(averages)},{lua_table(rows)},{lua_table(cols)})"
        return self._expect(self.script_call(call, len(rows) * averages), len(rows), call)

    def script_read_row(self, v_read: float, averages: int, row: int, cols: int) -> list[float]:
        self.limits.check_read_voltage(v_read)
        call = f"xbl_readrow({num(v_read)},{int(averages)},{int(row)})"
        return self._expect(self.script_call(call, cols * averages), cols, call)

    def script_read_all(self, v_read: float, averages: int, size: int) -> list[float]:
        self.limits.check_read_voltage(v_read)
        call = f"xbl_readall({num(v_read)},{int(averages)})"
        return self._expect(self.script_call(call, size * averages), size, call)

    def _pulse_arguments(
        self,
        width: float,
        scheme: str,
        events: Sequence[tuple[int, Sequence[int], float]],
    ) -> str:
        amplitudes = [amplitude for _, _, amplitude in events]
        self.limits.check_pulse(amplitudes, width, f"{self.name} script pulse")
        rows = [row for row, _, _ in events]
        colsets = [list(cols) for _, cols, _ in events]
        return f'{num(width)},"{scheme}",{lua_table(rows)},{lua_table(colsets)},' + lua_table(
            [float(a) for a in amplitudes]
        )

    def script_pulse(
        self, width: float, scheme: str, events: Sequence[tuple[int, Sequence[int], float]]
    ) -> None:
        """Pulse events (word line, bit lines, amplitude V) of width s under a bias scheme."""
        call = f"xbl_pulse({self._pulse_arguments(width, scheme, events)})"
        pulses = len(events) * (width + SWITCH_OVERHEAD)
        self._expect(self.script_call(call, 0, pulses), 1, call)

    def script_pulse_read(
        self,
        width: float,
        scheme: str,
        events: Sequence[tuple[int, Sequence[int], float]],
        v_read: float,
        averages: int,
        rows: Sequence[int],
        cols: Sequence[int],
    ) -> list[float]:
        """One write-verify iteration in one round trip: the pulse events, then the reads."""
        self.limits.check_read_voltage(v_read)
        call = (
            f"xbl_pulseread({self._pulse_arguments(width, scheme, events)},{num(v_read)},"
            f"{int(averages)},{lua_table(rows)},{lua_table(cols)})"
        )
        pulses = len(events) * (width + SWITCH_OVERHEAD)
        return self._expect(self.script_call(call, len(rows) * averages, pulses), len(rows), call)

    def script_sweep(self, row: int, col: int, voltages: Sequence[float]) -> list[float]:
        self.limits.check_sweep_voltage(voltages)
        call = f"xbl_sweep({int(row)},{int(col)},{lua_table([float(v) for v in voltages])})"
        return self._expect(self.script_call(call, len(voltages)), len(voltages), call)

    def _expect(self, values: list[float], count: int, call: str) -> list[float]:
        if len(values) != count:
            raise InstrumentError(
                self.name, call, f"{len(values)} values", f"expected {count} values"
            )
        return values

    def _require_script(self) -> None:
        if not self.script_loaded:
            raise RuntimeError(f"{self.name}: the {SCRIPT_NAME} script is not loaded")
