"""Emulated Keithley 707B switching matrix: TSP channel commands -> relays on the bench.

Wiring: `rows` maps a matrix row letter to a bench terminal ("A" -> "smu.a", "C" -> "gnd");
`columns` maps (slot, column) to a crossbar line (("word", 0), ("bit", 3)). Closing channel
"<slot><row><column>" connects that line to that terminal on the bench; channels without wiring
are only remembered. Commands and replies follow the 707B reference manual (see
instruments/drivers/keithley707b.py); a channel list that does not parse, names a missing slot,
row or column, or uses "allslots"/"slotN" where the command forbids it -> error -286 (a TSP
runtime error raised by the channel function), and nothing changes. Unknown commands -> -285
(TSP syntax error).

Emulator-only extension: `slots` may exceed the real 707B's 6 (slot numbers then take two
digits), so one emulated matrix can wire a 128x64 chip (192 lines = 16 slots of 12 columns); a
real lab chains matrices instead.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import ClassVar

from instruments.emulators.bench import Bench, Line
from instruments.emulators.server import command
from instruments.emulators.tsp import TspEmulator

ROWS = "ABCDEFGH"
COLUMNS = 12
NUMBER = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"


class ChannelListError(ValueError):
    """A channel list argument the instrument refuses."""


class Keithley707BEmulator(TspEmulator):
    """A 707B on the bench; closures connect crossbar lines to terminals."""

    identity: ClassVar[str] = "Keithley Instruments Inc., Model 707B, 4420001, 1.6.0"
    empty_queue_node: ClassVar[int] = 0
    model: ClassVar[str] = "707B"

    def __init__(
        self,
        bench: Bench,
        name: str = "matrix",
        rows: Mapping[str, str] | None = None,
        columns: Mapping[tuple[int, int], Line] | None = None,
        slots: int = 6,
    ) -> None:
        super().__init__(bench, name)
        self.slots = slots
        self.rows = {letter.upper(): terminal for letter, terminal in (rows or {}).items()}
        for letter, terminal in self.rows.items():
            if letter not in ROWS:
                raise ValueError(f"{name}: row {letter!r} is not one of {ROWS}")
            if terminal not in bench.channels and terminal not in bench.fixed:
                raise ValueError(f"{name}: row {letter} wired to unknown terminal {terminal!r}")
        self.columns = dict(columns or {})
        for slot, column in self.columns:
            if not (1 <= slot <= slots and 1 <= column <= COLUMNS):
                raise ValueError(f"{name}: column {slot}/{column:02d} does not exist")
        self.closed: set[tuple[int, str, int]] = set()
        self.delays: dict[tuple[int, str, int], float] = {}
        self.relay_operations = 0

    # -- channel lists ----------------------------------------------------------------------

    def parse_list(
        self, text: str, slots_allowed: bool = False, empty_allowed: bool = False
    ) -> set[tuple[int, str, int]]:
        """Channels of a list ("1A01,1B03", ranges "1A01:1B03", "slotN"/"allslots" if allowed)."""
        items = [item.strip() for item in text.split(",")]
        if items == [""]:
            if empty_allowed:
                return set()
            raise ChannelListError("empty channel list")
        channels: set[tuple[int, str, int]] = set()
        for item in items:
            if slots_allowed and item.lower() == "allslots":
                channels |= self._slot_channels(range(1, self.slots + 1))
            elif slots_allowed and re.fullmatch(r"slot\d{1,2}", item, re.IGNORECASE):
                slot = int(item[4:])
                if not 1 <= slot <= self.slots:
                    raise ChannelListError(f"slot {slot} does not exist")
                channels |= self._slot_channels([slot])
            elif ":" in item:
                first, _, last = item.partition(":")
                (s1, r1, c1), (s2, r2, c2) = self._channel(first), self._channel(last)
                if s1 != s2:
                    raise ChannelListError(f"range {item!r} spans slots")
                rows = ROWS[
                    min(ROWS.index(r1), ROWS.index(r2)) : max(ROWS.index(r1), ROWS.index(r2)) + 1
                ]
                channels |= {(s1, r, c) for r in rows for c in range(min(c1, c2), max(c1, c2) + 1)}
            else:
                channels.add(self._channel(item))
        return channels

    def _channel(self, item: str) -> tuple[int, str, int]:
        match = re.fullmatch(r"(\d{1,2})([A-Ha-h])(\d{2})", item)
        if not match:
            raise ChannelListError(f"invalid channel {item!r}")
        slot, row, column = int(match[1]), match[2].upper(), int(match[3])
        if not 1 <= slot <= self.slots:
            raise ChannelListError(f"slot {slot} of channel {item!r} does not exist")
        if not 1 <= column <= COLUMNS:
            raise ChannelListError(f"column {column} of channel {item!r} does not exist")
        return slot, row, column

    def _slot_channels(self, slots: range | list[int]) -> set[tuple[int, str, int]]:
        return {(s, r, c) for s in slots for r in ROWS for c in range(1, COLUMNS + 1)}

    @staticmethod
    def channel_name(channel: tuple[int, str, int]) -> str:
        slot, row, column = channel
        return f"{slot}{row}{column:02d}"

    # -- relays (Python API, also used by a TSP-Link master's script) -----------------------

    def _wire(self, channel: tuple[int, str, int], closed: bool) -> None:
        slot, row, column = channel
        line = self.columns.get((slot, column))
        terminal = self.rows.get(row)
        if line is None or terminal is None:
            return
        if closed:
            self.bench.connect(line, terminal)
        else:
            self.bench.disconnect(line, terminal)

    def close_set(self, channels: set[tuple[int, str, int]]) -> None:
        for channel in sorted(channels - self.closed):
            self.closed.add(channel)
            self._wire(channel, True)
            self.relay_operations += 1

    def open_set(self, channels: set[tuple[int, str, int]]) -> None:
        for channel in sorted(channels & self.closed):
            self.closed.discard(channel)
            self._wire(channel, False)
            self.relay_operations += 1

    def exclusive_set(self, channels: set[tuple[int, str, int]]) -> None:
        """Break before make: open what is not wanted, then close the rest."""
        self.open_set(self.closed - channels)
        self.close_set(channels)

    def open_everything(self) -> None:
        self.open_set(set(self.closed))

    def reset(self) -> None:
        self.open_everything()
        self.delays.clear()

    def _run(self, line: str, action: object) -> None:
        try:
            action()  # type: ignore[operator]
        except ChannelListError as error:
            self.push_error(-286, f"TSP Runtime error at line 1: {error} in {line!r}")

    # -- TSP commands -----------------------------------------------------------------------

    @command(r'channel\.close\("([^"]*)"\)')
    def _close(self, text: str) -> None:
        self._run(text, lambda: self.close_set(self.parse_list(text)))

    @command(r'channel\.open\("([^"]*)"\)')
    def _open(self, text: str) -> None:
        self._run(text, lambda: self.open_set(self.parse_list(text, slots_allowed=True)))

    @command(r'channel\.exclusiveclose\("([^"]*)"\)')
    def _exclusiveclose(self, text: str) -> None:
        if text.strip() == "":
            self.open_everything()  # manual: an empty list opens every channel
            return
        self._run(text, lambda: self.exclusive_set(self.parse_list(text)))

    @command(r'print\(channel\.getclose\("([^"]*)"\)\)')
    def _getclose(self, text: str) -> str | None:
        try:
            wanted = self.parse_list(text, slots_allowed=True)
        except ChannelListError as error:
            self.push_error(-286, f"TSP Runtime error at line 1: {error} in {text!r}")
            return None
        closed = sorted(wanted & self.closed)
        return ";".join(self.channel_name(c) for c in closed) if closed else "nil"

    @command(r'channel\.setdelay\("([^"]*)",\s*(' + NUMBER + r")\)")
    def _setdelay(self, text: str, seconds: str) -> None:
        def apply() -> None:
            value = float(seconds)
            if value < 0:
                raise ChannelListError(f"delay {value} s is below 0")
            for channel in self.parse_list(text, slots_allowed=True):
                self.delays[channel] = value

        self._run(text, apply)

    @command(r"channel\.reset\(\"allslots\"\)|reset\(\)")
    def _reset(self) -> None:
        self.reset()

    @command(r"print\(localnode\.model\)")
    def _model(self) -> str:
        return self.model
