"""Emulated Keithley 2600B SMU (two channels) on the bench, TSP over a line protocol.

Direct TSP commands (`smua.source.levelv = 0.2`, `print(smua.measure.i())`, ...) are matched by
regular expressions (the commands of instruments/drivers/keithley2600.py, from the 2600B
reference manual). Anything else -> error -285 "TSP Syntax error" in the error queue and no
reply, as on the instrument (TSP instruments answer only print()). Numbers print as print() does
by default ("1.00000e-07"); printbuffer() values are separated by ", ".

Scripts: the emulator cannot run Lua. It collects the lines between `loadscript NAME` and
`endscript`; a script named xbarlab whose text is exactly the driver's shipped
instruments/drivers/tsp/xbarlab.tsp (SHA-256 of its lines as the driver sends them) is accepted
and `xbarlab.run()` defines its xbl_ functions, which the emulator then implements natively in
Python with the same semantics (same relay patterns, levels, order of measurements and output).
A script with other text -> error -285 (an emulator-only message saying it cannot be emulated).
Calling an xbl_ function before `xbarlab.run()` -> -286 (attempt to call a nil value), as Lua
would.

TSP-Link: `link(node, emulator)` attaches another TSP emulator (a 707B) as node[N]; commands
`node[N].<command>` are forwarded to it and its errors move into this (master's) queue.

Timing: a measurement integrates for nplc / line_frequency seconds of simulated chip time; a pulse
drives the chip for its width. Compliance: a current above smuX.source.limiti reads as the limit.
A bench short (two terminals at different voltages on one line) -> error -286 and no reply
(emulator-only message).
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

from instruments.drivers.keithley2600 import NPLC_RANGE, SCRIPT_NAME, script_lines
from instruments.emulators.bench import Bench, BenchShort, ChannelState
from instruments.emulators.keithley707b import NUMBER, Keithley707BEmulator
from instruments.emulators.server import LineEmulator, command
from instruments.emulators.tsp import TspEmulator, tsp_number

OVERFLOW = 9.91e37  # 2600B reading of an overflowed measurement range
SHIPPED_SCRIPT_SHA256 = hashlib.sha256("\n".join(script_lines()).encode("ascii")).hexdigest()


class TspRuntimeError(RuntimeError):
    """A Lua runtime error: the command (or script function) stops, -286 is queued."""


@dataclass
class SmuSettings:
    """What the emulator keeps per channel beyond the bench's ChannelState."""

    func: str = "OUTPUT_DCVOLTS"
    nplc: float = 1.0
    autorange: bool = True
    range_i: float = 1e-4


def parse_lua_arguments(text: str) -> list[Any]:
    """Arguments of a Lua call: numbers, "strings" and tables {..} (nested) -> Python values."""
    position = 0

    def skip() -> None:
        nonlocal position
        while position < len(text) and text[position].isspace():
            position += 1

    def value() -> Any:
        nonlocal position
        skip()
        if position >= len(text):
            raise ValueError("missing value")
        char = text[position]
        if char == "{":
            position += 1
            items: list[Any] = []
            skip()
            if position < len(text) and text[position] == "}":
                position += 1
                return items
            while True:
                items.append(value())
                skip()
                if position < len(text) and text[position] == ",":
                    position += 1
                    continue
                if position < len(text) and text[position] == "}":
                    position += 1
                    return items
                raise ValueError(f"expected ',' or '}}' at {position}")
        if char == '"':
            end = text.find('"', position + 1)
            if end < 0:
                raise ValueError("unfinished string")
            result = text[position + 1 : end]
            position = end + 1
            return result
        match = re.compile(NUMBER).match(text, position)
        if not match:
            raise ValueError(f"unexpected symbol near '{text[position : position + 10]}'")
        position = match.end()
        return float(match.group())

    arguments: list[Any] = []
    skip()
    if position == len(text):
        return arguments
    while True:
        arguments.append(value())
        skip()
        if position == len(text):
            return arguments
        if text[position] != ",":
            raise ValueError(f"unexpected symbol near '{text[position : position + 10]}'")
        position += 1


