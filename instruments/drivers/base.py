"""What every driver shares: identity check at connect, error-queue checks, outputs off."""

from __future__ import annotations

import abc
import re
from typing import ClassVar

from instruments.drivers.transport import IdentityMismatch, InstrumentError, Transport


class Instrument(abc.ABC):
    """One instrument behind a `Transport`.

    `identity_pattern` is a regular expression the *IDN? reply must match (e.g. r"MODEL 2450");
    `connect()` queries *IDN?, checks it, then drains the error queue (errors at connect raise).
    """

    identity_pattern: ClassVar[str]

    def __init__(self, transport: Transport) -> None:
        self.transport = transport
        self.identity = ""

    @property
    def name(self) -> str:
        return self.transport.name

    def connect(self) -> str:
        """Check identity and the error queue; returns the *IDN? reply."""
        reply = self.transport.query("*IDN?").strip()
        if not re.search(self.identity_pattern, reply, flags=re.IGNORECASE):
            raise IdentityMismatch(
                self.name,
                "*IDN?",
                reply,
                f"expected an instrument matching {self.identity_pattern!r}",
            )
        self.identity = reply
        self.check_errors("*IDN?")
        return reply

    def check_errors(self, after: str) -> None:
        """Raise InstrumentError listing the instrument's queued errors, if any."""
        errors = self.read_errors()
        if errors:
            raise InstrumentError(self.name, after, "; ".join(errors), "instrument error queue")

    @abc.abstractmethod
    def read_errors(self) -> list[str]:
        """Drain the error queue; [] when empty."""

    @abc.abstractmethod
    def output_off(self) -> None:
        """Every source output of this instrument off (or every relay open for a matrix)."""

    def close(self) -> None:
        self.transport.close()


def read_tsp_error_queue(instrument: Instrument) -> list[str]:
    """Drain a TSP instrument's error queue (errorqueue.count / errorqueue.next(), 2600B and
    707B reference manuals): ["code message", ...]."""
    transport = instrument.transport
    count = int(float(transport.query("print(errorqueue.count)")))
    errors = []
    for _ in range(count):
        reply = transport.query("print(errorqueue.next())")
        parts = reply.split("\t")
        try:
            code = int(float(parts[0]))
        except ValueError:
            raise InstrumentError(
                instrument.name, "print(errorqueue.next())", reply, "unreadable error entry"
            ) from None
        errors.append(f"{code} {parts[1] if len(parts) > 1 else ''}".strip())
    return errors
