"""The emulated lab bench: one simulated chip wired to instrument terminals.

Every crossbar line (("word", i) or ("bit", j)) is connected to zero or more terminals by relays
(switch matrix or multiplexer board emulators call `connect` / `disconnect`). A terminal is an SMU
channel (`add_channel`: a sourced level with output on or off and a current compliance), or a
fixed-voltage node (`add_fixed`: "gnd" at 0 V exists from the start; a board's bias DAC, say).
When an SMU measures or pulses, the bench turns the wiring into line voltages (floating = NaN) and
calls `SimulatedChip.drive`; the current a terminal sees is the sum of the currents into the lines
connected to it, so sneak paths and half-select currents appear as they would on the bench.

An SMU channel whose output is off is high impedance (its lines float), unless its off mode is
"zero" (0 V). Two terminals at different voltages on one line short each other: `drive` raises
`BenchShort` and the emulators turn that into an instrument error.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

Line = tuple[str, int]


class BenchShort(RuntimeError):
    """Two terminals at different voltages are connected to the same line."""


@dataclass
class ChannelState:
    """An SMU channel as the bench sees it: level (V), output on/off, compliance (A)."""

    level: float = 0.0
    output_on: bool = False
    compliance: float = 1e-4
    off_mode: str = "high_z"  # or "zero"
    in_compliance: bool = False


class Bench:
    """One simulated chip (`instruments.chip.SimulatedChip`) and the relays to it."""

    def __init__(self, chip: object) -> None:
        self.chip = chip
        self.lock = chip.lock  # type: ignore[attr-defined]
        self.rows, self.cols = chip.shape  # type: ignore[attr-defined]
        self.channels: dict[str, ChannelState] = {}
        self.fixed: dict[str, float] = {"gnd": 0.0}
        self.links: dict[Line, set[str]] = {}

    # -- terminals ------------------------------------------------------------------------------

    def add_channel(self, name: str) -> ChannelState:
        self.channels[name] = ChannelState()
        return self.channels[name]

    def add_fixed(self, name: str, volts: float) -> None:
        self.fixed[name] = float(volts)

    # -- relays ---------------------------------------------------------------------------------

    def _check_line(self, line: Line) -> None:
        kind, index = line
        size = self.rows if kind == "word" else self.cols if kind == "bit" else -1
        if size < 0 or not 0 <= index < size:
            raise ValueError(f"no line {line!r} on a {self.rows}x{self.cols} chip")

    def connect(self, line: Line, terminal: str) -> None:
        self._check_line(line)
        if terminal not in self.channels and terminal not in self.fixed:
            raise ValueError(f"unknown terminal {terminal!r}")
        self.links.setdefault(line, set()).add(terminal)

    def disconnect(self, line: Line, terminal: str | None = None) -> None:
        """Open the relay(s) between a line and one terminal (None: every terminal)."""
        if terminal is None:
            self.links.pop(line, None)
        else:
            self.links.get(line, set()).discard(terminal)

    def disconnect_all(self, terminal: str | None = None) -> None:
        if terminal is None:
            self.links.clear()
            return
        for terminals in self.links.values():
            terminals.discard(terminal)

    def lines_of(self, terminal: str) -> list[Line]:
        return sorted(line for line, terminals in self.links.items() if terminal in terminals)

    # -- electrical -----------------------------------------------------------------------------

    def terminal_voltage(self, terminal: str, overrides: dict[str, float] | None = None) -> float:
        """Voltage (V) a terminal imposes, NaN when it is high impedance."""
        if overrides and terminal in overrides:
            return overrides[terminal]
        if terminal in self.fixed:
            return self.fixed[terminal]
        state = self.channels[terminal]
        if state.output_on:
            return state.level
        return 0.0 if state.off_mode == "zero" else math.nan

    def line_voltages(
        self, overrides: dict[str, float] | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """(word (rows,), bit (cols,)) voltages in V from the wiring; NaN = floating."""
        word = np.full(self.rows, np.nan)
        bit = np.full(self.cols, np.nan)
        for (kind, index), terminals in self.links.items():
            levels = [self.terminal_voltage(t, overrides) for t in terminals]
            levels = [v for v in levels if not math.isnan(v)]
            if not levels:
                continue
            if max(levels) - min(levels) > 1e-12:
                raise BenchShort(
                    f"{kind} line {index} is connected to {sorted(terminals)} at different "
                    f"voltages {levels}"
                )
            (word if kind == "word" else bit)[index] = levels[0]
        return word, bit

    def drive(self, duration: float, overrides: dict[str, float] | None = None) -> dict[str, float]:
        """Apply the wiring's voltages for `duration` s; current (A) out of every terminal.

        overrides: terminal -> voltage for this drive only (e.g. the peak of a pulse).
        Compliance: an SMU channel whose current exceeds its compliance reports the compliance
        value with its sign and sets `in_compliance` (the emulated SMU does not fold back the
        voltage the chip saw; a documented simplification).
        """
        word, bit = self.line_voltages(overrides)
        word_currents, bit_currents = self.chip.drive(word, bit, duration)  # type: ignore[attr-defined]
        currents: dict[str, float] = {}
        for (kind, index), terminals in self.links.items():
            current = float((word_currents if kind == "word" else bit_currents)[index])
            driven = [t for t in terminals if not math.isnan(self.terminal_voltage(t, overrides))]
            for terminal in driven:
                # with one driving terminal per line (no short), it carries the line's current
                currents[terminal] = currents.get(terminal, 0.0) + current
        for name, state in self.channels.items():
            current = currents.get(name, 0.0)
            state.in_compliance = abs(current) > state.compliance
            if state.in_compliance:
                currents[name] = math.copysign(state.compliance, current)
        return currents
