"""Wire-level emulator of the xbarlab mux board (protocol: docs/mux-board-protocol.md).

`MuxBoardEmulator` keeps the firmware's state (one terminal per board line, two bias DACs, the
watchdog, the error queue) and mirrors it onto the `Bench` relays: board terminal HI is the SMU
channel cabled to the board (a bench channel such as "smu.1"), LO is "gnd", the bias buses are
fixed bench nodes ("<name>.bias1", "<name>.bias2") whose voltage the DAC commands set. Board lines
are wired to chip lines through the config's `[channel_map]`; unwired board lines only keep state.

`serve_mux_board(bench, config)` builds the emulator from an instrument config and serves it on a
free localhost port; the driver opens `server.url` ("socket://127.0.0.1:PORT") with pyserial.
"""

from __future__ import annotations

import math
import re
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from instruments.emulators.bench import Bench
from instruments.emulators.server import EmulatorServer, LineEmulator
from simulation.config import ConfigError, key_path

TERMINALS = ("FLOAT", "HI", "LO", "BIAS1", "BIAS2")
STATE_CHARS = {"FLOAT": "F", "HI": "H", "LO": "L", "BIAS1": "1", "BIAS2": "2"}
MAX_LINE = 256
QUEUE_SIZE = 16
WATCHDOG_RANGE = (0.1, 600.0)
WATCHDOG_POWER_ON = 5.0

ERROR_TEXT = {
    101: "Unknown command",
    102: "Syntax error",
    103: "Line too long",
    104: "Invalid character",
    201: "Line out of range",
    202: "Unknown terminal",
    203: "DAC voltage out of range",
    204: "Watchdog timeout out of range",
    205: "Terminal not allowed here",
    206: "Unknown DAC channel",
    301: "Watchdog expired; board safed",
    350: "Error queue overflow",
    401: "Hardware fault",
}

_NUMBER = r"([+-]?(?:\d+\.?\d*|\.\d+)(?:E[+-]?\d+)?)"
_WORD = r"([A-Z0-9]+)"


class BoardError(Exception):
    """A command the firmware refuses: protocol error code and detail."""

    def __init__(self, code: int, detail: str = "") -> None:
        self.code = code
        self.text = ERROR_TEXT[code] + (f"; {detail}" if detail else "")
        super().__init__(f"{code} {self.text}")


def _wiring(lines: Sequence[int] | None, count: int, board_lines: int) -> dict[int, int]:
    """Board line -> chip line (identity for the first `count` board lines by default)."""
    board = list(range(count)) if lines is None else [int(v) for v in lines]
    if len(board) != count:
        raise ValueError(f"channel map has {len(board)} lines, the chip has {count}")
    if any(not 0 <= v < board_lines for v in board) or len(set(board)) != len(board):
        raise ValueError(f"channel map {board} must be distinct lines in 0..{board_lines - 1}")
    return {line: chip_line for chip_line, line in enumerate(board)}


