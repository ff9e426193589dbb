"""Driver of the xbarlab mux board over a serial line (protocol: docs/mux-board-protocol.md).

Every board command answers one line (`OK`, a value, or `ERR <code> <text>`), so every method here
is one query round trip, and a refused command raises `InstrumentError` at once (after draining
the board's error queue into the message). `connect()` checks the identity, reads `CONF?`, reports
leftover events (a watchdog trip from an earlier session) as warnings, raises on real errors, puts
the board SAFE and sets the watchdog. `output_off()` is `SAFE`.
"""

from __future__ import annotations

import contextlib
import math
import re
import time
import warnings
from dataclasses import dataclass
from typing import ClassVar

from instruments.drivers.base import Instrument
from instruments.drivers.transport import (
    IdentityMismatch,
    InstrumentError,
    InstrumentTimeout,
    SerialTransport,
    Transport,
)

TERMINALS = ("FLOAT", "HI", "LO", "BIAS1", "BIAS2")
UNSELECTED_TERMINALS = ("FLOAT", "LO", "BIAS1", "BIAS2")
EVENT_CODES = range(300, 400)  # errors the board raises on its own (watchdog trip, overflow)


@dataclass(frozen=True)
class BoardConfig:
    """What `CONF?` reports: line counts, DAC count, DAC range (V) and resolution (bits).

    dac_max is the DAC's nominal full scale: its highest output is one LSB below it.
    """

    word_lines: int
    bit_lines: int
    dacs: int
    dac_min: float
    dac_max: float
    dac_bits: int

    @property
    def dac_lsb(self) -> float:
        """Volts per DAC code: (dac_max - dac_min) / 2**bits."""
        return (self.dac_max - self.dac_min) / 2**self.dac_bits

    @property
    def dac_highest(self) -> float:
        """Highest DAC output (V): dac_max - 1 LSB."""
        return self.dac_max - self.dac_lsb

    def quantize(self, volts: float) -> float:
        """The DAC's actual output (V) for a request, as the firmware rounds (half up)."""
        code = math.floor((volts - self.dac_min) / self.dac_lsb + 0.5)
        return self.dac_min + code * self.dac_lsb

    @classmethod
    def parse(cls, reply: str) -> BoardConfig:
        fields = reply.split(",")
        if len(fields) != 6:
            raise ValueError(f"expected 6 comma-separated fields, got {reply!r}")
        return cls(
            int(fields[0]),
            int(fields[1]),
            int(fields[2]),
            float(fields[3]),
            float(fields[4]),
            int(fields[5]),
        )


