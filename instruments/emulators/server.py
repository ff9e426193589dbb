"""Wire-level emulator framework: line-protocol instruments served over TCP on localhost.

A `LineEmulator` turns one command line into at most one reply line, keeps an error queue and a
log of every level it is asked to source. `EmulatorServer` serves one emulator on
127.0.0.1:PORT, so a real driver connects through pyvisa-py with the VISA resource
"TCPIP::127.0.0.1::PORT::SOCKET" and runs unchanged. Fault injection for tests
(`inject_fault`): "drop" closes the connection at the next command, "garble" answers the next
query with undecodable bytes, "silence" swallows the next reply (the driver times out).
"""

from __future__ import annotations

import re
import socket
import socketserver
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

from instruments.emulators.bench import Bench

Handler = Callable[..., str | None]


@dataclass(frozen=True)
class SourceEvent:
    """One level an emulator was asked to source: time (s, wall clock), channel, quantity
    ("voltage", "current_limit", "pulse"), value (V or A), and the command that asked."""

    time: float
    channel: str
    quantity: str
    value: float
    command: str


def command(pattern: str) -> Callable[[Handler], Handler]:
    """Decorate a LineEmulator method as the handler of lines fully matching `pattern` (regex,
    case-insensitive); the match's groups are passed as positional string arguments."""

    def mark(method: Handler) -> Handler:
        method._command_pattern = pattern  # type: ignore[attr-defined]
        return method

    return mark


class LineEmulator:
    """Base of every instrument emulator. Subclasses set `identity` (the *IDN? reply) and define
    handlers with `@command(regex)`; longer patterns are tried first. *IDN?, *RST, *CLS, *OPC?,
    *WAI and *TRG are handled here (override `reset` for *RST)."""

    identity: ClassVar[str] = "xbarlab,emulator,0,0"
    terminator: ClassVar[str] = "\n"

    def __init__(self, bench: Bench, name: str) -> None:
        self.bench = bench
        self.name = name
        self.errors: deque[tuple[int, str]] = deque(maxlen=100)
        self.source_log: list[SourceEvent] = []
        self.received: list[str] = []
        self.faults: deque[str] = deque()
        routes = []
        for attribute in dir(type(self)):
            method = getattr(type(self), attribute)
            pattern = getattr(method, "_command_pattern", None)
            if pattern is not None:
                routes.append((re.compile(pattern, re.IGNORECASE), getattr(self, attribute)))
        self._routes = sorted(routes, key=lambda route: -len(route[0].pattern))

    # -- what subclasses use --------------------------------------------------------------------

    def push_error(self, code: int, message: str) -> None:
        self.errors.append((code, message))

    def log_source(self, channel: str, quantity: str, value: float, command_line: str) -> None:
        self.source_log.append(SourceEvent(time.time(), channel, quantity, value, command_line))

    def reset(self) -> None:
        """*RST: back to power-on state (subclasses extend)."""

    def unknown(self, line: str) -> str | None:
        """A line no route matches: SCPI's -113 "Undefined header" (TSP emulators override)."""
        self.push_error(-113, f'Undefined header; "{line}"')
        return None

    # -- dispatch -------------------------------------------------------------------------------

    def handle(self, line: str) -> str | None:
        """One command line in, one reply line (without terminator) or None out."""
        line = line.strip()
        self.received.append(line)
        if not line:
            return None
        upper = line.upper()
        if upper == "*IDN?":
            return self.identity
        if upper == "*RST":
            self.reset()
            return None
        if upper == "*CLS":
            self.errors.clear()
            return None
        if upper == "*OPC?":
            return "1"
        if upper in ("*WAI", "*OPC", "*TRG"):
            return None
        for pattern, handler in self._routes:
            match = pattern.fullmatch(line)
            if match:
                with self.bench.lock:
                    return handler(*match.groups())
        return self.unknown(line)

    def inject_fault(self, kind: str) -> None:
        if kind not in ("drop", "garble", "silence"):
            raise ValueError(f"fault {kind!r}; allowed: drop, garble, silence")
        self.faults.append(kind)


class _Connection(socketserver.StreamRequestHandler):
    server: _Server

    def setup(self) -> None:
        super().setup()
        # Replies go out at once (no Nagle delay waiting for the client's ACK).
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def handle(self) -> None:
        emulator = self.server.emulator
        terminator = emulator.terminator.encode()
        while True:
            try:
                raw = self.rfile.readline()
            except OSError:
                return
            if not raw:
                return
            if emulator.faults and emulator.faults[0] == "drop":
                emulator.faults.popleft()
                self.connection.shutdown(socket.SHUT_RDWR)
                return
            reply = emulator.handle(raw.decode("ascii", "replace").rstrip("\r\n"))
            if reply is None:
                continue
            if emulator.faults and emulator.faults[0] in ("garble", "silence"):
                fault = emulator.faults.popleft()
                if fault == "silence":
                    continue
                self.wfile.write(b"\xff\xfe\x00garbled" + terminator)
                continue
            self.wfile.write(reply.encode("ascii") + terminator)


class _Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], emulator: LineEmulator) -> None:
        self.emulator = emulator
        super().__init__(address, _Connection)


class EmulatorServer:
    """Serve one emulator on 127.0.0.1:port (0 = a free port) in a background thread."""

    def __init__(self, emulator: LineEmulator, port: int = 0, host: str = "127.0.0.1") -> None:
        self.emulator = emulator
        self._server = _Server((host, port), emulator)
        self.host, self.port = self._server.server_address[:2]
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.02},  # stop() returns within ~20 ms
            name=f"emulator {emulator.name}",
            daemon=True,
        )

    @property
    def resource(self) -> str:
        """The VISA resource a driver opens: TCPIP::HOST::PORT::SOCKET."""
        return f"TCPIP::{self.host}::{self.port}::SOCKET"

    def start(self) -> EmulatorServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> EmulatorServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
