"""Message transports for instrument drivers: VISA (pyvisa, pyvisa-py by default), serial
(pyserial) and a scripted transport for byte-exact driver tests.

Every transport speaks lines: `write(command)` sends one command and its terminator, `query`
sends one and returns the reply line without terminator. Failures raise `InstrumentError`
subclasses that name the instrument, the command and what came back. `round_trips` counts
query-reply exchanges (the bus latency a benchmark multiplies).
"""

from __future__ import annotations

import abc
import contextlib
import socket
from collections.abc import Sequence


class InstrumentError(RuntimeError):
    """An instrument failed: names the instrument, the command and what came back."""

    def __init__(self, instrument: str, command: str, reply: str, problem: str = "") -> None:
        self.instrument, self.command, self.reply = instrument, command, reply
        detail = f": {problem}" if problem else ""
        super().__init__(f"{instrument}: command {command!r} -> {reply!r}{detail}")


class InstrumentTimeout(InstrumentError):
    """No reply within the timeout."""


class IdentityMismatch(InstrumentError):
    """*IDN? answered, but not with the instrument the config expects."""


class ConnectionLost(InstrumentError):
    """The connection dropped or could not be opened."""


class Transport(abc.ABC):
    """A line-oriented link to one instrument."""

    base_timeout: float = 5.0
    """s: how long a reply that needs no instrument-side work may take."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.round_trips = 0
        self.sent: list[str] = []  # every command written, in order (for logs and tests)

    def write(self, command: str) -> None:
        self.sent.append(command)
        self._write(command)

    def query(self, command: str, timeout: float | None = None) -> str:
        """Send a command and return its reply line; `timeout` (s) replaces the link's reply
        timeout for this query only (long instrument-side work: scripts, sweeps)."""
        self.sent.append(command)
        self.round_trips += 1
        self._write(command)
        if timeout is None:
            return self._read(command)
        previous = self._set_timeout(timeout)
        try:
            return self._read(command)
        finally:
            self._set_timeout(previous)

    def _set_timeout(self, seconds: float) -> float:
        """Set the reply timeout (s); return the previous one. Default: no timeouts to set."""
        return seconds

    def write_block(self, lines: Sequence[str]) -> None:
        """Several commands (e.g. a TSP script body), one write each."""
        for line in lines:
            self.write(line)

    @abc.abstractmethod
    def _write(self, command: str) -> None: ...

    @abc.abstractmethod
    def _read(self, command: str) -> str:
        """The next reply line; command is only for error messages."""

    def clear_input(self) -> None:  # noqa: B027 - optional
        """Discard replies still waiting to be read (e.g. a late answer after a timeout)."""

    def close(self) -> None:  # noqa: B027 - optional
        """Release the link."""


class VisaTransport(Transport):
    """pyvisa message-based resource, e.g. "TCPIP::127.0.0.1::5025::SOCKET" or "GPIB0::24::INSTR".

    visa_library: "@py" (pyvisa-py, default) or a path to a vendor VISA library.
    timeout: seconds per reply.
    """

    def __init__(
        self,
        name: str,
        resource: str,
        timeout: float = 5.0,
        visa_library: str = "@py",
        termination: str = "\n",
    ) -> None:
        super().__init__(name)
        import pyvisa

        self.base_timeout = timeout
        self._errors = pyvisa.errors
        self.resource_name = resource
        try:
            self._manager = pyvisa.ResourceManager(visa_library)
            self._resource = self._manager.open_resource(
                resource,
                read_termination=termination,
                write_termination=termination,
                timeout=int(timeout * 1000),
            )
        except (pyvisa.errors.Error, OSError, ValueError) as error:
            raise ConnectionLost(name, f"open {resource}", "", str(error)) from error
        link = self._socket()
        if link is not None:
            # VISA specifies TCP_NODELAY on by default; pyvisa-py leaves it off, which makes a
            # write followed by a query wait ~40 ms for a delayed ACK.
            with contextlib.suppress(OSError):
                link.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def _socket(self) -> socket.socket | None:
        """The raw socket of a pyvisa-py TCPIP SOCKET session, else None."""
        session = getattr(self._resource.visalib, "sessions", {}).get(self._resource.session)
        link = getattr(session, "interface", None)
        return link if isinstance(link, socket.socket) else None

    def _set_timeout(self, seconds: float) -> float:
        previous = self._resource.timeout / 1000
        self._resource.timeout = int(seconds * 1000)
        return previous

    def _write(self, command: str) -> None:
        try:
            self._resource.write(command)
        except (self._errors.Error, OSError) as error:
            raise ConnectionLost(self.name, command, "", f"write failed: {error}") from error

    def _read(self, command: str) -> str:
        try:
            return self._resource.read()
        except self._errors.VisaIOError as error:
            if error.error_code == self._errors.StatusCode.error_timeout:
                if self._peer_closed():
                    raise ConnectionLost(
                        self.name, command, "", "the instrument closed the connection"
                    ) from error
                timeout = self._resource.timeout / 1000
                raise InstrumentTimeout(
                    self.name, command, "", f"no reply within {timeout:g} s"
                ) from error
            raise ConnectionLost(self.name, command, "", f"read failed: {error}") from error
        except (self._errors.Error, OSError) as error:
            raise ConnectionLost(self.name, command, "", f"read failed: {error}") from error
        except UnicodeDecodeError as error:
            raise InstrumentError(
                self.name, command, repr(error.object), "garbled reply"
            ) from error

    def _peer_closed(self) -> bool:
        """True when a raw-socket resource's peer has closed (pyvisa-py reports that as a
        timeout): the socket reads end-of-file without blocking."""
        link = self._socket()
        if link is None:
            return False
        try:
            return link.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
        except BlockingIOError:
            return False
        except OSError:
            return True

    def close(self) -> None:
        with contextlib.suppress(self._errors.Error, OSError):
            self._resource.close()


class SerialTransport(Transport):
    """pyserial link: a port ("/dev/ttyACM0") or a URL ("socket://127.0.0.1:7000", "loop://").

    timeout: seconds per reply line; baudrate in bit/s.
    """

    def __init__(
        self, name: str, port: str, baudrate: int = 115200, timeout: float = 2.0, eol: str = "\n"
    ) -> None:
        super().__init__(name)
        import serial

        self._serial_errors = (serial.SerialException, OSError)
        self.eol = eol
        self.timeout = self.base_timeout = timeout
        try:
            self._port = serial.serial_for_url(port, baudrate=baudrate, timeout=timeout)
        except self._serial_errors as error:
            raise ConnectionLost(name, f"open {port}", "", str(error)) from error

    def _set_timeout(self, seconds: float) -> float:
        previous, self.timeout = self.timeout, seconds
        self._port.timeout = seconds
        return previous

    def _write(self, command: str) -> None:
        try:
            self._port.write((command + self.eol).encode("ascii"))
            self._port.flush()
        except self._serial_errors as error:
            raise ConnectionLost(self.name, command, "", f"write failed: {error}") from error

    def _read(self, command: str) -> str:
        try:
            raw = self._port.read_until(self.eol.encode("ascii"))
        except self._serial_errors as error:
            raise ConnectionLost(self.name, command, "", f"read failed: {error}") from error
        if not raw.endswith(self.eol.encode("ascii")):
            raise InstrumentTimeout(
                self.name,
                command,
                raw.decode("ascii", "replace"),
                f"no reply within {self.timeout:g} s",
            )
        try:
            return raw[: -len(self.eol)].decode("ascii")
        except UnicodeDecodeError as error:
            raise InstrumentError(self.name, command, repr(raw), "garbled reply") from error

    def clear_input(self) -> None:
        with contextlib.suppress(self._serial_errors):
            self._port.reset_input_buffer()

    def close(self) -> None:
        with contextlib.suppress(self._serial_errors):
            self._port.close()


class ScriptedTransport(Transport):
    """Byte-exact test double: a script of (command, reply or None) pairs, checked in order.

    A write must match the next scripted command with reply None; a query one with a reply.
    Anything else raises AssertionError naming the step, what was expected and what was sent.
    """

    def __init__(self, script: Sequence[tuple[str, str | None]], name: str = "scripted") -> None:
        super().__init__(name)
        self.script = list(script)
        self.position = 0
        self._pending: str | None = None

    def _next(self, command: str) -> tuple[str, str | None]:
        if self.position >= len(self.script):
            raise AssertionError(f"step {self.position}: unexpected extra command {command!r}")
        expected, reply = self.script[self.position]
        if command != expected:
            raise AssertionError(f"step {self.position}: expected {expected!r}, sent {command!r}")
        self.position += 1
        return expected, reply

    def write(self, command: str) -> None:
        _, reply = self._next(command)
        if reply is not None:
            raise AssertionError(f"step {self.position - 1}: {command!r} should be a query")
        self.sent.append(command)

    def query(self, command: str, timeout: float | None = None) -> str:
        _, reply = self._next(command)
        if reply is None:
            raise AssertionError(f"step {self.position - 1}: {command!r} should be a write")
        self.sent.append(command)
        self.round_trips += 1
        return reply

    def _write(self, command: str) -> None:  # pragma: no cover - write/query overridden
        raise NotImplementedError

    def _read(self, command: str) -> str:  # pragma: no cover
        raise NotImplementedError

    def assert_done(self) -> None:
        if self.position != len(self.script):
            raise AssertionError(
                f"script not finished: next expected {self.script[self.position][0]!r}"
            )