class MuxBoard(Instrument):
    """The mux board: one 1-of-4 switch per line (FLOAT, HI, LO, BIAS1, BIAS2) and two bias DACs.

    watchdog: seconds of host silence after which the board goes SAFE (set at connect).
    boot_delay: seconds to wait before the first command (an Arduino reboots when its port opens).
    """

    identity_pattern: ClassVar[str] = r"^xbarlab,mux-board,[^,]+,[^,]+$"

    def __init__(self, transport: Transport, watchdog: float = 10.0, boot_delay: float = 0.0):
        super().__init__(transport)
        self.watchdog = watchdog
        self.boot_delay = boot_delay
        self.config: BoardConfig | None = None
        self.events: list[str] = []  # board events (3xx) seen at connect or in error checks
        self.dac: dict[int, float] = {1: 0.0, 2: 0.0}  # actual DAC outputs (V) as last set
        self._resync = False

    @classmethod
    def open(
        cls,
        port: str,
        *,
        name: str = "mux board",
        baudrate: int = 115200,
        timeout: float = 2.0,
        watchdog: float = 10.0,
        boot_delay: float = 0.0,
    ) -> MuxBoard:
        """Open the serial port (a device or "socket://127.0.0.1:PORT") and connect."""
        board = cls(SerialTransport(name, port, baudrate, timeout), watchdog, boot_delay)
        try:
            board.connect()
        except BaseException:
            board.close()
            raise
        return board

    # -- exchange -------------------------------------------------------------------------------

    def _query(self, command: str) -> str:
        """One round trip; ERR replies raise InstrumentError naming the board's queue."""
        if self._resync:
            self._discard_input()
        try:
            reply = self.transport.query(command)
        except InstrumentTimeout:
            self._resync = True  # a late reply may still arrive: discard it before the next
            raise
        if reply.startswith("ERR "):
            queued = self._drain_quietly()
            detail = f"board error queue: {'; '.join(queued)}" if queued else "board error"
            raise InstrumentError(self.name, command, reply, detail)
        return reply

    def _command(self, command: str) -> None:
        reply = self._query(command)
        if reply != "OK":
            raise InstrumentError(self.name, command, reply, "expected 'OK'")

    def _discard_input(self) -> None:
        # SerialTransport keeps its pyserial port in `_port`; other transports have no backlog.
        port = getattr(self.transport, "_port", None)
        if port is not None:
            with contextlib.suppress(Exception):
                port.reset_input_buffer()
        self._resync = False

    def _drain_quietly(self) -> list[str]:
        try:
            return self.read_errors()
        except InstrumentError:
            return []

    # -- Instrument -----------------------------------------------------------------------------

    def connect(self) -> str:
        """Identity, CONF?, error queue (events warn, errors raise), SAFE, watchdog."""
        if self.boot_delay > 0:
            time.sleep(self.boot_delay)
            self._discard_input()
        reply = self._check_identity()
        self.config = self.configuration()
        self.check_errors("connect")
        self.safe()
        self.set_watchdog(self.watchdog)
        return reply

    def _check_identity(self) -> str:
        """*IDN? against identity_pattern (Instrument.connect's check; the board's queue check
        needs CONF? first and treats events apart)."""
        reply = self._query("*IDN?").strip()
        if not re.search(self.identity_pattern, reply, flags=re.IGNORECASE):
            raise IdentityMismatch(
                self.name,
                "*IDN?",
                reply,
                f"expected an instrument matching {self.identity_pattern!r}",
            )
        self.identity = reply
        return reply

    def read_errors(self) -> list[str]:
        """Drain the board's error queue ("ERR?" until "0 No error"); [] when empty."""
        errors = []
        for _ in range(64):
            reply = self.transport.query("ERR?")
            if reply.startswith("0 ") or reply == "0":
                return errors
            errors.append(reply)
        return errors

    def check_errors(self, after: str) -> None:
        """Raise on queued command errors; events (3xx, e.g. a watchdog trip) warn and raise
        only when `after` is an operation (not "connect"): a trip mid-operation voids it."""
        errors = self.read_errors()
        events = [e for e in errors if _code(e) in EVENT_CODES]
        self.events.extend(events)
        if after == "connect":
            for event in events:
                warnings.warn(f"{self.name}: board reported {event!r}", RuntimeWarning, 2)
            errors = [e for e in errors if e not in events]
        if errors:
            raise InstrumentError(self.name, after, "; ".join(errors), "board error queue")

    def output_off(self) -> None:
        """SAFE: every line floats, both DACs at 0 V."""
        self.safe()

    # -- commands -------------------------------------------------------------------------------

    def configuration(self) -> BoardConfig:
        """CONF?: line counts and DAC range."""
        reply = self._query("CONF?")
        try:
            return BoardConfig.parse(reply)
        except ValueError as error:
            raise InstrumentError(self.name, "CONF?", reply, str(error)) from None

    def connect_line(self, kind: str, index: int, terminal: str) -> None:
        """CONN W<i>|B<j> <terminal>: one line ("word" or "bit") to a terminal."""
        self._command(f"CONN {self._line(kind, index)} {_terminal(terminal, TERMINALS)}")

    def connect_all(self, kind: str, terminal: str) -> None:
        """ALL W|B <terminal>: every word (bit) line to a terminal."""
        letter = self._line(kind, 0)[0]
        self._command(f"ALL {letter} {_terminal(terminal, TERMINALS)}")

    def route(
        self,
        word: int,
        bits: list[int] | tuple[int, ...],
        unselected_word: str,
        unselected_bit: str,
    ) -> None:
        """ROUTE: word line to HI, bit lines to LO, the others to the given terminals, at once."""
        if len(bits) == 0:
            raise ValueError(f"{self.name}: route needs at least one bit line")
        bit_list = ",".join(self._line("bit", j)[1:] for j in bits)
        uw = _terminal(unselected_word, UNSELECTED_TERMINALS)
        ub = _terminal(unselected_bit, UNSELECTED_TERMINALS)
        self._command(f"ROUTE {self._line('word', word)} B{bit_list} {uw} {ub}")

    def set_dac(self, channel: int, volts: float) -> float:
        """DAC <n> <V>: bias bus 1 or 2; returns the actual (quantised) output in V."""
        if channel not in (1, 2):
            raise ValueError(f"{self.name}: DAC channel {channel!r}; allowed: 1, 2")
        config = self._config()
        if not (math.isfinite(volts) and config.dac_min <= round(volts, 6) <= config.dac_highest):
            raise ValueError(
                f"{self.name}: DAC {channel} level {volts!r} V is outside the board's range "
                f"[{config.dac_min}, {config.dac_highest:.6f}] V"
            )
        self._command(f"DAC {channel} {volts:.6f}")
        self.dac[channel] = config.quantize(round(volts, 6))
        return self.dac[channel]

    def dac_level(self, channel: int) -> float:
        """DAC? <n>: the actual output (V) the board reports."""
        reply = self._query(f"DAC? {channel}")
        return _number(self, f"DAC? {channel}", reply)

    def state(self) -> tuple[str, str]:
        """STATE?: (word-line chars, bit-line chars); F float, H HI, L LO, 1/2 bias bus."""
        reply = self._query("STATE?")
        parts = reply.split(",")
        if len(parts) != 2 or not re.fullmatch(r"[FHL12]*", parts[0] + parts[1]):
            raise InstrumentError(self.name, "STATE?", reply, "expected <word chars>,<bit chars>")
        return parts[0], parts[1]

    def safe(self) -> None:
        """SAFE: every line floats, both DACs at 0 V."""
        self._command("SAFE")
        self.dac = {1: 0.0, 2: 0.0}

    def set_watchdog(self, seconds: float) -> None:
        """WDOG <s>: go SAFE after this long without a command (0.1 to 600 s)."""
        if not (math.isfinite(seconds) and 0.1 <= seconds <= 600):
            raise ValueError(f"{self.name}: watchdog {seconds!r} s; allowed: 0.1 to 600 s")
        self._command(f"WDOG {seconds:.3f}")
        self.watchdog = seconds

    def watchdog_timeout(self) -> float:
        """WDOG?: the watchdog timeout (s); also keeps the watchdog fed."""
        return _number(self, "WDOG?", self._query("WDOG?"))

    def reset(self) -> None:
        """*RST: SAFE and the power-on watchdog (5 s)."""
        self._command("*RST")
        self.dac = {1: 0.0, 2: 0.0}

    # -- helpers --------------------------------------------------------------------------------

    def _config(self) -> BoardConfig:
        if self.config is None:
            raise RuntimeError(f"{self.name}: not connected (call connect() first)")
        return self.config

    def _line(self, kind: str, index: int) -> str:
        config = self._config()
        if kind not in ("word", "bit"):
            raise ValueError(f"{self.name}: line kind {kind!r}; allowed: 'word', 'bit'")
        size = config.word_lines if kind == "word" else config.bit_lines
        if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < size:
            raise ValueError(
                f"{self.name}: {kind} line {index!r} is outside the board's 0..{size - 1}"
            )
        return f"{'W' if kind == 'word' else 'B'}{index}"


def _terminal(terminal: str, allowed: tuple[str, ...]) -> str:
    name = str(terminal).upper()
    if name not in allowed:
        raise ValueError(f"terminal {terminal!r}; allowed: {', '.join(allowed)}")
    return name


def _code(error: str) -> int:
    try:
        return int(error.split(" ", 1)[0])
    except ValueError:
        return -1


def _number(board: MuxBoard, command: str, reply: str) -> float:
    try:
        return float(reply)
    except ValueError:
        raise InstrumentError(board.name, command, reply, "expected a number") from None