class MuxBoardEmulator(LineEmulator):
    """The mux board firmware, backed by the bench.

    word_map / bit_map: board line of each chip word / bit line (default: board lines 0..n-1).
    hi_terminal: the bench channel cabled to the board's HI input. dac_range (V), dac_bits: the
    bias DACs. clock: seconds (monotonic), injectable for tests.
    """

    def __init__(
        self,
        bench: Bench,
        name: str = "mux",
        *,
        word_lines: int = 64,
        bit_lines: int = 64,
        word_map: Sequence[int] | None = None,
        bit_map: Sequence[int] | None = None,
        hi_terminal: str = "smu.1",
        serial: str = "EMU00001",
        firmware: str = "1.0.0",
        dac_min: float = -5.0,
        dac_span: float = 10.0,
        dac_bits: int = 16,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(bench, name)
        self.identity = f"xbarlab,mux-board,{serial},{firmware}"  # type: ignore[misc]
        self.word_lines, self.bit_lines = word_lines, bit_lines
        self.word_wiring = _wiring(word_map, bench.rows, word_lines)
        self.bit_wiring = _wiring(bit_map, bench.cols, bit_lines)
        self.dac_min, self.dac_bits = dac_min, dac_bits
        self.dac_lsb = dac_span / 2**dac_bits
        self.dac_max = dac_min + (2**dac_bits - 1) * self.dac_lsb
        self.bench_terminals = {
            "HI": hi_terminal,
            "LO": "gnd",
            "BIAS1": f"{name}.bias1",
            "BIAS2": f"{name}.bias2",
        }
        self.clock = clock
        self.word = ["FLOAT"] * word_lines
        self.bit = ["FLOAT"] * bit_lines
        self.dac_codes = [self._code(0.0), self._code(0.0)]
        self.watchdog = WATCHDOG_POWER_ON
        self.last_feed = clock()
        self.watchdog_trips = 0
        bench.add_fixed(self.bench_terminals["BIAS1"], 0.0)
        bench.add_fixed(self.bench_terminals["BIAS2"], 0.0)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        # (keyword, full-line pattern, handler); the keyword tells 101 from 102
        table: list[tuple[str, str, Callable[..., str]]] = [
            ("*IDN?", r"\*IDN\?", lambda: self.identity),
            ("*OPC?", r"\*OPC\?", lambda: "1"),
            ("*CLS", r"\*CLS", self._clear),
            ("*RST", r"\*RST", self._reset_command),
            ("CONF?", r"CONF\?", self._conf),
            ("CONN", rf"CONN ([WB])(\d+) {_WORD}", self._conn),
            ("ALL", rf"ALL ([WB]) {_WORD}", self._all),
            ("ROUTE", rf"ROUTE W(\d+) B(\d+(?:,\d+)*) {_WORD} {_WORD}", self._route),
            ("DAC", rf"DAC (\d+) {_NUMBER}", self._dac),
            ("DAC?", r"DAC\? (\d+)", self._dac_query),
            ("STATE?", r"STATE\?", self._state),
            ("SAFE", r"SAFE", self._safe_command),
            ("WDOG", rf"WDOG {_NUMBER}", self._wdog),
            ("WDOG?", r"WDOG\?", lambda: f"{self.watchdog:.3f}"),
            ("ERR?", r"ERR\?", self._err),
        ]
        self._commands = {keyword: (re.compile(p), h) for keyword, p, h in table}

    # -- dispatch -------------------------------------------------------------------------------

    def handle(self, line: str) -> str | None:
        """One line in, exactly one reply line out (never None: every command answers)."""
        line = line.rstrip("\r")
        self.received.append(line)
        with self.bench.lock:
            try:
                return self._dispatch(line)
            except BoardError as error:
                self._queue(error.code, error.text)
                return f"ERR {error.code} {error.text}"

    def _dispatch(self, line: str) -> str:
        if len(line) > MAX_LINE:
            raise BoardError(103, f"{len(line)} characters, at most {MAX_LINE}")
        if any(not (32 <= ord(ch) < 127) for ch in line):
            raise BoardError(104, "only printable ASCII is allowed")
        upper = line.strip().upper()
        keyword = upper.split(" ")[0] if upper else ""
        if keyword not in self._commands:
            raise BoardError(101, f"{keyword or line!r}")
        self.last_feed = self.clock()  # a valid command keeps the watchdog fed
        pattern, handler = self._commands[keyword]
        match = pattern.fullmatch(upper)
        if match is None:
            raise BoardError(102, f"{line.strip()!r}")
        return handler(*match.groups())

    def unknown(self, line: str) -> str | None:  # pragma: no cover - handle() never calls it
        raise BoardError(101, line)

    # -- state helpers --------------------------------------------------------------------------

    def _queue(self, code: int, text: str) -> None:
        if len(self.errors) >= QUEUE_SIZE:
            self.errors[-1] = (350, ERROR_TEXT[350])
        else:
            self.errors.append((code, text))

    def _code(self, volts: float) -> int:
        """Firmware quantisation: nearest code, half up."""
        return math.floor((volts - self.dac_min) / self.dac_lsb + 0.5)

    def dac_volts(self, channel: int) -> float:
        """Actual output of DAC 1 or 2 (V)."""
        return self.dac_min + self.dac_codes[channel - 1] * self.dac_lsb

    def is_safe(self) -> bool:
        lines_float = all(t == "FLOAT" for t in self.word + self.bit)
        return lines_float and self.dac_volts(1) == 0.0 and self.dac_volts(2) == 0.0

    def _line(self, kind: str, text: str) -> int:
        index, size = int(text), self.word_lines if kind == "W" else self.bit_lines
        if not 0 <= index < size:
            raise BoardError(201, f"{kind}{index} not in 0..{size - 1}")
        return index

    @staticmethod
    def _terminal(text: str, allowed: Sequence[str] = TERMINALS) -> str:
        if text not in TERMINALS:
            raise BoardError(202, f"{text!r}; terminals: {', '.join(TERMINALS)}")
        if text not in allowed:
            raise BoardError(205, f"{text} for unselected lines; allowed: {', '.join(allowed)}")
        return text

    def _apply(self, changes: dict[tuple[str, int], str]) -> None:
        """Break before make: float every changed line, then close the new connections."""
        for terminal in changes.values():
            if terminal == "HI" and self.bench_terminals["HI"] not in self.bench.channels:
                raise BoardError(401, f"SMU input {self.bench_terminals['HI']!r} is not wired")
        mine = set(self.bench_terminals.values())
        for kind, index in changes:
            chip_line = self._chip_line(kind, index)
            if chip_line is not None:
                for terminal in mine:
                    self.bench.disconnect(chip_line, terminal)
        for (kind, index), terminal in changes.items():
            (self.word if kind == "W" else self.bit)[index] = terminal
            chip_line = self._chip_line(kind, index)
            if chip_line is not None and terminal != "FLOAT":
                self.bench.connect(chip_line, self.bench_terminals[terminal])

    def _chip_line(self, kind: str, index: int) -> tuple[str, int] | None:
        wiring = self.word_wiring if kind == "W" else self.bit_wiring
        return None if index not in wiring else ("word" if kind == "W" else "bit", wiring[index])

    def _set_dac(self, channel: int, code: int, command_line: str) -> None:
        self.dac_codes[channel - 1] = code
        volts = self.dac_volts(channel)
        self.bench.fixed[self.bench_terminals[f"BIAS{channel}"]] = volts
        self.log_source(f"bias{channel}", "voltage", volts, command_line)

    def safe(self) -> None:
        """Every line floats, both DACs at 0 V."""
        changes = {("W", i): "FLOAT" for i in range(self.word_lines)}
        changes.update({("B", j): "FLOAT" for j in range(self.bit_lines)})
        self._apply(changes)
        for channel in (1, 2):
            self._set_dac(channel, self._code(0.0), "SAFE")

    def reset(self) -> None:
        self.safe()
        self.watchdog = WATCHDOG_POWER_ON

    # -- commands -------------------------------------------------------------------------------

    def _clear(self) -> str:
        self.errors.clear()
        return "OK"

    def _reset_command(self) -> str:
        self.reset()
        return "OK"

    def _conf(self) -> str:
        return (
            f"{self.word_lines},{self.bit_lines},2,{self.dac_min:.6f},"
            f"{self.dac_min + self.dac_lsb * 2**self.dac_bits:.6f},{self.dac_bits}"
        )

    def _conn(self, kind: str, index: str, terminal: str) -> str:
        self._apply({(kind, self._line(kind, index)): self._terminal(terminal)})
        return "OK"

    def _all(self, kind: str, terminal: str) -> str:
        size = self.word_lines if kind == "W" else self.bit_lines
        terminal = self._terminal(terminal)
        self._apply({(kind, i): terminal for i in range(size)})
        return "OK"

    def _route(self, word: str, bits: str, unselected_word: str, unselected_bit: str) -> str:
        row = self._line("W", word)
        cols = {self._line("B", b) for b in bits.split(",")}
        allowed = ("FLOAT", "LO", "BIAS1", "BIAS2")
        uw = self._terminal(unselected_word, allowed)
        ub = self._terminal(unselected_bit, allowed)
        changes = {("W", i): ("HI" if i == row else uw) for i in range(self.word_lines)}
        changes.update({("B", j): ("LO" if j in cols else ub) for j in range(self.bit_lines)})
        self._apply(changes)
        return "OK"

    def _dac(self, channel: str, volts: str) -> str:
        number = int(channel)
        if number not in (1, 2):
            raise BoardError(206, f"DAC {number}; DACs: 1, 2")
        value = float(volts)
        if not self.dac_min <= value <= self.dac_max:
            raise BoardError(203, f"{value:g} V not in {self.dac_min:g}..{self.dac_max:.6f} V")
        self._set_dac(number, self._code(value), f"DAC {channel} {volts}")
        return "OK"

    def _dac_query(self, channel: str) -> str:
        if int(channel) not in (1, 2):
            raise BoardError(206, f"DAC {int(channel)}; DACs: 1, 2")
        return f"{self.dac_volts(int(channel)):.6f}"

    def _state(self) -> str:
        words = "".join(STATE_CHARS[t] for t in self.word)
        bits = "".join(STATE_CHARS[t] for t in self.bit)
        return f"{words},{bits}"

    def _safe_command(self) -> str:
        self.safe()
        return "OK"

    def _wdog(self, seconds: str) -> str:
        value = float(seconds)
        low, high = WATCHDOG_RANGE
        if not low <= value <= high:
            raise BoardError(204, f"{value:g} s not in {low:g}..{high:g} s")
        self.watchdog = value
        return "OK"

    def _err(self) -> str:
        if not self.errors:
            return "0 No error"
        code, text = self.errors.popleft()
        return f"{code} {text}"

    # -- watchdog -------------------------------------------------------------------------------

    def check_watchdog(self) -> bool:
        """Go SAFE (and queue 301) if the host was silent too long; True if it tripped."""
        with self.bench.lock:
            if self.clock() - self.last_feed <= self.watchdog or self.is_safe():
                return False
            self.safe()
            self.watchdog_trips += 1
            self._queue(301, f"{ERROR_TEXT[301]}; no command for {self.watchdog:g} s")
            return True

    def start_watchdog(self, period: float = 0.02) -> None:
        """Check the watchdog every `period` s in a daemon thread (the firmware's timer)."""
        if self._thread is not None:
            return

        def loop() -> None:
            while not self._stop.wait(period):
                self.check_watchdog()

        self._thread = threading.Thread(target=loop, name=f"{self.name} watchdog", daemon=True)
        self._thread.start()

    def stop_watchdog(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=1.0)
            self._thread = None


class MuxBoardServer(EmulatorServer):
    """EmulatorServer for the board: runs the watchdog timer, and gives the pyserial URL."""

    emulator: MuxBoardEmulator

    def __init__(self, emulator: MuxBoardEmulator, port: int = 0, host: str = "127.0.0.1") -> None:
        super().__init__(emulator, port, host)
        # poll for shutdown every 20 ms (the default 0.5 s makes every stop() slow)
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.02},
            name=f"emulator {emulator.name}",
            daemon=True,
        )

    @property
    def url(self) -> str:
        """What the driver opens: socket://HOST:PORT (pyserial serial_for_url)."""
        return f"socket://{self.host}:{self.port}"

    def start(self) -> MuxBoardServer:
        self.emulator.start_watchdog()
        super().start()
        return self

    def stop(self) -> None:
        self.emulator.stop_watchdog()
        super().stop()


