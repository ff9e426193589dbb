"""Keithley 707B / 708B switching matrix over TSP, on its own bus or as a TSP-Link node.

Commands from the Models 707B and 708B Switching Matrix Reference Manual 707B-901-01 (Rev. B),
section 7 "TSP command reference" unless noted:

- channel IDs: <slot><row A-H><column 01-12>, e.g. "1A01" (section 5 "Remote commands",
  channel identifiers; 6 slots on a 707B, 1 on a 708B); lists are comma separated.
- `channel.close(list)` adds closures; `channel.open(list)` (also "allslots");
  `channel.exclusiveclose(list)` leaves exactly these closed (opens every other channel; settle
  times apply before the command completes); `print(channel.getclose("allslots"))` -> closed
  channels separated by ";" or "nil" when none; `channel.setdelay(list, seconds)` adds a user
  delay after a channel closes (settling); `channel.connectrule` defaults to break-before-make.
- errors: `errorqueue.count`, `errorqueue.next()` (as on every TSP instrument).
- `*OPC?` (IEEE 488.2 common command) answers once the commands before it have completed, i.e.
  after the relays have settled: the composite waits on it before measuring.

On TSP-Link (node N behind a 2600B master) the same commands go through the master's transport
as `node[N].channel...`; the node's model is `node[N].model` and its errors land in the master's
error queue (errorNode = N), which the master's driver reads.

The real 707B has 6 slots of 12 columns. `slots` may be set larger only for the emulator (one
emulated 707B standing in for chained matrices, e.g. 192 lines of a 128x64 chip); slot numbers
then take two digits ("12A05").
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import ClassVar

from instruments.drivers.base import Instrument, read_tsp_error_queue
from instruments.drivers.transport import IdentityMismatch, InstrumentError, Transport

ROWS = "ABCDEFGH"
COLUMNS = 12
SLOTS = 6  # Model 707B; a 708B has 1


class Keithley707B(Instrument):
    """A 707B/708B switch matrix. node: TSP-Link node number when reached through a master."""

    identity_pattern: ClassVar[str] = r"Keithley Instruments.*Model 70[78]B"

    def __init__(self, transport: Transport, node: int | None = None, slots: int = SLOTS) -> None:
        super().__init__(transport)
        if slots < 1:
            raise ValueError(f"slots: {slots!r} must be >= 1")
        self.node = node
        self.slots = slots
        self.prefix = f"node[{node}]." if node is not None else ""

    # -- channel IDs ----------------------------------------------------------------------

    def channel_id(self, slot: int, row: str, column: int) -> str:
        """ "1A01" from slot 1, row "A", column 1; checked against the matrix size."""
        if not 1 <= slot <= self.slots:
            raise ValueError(f"{self.name}: slot {slot!r} is outside 1..{self.slots}")
        if len(row) != 1 or row.upper() not in ROWS:
            raise ValueError(f"{self.name}: row {row!r} is not one of {ROWS}")
        if not 1 <= column <= COLUMNS:
            raise ValueError(f"{self.name}: column {column!r} is outside 1..{COLUMNS}")
        return f"{slot}{row.upper()}{column:02d}"

    def _list(self, channels: Iterable[str], slots_allowed: bool = False) -> str:
        items = [channels] if isinstance(channels, str) else list(channels)
        for item in items:
            if slots_allowed and re.fullmatch(r"allslots|slot\d{1,2}", item):
                continue
            match = re.fullmatch(r"(\d{1,2})([A-Ha-h])(\d{2})", item)
            if not match:
                raise ValueError(f"{self.name}: channel {item!r} is not <slot><row A-H><column>")
            try:
                self.channel_id(int(match[1]), match[2], int(match[3]))
            except ValueError as error:
                raise ValueError(f"channel {item!r}: {error}") from None
        return ",".join(items)

    # -- connection -----------------------------------------------------------------------

    def connect(self) -> str:
        """*IDN? (own bus) or print(node[N].model) (TSP-Link); then the error queue."""
        if self.node is None:
            return super().connect()
        command = f"print({self.prefix}model)"
        reply = self.transport.query(command).strip()
        if not re.fullmatch(r"70[78]B", reply):
            raise IdentityMismatch(self.name, command, reply, "expected a 707B or 708B node")
        self.identity = f"TSP-Link node {self.node}: Model {reply}"
        return self.identity

    def read_errors(self) -> list[str]:
        """Drain the error queue (own bus); [] on TSP-Link, where the master's queue holds them."""
        if self.node is not None:
            return []
        return read_tsp_error_queue(self)

    # -- relays ---------------------------------------------------------------------------

    def close_channels(self, channels: Iterable[str]) -> None:
        """Close these channels in addition to those already closed."""
        self.transport.write(f'{self.prefix}channel.close("{self._list(channels)}")')

    def open_channels(self, channels: Iterable[str]) -> None:
        self.transport.write(f'{self.prefix}channel.open("{self._list(channels)}")')

    def exclusive_close(self, channels: Iterable[str]) -> None:
        """Exactly these channels closed afterwards (an empty list opens every channel)."""
        self.transport.write(f'{self.prefix}channel.exclusiveclose("{self._list(channels)}")')

    def open_all(self) -> None:
        self.transport.write(f'{self.prefix}channel.open("allslots")')

    def closed_channels(self) -> list[str]:
        """The closed channels, in the instrument's order."""
        command = f'print({self.prefix}channel.getclose("allslots"))'
        reply = self.transport.query(command).strip()
        if reply == "nil" or not reply:
            return []
        return reply.split(";")

    def set_delay(self, channels: Iterable[str], seconds: float) -> None:
        """Extra settling delay (s) after these channels close (resolution 10 us); channels may
        include "allslots" or "slotN"."""
        if not seconds >= 0:
            raise ValueError(f"{self.name}: delay {seconds!r} s must be >= 0")
        items = self._list(channels, slots_allowed=True)
        self.transport.write(f'{self.prefix}channel.setdelay("{items}", {format(seconds, ".9g")})')

    def wait(self) -> None:
        """Block until the relay commands before it have completed and settled (*OPC?)."""
        command = "*OPC?"
        reply = self.transport.query(command).strip()
        if reply != "1":
            raise InstrumentError(self.name, command, reply, "expected 1")

    def output_off(self) -> None:
        """Every relay open."""
        self.open_all()

    def close(self) -> None:
        """Release the link (not when it is the TSP-Link master's)."""
        if self.node is None:
            super().close()