class Keithley2600Emulator(TspEmulator):
    """A 2636B: channels smua, smub on the bench as terminals "<prefix>.a", "<prefix>.b"."""

    identity: ClassVar[str] = "Keithley Instruments Inc., Model 2636B, 4420002, 4.0.4"
    model: ClassVar[str] = "2636B"

    def __init__(
        self,
        bench: Bench,
        name: str = "smu",
        prefix: str = "smu",
        line_frequency: float = 50.0,
    ) -> None:
        super().__init__(bench, name)
        self.prefix = prefix
        self.line_frequency = line_frequency
        self.states: dict[str, ChannelState] = {}
        self.settings: dict[str, SmuSettings] = {}
        for letter in ("a", "b"):
            self.states[letter] = bench.add_channel(self.terminal(letter))
            self.settings[letter] = SmuSettings()
        self.nodes: dict[int, LineEmulator] = {}
        self.scripts: dict[str, bool] = {}  # name -> can be emulated
        self.functions_defined = False
        self._collecting: list[str] | None = None
        self._collect_name = ""
        self._xbl: dict[str, Any] = {}
        self.script_calls = 0

    def terminal(self, letter: str) -> str:
        return f"{self.prefix}.{letter}"

    def link(self, node: int, emulator: LineEmulator) -> None:
        """Attach a TSP emulator as TSP-Link node[node]."""
        self.nodes[node] = emulator

    # -- dispatch: scripts first --------------------------------------------------------------

    def handle(self, line: str) -> str | None:
        stripped = line.strip()
        if self._collecting is not None:
            self.received.append(stripped)
            if stripped == "endscript":
                self._finish_script()
            elif stripped:
                self._collecting.append(line.rstrip())
            return None
        match = re.fullmatch(r"loadscript\s+(\w+)", stripped)
        if match:
            self.received.append(stripped)
            self._collecting, self._collect_name = [], match[1]
            return None
        return super().handle(line)

    def _finish_script(self) -> None:
        lines, name = self._collecting or [], self._collect_name
        self._collecting = None
        digest = hashlib.sha256("\n".join(lines).encode("ascii", "replace")).hexdigest()
        ok = name == SCRIPT_NAME and digest == SHIPPED_SCRIPT_SHA256
        self.scripts[name] = ok
        if not ok:
            self.push_error(
                -285,
                f"TSP Syntax error: emulator cannot run script {name!r} (sha256 {digest[:12]}); "
                f"only the shipped {SCRIPT_NAME}.tsp is emulated",
            )

    def reset(self) -> None:
        for letter, state in self.states.items():
            state.level, state.output_on, state.compliance = 0.0, False, 1e-4
            self.settings[letter] = SmuSettings()

    def _guard(self, line: str, action: Callable[[], str | None]) -> str | None:
        """Run an action; Lua runtime errors and bench shorts queue -286 and print nothing."""
        try:
            return action()
        except (TspRuntimeError, BenchShort, TypeError, ValueError) as error:
            self.push_error(-286, f"TSP Runtime error at line 1: {error}")
            return None

    # -- source and measure -------------------------------------------------------------------

    def set_level(self, letter: str, volts: float, command_line: str, quantity: str = "voltage"):
        self.states[letter].level = volts
        self.log_source(self.terminal(letter), quantity, volts, command_line)

    def measure(self, letter: str) -> float:
        """One reading (A) of a channel: the chip driven for nplc / line_frequency s."""
        settings = self.settings[letter]
        currents = self.bench.drive(settings.nplc / self.line_frequency)
        current = currents.get(self.terminal(letter), 0.0)
        if not settings.autorange and abs(current) > 1.01 * settings.range_i:
            return OVERFLOW
        return current

    def pulse_drive(self, letter: str, amplitude: float, width: float, command_line: str) -> None:
        """Source `amplitude` for `width` s (the chip sees it only while the output is on)."""
        self.log_source(self.terminal(letter), "pulse", amplitude, command_line)
        if self.states[letter].output_on:
            self.bench.drive(width, overrides={self.terminal(letter): amplitude})

    @command(r"(smu[ab])\.source\.func\s*=\s*\1\.(OUTPUT_DCVOLTS)")
    def _func(self, smu: str, func: str) -> None:
        self.settings[smu[-1].lower()].func = func.upper()

    @command(r"(smu[ab])\.source\.levelv\s*=\s*(" + NUMBER + ")")
    def _levelv(self, smu: str, volts: str) -> None:
        self.set_level(smu[-1].lower(), float(volts), f"{smu}.source.levelv = {volts}")

    @command(r"(smu[ab])\.source\.limiti\s*=\s*(" + NUMBER + ")")
    def _limiti(self, smu: str, amps: str) -> None:
        letter = smu[-1].lower()
        self.states[letter].compliance = float(amps)
        self.log_source(self.terminal(letter), "current_limit", float(amps), f"limiti {amps}")

    @command(r"(smu[ab])\.measure\.nplc\s*=\s*(" + NUMBER + ")")
    def _nplc(self, smu: str, value: str) -> None:
        nplc = float(value)
        if not NPLC_RANGE[0] <= nplc <= NPLC_RANGE[1]:
            self.push_error(-286, f"TSP Runtime error at line 1: nplc {value} out of range")
            return
        self.settings[smu[-1].lower()].nplc = nplc

    @command(r"(smu[ab])\.measure\.autorangei\s*=\s*\1\.AUTORANGE_(ON|OFF)")
    def _autorange(self, smu: str, state: str) -> None:
        self.settings[smu[-1].lower()].autorange = state.upper() == "ON"

    @command(r"(smu[ab])\.measure\.rangei\s*=\s*(" + NUMBER + ")")
    def _rangei(self, smu: str, amps: str) -> None:
        settings = self.settings[smu[-1].lower()]
        settings.range_i, settings.autorange = float(amps), False

    @command(r"(smu[ab])\.source\.output\s*=\s*\1\.OUTPUT_(ON|OFF)")
    def _output(self, smu: str, state: str) -> None:
        self.states[smu[-1].lower()].output_on = state.upper() == "ON"

    @command(r"print\((smu[ab])\.measure\.i\(\)\)")
    def _measure_i(self, smu: str) -> str | None:
        return self._guard(smu, lambda: tsp_number(self.measure(smu[-1].lower())))

    @command(
        r"(smu[ab])\.source\.levelv\s*=\s*(" + NUMBER + r")\s+delay\((" + NUMBER + r")\)\s+"
        r"\1\.source\.levelv\s*=\s*(" + NUMBER + ")"
    )
    def _pulse(self, smu: str, amplitude: str, width: str, base: str) -> str | None:
        letter = smu[-1].lower()
        line = f"{smu} pulse {amplitude} for {width} s"

        def run() -> None:
            self.pulse_drive(letter, float(amplitude), float(width), line)
            self.set_level(letter, float(base), line)

        return self._guard(line, run)

    @command(r"(smu[ab])\.reset\(\)")
    def _smu_reset(self, smu: str) -> None:
        letter = smu[-1].lower()
        state = self.states[letter]
        state.level, state.output_on, state.compliance = 0.0, False, 1e-4
        self.settings[letter] = SmuSettings()

    @command(r"reset\(\)")
    def _reset_all(self) -> None:
        self.reset()

    # -- TSP-Link -------------------------------------------------------------------------------

    def _node(self, number: str) -> LineEmulator | None:
        node = self.nodes.get(int(number))
        if node is None:
            self.push_error(-286, f"TSP Runtime error at line 1: node[{number}] is nil")
        return node

    def _collect_node_errors(self, node: LineEmulator, number: str) -> None:
        while node.errors:
            code, message = node.errors.popleft()
            self.push_error(code, f"node {number}: {message}")

    @command(r"print\(node\[(\d+)\]\.model\)")
    def _node_model(self, number: str) -> str | None:
        node = self._node(number)
        return None if node is None else str(getattr(node, "model", "unknown"))

    @command(r"print\(node\[(\d+)\]\.(.+)\)")
    def _node_print(self, number: str, rest: str) -> str | None:
        node = self._node(number)
        if node is None:
            return None
        reply = node.handle(f"print({rest})")
        self._collect_node_errors(node, number)
        return reply

    @command(r"node\[(\d+)\]\.(.+)")
    def _node_command(self, number: str, rest: str) -> None:
        node = self._node(number)
        if node is not None:
            node.handle(rest)
            self._collect_node_errors(node, number)

    # -- the xbarlab script -----------------------------------------------------------------

    @command(SCRIPT_NAME + r"\.run\(\)")
    def _run_script(self) -> None:
        if SCRIPT_NAME not in self.scripts:
            self.push_error(
                -286, f"TSP Runtime error at line 1: attempt to index global '{SCRIPT_NAME}'"
            )
        elif not self.scripts[SCRIPT_NAME]:
            self.push_error(-286, f"TSP Runtime error: script {SCRIPT_NAME} cannot be emulated")
        else:
            self.functions_defined = True

    @command(r"(xbl_\w+)\((.*)\)")
    def _xbl_call(self, function: str, arguments: str) -> str | None:
        handlers: dict[str, Callable[..., str | None]] = {
            "xbl_setup": self._xbl_setup,
            "xbl_read": self._xbl_read,
            "xbl_readrow": self._xbl_readrow,
            "xbl_readall": self._xbl_readall,
            "xbl_pulse": self._xbl_pulse,
            "xbl_pulseread": self._xbl_pulseread,
            "xbl_sweep": self._xbl_sweep,
        }
        if not self.functions_defined or function not in handlers:
            self.push_error(
                -286,
                f"TSP Runtime error at line 1: attempt to call global '{function}' (a nil value)",
            )
            return None
        try:
            values = parse_lua_arguments(arguments)
        except ValueError as error:
            self.push_error(-285, f"TSP Syntax error at line 1: {error}")
            return None
        self.script_calls += 1
        line = f"{function}(...)"
        return self._guard(line, lambda: handlers[function](*values))

    def _need(self, key: str) -> Any:
        if key not in self._xbl:
            raise TspRuntimeError(f"attempt to index field '{key}' (a nil value)")
        return self._xbl[key]

    def _xbl_setup(
        self, nodeid, wslot, wcol, bslot, bcol, drive, sense, bias, rdrive, rsense, rgnd, rbias
    ) -> None:
        node = self.nodes.get(int(nodeid))
        if not isinstance(node, Keithley707BEmulator):
            raise TspRuntimeError(f"attempt to index field '?' (node[{int(nodeid)}] is nil)")
        if len(wslot) != len(wcol) or len(bslot) != len(bcol):
            raise TspRuntimeError("slot and column tables differ in length")
        self._xbl = {
            "matrix": node,
            "words": [(int(s), int(c)) for s, c in zip(wslot, wcol, strict=True)],
            "bits": [(int(s), int(c)) for s, c in zip(bslot, bcol, strict=True)],
            "drive": drive if drive in ("a", "b") else None,
            "sense": sense if sense in ("a", "b") else None,
            "bias": bias if bias in ("a", "b") else None,
            "rdrive": rdrive,
            "rsense": rsense,
            "rgnd": rgnd,
            "rbias": rbias,
        }
        if self._xbl["drive"] is None:
            raise TspRuntimeError("attempt to index field 'drive' (a nil value)")

    def _pattern(self, r: int, sel: set[int], rsel: str, rw: str, rb: str) -> set:
        """The script's pattern(): word r -> drive row, bits in sel -> rsel, others -> rw/rb.
        Parsed patterns are cached per script setup (the channel strings do not change)."""
        x = self._xbl
        key = (r, frozenset(sel), rsel, rw, rb)
        cache = x.setdefault("_patterns", {})
        if key in cache:
            return cache[key]
        items = []
        for i, (slot, col) in enumerate(x["words"]):
            if i == r:
                items.append(f"{slot}{x['rdrive']}{col:02d}")
            elif rw != "":
                items.append(f"{slot}{rw}{col:02d}")
        for j, (slot, col) in enumerate(x["bits"]):
            if j in sel:
                items.append(f"{slot}{rsel}{col:02d}")
            elif rb != "":
                items.append(f"{slot}{rb}{col:02d}")
        matrix: Keithley707BEmulator = x["matrix"]
        try:
            parsed = matrix.parse_list(",".join(items))
        except ValueError as error:
            raise TspRuntimeError(f"node: {error}") from None
        if len(cache) < 100_000:
            cache[key] = parsed
        return parsed

    def _read_cell(self, out: list[float], r: int, c: int, v: float, averages: int) -> None:
        x = self._xbl
        drive, sense = self._need("drive"), x["sense"]
        matrix: Keithley707BEmulator = x["matrix"]
        self.set_level(drive, 0.0, "xbl read")
        if sense:
            matrix.exclusive_set(self._pattern(r, {c}, x["rsense"], x["rgnd"], x["rgnd"]))
        else:
            matrix.exclusive_set(self._pattern(r, {c}, x["rgnd"], "", ""))
        self.set_level(drive, v, "xbl read")
        total = 0.0
        for _ in range(averages):
            total += -self.measure(sense) if sense else self.measure(drive)
        self.set_level(drive, 0.0, "xbl read")
        out.append(total / averages)

    def _pulse_event(self, r: int, cols: list, amp: float, width: float, scheme: str) -> None:
        x = self._xbl
        drive = self._need("drive")
        other = x["rgnd"] if scheme == "grounded" else x["rbias"] if scheme == "v/2" else ""
        if scheme == "v/2" and (x["bias"] is None or not x["rbias"]):
            raise TspRuntimeError("attempt to index field 'bias' (a nil value)")
        matrix: Keithley707BEmulator = x["matrix"]
        self.set_level(drive, 0.0, "xbl pulse")
        matrix.exclusive_set(self._pattern(r, {int(c) for c in cols}, x["rgnd"], other, other))
        if scheme == "v/2":
            self.set_level(x["bias"], amp / 2, "xbl pulse bias")
        self.pulse_drive(drive, amp, width, "xbl pulse")
        self.set_level(drive, 0.0, "xbl pulse")
        if scheme == "v/2":
            self.set_level(x["bias"], 0.0, "xbl pulse bias")

    def _finish(self, out: list[float]) -> str:
        x = self._xbl
        self.set_level(x["drive"], 0.0, "xbl finish")
        if x["bias"]:
            self.set_level(x["bias"], 0.0, "xbl finish")
        x["matrix"].open_everything()
        out.append(float(len(self.errors)))
        return ", ".join(tsp_number(value) for value in out)

    def _cells(self, rows: list, cols: list) -> list[tuple[int, int]]:
        if len(rows) != len(cols):
            raise TspRuntimeError("row and column tables differ in length")
        shape = (len(self._xbl["words"]), len(self._xbl["bits"]))
        cells = [(int(r), int(c)) for r, c in zip(rows, cols, strict=True)]
        for r, c in cells:
            if not (0 <= r < shape[0] and 0 <= c < shape[1]):
                raise TspRuntimeError(f"attempt to index a nil value (cell {r}, {c})")
        return cells

    def _xbl_read(self, v: float, averages: float, rows: list, cols: list) -> str:
        self._need("drive")
        out: list[float] = []
        for r, c in self._cells(rows, cols):
            self._read_cell(out, r, c, v, int(averages))
        return self._finish(out)

    def _xbl_readrow(self, v: float, averages: float, r: float) -> str:
        bits = len(self._need("bits"))
        return self._xbl_read(v, averages, [r] * bits, list(range(bits)))

    def _xbl_readall(self, v: float, averages: float) -> str:
        rows, bits = len(self._need("words")), len(self._need("bits"))
        cells = [(r, c) for r in range(rows) for c in range(bits)]
        return self._xbl_read(v, averages, [r for r, _ in cells], [c for _, c in cells])

    def _pulses(self, width: float, scheme: str, rows: list, colsets: list, amps: list) -> None:
        if not (len(rows) == len(colsets) == len(amps)):
            raise TspRuntimeError("pulse tables differ in length")
        for r, cols, amp in zip(rows, colsets, amps, strict=True):
            self._cells([r] * len(cols), list(cols))
            self._pulse_event(int(r), list(cols), float(amp), float(width), scheme)

    def _xbl_pulse(self, width: float, scheme: str, rows: list, colsets: list, amps: list) -> str:
        self._need("drive")
        self._pulses(width, scheme, rows, colsets, amps)
        return self._finish([float(len(rows))])

    def _xbl_pulseread(self, width, scheme, rows, colsets, amps, v, averages, rrows, rcols) -> str:
        self._need("drive")
        cells = self._cells(rrows, rcols)
        self._pulses(width, scheme, rows, colsets, amps)
        out: list[float] = []
        for r, c in cells:
            self._read_cell(out, r, c, v, int(averages))
        return self._finish(out)

    def _xbl_sweep(self, r: float, c: float, volts: list) -> str:
        self._need("drive")
        ((row, col),) = self._cells([r], [c])
        out: list[float] = []
        for v in volts:
            if not math.isfinite(v):
                raise TspRuntimeError("level is not a number")
            self._read_cell(out, row, col, float(v), 1)
        return self._finish(out)
