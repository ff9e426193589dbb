"""What every TSP instrument emulator shares: print() number formatting, the error queue
(errorqueue.count / next() / clear(), 2600B and 707B reference manuals) and the syntax error
(-285) for lines it does not understand."""

from __future__ import annotations

from typing import ClassVar

from instruments.emulators.server import LineEmulator, command


def tsp_number(value: float) -> str:
    """A number as TSP print() formats it by default ("1.00000e+01")."""
    return f"{float(value):.5e}"


class TspEmulator(LineEmulator):
    """A LineEmulator speaking TSP. `empty_queue_node` is the node number errorqueue.next()
    reports when the queue is empty."""

    empty_queue_node: ClassVar[int] = 1

    @command(r"print\(errorqueue\.count\)")
    def _error_count(self) -> str:
        return tsp_number(len(self.errors))

    @command(r"print\(errorqueue\.next\(\)\)")
    def _error_next(self) -> str:
        if not self.errors:
            node = tsp_number(self.empty_queue_node)
            return f"{tsp_number(0)}\tQueue Is Empty\t{tsp_number(0)}\t{node}"
        code, message = self.errors.popleft()
        return f"{tsp_number(code)}\t{message}\t{tsp_number(20)}\t{tsp_number(1)}"

    @command(r"errorqueue\.clear\(\)")
    def _error_clear(self) -> None:
        self.errors.clear()

    def unknown(self, line: str) -> None:
        self.push_error(-285, f"TSP Syntax error at line 1: unexpected symbol near '{line[:24]}'")
        return None