def _channel_lines(config: Mapping[str, Any], key: str, where: str) -> list[int] | None:
    from instruments.mux_crossbar import parse_lines

    table = config.get("channel_map", {})
    if key not in table:
        return None
    return parse_lines(table[key], key_path(key_path(where, "channel_map"), key))


def serve_mux_board(
    bench: Bench,
    config: Mapping[str, Any],
    where: str = "instrument config:",
    *,
    hi_terminal: str | None = None,
    name: str = "mux",
    word_lines: int = 64,
    bit_lines: int = 64,
) -> MuxBoardServer:
    """Start a board emulator for an smu-mux instrument config on a free localhost port.

    Wires board lines to chip lines from `[channel_map]` (word_lines / bit_lines, default the
    first rows / cols board lines); HI goes to the bench channel `hi_terminal` (default
    "smu.<[smu] channel>", "smu.1" for a 2450). The driver connects to `server.url`.
    """
    smu = config.get("smu", {})
    if hi_terminal is None:
        hi_terminal = f"smu.{smu.get('channel', '1')}"
    word_map = _channel_lines(config, "word_lines", where)
    bit_map = _channel_lines(config, "bit_lines", where)
    try:
        emulator = MuxBoardEmulator(
            bench,
            name,
            word_lines=word_lines,
            bit_lines=bit_lines,
            word_map=word_map,
            bit_map=bit_map,
            hi_terminal=hi_terminal,
        )
    except ValueError as error:
        raise ConfigError(f"{key_path(where, 'channel_map')}: {error}") from None
    return MuxBoardServer(emulator).start()
