"""What every source-measure-unit driver offers the composite crossbars (SMU + matrix, SMU + mux).

Channels are named by the instrument's own letters or numbers ("a"/"b" on a 2600B, "1"/"2" on a
B2900, "1" on a 2450). Levels are checked against the `SafetyLimits` given at construction before
any command is written (the drivers call `self.limits.check_*` first), so a driver used on its
own is as safe as through a `Crossbar`.
"""

from __future__ import annotations

import abc

from instruments.drivers.base import Instrument
from instruments.drivers.transport import Transport
from instruments.limits import SafetyLimits


class SourceMeter(Instrument):
    """A voltage-sourcing, current-measuring SMU."""

    channels: tuple[str, ...] = ("1",)
    MIN_PULSE_WIDTH: float = 0.0
    """Shortest pulse (s) the instrument can deliver; drivers set their own."""

    def __init__(self, transport: Transport, limits: SafetyLimits) -> None:
        super().__init__(transport)
        self.limits = limits

    def check_channel(self, channel: str) -> str:
        if channel not in self.channels:
            raise ValueError(
                f"{self.name}: channel {channel!r} does not exist; channels: {self.channels}"
            )
        return channel

    @abc.abstractmethod
    def configure(self, channel: str, compliance: float, nplc: float) -> None:
        """Voltage source, current measure, compliance (A), integration time (power-line
        cycles), fixed ranges where the instrument allows; output stays as it is."""

    @abc.abstractmethod
    def set_voltage(self, channel: str, volts: float) -> None:
        """Source level (V), checked against limits.max_pulse_voltage (the largest allowed)."""

    @abc.abstractmethod
    def set_output(self, channel: str, on: bool) -> None: ...

    @abc.abstractmethod
    def measure_current(self, channel: str) -> float:
        """One current reading (A) at the present level (output must be on)."""

    @abc.abstractmethod
    def pulse(self, channel: str, amplitude: float, width: float, base: float = 0.0) -> None:
        """One voltage pulse: base -> amplitude (V) for width (s) -> base; limits checked."""

    def sweep(self, channel: str, voltages: list[float]) -> list[float]:
        """Currents (A) at each voltage (V), in order; default: point by point."""
        self.limits.check_sweep_voltage(voltages)
        currents = []
        for volts in voltages:
            self.set_voltage(channel, volts)
            currents.append(self.measure_current(channel))
        return currents
