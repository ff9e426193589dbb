"""Latency model: estimated time (s) of a crossbar operation on real SMU + switch-matrix hardware,
from counts of what it did (bus exchanges, relay switches, readings, pulses).

    time = bus_round_trips * round_trip          query + reply over GPIB / LAN (s each)
         + bus_writes * write                    commands written without a reply
         + relay_switches * relay_settle         matrix commands that changed relays
         + link_commands * link_command          relay commands a TSP script sends over TSP-Link
         + readings * (nplc / line_frequency + measure_overhead)
         + read_setups * source_settle           source level change before a cell's readings
         + pulse_events * (pulse_width + pulse_overhead)

Assumptions (each one a parameter of `LatencyModel`):

- Every term is serial: nothing overlaps (no pipelining of bus traffic with relay settling or
  measurements), which is how a PC loop or a single-threaded TSP script runs.
- round_trip: one query and its reply, including the instrument's command parsing: GPIB ~1 ms,
  raw LAN socket (port 5025) / HiSLIP ~0.3 ms (peers-lab.md section 3.7 rules of thumb). A write
  without a reply costs `write` (about half a round trip). A TSP script call is one round trip;
  its on-instrument work is counted by the other terms, not by the round trip.
- relay_settle: one settle per matrix command that changed any relay (the relays of one command
  actuate together; the 707B's reed relays need ~3-5 ms to close and bounce-settle), whatever
  the number of relays it moved. Break-before-make opening is inside that time.
- Readings: aperture nplc / line_frequency (50 Hz mains: 20 ms at 1 NPLC) plus a fixed
  measure_overhead (fixed current range, autozero once, no autorange; autorange would add up to
  tens of ms per reading and is not modelled). source_settle: once per cell read setup.
- Pulses: SMU-timed (level, delay(width), level); pulse_overhead covers the level changes and the
  V/2 bias channel's set and reset around each pulse. Cells of one word line that share an
  amplitude share one pulse event.
- Host computation (numpy, write-verify bookkeeping) and TSP interpreter time are neglected
  (tens of us per operation, small next to relay and aperture times).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields, replace


@dataclass(frozen=True)
class OperationCounts:
    """What an operation did, counted (see the module docstring for each term's cost).

    pulse_width: s, the width of every pulse event (one width per run).
    relay_operations: individual relay actuations (informative; the model uses relay_switches).
    """

    bus_round_trips: int = 0
    bus_writes: int = 0
    relay_switches: int = 0
    relay_operations: int = 0
    link_commands: int = 0
    readings: int = 0
    read_setups: int = 0
    pulse_events: int = 0
    pulse_width: float = 0.0

    def __add__(self, other: OperationCounts) -> OperationCounts:
        if self.pulse_width and other.pulse_width and self.pulse_width != other.pulse_width:
            raise ValueError(
                f"pulse_width: cannot add counts of {self.pulse_width} s and "
                f"{other.pulse_width} s pulses"
            )
        values = {
            f.name: getattr(self, f.name) + getattr(other, f.name)
            for f in fields(self)
            if f.name != "pulse_width"
        }
        return OperationCounts(**values, pulse_width=self.pulse_width or other.pulse_width)

    def __sub__(self, other: OperationCounts) -> OperationCounts:
        values = {
            f.name: getattr(self, f.name) - getattr(other, f.name)
            for f in fields(self)
            if f.name != "pulse_width"
        }
        return OperationCounts(**values, pulse_width=self.pulse_width or other.pulse_width)

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


@dataclass(frozen=True)
class LatencyModel:
    """Per-item costs in s (nplc in power-line cycles, line_frequency in Hz)."""

    name: str = "GPIB"
    round_trip: float = 1e-3
    write: float = 0.5e-3
    relay_settle: float = 4e-3
    link_command: float = 0.2e-3
    nplc: float = 0.1
    line_frequency: float = 50.0
    measure_overhead: float = 0.3e-3
    source_settle: float = 0.1e-3
    pulse_overhead: float = 0.2e-3

    def __post_init__(self) -> None:
        for f in fields(self):
            if f.name == "name":
                continue
            value = getattr(self, f.name)
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"LatencyModel.{f.name}: {value!r} must be finite and >= 0")
        if self.nplc <= 0 or self.line_frequency <= 0:
            raise ValueError(
                f"LatencyModel: nplc {self.nplc!r} and line_frequency {self.line_frequency!r} Hz "
                "must be > 0"
            )

    @property
    def aperture(self) -> float:
        """Integration time of one reading (s)."""
        return self.nplc / self.line_frequency

    def breakdown(self, counts: OperationCounts) -> dict[str, float]:
        """Seconds per term: bus, relays, link, readings, pulses."""
        return {
            "bus": counts.bus_round_trips * self.round_trip + counts.bus_writes * self.write,
            "relays": counts.relay_switches * self.relay_settle,
            "link": counts.link_commands * self.link_command,
            "readings": counts.readings * (self.aperture + self.measure_overhead)
            + counts.read_setups * self.source_settle,
            "pulses": counts.pulse_events * (counts.pulse_width + self.pulse_overhead),
        }

    def time(self, counts: OperationCounts) -> float:
        """Estimated seconds on real hardware."""
        return float(sum(self.breakdown(counts).values()))

    def with_(self, **changes: float | str) -> LatencyModel:
        return replace(self, **changes)


GPIB = LatencyModel()
"""GPIB, 1 ms per query, 0.5 ms per write, 4 ms relay settle, 0.1 NPLC at 50 Hz."""
LAN = LatencyModel(name="LAN", round_trip=0.3e-3, write=0.1e-3)
"""Raw LAN socket: 0.3 ms per query, 0.1 ms per write; otherwise as GPIB."""
FAST = LAN.with_(name="fast", relay_settle=3e-3)
"""Low end of the rules of thumb: LAN socket, 3 ms relays."""
SLOW = GPIB.with_(name="slow", relay_settle=5e-3)
"""High end: GPIB, 5 ms relays."""
